//! The operator's Prometheus metrics: one registry holding the sync,
//! identity processing, reconcile and leadership families, recorded by the controllers and
//! rendered as OpenMetrics text for `GET /metrics` (see `crate::health`).
//!
//! The per-controller reconcile families carry controller-runtime's names
//! (`controller_runtime_reconcile_total{controller,result}`,
//! `controller_runtime_reconcile_errors_total`,
//! `controller_runtime_reconcile_time_seconds`) and the process families
//! the standard `process_*` names, so existing operator dashboards apply.

mod process;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds, in seconds, of the sync duration buckets: a small CSV
/// import finishes in tens of milliseconds, a full directory pull with rate
/// limits can take half an hour, so the buckets span both on a roughly
/// logarithmic scale.
pub const SYNC_DURATION_BUCKETS: [f64; 15] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    connection: String,
    provider: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    connection: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessingLabels {
    profile: String,
    trigger: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabels {
    profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationFailureLabels {
    provider: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    profile: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    connection: String,
}

/// controller-runtime's reconcile-time buckets, shortened: most reconciles
/// take milliseconds, one that waits on the store up to seconds.
const RECONCILE_TIME_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0];

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_TIME_BUCKETS)
}

fn sync_histogram() -> Histogram {
    Histogram::new(SYNC_DURATION_BUCKETS)
}

