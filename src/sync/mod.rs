//! The sync engine: schedules, the diff, the import safeguard, and the job
//! that runs one sync atomically. Plain functions over plain data where it
//! can be; the controllers decide when a sync runs and report what it did.

pub mod cancel;
pub mod diff;
pub mod job;
pub mod safeguard;
pub mod schedule;

#[cfg(test)]
mod scim_faults;
