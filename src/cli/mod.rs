//! The `idsync` command line: its arguments (parsed in `main.rs`) and the
//! bodies of its subcommands.
//!
//! - [`operator`]: `idsync run` (against a cluster) and `idsync dev` (on an
//!   in-process devcluster).
//! - [`manifests`]: `idsync crds` and `idsync validate`.
//! - [`identities`], [`runs`], [`accounts`]: `idsync identities`, `idsync
//!   runs` and `idsync accounts`, read from the store's file.
//! - [`output`]: the shapes they print (tables, CSV, JSON, YAML).

pub mod accounts;
pub mod drift;
pub mod identities;
pub mod manifests;
pub mod operator;
pub mod output;
pub mod plugin;
pub mod runs;
pub mod store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "File exists (os error 17)");
        let wrapped = crate::store::backup::BackupError::Io { what: "cannot create", path: "/x".into(), source: io };
        let error = anyhow::Error::new(wrapped).context("cannot open the store /x/idsync.db");
        assert_eq!(
            error_text(&error),
            "cannot open the store /x/idsync.db: cannot create /x: File exists (os error 17)"
        );
        let plain = anyhow::anyhow!("no store at /nope.db").context("cannot read");
        assert_eq!(error_text(&plain), "cannot read: no store at /nope.db");
    }
}

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use output::{ItemFormat, ListFormat};

/// An error and its causes on one line, each said once: many of the
/// library's errors already end with their cause's words (`cannot create
/// /x: File exists`), which a plain `{:#}` would repeat.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if said.is_empty() || text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// The name kubectl gives a plugin's command: the binary installed or
/// linked as `kubectl-idsync` runs as `kubectl idsync`.
pub const PLUGIN_BINARY: &str = "kubectl-idsync";

/// How the binary was called: `kubectl idsync` when its file name is the
/// plugin's, else `idsync`.
pub fn bin_name(argv0: Option<&std::ffi::OsStr>) -> &'static str {
    let called = argv0.and_then(|a| std::path::Path::new(a).file_stem()).and_then(|n| n.to_str());
    if called == Some(PLUGIN_BINARY) { "kubectl idsync" } else { "idsync" }
}

/// idsync: keeps identity and account data in sync with connected systems.
#[derive(Parser)]
#[command(name = "idsync", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Where /metrics, /healthz and /readyz are served; port 0 picks a
        /// free one (printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        http_addr: std::net::SocketAddr,
    },
    /// Run the operator against the cluster of the current kubeconfig (or
    /// in-cluster configuration).
    Run {
        /// Where the embedded SQLite store lives (unless --store names
        /// PostgreSQL).
        #[arg(long, env = "IDSYNC_DATA_DIR", default_value = "/var/lib/idsync", value_name = "DIR")]
        data_dir: PathBuf,
        /// Keep the store in PostgreSQL: a postgres:// URL, its password
        /// best in IDSYNC_STORE_PASSWORD and the server's CA in
        /// IDSYNC_STORE_CA_FILE. Replicas sharing it run the syncs together
        /// (docs/replicas.md). Without it, the SQLite file in --data-dir.
        #[arg(long, env = "IDSYNC_STORE", value_name = "URL", hide_env_values = true)]
        store: Option<String>,
        /// With --store: how long a replica's Leases (its membership, its
        /// connections' guards) last without renewal, which is how soon the
        /// other replicas take over the work of one that died. Shorter
        /// means a faster takeover and more Lease writes (each is renewed
        /// three times per period).
        #[arg(long, env = "IDSYNC_LEASE_SECONDS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(3..=3600))]
        lease_seconds: u64,
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
        /// Sync and processing runs kept per Connection and per profile in
        /// the run history (with what each changed); older ones are pruned.
        #[arg(long, env = "IDSYNC_HISTORY_RUNS", default_value_t = 500,
              value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        history_runs: u64,
        /// Days a finished run stays in the run history.
        #[arg(long, env = "IDSYNC_HISTORY_DAYS", default_value_t = 90,
              value_parser = clap::value_parser!(u64).range(1..=3650))]
        history_days: u64,
    },
    /// Show an IdentityProfile's identities, correlation records and
    /// processing history, read from the store's file (no cluster needed). In a cluster:
    /// `kubectl exec deploy/idsync -- idsync identities list --profile NAME`.
    Identities {
        #[command(subcommand)]
        command: IdentitiesCommand,
    },
    /// Show the history of a Connection's syncs (or an IdentityProfile's
    /// processing runs), and one sync with what it changed, account by
    /// account and field by field; read from the store's file.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Show an IdentityProfile's access drift: offboarded people with
    /// enabled accounts, orphan accounts, missing expected accounts; read
    /// from the store's file.
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
    /// Show a Connection's synced accounts, read from the store's file.
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Create a ResyncRequest naming you as the requester, and with --wait
    /// follow it to the end (as `kubectl idsync resync …`).
    Resync {
        #[command(subcommand)]
        command: plugin::ResyncCommand,
        #[command(flatten)]
        kube: plugin::KubeArgs,
    },
    /// What needs attention in a namespace: Connections and profiles that
    /// are not Ready, running requests, the counts.
    Status {
        #[command(flatten)]
        kube: plugin::KubeArgs,
        /// The summary as json or yaml instead of text.
        #[arg(short = 'o', long, value_parser = ["json", "yaml"])]
        output: Option<String>,
    },
    /// Print idsync's version.
    Version,
    /// Print documentation generated from idsync itself.
    Docs {
        #[command(subcommand)]
        command: DocsCommand,
    },
    /// Print a shell completion script (`source <(idsync completion bash)`;
    /// for the kubectl plugin, `kubectl-idsync completion bash`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Back up the store (online, while idsync runs) or restore a backup
    /// (while it does not).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
