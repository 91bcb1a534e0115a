use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use idsync::manifest::{self, Checker};

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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => print_crds(),
        Command::Validate { paths } => validate(&paths),
        Command::Dev { apply, port, kubeconfig } => run_async(dev(apply, port, kubeconfig)),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    init_tracing();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(future)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn dev(apply: Vec<PathBuf>, port: u16, kubeconfig: PathBuf) -> anyhow::Result<ExitCode> {
    let docs = idsync::dev::load_folders(&apply)?;
    let config = idsync::devcluster::Config { port, kubeconfig: Some(kubeconfig.clone()), ..Default::default() };
    let mut cluster = idsync::devcluster::DevCluster::start(config).await?;
    tracing::info!(url = %cluster.url(), kubeconfig = %kubeconfig.display(), "devcluster serving");
    let client = cluster.client()?;
    idsync::dev::install_crds(&client).await?;
    let applied = idsync::dev::apply_documents(&client, &docs, "default").await?;
    tracing::info!(applied, "manifests applied");
    print!("{}", idsync::dev::next_steps(&kubeconfig));
    tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
    tracing::info!("shutting down");
    cluster.stop();
    Ok(ExitCode::SUCCESS)
}

fn print_crds() -> anyhow::Result<ExitCode> {
    let yaml = idsync::api::crdgen::all_yaml().context("cannot render the CRDs")?;
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
