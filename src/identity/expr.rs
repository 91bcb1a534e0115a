//! Compiling an IdentityProfile's CEL expressions and evaluating them.
