//! `idsync store backup` and `idsync store restore`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::StoreCommand;
use super::output::default_store_path;
use crate::store::backup;

/// The SQLite file to back up or restore: `--store`, else the default. A
/// PostgreSQL store (by `--store` or IDSYNC_STORE) is refused with what to
/// use instead: these commands copy SQLite files.
fn sqlite_file(store: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    let named = store
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .or_else(|| std::env::var("IDSYNC_STORE").ok().filter(|s| !s.is_empty()));
    if let Some(location) = named.map(|s| crate::store::StoreLocation::parse(&s)).filter(|l| l.is_shared()) {
        anyhow::bail!(
            "the store {location} is PostgreSQL: back it up with the database's own tools \
             (pg_dump, your operator's backups); `idsync store` copies the embedded SQLite store"
        );
    }
    Ok(store.unwrap_or_else(default_store_path))
}

pub fn run(command: StoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Backup { to, store } => {
            let store = sqlite_file(store)?;
            if to == Path::new("-") {
                return backup_to_stdout(&store);
            }
            let copied = backup::backup(&store, &to)?;
            eprintln!(
                "backed up {} to {} ({} bytes, schema version {})",
                store.display(),
                to.display(),
                copied.bytes,
                copied.schema_version
            );
        }
        StoreCommand::Restore { from, store } => {
            let store = sqlite_file(store)?;
            let copied =
                if from == Path::new("-") { restore_from_stdin(&store)? } else { backup::restore(&from, &store)? };
            eprintln!(
                "restored {} from {} ({} bytes, schema version {}); the replaced store is {}.before-restore",
                store.display(),
                from.display(),
                copied.bytes,
                copied.schema_version,
                store.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The backup arrives on standard input (`kubectl exec -i … -- idsync store
/// restore --from - < idsync-backup.db`): it is written beside the store
/// first, checked and restored from there, then removed.
fn restore_from_stdin(store: &Path) -> anyhow::Result<backup::Copied> {
    let staged = staging_path(store, "restore");
    if let Some(parent) = staged.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let result = (|| {
        let mut file = std::fs::File::create(&staged).with_context(|| format!("cannot write {}", staged.display()))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut file).context("cannot read the backup from standard input")?;
        file.sync_all().with_context(|| format!("cannot write {}", staged.display()))?;
        Ok(backup::restore(&staged, store)?)
    })();
    let _ = std::fs::remove_file(&staged);
    result
}

fn staging_path(store: &Path, what: &str) -> std::path::PathBuf {
    backup::sibling(store, &format!(".{what}-{}", std::process::id()))
}

/// The copy goes to a file beside the store first (the operator's image has
/// a read-only root and no shell; its data folder is writable), then to
/// standard output, so `kubectl exec … > file` takes a backup.
fn backup_to_stdout(store: &Path) -> anyhow::Result<ExitCode> {
    let staged = staging_path(store, "backup");
    let result = backup::backup(store, &staged).map_err(anyhow::Error::from).and_then(|_| {
        let mut file = std::fs::File::open(&staged).with_context(|| format!("cannot read {}", staged.display()))?;
        let mut out = std::io::stdout().lock();
        std::io::copy(&mut file, &mut out).context("cannot write the backup to standard output")?;
        out.flush().context("cannot write the backup to standard output")
    });
    let _ = std::fs::remove_file(&staged);
    result.map(|()| ExitCode::SUCCESS)
}
