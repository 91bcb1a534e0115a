//! What the `idsync` subcommands that read the store print, in the shapes
//! kubectl users know: tables laid out as `kubectl get` lays them out, RFC
//! 4180 CSV, and JSON lists (`apiVersion`, `kind`, `items`) or single
//! objects in JSON or YAML; and opening the store's file for them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::model::{ConnectionRef, ProfileRef, RunId};
use crate::store::postgres::PgOptions;
use crate::store::{PgStore, SqliteStore, Store, StoreError, StoreLocation};

/// The `apiVersion` of the lists printed with `-o json`, idsync's API group.
pub const API_VERSION: &str = "idsync.dev/v1alpha1";

/// What kubectl prints for an empty or unset cell.
pub const NONE: &str = "<none>";

/// `kubectl get`'s table layout (its tabwriter settings): every column but
/// the last is as wide as its widest cell plus 3 spaces, and at least 6.
const TABLE_PADDING: usize = 3;
const TABLE_MIN_WIDTH: usize = 6;

/// Output formats of `identities list` and `identities uncorrelated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFormat {
    Table,
    Json,
    Csv,
}

/// Output formats of `identities get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemFormat {
    Yaml,
    Json,
}

/// Why a report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the output: {0}")]
    Io(#[from] io::Error),
    #[error("cannot render YAML: {0}")]
    Yaml(#[from] yaml_serde::Error),
    #[error("{}", unknown_profile_message(.profile, .known))]
    UnknownProfile { profile: ProfileRef, known: Vec<ProfileRef> },
    #[error("identity {id:?} not found in profile {profile}")]
    IdentityNotFound { profile: ProfileRef, id: String },
    #[error("{}", unknown_connection_message(.connection, .known))]
    UnknownConnection { connection: ConnectionRef, known: Vec<ConnectionRef> },
    #[error("account {id:?} not found in connection {connection}")]
    AccountNotFound { connection: ConnectionRef, id: String },
    #[error("run {0} is not in the store's run history (it may have been pruned)")]
    RunNotFound(RunId),
}

impl ReportError {
    /// Whoever reads the output went away (`| head`): not a failure worth
    /// reporting, just the end of the output.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ReportError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

pub(super) fn unknown_profile_message(profile: &ProfileRef, known: &[ProfileRef]) -> String {
    if known.is_empty() {
        return format!(
            "profile {profile} is unknown to the store, which holds no profiles yet \
             (has the IdentityProfile been processed?)"
        );
    }
    let names = known.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let mut message = format!("profile {profile} is unknown to the store; it holds: {names}");
    // The likeliest mistake is a missing --namespace: point at it.
    let namespaces: Vec<&str> = known.iter().filter(|k| k.name == profile.name).map(|k| k.namespace.as_str()).collect();
    if let [namespace] = namespaces.as_slice() {
        message.push_str(&format!(" (did you mean --namespace {namespace}?)"));
    }
    message
}

fn unknown_connection_message(connection: &ConnectionRef, known: &[ConnectionRef]) -> String {
    if known.is_empty() {
        return format!("connection {connection} is unknown to the store, which has synced no connection yet");
    }
    let names = known.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let mut message = format!("connection {connection} is unknown to the store; it holds: {names}");
    let namespaces: Vec<&str> =
        known.iter().filter(|k| k.name == connection.name).map(|k| k.namespace.as_str()).collect();
    if let [namespace] = namespaces.as_slice() {
        message.push_str(&format!(" (did you mean --namespace {namespace}?)"));
    }
    message
}

/// A table cell: data can hold tabs and newlines, which would break a row
/// apart, so control characters become spaces.
pub fn cell(text: impl AsRef<str>) -> String {
    text.as_ref().chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Writes `rows` under `headers` as `kubectl get` does.
pub fn write_table(headers: &[&str], rows: &[Vec<String>], out: &mut impl Write) -> io::Result<()> {
    let last = headers.len().saturating_sub(1);
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let widths: Vec<usize> = widths.into_iter().map(|w| (w + TABLE_PADDING).max(TABLE_MIN_WIDTH)).collect();
    let mut line = String::new();
    let mut write_line = |cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        line.clear();
        for (i, (text, width)) in cells.zip(&widths).enumerate() {
            line.push_str(text);
            // The last column is not padded, as in kubectl: no trailing blanks.
            if i < last {
                let fill = width.saturating_sub(text.chars().count());
                line.extend(std::iter::repeat_n(' ', fill));
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())
    };
    write_line(&mut headers.iter().copied())?;
    for row in rows {
        write_line(&mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// RFC 4180 CSV written a record at a time, for output too large to hold.
pub struct CsvWriter<W: Write> {
    inner: csv::Writer<W>,
}

impl<W: Write> CsvWriter<W> {
    /// Starts the CSV with its header line.
    pub fn begin(out: W, header: &[&str]) -> io::Result<Self> {
        // CRLF is RFC 4180's line end; spreadsheets and csv readers take it,
        // and a value's own line breaks stay inside its quotes either way.
        let mut inner = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(out);
        inner.write_record(header).map_err(csv_io)?;
        Ok(CsvWriter { inner })
    }

    pub fn record(&mut self, fields: &[String]) -> io::Result<()> {
        self.inner.write_record(fields).map_err(csv_io)
    }

    /// Flushes what is buffered; dropping the writer would lose its error.
    pub fn finish(mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A csv error as the io error it wraps, so that a closed pipe is still
/// recognised as one.
fn csv_io(error: csv::Error) -> io::Error {
    if !error.is_io_error() {
        return io::Error::other(error);
    }
    match error.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// A pretty-printed `{"apiVersion", "kind", "items": [...]}` list written an
/// item at a time, so that a large list never sits in memory whole. Its text
/// is what `serde_json::to_writer_pretty` makes of the same list.
pub struct JsonListWriter<W: Write> {
    out: W,
    items: usize,
    buffer: Vec<u8>,
}

impl<W: Write> JsonListWriter<W> {
    pub fn begin(out: W, kind: &str) -> io::Result<Self> {
        Self::begin_with(out, kind, &[])
    }

    /// A list with more fields before its items (e.g. the run a list of
    /// changes belongs to), each written as pretty JSON.
    pub fn begin_with(mut out: W, kind: &str, fields: &[(&str, serde_json::Value)]) -> io::Result<Self> {
        let api_version = serde_json::to_string(API_VERSION)?;
        let kind = serde_json::to_string(kind)?;
        write!(out, "{{\n  \"apiVersion\": {api_version},\n  \"kind\": {kind},")?;
        for (name, value) in fields {
            let name = serde_json::to_string(name)?;
            let value = serde_json::to_string_pretty(value)?.replace('\n', "\n  ");
            write!(out, "\n  {name}: {value},")?;
        }
        write!(out, "\n  \"items\": [")?;
        Ok(JsonListWriter { out, items: 0, buffer: Vec::new() })
    }

    pub fn item(&mut self, item: &impl Serialize) -> io::Result<()> {
        self.buffer.clear();
        serde_json::to_writer_pretty(&mut self.buffer, item)?;
        self.out.write_all(if self.items == 0 { b"\n" } else { b",\n" })?;
        // Pretty JSON escapes line breaks inside strings, so every line break
        // here is between tokens and indenting each line nests the item.
        for (i, line) in self.buffer.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                self.out.write_all(b"\n")?;
            }
            self.out.write_all(b"    ")?;
            self.out.write_all(line)?;
        }
        self.items += 1;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.write_all(if self.items == 0 { b"]\n}\n" } else { b"\n  ]\n}\n" })?;
        self.out.flush()
    }
}

/// How long a run took: milliseconds under a second (processing and small
/// syncs are often that fast), kubectl's durations above.
pub fn run_length(length: jiff::SignedDuration) -> String {
    if length < jiff::SignedDuration::from_secs(1) {
        format!("{}ms", length.as_millis().max(0))
    } else {
        idsync_devcluster::age::human_duration(length)
    }
}

/// Items read from the store a page at a time, each page after the key of
/// the last item of the one before (keyset paging), so a listing holds one
/// page in memory whatever its length. A writer committing meanwhile can
/// make later pages newer than earlier ones, but no item comes twice.
pub struct Pages<T, F, K> {
    fetch: F,
    key: K,
    page_size: usize,
    after: Option<String>,
    page: std::vec::IntoIter<T>,
    /// The last read was short (or failed): nothing more to read.
    done: bool,
}

impl<T, F, K> Pages<T, F, K>
where
    F: FnMut(Option<&str>, usize) -> Result<Vec<T>, StoreError>,
    K: Fn(&T) -> String,
{
    /// `fetch(after, limit)` reads the page after `after`; `key` is an
    /// item's key in the store's order.
    pub fn new(page_size: usize, key: K, fetch: F) -> Self {
        Pages { fetch, key, page_size, after: None, page: Vec::new().into_iter(), done: false }
    }
}

impl<T, F, K> Iterator for Pages<T, F, K>
where
    F: FnMut(Option<&str>, usize) -> Result<Vec<T>, StoreError>,
    K: Fn(&T) -> String,
{
    type Item = Result<T, ReportError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.page.next() {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            match (self.fetch)(self.after.as_deref(), self.page_size) {
                Err(error) => {
                    self.done = true;
                    return Some(Err(error.into()));
                }
                Ok(page) => {
                    self.done = page.len() < self.page_size;
                    self.after = page.last().map(&self.key);
                    self.page = page.into_iter();
                }
            }
        }
    }
}

/// One object, whole, in JSON (pretty) or YAML.
pub fn render_item(item: &impl Serialize, format: ItemFormat, out: &mut impl Write) -> Result<(), ReportError> {
    match format {
        ItemFormat::Yaml => out.write_all(yaml_serde::to_string(item)?.as_bytes())?,
        ItemFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, item).map_err(io::Error::from)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Ends a subcommand's output: flushes it, takes a closed pipe (`| head`)
/// for the reader having what it wanted, and names the store on a store
/// error.
pub fn finish(
    result: Result<(), ReportError>,
    out: &mut impl Write,
    store: &str,
) -> anyhow::Result<std::process::ExitCode> {
    // Flushed here rather than on drop, where a failed write goes unseen.
    let result = result.and_then(|()| out.flush().map_err(ReportError::from));
    match result {
        Ok(()) => Ok(std::process::ExitCode::SUCCESS),
        Err(error) if error.is_broken_pipe() => Ok(std::process::ExitCode::SUCCESS),
        Err(error @ ReportError::Store(_)) => {
            Err(anyhow::Error::new(error).context(format!("cannot read the store {store}")))
        }
        Err(error) => Err(error.into()),
    }
}

/// `idsync run`'s default data folder (its `--data-dir`).
const DEFAULT_DATA_DIR: &str = "/var/lib/idsync";

/// Opens the store named by `--store` (a SQLite file, or a `postgres://`
/// URL), else by IDSYNC_STORE as `idsync run` has it, else the default
/// file. Returns it with how to name it in messages (never a password). A
/// file path where there is none is refused: `SqliteStore::open` would
/// create it.
pub fn open_store_file(store: Option<&Path>) -> anyhow::Result<(Box<dyn Store>, String)> {
    let location = match store {
        Some(arg) => StoreLocation::parse(&arg.to_string_lossy()),
        None => match std::env::var("IDSYNC_STORE").ok().filter(|s| !s.is_empty()) {
            Some(env) => StoreLocation::parse(&env),
            None => StoreLocation::File(default_store_path()),
        },
    };
    let name = location.to_string();
    let path = match location {
        StoreLocation::Postgres(options) => {
            let options = postgres_options_from_env(options)?;
            let store = PgStore::connect(&options).with_context(|| format!("cannot open the store {name}"))?;
            return Ok((Box::new(store), name));
        }
        StoreLocation::File(path) => path,
    };
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
    Ok((Box::new(store), name))
}

/// PostgreSQL settings that come from the environment rather than the URL,
/// as the chart sets them from Secrets: the password (IDSYNC_STORE_PASSWORD,
/// replacing one in the URL) and the server's CA (IDSYNC_STORE_CA_FILE, a
/// PEM file).
pub fn postgres_options_from_env(mut options: PgOptions) -> anyhow::Result<PgOptions> {
    if let Some(password) = std::env::var("IDSYNC_STORE_PASSWORD").ok().filter(|p| !p.is_empty()) {
        options.password = Some(password);
    }
    if let Some(path) = std::env::var_os("IDSYNC_STORE_CA_FILE").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        let pem = std::fs::read(&path)
            .with_context(|| format!("cannot read the store's CA file {} (IDSYNC_STORE_CA_FILE)", path.display()))?;
        options.ca_pem = Some(pem);
    }
    Ok(options)
}

/// Where `idsync run` keeps its store: `<data dir>/idsync.db`, the data dir
/// from IDSYNC_DATA_DIR as for `run`, so that inside the operator's pod the
/// default is right.
pub fn default_store_path() -> PathBuf {
    std::env::var_os("IDSYNC_DATA_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
        .join("idsync.db")
}
