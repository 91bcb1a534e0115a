//! The operator running in its own tokio runtime beside a devcluster, so a
//! test can stop it cleanly or kill it mid-sync (dropping the runtime ends
//! every task it started, as kill -9 ends a process).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idsync::controller::{Clock, Config, Context};
use idsync::store::{SqliteStore, Store};
use jiff::{SignedDuration, Timestamp};

/// A clock a test moves forward.
#[derive(Default)]
pub struct TestClock {
    offset: Mutex<SignedDuration>,
}

impl TestClock {
    pub fn advance_to(&self, at: Timestamp) {
        if let Ok(mut offset) = self.offset.lock() {
            *offset = at.duration_since(Timestamp::now());
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp::now() + self.offset.lock().map(|o| *o).unwrap_or_default()
    }
}

pub struct Operator {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    pub identity: String,
    pub data_dir: PathBuf,
}

/// Settings that keep tests quick: short guards, frequent schedule checks.
pub fn test_config(identity: &str) -> Config {
    Config {
        identity: identity.to_string(),
        max_concurrent_syncs: 4,
        guard_duration: Duration::from_secs(3),
        max_requeue: Duration::from_millis(300),
        replicas: Default::default(),
    }
}

impl Operator {
    pub fn start(
        cluster: &idsync_devcluster::DevCluster,
        data_dir: &Path,
        clock: Arc<TestClock>,
        config: Config,
    ) -> Operator {
        Self::start_with_rules(cluster, data_dir, clock, config, super::rbac::chart_rules())
    }

    /// [`Operator::start`] with the client's permissions given.
    pub fn start_with_rules(
        cluster: &idsync_devcluster::DevCluster,
        data_dir: &Path,
        clock: Arc<TestClock>,
        config: Config,
        rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
    ) -> Operator {
        idsync::tls::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("operator")
            .build()
            .expect("operator runtime");
        let client = {
            let _guard = runtime.enter();
            // With exactly the permissions the chart grants: a call it does
            // not allow fails here as it would in a cluster.
            cluster.client_as(super::rbac::OPERATOR_USER, rules).expect("client")
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data_dir.join("idsync.db")).expect("store"));
        let identity = config.identity.clone();
        let ctx = Context::new(client, store, clock, config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            idsync::controller::run(ctx, async {
                let _ = stopped.await;
            })
            .await;
            let _ = done_tx.send(());
        });
        Operator {
            runtime: Some(runtime),
            stop: Some(stop),
            done: Some(done),
            identity,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Graceful shutdown.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), done).await;
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Ends the operator at once, mid-whatever, as kill -9 would.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// A second handle on the operator's store, for assertions.
    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.data_dir.join("idsync.db")).expect("store")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A devcluster with idsync's CRDs and one operator ("operator-a") on a
/// test clock, its store in a fresh folder: how the end-to-end tests begin.
pub struct Started {
    pub h: super::Harness,
    pub operator: Operator,
    pub clock: Arc<TestClock>,
    pub data: tempfile::TempDir,
}

pub async fn start_operator() -> Started {
    let h = super::Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let clock = Arc::new(TestClock::default());
    let data = tempfile::tempdir().expect("data dir");
    let operator = Operator::start(&h.cluster, data.path(), clock.clone(), test_config("operator-a"));
    Started { h, operator, clock, data }
}
