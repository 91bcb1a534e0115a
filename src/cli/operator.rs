//! `idsync run` and `idsync dev`: the operator against a cluster (leader
//! election, /metrics and health, SIGTERM), or on an in-process devcluster
//! with manifests applied.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

pub fn run_async(
    json_logs: bool,
    future: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    init_tracing(json_logs);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(future)
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

/// Opens the store at `data_dir/idsync.db`, saying which file failed, and
/// holds its lock: `idsync store restore` refuses to swap a store in use.
fn open_store(
    data_dir: &std::path::Path,
) -> anyhow::Result<(crate::store::SqliteStore, crate::store::backup::StoreLock)> {
    let path = data_dir.join("idsync.db");
    let lock = crate::store::backup::StoreLock::acquire(&path)
        .with_context(|| format!("cannot open the store {}", path.display()))?;
    let store =
        crate::store::SqliteStore::open(&path).with_context(|| format!("cannot open the store {}", path.display()))?;
    Ok((store, lock))
}

/// The run history's retention from `idsync run`'s flags (clap bounds them:
/// the hours cannot overflow).
pub fn retention(runs: u64, days: u64) -> crate::store::Retention {
    let hours = i64::try_from(days.saturating_mul(24)).unwrap_or(i64::MAX);
    crate::store::Retention { max_runs: runs, max_age: jiff::SignedDuration::from_hours(hours) }
}

pub async fn run(
    data_dir: PathBuf,
    max_concurrent_syncs: usize,
    http_addr: std::net::SocketAddr,
    leader_namespace: String,
    retention: crate::store::Retention,
) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    crate::tls::install_crypto_provider();
    let client = kube::Client::try_default().await.context("cannot reach the Kubernetes API")?;
    let config = crate::controller::Config { max_concurrent_syncs, ..Default::default() };
    let path = data_dir.join("idsync.db");
    // The data folder must be there and writable before anything waits for
    // leadership, so a bad volume fails the pod at once; the store itself
    // opens (and migrates) only once this instance leads: a standby never
    // touches the file its leader writes.
    if !data_dir.is_dir() {
        anyhow::bail!("the data folder {} does not exist", data_dir.display());
    }
    let metrics = Arc::new(crate::metrics::Metrics::new());

    // Ready only while leading, once the store is open and the first lists
    // went through (controller::run sets it): a standby, or an instance
    // whose store will not open, is alive (/healthz) but not ready.
    let ready = Arc::new(AtomicBool::new(false));
    let stop = serve_until_signal(http_addr, metrics.clone(), ready.clone()).await?;
    let stopped = move || signalled(stop.clone());

    let election = crate::leader::LeaderConfig::new(leader_namespace, config.identity.clone());
    tracing::info!(identity = %config.identity, store = %path.display(), "waiting for leadership");
    let failed: Arc<std::sync::Mutex<Option<anyhow::Error>>> = Arc::default();
    let lead = |token: tokio_util::sync::CancellationToken| {
        let (client, config, metrics, data_dir, failed, ready) =
            (client.clone(), config.clone(), metrics.clone(), data_dir.clone(), failed.clone(), ready.clone());
        async move {
            // The lock lives as long as this term of leadership.
            let (store, _lock) = match open_store(&data_dir) {
                Ok((store, lock)) => (store.with_retention(retention), lock),
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "cannot open the store; giving up leadership");
                    if let Ok(mut failed) = failed.lock() {
                        *failed = Some(error);
                    }
                    return;
                }
            };
            let store: Arc<dyn crate::store::Store> = Arc::new(store);
            let clock = Arc::new(crate::controller::SystemClock);
            let ctx = crate::controller::Context::with_metrics(client, store, clock, config, metrics, ready);
            tracing::info!(identity = %ctx.config.identity, "leading: controllers running");
            ctx.metrics.set_leader(true);
            crate::controller::run(ctx.clone(), token.cancelled_owned()).await;
            ctx.metrics.set_leader(false);
            tracing::info!("controllers stopped");
        }
    };
    crate::leader::run(client.clone(), election, lead, stopped()).await?;
    ready.store(false, Ordering::SeqCst);
    if let Some(error) = failed.lock().ok().and_then(|mut f| f.take()) {
        return Err(error);
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `idsync run --store postgres://…` keeps trying to reach its
/// database at start before it gives up (and Kubernetes restarts it).
const STORE_CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// `idsync run --store URL`: opens (and migrates) the PostgreSQL store,
/// waiting for a database that is still starting, and runs as one of the
/// replicas that share it.
pub async fn run_on_postgres(
    store: String,
    max_concurrent_syncs: usize,
    lease: std::time::Duration,
    http_addr: std::net::SocketAddr,
    namespace: String,
    retention: crate::store::Retention,
) -> anyhow::Result<ExitCode> {
    let options = match crate::store::StoreLocation::parse(&store) {
        crate::store::StoreLocation::Postgres(options) => super::output::postgres_options_from_env(options)?,
        crate::store::StoreLocation::File(_) => {
            anyhow::bail!("--store takes a postgres:// URL; the embedded SQLite store is kept in --data-dir")
        }
    };
    let named = options.describe();
    let started = std::time::Instant::now();
    let store = loop {
        let attempt = options.clone();
        let opened = tokio::task::spawn_blocking(move || crate::store::PgStore::connect(&attempt))
            .await
            .context("the store task failed")?;
        match opened {
            Ok(store) => break store,
            // A wrong password or URL will not fix itself; a database that
            // is starting (refused, timed out) may.
            Err(error @ (crate::store::StoreError::Config(_) | crate::store::StoreError::SchemaTooNew { .. })) => {
                return Err(anyhow::Error::new(error).context(format!("cannot open the store {named}")));
            }
            Err(crate::store::StoreError::Postgres(error)) if refused_for_good(&error) => {
                return Err(anyhow::anyhow!(
                    "cannot open the store {named}: {}",
                    crate::store::postgres::error_text(&error)
                ));
            }
            Err(error) if started.elapsed() >= STORE_CONNECT_PATIENCE => {
                return Err(anyhow::Error::new(error).context(format!("cannot open the store {named}")));
            }
            Err(error) => {
                tracing::warn!(store = %named, %error, "cannot open the store yet; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
    };
    tracing::info!(store = %named, "store open (PostgreSQL)");
    let store: std::sync::Arc<dyn crate::store::Store> = std::sync::Arc::new(store.with_retention(retention));
    // Every replica runs the controllers on what it owns; the member and
    // leader Leases are in `namespace` (the operator's own). A member Lease
    // lasts half a guard: a dead member is known (and its connections have
    // new owners) by the time its guards lapse.
    let config = crate::controller::Config {
        max_concurrent_syncs,
        guard_duration: lease,
        replicas: crate::controller::Replicas::Shared(crate::controller::SharedReplicas {
            namespace,
            member_lease_duration: (lease / 2).max(std::time::Duration::from_secs(3)),
        }),
        ..Default::default()
    };
    run_shared(store, config, http_addr).await
}

/// The server refused the login or the database for good (a wrong password,
/// an unknown role or database): waiting will not help.
fn refused_for_good(error: &::postgres::Error) -> bool {
    error.code().is_some_and(|c| {
        let code = c.code();
        // 28xxx: invalid authorization; 3D000: no such database.
        code.starts_with("28") || code == "3D000"
    })
}

/// `idsync run` with replicas that share `store` (already open: PostgreSQL)
/// and a `config` of shared replicas. No leader gates the controllers:
/// they run at once, on what this replica owns; the notification outbox
/// runs on the elected leader only. Ready (`/readyz`) once the first lists
/// went through. Runs until SIGTERM or Ctrl-C, then stops its syncs, gives
/// its guards back and leaves the replicas, so the others take its share at
/// once.
async fn run_shared(
    store: std::sync::Arc<dyn crate::store::Store>,
    config: crate::controller::Config,
    http_addr: std::net::SocketAddr,
) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    if !matches!(config.replicas, crate::controller::Replicas::Shared(_)) {
        anyhow::bail!("run_shared needs replicas that share the store (controller::Replicas::Shared)");
    }
    crate::tls::install_crypto_provider();
    let client = kube::Client::try_default().await.context("cannot reach the Kubernetes API")?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let stop = serve_until_signal(http_addr, metrics.clone(), ready.clone()).await?;
    let clock = Arc::new(crate::controller::SystemClock);
    let ctx = crate::controller::Context::with_metrics(client, store, clock, config, metrics, ready.clone());
    tracing::info!(identity = %ctx.config.identity, "controllers running on a shared store");
    crate::controller::run(ctx, signalled(stop)).await;
    ready.store(false, Ordering::SeqCst);
    tracing::info!("controllers stopped");
    Ok(ExitCode::SUCCESS)
}

/// Serves /metrics, /healthz and /readyz on `http_addr` until SIGTERM or
/// Ctrl-C; the receiver turns true when the signal has come.
async fn serve_until_signal(
    http_addr: std::net::SocketAddr,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    crate::health::serve(http_addr, metrics, ready, signalled(stop_rx.clone())).await?;
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    Ok(stop_rx)
}

/// Ends when the stop signal has come (see [`serve_until_signal`]).
async fn signalled(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Ctrl-C or SIGTERM (what Kubernetes sends a terminating Pod).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

pub async fn dev(
    apply: Vec<PathBuf>,
    port: u16,
    kubeconfig: PathBuf,
    data_dir: Option<PathBuf>,
    http_addr: std::net::SocketAddr,
) -> anyhow::Result<ExitCode> {
    crate::tls::install_crypto_provider();
    let docs = crate::dev::load_folders(&apply)?;
    let config = idsync_devcluster::Config { port, kubeconfig: Some(kubeconfig.clone()), ..Default::default() };
    let mut cluster = idsync_devcluster::DevCluster::start(config).await?;
    tracing::info!(url = %cluster.url(), kubeconfig = %kubeconfig.display(), "devcluster serving");
    let client = cluster.client()?;
    crate::dev::install_crds(&client).await?;
    // Access as the chart sets it up, and three demo users to try it with,
    // each a context of the kubeconfig.
    crate::dev::install_access(&client).await?;
    crate::dev::bind_demo_users(&client).await?;
    let tokens: Vec<(&str, String)> = crate::dev::DEMO_USERS
        .iter()
        .map(|(user, role)| (*user, cluster.add_user(user, &[&format!("idsync-{role}s")])))
        .collect();
    let contexts: Vec<(&str, &str)> = tokens.iter().map(|(user, token)| (*user, token.as_str())).collect();
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml_with_users(&contexts))
        .with_context(|| format!("cannot write the kubeconfig {}", kubeconfig.display()))?;
    let temporary = tempfile_dir()?;
    let data_dir = data_dir.unwrap_or_else(|| temporary.clone());
    // The store opens before anything says "running": an unusable
    // --data-dir stops `idsync dev` with the reason.
    let (store, _lock) = open_store(&data_dir)?;
    let store: std::sync::Arc<dyn crate::store::Store> = std::sync::Arc::new(store);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ctx = crate::controller::Context::with_metrics(
        client.clone(),
        store,
        std::sync::Arc::new(crate::controller::SystemClock),
        crate::controller::Config::default(),
        metrics.clone(),
        ready.clone(),
    );
    metrics.set_leader(true);
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = crate::health::serve(http_addr, metrics, ready, async {
        let _ = http_stop_rx.await;
    })
    .await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut operator = tokio::spawn(crate::controller::run(ctx, async {
        let _ = stop_rx.await;
    }));
    let applied = crate::dev::apply_documents(&client, &docs, "default").await?;
    tracing::info!(applied, "manifests applied");
    println!("Metrics and health: http://{served}/metrics, http://{served}/healthz, http://{served}/readyz");
    print!("{}", crate::dev::next_steps(&kubeconfig, &docs, &data_dir.join("idsync.db")));
    // The operator ends only when told to; if it ends on its own (it
    // panicked), `idsync dev` stops and says so instead of serving a
    // cluster nothing reconciles.
    tokio::select! {
        _ = shutdown_signal() => {}
        ended = &mut operator => {
            cluster.stop();
            let why = match ended {
                Err(e) if e.is_panic() => "it panicked".to_string(),
                Err(e) => e.to_string(),
                Ok(()) => "it stopped".to_string(),
            };
            anyhow::bail!("the operator inside idsync dev stopped: {why}");
        }
    }
    let _ = stop_tx.send(());
    let _ = http_stop_tx.send(());
    if tokio::time::timeout(std::time::Duration::from_secs(15), operator).await.is_err() {
        tracing::warn!("the operator did not stop within 15 s");
    }
    cluster.stop();
    let _ = std::fs::remove_dir_all(&temporary);
    Ok(ExitCode::SUCCESS)
}

/// A fresh folder for a throwaway store.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("idsync-dev-{}", uuid_like()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flags_defaults_are_the_stores() {
        assert_eq!(super::retention(500, 90), crate::store::Retention::default());
        assert_eq!(super::retention(1, 3650).max_age, jiff::SignedDuration::from_hours(3650 * 24));
    }
}
