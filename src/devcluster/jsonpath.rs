//! TEMPORARY stub; replaced by the full implementation.
