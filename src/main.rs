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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => print_crds(),
        Command::Validate { paths } => validate(&paths),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
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
