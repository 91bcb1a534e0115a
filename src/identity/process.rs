//! One processing run of a profile.
