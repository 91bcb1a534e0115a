//! Runs: the connections and profiles they belong to, how they start and
//! end, and the records of the run history (the audit trail). Plain data,
//! shared by the sync engine, identity processing, the store and the CLI.

use std::fmt;

/// A Connection, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionRef {
    pub namespace: String,
    pub name: String,
}

impl ConnectionRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ConnectionRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ConnectionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A run's id in the run history; never reused, even after runs are deleted.
pub type RunId = i64;

/// An IdentityProfile, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProfileRef {
    pub namespace: String,
    pub name: String,
}

impl ProfileRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ProfileRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ProfileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a run started: the store keeps it, the run history and Events show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A slot of the Connection's (or profile's) schedule.
    Scheduled,
    /// A ResyncRequest.
    Requested,
    /// A new value of the Connection's `idsync.dev/requested-at` annotation.
    RequestedAt,
    /// A sync changed accounts the profile reads.
    EventBased,
    /// An identity's next-processing time came.
    TimeBased,
    /// An Automatic profile's spec changed.
    SpecChanged,
    /// A request applied a Manual profile's pending changes or named identities.
    Manual,
}

named!(Trigger { Scheduled, Requested, RequestedAt, EventBased, TimeBased, SpecChanged, Manual });

/// Which read a sync asks for, or ran (a Delta without a cursor runs Full).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunMode {
    Delta,
    Full,
}

named!(RunMode { Delta, Full });

/// What the store records when a run starts.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub connection: ConnectionRef,
    pub trigger: Trigger,
    /// The ResyncRequest that asked for the run, if one did.
    pub request: Option<String>,
    /// As asked; [`RunFinish::mode`] says what ran.
    pub requested_mode: RunMode,
    /// The operator instance running it.
    pub holder: String,
    pub started_at: jiff::Timestamp,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    Failed,
    /// Its operator died (or lost its lease) before it finished.
    Interrupted,
    Cancelled,
    /// It would have changed more than the connection's safeguards allow.
    SafeguardTripped,
    /// It computed its changes and applied none.
    DryRun,
}

named!(RunOutcome { Succeeded, Failed, Interrupted, Cancelled, SafeguardTripped, DryRun });

impl RunOutcome {
    /// Whether what the run changed (or would change) is worth keeping and
    /// showing: it applied it, or showing it is its point (a dry run, a sync
    /// the safeguard held back). A run that failed or stopped changed
    /// nothing, and what it had read is no diff.
    pub fn keeps_changes(self) -> bool {
        matches!(self, RunOutcome::Succeeded | RunOutcome::DryRun | RunOutcome::SafeguardTripped)
    }
}

/// What a run did to the connection's accounts, as the sync engine counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

/// What the store records when a run ends.
#[derive(Clone, Debug)]
pub struct RunFinish {
    pub outcome: RunOutcome,
    /// The mode that actually ran (a Delta can turn into a Full), if any did.
    pub mode: Option<RunMode>,
    pub counts: Counts,
    pub message: String,
    pub finished_at: jiff::Timestamp,
}

/// One run in the run history.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub connection: ConnectionRef,
    pub trigger: Trigger,
    pub request: Option<String>,
    pub requested_mode: RunMode,
    pub holder: String,
    pub started_at: jiff::Timestamp,
    /// `None` while the run is going on (or its operator died).
    pub finished_at: Option<jiff::Timestamp>,
    pub outcome: Option<RunOutcome>,
    pub mode: Option<RunMode>,
    pub counts: Counts,
    pub message: String,
}

/// One processing run in the profile's run history.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessingRunRecord {
    /// Assigned by the store; ignored when recording.
    pub id: RunId,
    /// EventBased, Scheduled, Manual or TimeBased.
    pub trigger: Trigger,
    /// The ResyncRequest that asked for it, if one did.
    pub request: Option<String>,
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
    /// Succeeded, Failed or DryRun.
    pub outcome: RunOutcome,
    pub processed: u64,
    pub changed: u64,
    pub errors: u64,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_and_mode_names_round_trip() {
        for t in Trigger::ALL {
            assert_eq!(Trigger::parse(t.as_str()), Some(t));
            assert_eq!(t.to_string(), format!("{t:?}"));
        }
        for m in [RunMode::Delta, RunMode::Full] {
            assert_eq!(RunMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(Trigger::parse("scheduled"), None);
        assert_eq!(RunMode::parse("full"), None);
    }

    #[test]
    fn outcome_names_round_trip() {
        for o in RunOutcome::ALL {
            assert_eq!(RunOutcome::parse(o.as_str()), Some(o));
            assert_eq!(o.to_string(), format!("{o:?}"));
        }
        assert_eq!(RunOutcome::parse("succeeded"), None);
    }
}
