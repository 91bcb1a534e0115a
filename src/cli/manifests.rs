//! `idsync crds` and `idsync validate`: idsync's CRDs, and the same checks
//! offline that a cluster makes on `kubectl apply`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::manifest::{self, Checker};

pub fn print_crds() -> anyhow::Result<ExitCode> {
    let yaml = idsync_api::crdgen::all_yaml().context("cannot render the CRDs")?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}

pub fn print_api_reference() -> anyhow::Result<ExitCode> {
    print!("{}", idsync_api::reference::markdown(&idsync_api::crdgen::all()));
    Ok(ExitCode::SUCCESS)
}

pub fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
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
