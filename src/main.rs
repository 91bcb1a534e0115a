use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use idsync::identity::report::{self, ItemFormat, ListFormat, ReportError};
use idsync::manifest::{self, Checker};
use idsync::store::{ProfileRef, SqliteStore};

/// idsync: keeps identity and account data in sync with connected systems.
#[derive(Parser)]
#[command(name = "idsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print idsync's CustomResourceDefinitions as YAML
    /// (`idsync crds | kubectl apply -f -`).
    Crds,
    /// Check manifests offline against idsync's CRDs (schema and CEL
    /// rules), as a cluster would on `kubectl apply`. Takes files or folders.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run idsync on an in-process Kubernetes API server (no cluster
    /// needed): installs the CRDs, writes a kubeconfig, applies manifests,
    /// and runs until Ctrl-C.
    Dev {
        /// Apply every .yaml file under this folder (repeatable).
        #[arg(long = "apply", value_name = "DIR")]
        apply: Vec<PathBuf>,
        /// Port on 127.0.0.1; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Where to write the kubeconfig.
        #[arg(long, default_value = ".idsync/kubeconfig")]
        kubeconfig: PathBuf,
        /// Where the store lives; a fresh temporary folder when unset.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Run the operator against the cluster of the current kubeconfig (or
    /// in-cluster configuration).
    Run {
        /// Where the store (SQLite) lives.
        #[arg(long, env = "IDSYNC_DATA_DIR", default_value = "/var/lib/idsync", value_name = "DIR")]
        data_dir: PathBuf,
        /// Syncs running at once, over all connections.
        #[arg(long, env = "IDSYNC_MAX_CONCURRENT_SYNCS", default_value_t = 4)]
        max_concurrent_syncs: usize,
        /// Where /metrics, /healthz and /readyz are served.
        #[arg(long, env = "IDSYNC_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: std::net::SocketAddr,
        /// The namespace of the leader-election Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        leader_namespace: String,
        /// Log format: text or json.
        #[arg(long, env = "IDSYNC_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Show an IdentityProfile's identities, correlation records and
    /// processing history, read from the store's file (no cluster needed). In a cluster:
    /// `kubectl exec deploy/idsync -- idsync identities list --profile NAME`.
    Identities {
        #[command(subcommand)]
        command: IdentitiesCommand,
    },
}

#[derive(Subcommand)]
enum IdentitiesCommand {
    /// List the profile's identities, ordered by id.
    List {
        #[command(flatten)]
        target: ProfileArgs,
        /// Only identities in this lifecycle state.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// table: one line each, kubectl-like; json: an IdentityList of the
        /// whole identities; csv: RFC 4180, one record each.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
    /// Show one identity whole: attributes, lifecycle state, manager,
    /// accounts, errors, created/modified and next processing.
    Get {
        /// The identity's id (its authoritative account's id).
        id: String,
        #[command(flatten)]
        target: ProfileArgs,
        /// yaml or json: the identity as the store keeps it (the same object
        /// as an item of `list -o json`).
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ItemOutput::Yaml)]
        output: ItemOutput,
    },
    /// List the accounts correlation could not attach to an identity:
    /// Uncorrelated ones (no rule matched) and Ambiguous ones (with the
    /// identities that all matched).
    Uncorrelated {
        #[command(flatten)]
        target: ProfileArgs,
        /// List every correlation record, Correlated ones too.
        #[arg(long)]
        all_states: bool,
        /// table: kubectl-like; json: a CorrelationRecordList; csv: RFC 4180.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
    /// Show the profile's processing history, newest first: trigger,
    /// result, counts, when and how long (the audit trail of every run,
    /// dry runs and failures included).
    Runs {
        #[command(flatten)]
        target: ProfileArgs,
        /// How many runs, at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// table: kubectl-like; json: a ProcessingRunList; csv: RFC 4180.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
}

/// Which profile, in which store.
#[derive(Args)]
struct ProfileArgs {
    /// The IdentityProfile's name.
    #[arg(long)]
    profile: String,
    /// The IdentityProfile's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The store's database file [default: $IDSYNC_DATA_DIR/idsync.db, else
    /// /var/lib/idsync/idsync.db, where `idsync run` keeps it].
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ListOutput {
    Table,
    Json,
    Csv,
}

impl From<ListOutput> for ListFormat {
    fn from(output: ListOutput) -> Self {
        match output {
            ListOutput::Table => ListFormat::Table,
            ListOutput::Json => ListFormat::Json,
            ListOutput::Csv => ListFormat::Csv,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ItemOutput {
    Yaml,
    Json,
}

impl From<ItemOutput> for ItemFormat {
    fn from(output: ItemOutput) -> Self {
        match output {
            ItemOutput::Yaml => ItemFormat::Yaml,
            ItemOutput::Json => ItemFormat::Json,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => print_crds(),
        Command::Validate { paths } => validate(&paths),
        Command::Dev { apply, port, kubeconfig, data_dir } => run_async(false, dev(apply, port, kubeconfig, data_dir)),
        Command::Run { data_dir, max_concurrent_syncs, http_addr, leader_namespace, log_format } => {
            let json = log_format == "json";
            run_async(json, run(data_dir, max_concurrent_syncs, http_addr, leader_namespace))
        }
        Command::Identities { command } => identities(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(
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

/// Opens the store and starts the controllers; returns when `shutdown` fires.
async fn operate(
    client: kube::Client,
    data_dir: &std::path::Path,
    config: idsync::controller::Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let path = data_dir.join("idsync.db");
    let store =
        idsync::store::SqliteStore::open(&path).with_context(|| format!("cannot open the store {}", path.display()))?;
    let store: std::sync::Arc<dyn idsync::store::Store> = std::sync::Arc::new(store);
    let ctx =
        idsync::controller::Context::new(client, store, std::sync::Arc::new(idsync::controller::SystemClock), config);
    tracing::info!(identity = %ctx.config.identity, store = %path.display(), "operator running");
    idsync::controller::run(ctx, shutdown).await;
    Ok(())
}

async fn run(
    data_dir: PathBuf,
    max_concurrent_syncs: usize,
    http_addr: std::net::SocketAddr,
    leader_namespace: String,
) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    idsync::tls::install_crypto_provider();
    let client = kube::Client::try_default().await.context("cannot reach the Kubernetes API")?;
    let config = idsync::controller::Config { max_concurrent_syncs, ..Default::default() };
    let path = data_dir.join("idsync.db");
    let store =
        idsync::store::SqliteStore::open(&path).with_context(|| format!("cannot open the store {}", path.display()))?;
    let store: Arc<dyn idsync::store::Store> = Arc::new(store);
    let ctx =
        idsync::controller::Context::new(client.clone(), store, Arc::new(idsync::controller::SystemClock), config);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // Ready once the store is open and the API answers; a standby is ready too.
    let ready = Arc::new(AtomicBool::new(true));
    idsync::health::serve(http_addr, ctx.metrics.clone(), ready.clone(), stopped()).await?;
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let election = idsync::leader::LeaderConfig::new(leader_namespace, ctx.config.identity.clone());
    tracing::info!(identity = %ctx.config.identity, store = %path.display(), "waiting for leadership");
    let lead = |token: tokio_util::sync::CancellationToken| {
        let ctx = ctx.clone();
        async move {
            tracing::info!(identity = %ctx.config.identity, "leading: controllers running");
            ctx.metrics.set_leader(true);
            idsync::controller::run(ctx.clone(), token.cancelled_owned()).await;
            ctx.metrics.set_leader(false);
            tracing::info!("controllers stopped");
        }
    };
    idsync::leader::run(client, election, lead, stopped()).await?;
    ready.store(false, Ordering::SeqCst);
    Ok(ExitCode::SUCCESS)
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

async fn dev(
    apply: Vec<PathBuf>,
    port: u16,
    kubeconfig: PathBuf,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    idsync::tls::install_crypto_provider();
    let docs = idsync::dev::load_folders(&apply)?;
    let config = idsync_devcluster::Config { port, kubeconfig: Some(kubeconfig.clone()), ..Default::default() };
    let mut cluster = idsync_devcluster::DevCluster::start(config).await?;
    tracing::info!(url = %cluster.url(), kubeconfig = %kubeconfig.display(), "devcluster serving");
    let client = cluster.client()?;
    idsync::dev::install_crds(&client).await?;
    let temporary = tempfile_dir()?;
    let data_dir = data_dir.unwrap_or_else(|| temporary.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn({
        let client = client.clone();
        let data_dir = data_dir.clone();
        async move {
            operate(client, &data_dir, idsync::controller::Config::default(), async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let applied = idsync::dev::apply_documents(&client, &docs, "default").await?;
    tracing::info!(applied, "manifests applied");
    print!("{}", idsync::dev::next_steps(&kubeconfig, &docs, &data_dir.join("idsync.db")));
    shutdown_signal().await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(15), operator).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => tracing::warn!(error = %e, "the operator task failed"),
        Err(_) => tracing::warn!("the operator did not stop within 15 s"),
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

/// `idsync run`'s default data folder (its `--data-dir`).
const DEFAULT_DATA_DIR: &str = "/var/lib/idsync";

/// `idsync identities ...`: reads the store's file directly and blocking;
/// no runtime, no cluster.
fn identities(command: IdentitiesCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (store_path, result) = match &command {
        IdentitiesCommand::List { target, state, output } => {
            let (store, path, profile) = open_store(target)?;
            let format = ListFormat::from(*output);
            let listed =
                report::list_report(&store, &profile, state.as_deref(), format, jiff::Timestamp::now(), &mut out);
            let result = listed.map(|count| {
                if count == 0 && format == ListFormat::Table {
                    // As kubectl's "No resources found": on stderr, so that
                    // the output stays empty for whatever reads it.
                    match state {
                        Some(state) => {
                            eprintln!("No identities in lifecycle state {state} found in profile {profile}.")
                        }
                        None => eprintln!("No identities found in profile {profile}."),
                    }
                }
            });
            (path, result)
        }
        IdentitiesCommand::Get { id, target, output } => {
            let (store, path, profile) = open_store(target)?;
            (path, report::get_report(&store, &profile, id, (*output).into(), &mut out))
        }
        IdentitiesCommand::Uncorrelated { target, all_states, output } => {
            let (store, path, profile) = open_store(target)?;
            let format = ListFormat::from(*output);
            let listed = report::uncorrelated_report(&store, &profile, *all_states, format, &mut out);
            let result = listed.map(|count| {
                if count == 0 && format == ListFormat::Table {
                    if *all_states {
                        eprintln!("No correlation records found in profile {profile}.");
                    } else {
                        eprintln!("No uncorrelated or ambiguous accounts found in profile {profile}.");
                    }
                }
            });
            (path, result)
        }
        IdentitiesCommand::Runs { target, limit, output } => {
            let (store, path, profile) = open_store(target)?;
            let format = ListFormat::from(*output);
            let listed = report::runs_report(&store, &profile, *limit, format, jiff::Timestamp::now(), &mut out);
            let result = listed.map(|count| {
                if count == 0 && format == ListFormat::Table {
                    eprintln!("No processing runs found in profile {profile}.");
                }
            });
            (path, result)
        }
    };
    // Flushed here rather than on drop, where a failed write goes unseen.
    let result = result.and_then(|()| std::io::Write::flush(&mut out).map_err(ReportError::from));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The reader went away (`| head`): it has what it wanted.
        Err(error) if error.is_broken_pipe() => Ok(ExitCode::SUCCESS),
        Err(error @ ReportError::Store(_)) => {
            Err(anyhow::Error::new(error).context(format!("cannot read the store {}", store_path.display())))
        }
        Err(error) => Err(error.into()),
    }
}

/// Opens the store named by `--store` (or the default) and says which
/// profile to read.
fn open_store(args: &ProfileArgs) -> anyhow::Result<(SqliteStore, PathBuf, ProfileRef)> {
    let path = args.store.clone().unwrap_or_else(default_store_path);
    // SqliteStore::open creates a missing database: a mistyped path or a pod
    // without the volume must fail, not read (and leave behind) an empty one.
    let exists = path.try_exists().with_context(|| format!("cannot look for the store {}", path.display()))?;
    if !exists {
        anyhow::bail!("no store at {}; pass --store (idsync dev prints its store path)", path.display());
    }
    if path.is_dir() {
        anyhow::bail!(
            "{} is a folder, not the store's database file; pass --store {}",
            path.display(),
            path.join("idsync.db").display()
        );
    }
    let store = SqliteStore::open(&path).with_context(|| format!("cannot open the store {}", path.display()))?;
    Ok((store, path, ProfileRef::new(&args.namespace, &args.profile)))
}

/// Where `idsync run` keeps its store: `<data dir>/idsync.db`, the data dir
/// from IDSYNC_DATA_DIR as for `run`, so that inside the operator's pod the
/// default is right.
fn default_store_path() -> PathBuf {
    std::env::var_os("IDSYNC_DATA_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
        .join("idsync.db")
}

fn print_crds() -> anyhow::Result<ExitCode> {
    let yaml = idsync_api::crdgen::all_yaml().context("cannot render the CRDs")?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let checker = Checker::new().context("idsync's own CRDs are unusable")?;
    let mut failures = 0;
    let mut checked = 0;
    for path in paths {
        let docs = if path.is_dir() { manifest::load_dir(path)? } else { manifest::load_file(path)? };
        for doc in docs.iter().filter(|d| Checker::is_idsync_kind(d)) {
            checked += 1;
            match checker.check(doc) {
                Ok(_) => println!("ok      {} {}/{}", doc.source, doc.kind(), doc.name()),
                Err(error) => {
                    failures += 1;
                    println!("invalid {error}");
                }
            }
        }
    }
    println!("{checked} idsync objects checked, {failures} invalid");
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
