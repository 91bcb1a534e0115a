use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use idsync::cli::{Cli, Command, accounts, drift, identities, manifests, operator, plugin, runs, store};

/// mimalloc rather than glibc's malloc: in `cargo bench`, a third of a
/// sync's and of identity processing's CPU went to glibc's malloc/free;
/// with mimalloc a CSV resync of 100,000 rows took 37% less time, an LDAP
/// one 54% less, a processing run over 100,000 identities 46% less.
/// `identity::memory::release_freed` gives its free memory back after a run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let bin_name = idsync::cli::bin_name(std::env::args_os().next().as_deref());
    // `kubectl idsync identities|runs|accounts …` reads the operator's store
    // in its pod.
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    if bin_name != "idsync"
        && args.first().is_some_and(|a| plugin::STORE_COMMANDS.contains(&a.as_str()))
        && !args.iter().any(|a| a == "--help" || a == "-h")
    {
        return match plugin::exec_in_operator(&args) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {}", idsync::cli::error_text(&error));
                ExitCode::FAILURE
            }
        };
    }
    let matches = Cli::command().bin_name(bin_name).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match cli.command {
        Command::Crds => manifests::print_crds(),
        Command::Validate { paths } => manifests::validate(&paths),
        Command::Dev { apply, port, kubeconfig, data_dir, http_addr } => {
            operator::run_async(false, operator::dev(apply, port, kubeconfig, data_dir, http_addr))
        }
        Command::Run {
            data_dir,
            store,
            lease_seconds,
            max_concurrent_syncs,
            http_addr,
            leader_namespace,
            log_format,
            history_runs,
            history_days,
        } => {
            let json = log_format == "json";
            let retention = operator::retention(history_runs, history_days);
            match store.filter(|s| !s.is_empty()) {
                Some(store) => operator::run_async(
                    json,
                    operator::run_on_postgres(
                        store,
                        max_concurrent_syncs,
                        std::time::Duration::from_secs(lease_seconds),
                        http_addr,
                        leader_namespace,
                        retention,
                    ),
                ),
                None => operator::run_async(
                    json,
                    operator::run(data_dir, max_concurrent_syncs, http_addr, leader_namespace, retention),
                ),
            }
        }
        Command::Identities { command } => identities::run(command),
        Command::Runs { command } => runs::run(command),
        Command::Accounts { command } => accounts::run(command),
        Command::Drift { command } => drift::run(command),
        Command::Store { command } => store::run(command),
        Command::Resync { command, kube } => operator::run_async(false, plugin::resync(command, kube)),
        Command::Status { kube, output } => operator::run_async(false, plugin::status(kube, output)),
        Command::Docs { command: idsync::cli::DocsCommand::Api } => manifests::print_api_reference(),
        Command::Version => {
            println!("{bin_name} {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion { shell } => {
            let name = if bin_name == "idsync" { "idsync" } else { idsync::cli::PLUGIN_BINARY };
            // Into a buffer: clap_complete panics on a write error, and a
            // closed pipe (`| head`) is not one worth a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), name, &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::Error::new(error).context("cannot write the completion script"))
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", idsync::cli::error_text(&error));
            ExitCode::FAILURE
        }
    }
}