pub enum DocsCommand {
    /// The API reference of the three kinds in Markdown, from the CRDs
    /// (docs/reference/api.md).
    Api,
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Copy the store to a file, consistent as of one commit, while idsync
    /// runs. In a cluster: `kubectl exec deploy/idsync -- idsync store
    /// backup --to - > idsync-backup.db`.
    Backup {
        /// The file to write (replaced if it exists); `-` writes the copy
        /// to standard output.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// The store's database file; default: idsync run's
        /// (`$IDSYNC_DATA_DIR/idsync.db`, /var/lib/idsync/idsync.db).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
    },
    /// Replace the store with a backup, after checking it. idsync must not
    /// be running on that store; the replaced store is kept as
    /// `idsync.db.before-restore`.
    Restore {
        /// The backup to restore; `-` reads it from standard input
        /// (`kubectl exec -i … -- idsync store restore --from - < FILE`).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The store's database file; default as for backup.
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// List runs newest first: a Connection's syncs (trigger, mode, result,
    /// counts, when, how long) or, with --profile, a profile's processing.
    List {
        /// The Connection whose syncs to list.
        #[arg(long, conflicts_with = "profile", required_unless_present = "profile")]
        connection: Option<String>,
        /// The IdentityProfile whose processing runs to list.
        #[arg(long)]
        profile: Option<String>,
        /// The namespace of the Connection or profile.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The store's database file [default: $IDSYNC_DATA_DIR/idsync.db].
        #[arg(long, value_name = "PATH")]
        store: Option<PathBuf>,
        /// How many runs, at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// table: kubectl-like; json: a SyncRunList (ProcessingRunList); csv: RFC 4180.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
    /// Show one sync run (its number from `runs list`) and every account it
    /// created, updated (each field, before → after) or deleted; for a dry
    /// run or a sync the safeguard held back, what it would have changed.
    Get {
        run: i64,
        /// The store's database file [default: $IDSYNC_DATA_DIR/idsync.db].
        #[arg(long, value_name = "PATH")]
        store: Option<PathBuf>,
        /// text: like kubectl describe; json: an AccountChangeList with the
        /// run; csv: one record per changed field.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = RunOutput::Text)]
        output: RunOutput,
    },
}

/// Output formats of `runs get`.
#[derive(Clone, Copy, ValueEnum)]
pub enum RunOutput {
    Text,
    Json,
    Csv,
}

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// List the Connection's accounts, ordered by id.
    List {
        #[command(flatten)]
        target: ConnectionArgs,
        /// table: kubectl-like; json: an AccountList; csv: RFC 4180.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
    /// Show one account whole, as the store keeps it.
    Get {
        /// The account's id at its source.
        id: String,
        #[command(flatten)]
        target: ConnectionArgs,
        /// yaml or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ItemOutput::Yaml)]
        output: ItemOutput,
    },
}

#[derive(Subcommand)]
pub enum DriftCommand {
    /// List the profile's open drift cases with their connection, account
    /// and age (since the first processing run that saw each).
    List {
        #[command(flatten)]
        target: ProfileArgs,
        /// Only cases of this kind.
        #[arg(long, value_enum)]
        kind: Option<DriftKindArg>,
        /// table: kubectl-like; json: a DriftCaseList; csv: RFC 4180.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
}

/// A kind of drift case, as `--kind` takes it.
#[derive(Clone, Copy, ValueEnum)]
pub enum DriftKindArg {
    OffboardedWithAccess,
    OrphanAccount,
    MissingExpectedAccount,
}

impl From<DriftKindArg> for crate::store::drift::DriftKind {
    fn from(kind: DriftKindArg) -> Self {
        use crate::store::drift::DriftKind;
        match kind {
            DriftKindArg::OffboardedWithAccess => DriftKind::OffboardedWithAccess,
            DriftKindArg::OrphanAccount => DriftKind::OrphanAccount,
            DriftKindArg::MissingExpectedAccount => DriftKind::MissingExpectedAccount,
        }
    }
}

/// Which Connection, in which store.
#[derive(Args)]
pub struct ConnectionArgs {
    /// The Connection's name.
    #[arg(long)]
    pub connection: String,
    /// The Connection's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The store's database file [default: $IDSYNC_DATA_DIR/idsync.db, else
    /// /var/lib/idsync/idsync.db, where `idsync run` keeps it].
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum IdentitiesCommand {
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
pub struct ProfileArgs {
    /// The IdentityProfile's name.
    #[arg(long)]
    pub profile: String,
    /// The IdentityProfile's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The store's database file [default: $IDSYNC_DATA_DIR/idsync.db, else
    /// /var/lib/idsync/idsync.db, where `idsync run` keeps it].
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ListOutput {
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
pub enum ItemOutput {
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
