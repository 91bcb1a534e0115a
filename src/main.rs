use std::process::ExitCode;

use clap::Parser;
use idsync::cli::{Cli, Command, accounts, identities, manifests, operator, runs, store};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => manifests::print_crds(),
        Command::Validate { paths } => manifests::validate(&paths),
        Command::Dev { apply, port, kubeconfig, data_dir } => {
            operator::run_async(false, operator::dev(apply, port, kubeconfig, data_dir))
        }
        Command::Run {
            data_dir,
            max_concurrent_syncs,
            http_addr,
            leader_namespace,
            log_format,
            history_runs,
            history_days,
        } => {
            let json = log_format == "json";
            let retention = operator::retention(history_runs, history_days);
            operator::run_async(
                json,
                operator::run(data_dir, max_concurrent_syncs, http_addr, leader_namespace, retention),
            )
        }
        Command::Identities { command } => identities::run(command),
        Command::Runs { command } => runs::run(command),
        Command::Accounts { command } => accounts::run(command),
        Command::Store { command } => store::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