/// The registry and its metric families. The families are cheap handles onto
/// shared atomics, so recording needs only `&self` and the whole value is
/// `Send + Sync`, to be shared behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: Family<SyncLabels, Histogram, fn() -> Histogram>,
    accounts_changed: Family<ChangeLabels, Counter>,
    syncs_in_progress: Gauge,
    processing_duration: Family<ProcessingLabels, Histogram, fn() -> Histogram>,
    identities_changed: Family<ProfileLabels, Counter>,
    identities: Family<ProfileLabels, Gauge>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    leader: Gauge,
    replicas: Gauge,
    owned_connections: Gauge,
    notifications_sent: Family<NotificationLabels, Counter>,
    notifications_failed: Family<NotificationFailureLabels, Counter>,
    outbox_depth: Gauge,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_failures: Family<ControllerLabels, Counter>,
    reconcile_time: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    accounts: Family<ConnectionLabels, Gauge>,
    last_success: Family<ConnectionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    drift: Family<DriftLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sync_duration = Family::<SyncLabels, Histogram, fn() -> Histogram>::new_with_constructor(sync_histogram);
        let accounts_changed = Family::<ChangeLabels, Counter>::default();
        let syncs_in_progress = Gauge::default();
        // Processing 100,000 identities takes seconds, like a sync: the same
        // buckets serve.
        let processing_duration =
            Family::<ProcessingLabels, Histogram, fn() -> Histogram>::new_with_constructor(sync_histogram);
        let identities_changed = Family::<ProfileLabels, Counter>::default();
        let identities = Family::<ProfileLabels, Gauge>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let leader = Gauge::default();
        let replicas = Gauge::default();
        let owned_connections = Gauge::default();
        let notifications_sent = Family::<NotificationLabels, Counter>::default();
        let notifications_failed = Family::<NotificationFailureLabels, Counter>::default();
        let outbox_depth = Gauge::default();
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_failures = Family::<ControllerLabels, Counter>::default();
        let reconcile_time =
            Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(reconcile_histogram);
        let accounts = Family::<ConnectionLabels, Gauge>::default();
        let last_success = Family::<ConnectionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        let drift = Family::<DriftLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        // The registry appends the unit and, for counters, `_total` to these names.
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller, by result (success or error)",
            reconciles.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            reconcile_failures.clone(),
        );
        registry.register_with_unit(
            "controller_runtime_reconcile_time",
            "Length of time per reconciliation per controller",
            Unit::Seconds,
            reconcile_time.clone(),
        );
        registry.register("idsync_build_info", "1, labelled with the running idsync's version", build_info);
        registry.register(
            "idsync_accounts",
            "Accounts of a connection in the store (restored from the store when the operator starts leading)",
            accounts.clone(),
        );
        registry.register_with_unit(
            "idsync_last_successful_sync_timestamp",
            "When a connection's last successful sync finished, as Unix time (restored from the store's run \
             history when the operator starts leading)",
            Unit::Seconds,
            last_success.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector));
        registry.register_with_unit(
            "idsync_sync_duration",
            "How long a finished sync of a connection took",
            Unit::Seconds,
            sync_duration.clone(),
        );
        registry.register(
            "idsync_accounts_changed",
            "Accounts created, updated or deleted by syncs",
            accounts_changed.clone(),
        );
        registry.register("idsync_syncs_in_progress", "Syncs running now", syncs_in_progress.clone());
        registry.register_with_unit(
            "idsync_identity_processing_duration",
            "How long a finished identity processing run of a profile took",
            Unit::Seconds,
            processing_duration.clone(),
        );
        registry.register(
            "idsync_identities_changed",
            "Identities created, changed or removed by processing",
            identities_changed.clone(),
        );
        registry.register("idsync_identities", "Identities of a profile after its last processing", identities.clone());
        registry.register(
            "idsync_reconcile_errors",
            "Reconciles that ended in an error, by controller and error kind (a panic is kind panic; a sync \
             that panicked counts as controller sync)",
            reconcile_errors.clone(),
        );
        registry.register("idsync_leader", "1 when this instance holds the leader Lease", leader.clone());
        registry.register(
            "idsync_replicas",
            "Live operator replicas sharing the store, as this instance sees them (0 with one active replica)",
            replicas.clone(),
        );
        registry.register(
            "idsync_owned_connections",
            "Connections this replica owns: it runs their syncs (with one active replica: all it reconciled)",
            owned_connections.clone(),
        );
        registry.register(
            "idsync_notifications_sent",
            "Notifications delivered, by provider (namespace/name)",
            notifications_sent.clone(),
        );
        registry.register(
            "idsync_notifications_failed",
            "Notification delivery attempts that failed, by provider and reason (each is retried with backoff)",
            notifications_failed.clone(),
        );
        registry.register(
            "idsync_notification_outbox_depth",
            "Notifications waiting in the store's outbox to be sent",
            outbox_depth.clone(),
        );
        registry.register(
            "idsync_access_drift",
            "Open access drift cases of a profile by kind: OffboardedWithAccess (identities), OrphanAccount and \
             MissingExpectedAccount (accounts)",
            drift.clone(),
        );
        Metrics {
            drift,
            registry,
            sync_duration,
            accounts_changed,
            syncs_in_progress,
            processing_duration,
            identities_changed,
            identities,
            reconcile_errors,
            leader,
            replicas,
            owned_connections,
            notifications_sent,
            notifications_failed,
            outbox_depth,
            reconciles,
            reconcile_failures,
            reconcile_time,
            accounts,
            last_success,
        }
    }

    /// A reconcile of `controller` ended, in `elapsed`.
    pub fn reconcile_finished(&self, controller: &'static str, succeeded: bool, elapsed: Duration) {
        let result = if succeeded { "success" } else { "error" };
        self.reconciles.get_or_create(&ReconcileLabels { controller, result }).inc();
        if !succeeded {
            self.reconcile_failures.get_or_create(&ControllerLabels { controller }).inc();
        }
        self.reconcile_time.get_or_create(&ControllerLabels { controller }).observe(elapsed.as_secs_f64());
    }

    /// `connection` (`namespace/name`) holds `count` accounts in the store.
    pub fn set_accounts(&self, connection: &str, count: u64) {
        let labels = ConnectionLabels { connection: connection.to_string() };
        self.accounts.get_or_create(&labels).set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// `connection`'s last successful sync finished at `at`.
    pub fn set_last_success(&self, connection: &str, at: jiff::Timestamp) {
        let labels = ConnectionLabels { connection: connection.to_string() };
        self.last_success.get_or_create(&labels).set(at.as_millisecond() as f64 / 1000.0);
    }

    /// The identity count of `profile`, as the store holds it.
    pub fn set_identities(&self, profile: &str, count: u64) {
        let labels = ProfileLabels { profile: profile.to_string() };
        self.identities.get_or_create(&labels).set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// `profile` (`namespace/name`) has `count` open drift cases of `kind`.
    pub fn set_drift(&self, profile: &str, kind: &'static str, count: u64) {
        let labels = DriftLabels { profile: profile.to_string(), kind };
        self.drift.get_or_create(&labels).set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A notification was delivered through `provider` (`namespace/name`).
    pub fn notification_sent(&self, provider: &str) {
        self.notifications_sent.get_or_create(&NotificationLabels { provider: provider.to_string() }).inc();
    }

    /// A delivery attempt through `provider` failed for `reason`.
    pub fn notification_failed(&self, provider: &str, reason: &str) {
        let labels = NotificationFailureLabels { provider: provider.to_string(), reason: reason.to_string() };
        self.notifications_failed.get_or_create(&labels).inc();
    }

    /// Notifications waiting in the outbox.
    pub fn set_outbox_depth(&self, depth: u64) {
        self.outbox_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Records a finished sync of `connection` (`namespace/name`).
    #[allow(clippy::too_many_arguments)]
    pub fn sync_finished(
        &self,
        connection: &str,
        provider: &str,
        result: &str,
        duration: Duration,
        created: u64,
        updated: u64,
        deleted: u64,
    ) {
        let labels = SyncLabels {
            connection: connection.to_string(),
            provider: provider.to_string(),
            result: result.to_string(),
        };
        self.sync_duration.get_or_create(&labels).observe(duration.as_secs_f64());
        for (kind, count) in [("created", created), ("updated", updated), ("deleted", deleted)] {
            if count > 0 {
                let labels = ChangeLabels { connection: connection.to_string(), kind };
                self.accounts_changed.get_or_create(&labels).inc_by(count);
            }
        }
    }

    /// Records a finished processing run of `profile` (`namespace/name`);
    /// `identities` is the profile's count afterwards, when known.
    pub fn processing_finished(
        &self,
        profile: &str,
        trigger: &str,
        result: &str,
        duration: Duration,
        changed: u64,
        identities: Option<u64>,
    ) {
        let labels =
            ProcessingLabels { profile: profile.to_string(), trigger: trigger.to_string(), result: result.to_string() };
        self.processing_duration.get_or_create(&labels).observe(duration.as_secs_f64());
        let profile = ProfileLabels { profile: profile.to_string() };
        if changed > 0 {
            self.identities_changed.get_or_create(&profile).inc_by(changed);
        }
        if let Some(count) = identities {
            self.identities.get_or_create(&profile).set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn sync_started(&self) {
        self.syncs_in_progress.inc();
    }

    pub fn sync_ended(&self) {
        self.syncs_in_progress.dec();
    }

    pub fn reconcile_error(&self, controller: &str, error: &str) {
        let labels = ErrorLabels { controller: controller.to_string(), error: error.to_string() };
        self.reconcile_errors.get_or_create(&labels).inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_replicas(&self, live: usize) {
        self.replicas.set(i64::try_from(live).unwrap_or(i64::MAX));
    }

    pub fn set_owned_connections(&self, owned: usize) {
        self.owned_connections.set(i64::try_from(owned).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an error here could only come
        // from a label the encoder refuses, and a partial scrape is still
        // more useful than none.
        if let Err(error) = encode(&mut text, &self.registry) {
            tracing::warn!(%error, "could not encode the metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
    }

    #[test]
    fn fresh_metrics_render_the_gauges_and_eof() {
        let text = Metrics::new().render();
        let lines = lines(&text);
        for expected in [
            "# TYPE idsync_syncs_in_progress gauge",
            "idsync_syncs_in_progress 0",
            "# TYPE idsync_leader gauge",
            "idsync_leader 0",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in:\n{text}");
        }
        // Families without a series yet are left out entirely.
        assert!(!text.contains("idsync_sync_duration"), "{text}");
        assert_eq!(lines.last(), Some(&"# EOF"));
    }

    #[test]
    fn notifications_count_deliveries_failures_by_reason_and_the_outbox() {
        let metrics = Metrics::new();
        metrics.notification_sent("default/mail");
        metrics.notification_failed("default/hook", "Unreachable");
        metrics.notification_failed("default/hook", "Unreachable");
        metrics.set_outbox_depth(3);
        let text = metrics.render();
        for expected in [
            "idsync_notifications_sent_total{provider=\"default/mail\"} 1",
            "idsync_notifications_failed_total{provider=\"default/hook\",reason=\"Unreachable\"} 2",
            "idsync_notification_outbox_depth 3",
        ] {
            assert!(lines_contain(&text, expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn sync_finished_records_duration_and_changes() {
        let metrics = Metrics::new();
        metrics.sync_finished("default/hris", "csv", "success", Duration::from_millis(300), 3, 0, 2);
        metrics.sync_finished("default/hris", "csv", "success", Duration::from_secs(40), 1, 5, 0);
        metrics.sync_finished("team-a/okta", "okta", "failed", Duration::from_secs(2000), 0, 0, 0);
        let text = metrics.render();
        let lines = lines(&text);
        let hris = r#"connection="default/hris",provider="csv",result="success""#;
        for expected in [
            "# TYPE idsync_sync_duration_seconds histogram".to_string(),
            "# UNIT idsync_sync_duration_seconds seconds".to_string(),
            "# TYPE idsync_accounts_changed counter".to_string(),
            format!("idsync_sync_duration_seconds_sum{{{hris}}} 40.3"),
            format!("idsync_sync_duration_seconds_count{{{hris}}} 2"),
            format!(r#"idsync_sync_duration_seconds_bucket{{le="0.25",{hris}}} 0"#),
            format!(r#"idsync_sync_duration_seconds_bucket{{le="0.5",{hris}}} 1"#),
            format!(r#"idsync_sync_duration_seconds_bucket{{le="30.0",{hris}}} 1"#),
            format!(r#"idsync_sync_duration_seconds_bucket{{le="60.0",{hris}}} 2"#),
            format!(r#"idsync_sync_duration_seconds_bucket{{le="1800.0",{hris}}} 2"#),
            format!(r#"idsync_sync_duration_seconds_bucket{{le="+Inf",{hris}}} 2"#),
            r#"idsync_sync_duration_seconds_bucket{le="1800.0",connection="team-a/okta",provider="okta",result="failed"} 0"#.to_string(),
            r#"idsync_sync_duration_seconds_bucket{le="+Inf",connection="team-a/okta",provider="okta",result="failed"} 1"#.to_string(),
            r#"idsync_accounts_changed_total{connection="default/hris",kind="created"} 4"#.to_string(),
            r#"idsync_accounts_changed_total{connection="default/hris",kind="updated"} 5"#.to_string(),
            r#"idsync_accounts_changed_total{connection="default/hris",kind="deleted"} 2"#.to_string(),
        ] {
            assert!(lines.contains(&expected.as_str()), "missing {expected:?} in:\n{text}");
        }
        // A sync that changed nothing creates no change series.
        assert!(!text.contains(r#"idsync_accounts_changed_total{connection="team-a/okta""#), "{text}");
    }

    #[test]
    fn gauges_and_errors() {
        let metrics = Metrics::new();
        metrics.sync_started();
        metrics.sync_started();
        metrics.sync_ended();
        metrics.reconcile_error("connection", "kube");
        metrics.reconcile_error("connection", "kube");
        metrics.reconcile_error("resync", "store");
        metrics.set_leader(true);
        let text = metrics.render();
        let lines = lines(&text);
        for expected in [
            "# TYPE idsync_reconcile_errors counter",
            "idsync_syncs_in_progress 1",
            r#"idsync_reconcile_errors_total{controller="connection",error="kube"} 2"#,
            r#"idsync_reconcile_errors_total{controller="resync",error="store"} 1"#,
            "idsync_leader 1",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in:\n{text}");
        }
        metrics.set_leader(false);
        assert!(lines_contain(&metrics.render(), "idsync_leader 0"));
    }

    #[test]
    fn processing_records_duration_changes_and_the_identity_count() {
        let metrics = Metrics::new();
        metrics.processing_finished(
            "default/employees",
            "EventBased",
            "Succeeded",
            Duration::from_millis(700),
            3,
            Some(412),
        );
        metrics.processing_finished(
            "default/employees",
            "Scheduled",
            "Succeeded",
            Duration::from_secs(4),
            0,
            Some(411),
        );
        metrics.processing_finished("default/employees", "Manual", "DryRun", Duration::from_secs(1), 0, None);
        let text = metrics.render();
        let lines = lines(&text);
        for expected in [
            "# TYPE idsync_identity_processing_duration_seconds histogram",
            r#"idsync_identity_processing_duration_seconds_count{profile="default/employees",trigger="EventBased",result="Succeeded"} 1"#,
            r#"idsync_identity_processing_duration_seconds_bucket{le="5.0",profile="default/employees",trigger="Scheduled",result="Succeeded"} 1"#,
            r#"idsync_identities_changed_total{profile="default/employees"} 3"#,
            r#"idsync_identities{profile="default/employees"} 411"#,
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in:\n{text}");
        }
    }

    fn lines_contain(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }
}
