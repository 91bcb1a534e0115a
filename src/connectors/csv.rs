//! The `csv` provider: an export (usually from an HR system) held in a
//! ConfigMap key, a Secret key or at a URL.
//!
//! - The first row is the header: a UTF-8 byte order mark is dropped and the
//!   names are trimmed. `idColumn` and every mapped column must be in it.
//! - Every row needs as many fields as the header, valid UTF-8, and an id
//!   (trimmed, non-empty) unique within the file. The first row that breaks a
//!   rule fails the whole read with its 1-based line number in the file
//!   (`line 7: 5 fields, the header has 6`), and the column when one cell is
//!   at fault, never with the row's content (the export may be a Secret).
//!   Lines end at LF, CR LF or CR; a row spanning several lines (a quoted
//!   field with line breaks) is reported on the line it starts on.
//! - The id and the mapped account fields (username, email, displayName) are
//!   trimmed; an empty cell leaves the field unset. `enabled` is true for
//!   `true`, `yes`, `1`, `active` and `enabled` (any case), false for anything
//!   else, and true for every account without an enabled column. Groups are
//!   split on `groupsSeparator`, trimmed, empties dropped.
//! - **Attributes**: every named column except the id column is kept as a
//!   string attribute under its header name, verbatim (empty cells as `""`),
//!   the mapped columns included, so identity mappings can read any column
//!   (e.g. the raw status behind `enabled`). Columns without a name (a
//!   trailing delimiter) are ignored.
//! - Records are split by `csv-core` as the export arrives ([`records`]):
//!   a URL source is read as it streams, and only the rows of the page being
//!   built (and the rest of the current network chunk) are in memory. A
//!   connection that breaks mid-body fails the read on the page being built;
//!   it is not retried, since the earlier pages are already out (the next
//!   sync reads the export again).
//!
//! - **Short reads never delete.** A read that ends early fails instead of
//!   passing as a smaller export (whose missing rows the sync would
//!   delete): a URL body that ends before its `Content-Length` or its last
//!   chunk (the HTTP client reports it), a row cut before its last column
//!   (too few fields), with `requireTrailingNewline` an export whose last
//!   row has no line break (cut inside its last column), and with
//!   `rowCountHeader` an export whose row count differs from the one its
//!   response states. A body without any stated length that is cut at a
//!   line boundary cannot be told from a shorter export: only a row count
//!   from the source can tell.
//!
//! The export is always read whole: no deltas, no cursor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use reqwest::header::{ACCEPT, HeaderName, HeaderValue};
use serde_json::Value;

use self::records::{Fields, Records, SplitError};
use super::http::{HttpClient, HttpSettings, Request, Response, parse_url};
use super::{Capabilities, Connector, ConnectorError, Page, ProviderInputs, ReadKind, ReadPlan};
use crate::model::Account;
use idsync_api::SyncMode;
use idsync_api::connection::{ConnectionSpec, CsvSettings};

/// An HTML page where an export was expected (a login page, a proxy's
/// error page, a wrong URL) would otherwise be read as a CSV whose header
/// lacks the id column: say what it is instead, without quoting it.
fn refuse_html(response: &crate::connectors::http::Response) -> Result<(), ConnectorError> {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match content_type.as_deref() {
        Some("text/html" | "application/xhtml+xml") => Err(ConnectorError::Source {
            page: None,
            message: "the URL answered with an HTML page (Content-Type text/html), not a CSV export: check the \
                      URL, and that the source does not answer with a login or error page"
                .to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod props;
mod records;

/// How much of an in-memory export is parsed at a time.
const DATA_CHUNK: usize = 64 * 1024;
const TRUTHY: [&str; 5] = ["true", "yes", "1", "active", "enabled"];
const DELTA_REASON: &str = "the csv provider always reads the whole export";

/// The checked settings of one csv Connection.
#[derive(Debug)]
struct Settings {
    id_column: String,
    username: Option<String>,
    email: Option<String>,
    display_name: Option<String>,
    enabled: Option<String>,
    groups: Option<String>,
    delimiter: u8,
    groups_separator: String,
    page_size: usize,
    require_trailing_newline: bool,
    /// The response header stating the export's row count (url only).
    row_count_header: Option<HeaderName>,
}

enum Source {
    Data(Arc<[u8]>),
    Url { client: HttpClient, url: reqwest::Url, token: Option<String> },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Data(data) => write!(f, "Data({} bytes)", data.len()),
            Source::Url { url, token, .. } => f
                .debug_struct("Url")
                .field("url", &super::http::display_url(url))
                .field("token", &token.as_ref().map(|_| "[REDACTED]"))
                .finish(),
        }
    }
}

/// The csv connector.
#[derive(Debug)]
pub struct CsvConnector {
    settings: Arc<Settings>,
    source: Source,
    reading: Option<Reading>,
    /// How much of an in-memory export is parsed at a time (tests vary it).
    data_chunk: usize,
}

fn config(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Config { field: field.to_string(), message: message.into() }
}

impl CsvConnector {
    /// A connector with the HTTP settings the Connection asks for.
    pub fn new(spec: &ConnectionSpec, csv: &CsvSettings, inputs: ProviderInputs) -> Result<Self, ConnectorError> {
        Self::with_http_settings(spec, csv, inputs, HttpSettings::from_spec(spec))
    }

    /// A connector with explicit HTTP settings (used for URL sources only).
    pub fn with_http_settings(
        spec: &ConnectionSpec,
        csv: &CsvSettings,
        inputs: ProviderInputs,
        http: HttpSettings,
    ) -> Result<Self, ConnectorError> {
        let delimiter = match csv.delimiter.as_bytes() {
            [b] if b.is_ascii() && !matches!(b, b'"' | b'\r' | b'\n') => *b,
            _ => {
                return Err(config(
                    "spec.provider.csv.delimiter",
                    format!(
                        "{:?} is not a usable delimiter: use one ASCII character other than a quote or a line break",
                        csv.delimiter
                    ),
                ));
            }
        };
        if csv.groups_separator.is_empty() {
            return Err(config("spec.provider.csv.groupsSeparator", "must not be empty"));
        }
        let id_column = csv.id_column.trim().to_string();
        if id_column.is_empty() {
            return Err(config("spec.provider.csv.idColumn", "must name a column"));
        }
        let column = |name: &str, value: &Option<String>| -> Result<Option<String>, ConnectorError> {
            match value.as_deref().map(str::trim) {
                None => Ok(None),
                Some("") => Err(config(&format!("spec.provider.csv.columns.{name}"), "must name a column")),
                Some(column) => Ok(Some(column.to_string())),
            }
        };
        let row_count_header = match csv.row_count_header.as_deref().map(str::trim) {
            None => None,
            Some(_) if csv.source.url.is_none() => {
                return Err(config("spec.provider.csv.rowCountHeader", "applies to url sources only"));
            }
            Some(name) => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                config("spec.provider.csv.rowCountHeader", format!("{name:?} is not an HTTP header name"))
            })?),
        };
        let settings = Settings {
            require_trailing_newline: csv.require_trailing_newline,
            row_count_header,
            username: column("username", &csv.columns.username)?,
            email: column("email", &csv.columns.email)?,
            display_name: column("displayName", &csv.columns.display_name)?,
            enabled: column("enabled", &csv.columns.enabled)?,
            groups: column("groups", &csv.columns.groups)?,
            id_column,
            delimiter,
            groups_separator: csv.groups_separator.clone(),
            page_size: spec.page_size.max(1) as usize,
        };

        let src = &csv.source;
        let set = [src.config_map_key_ref.is_some(), src.secret_key_ref.is_some(), src.url.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(config(
                "spec.provider.csv.source",
                "exactly one of configMapKeyRef, secretKeyRef or url must be set",
            ));
        }
        let source = if let Some(url) = &src.url {
            let url = parse_url(url, "spec.provider.csv.source.url")?;
            let token = inputs.secret_text("token")?;
            Source::Url { client: HttpClient::new(http)?, url, token }
        } else {
            let (field, kind, reference) = match (&src.config_map_key_ref, &src.secret_key_ref) {
                (Some(r), _) => ("spec.provider.csv.source.configMapKeyRef", "ConfigMap", r),
                (_, Some(r)) => ("spec.provider.csv.source.secretKeyRef", "Secret", r),
                _ => unreachable!("exactly one source is set"),
            };
            let data = inputs.csv_data.ok_or_else(|| {
                config(
                    field,
                    format!("no content was supplied for key \"{}\" of {kind} \"{}\"", reference.key, reference.name),
                )
            })?;
            Source::Data(data.into())
        };
        Ok(CsvConnector { settings: Arc::new(settings), source, reading: None, data_chunk: DATA_CHUNK })
    }

    async fn open(&mut self) -> Result<Reading, ConnectorError> {
        let mut stated_rows = None;
        let input = match &self.source {
            Source::Data(data) => Input::Data { data: data.clone(), offset: 0, chunk: self.data_chunk.max(1) },
            Source::Url { client, url, token } => {
                let mut request = Request::get(url.clone()).header(ACCEPT, HeaderValue::from_static("text/csv, */*"));
                if let Some(token) = token {
                    request = request.bearer_auth(token)?;
                }
                let response = client.send(&request, None).await?;
                refuse_html(&response)?;
                if let Some(header) = &self.settings.row_count_header {
                    stated_rows =
                        Some(StatedRows { header: header.clone(), rows: stated_row_count(&response, header)? });
                }
                Input::Http(Box::new(response))
            }
        };
        let mut reading = Reading::new(input, self.settings.clone());
        reading.stated_rows = stated_rows;
        reading.fill(0, None).await?;
        if reading.mapper.layout.is_none() {
            return Err(reading.error.take().unwrap_or_else(|| ConnectorError::Source {
                page: None,
                message: "the export is empty: it has no header line".to_string(),
            }));
        }
        Ok(reading)
    }

    async fn page(&mut self) -> Result<Option<Page>, ConnectorError> {
        let page_size = self.settings.page_size;
        let Some(reading) = self.reading.as_mut() else {
            return Err(ConnectorError::Source {
                page: None,
                message: "no read in progress: it failed, or begin was not called".to_string(),
            });
        };
        if reading.done {
            return Ok(None);
        }
        let number = reading.next_number;
        if let Err(error) = reading.fill(page_size, Some(number)).await {
            self.reading = None;
            return Err(error);
        }
        let full = reading.pending.len() >= page_size;
        if full || (!reading.pending.is_empty() && reading.error.is_none()) {
            let take = page_size.min(reading.pending.len());
            let accounts: Vec<Account> = reading.pending.drain(..take).collect();
            reading.next_number += 1;
            return Ok(Some(Page { number, accounts, deleted: Vec::new() }));
        }
        if let Some(error) = reading.error.take() {
            self.reading = None;
            return Err(error.with_page(Some(number)));
        }
        reading.done = true;
        Ok(None)
    }
}

impl Connector for CsvConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities { delta: false, delta_deletions: false, groups: self.settings.groups.is_some() }
    }

    fn begin<'a>(
        &'a mut self,
        mode: SyncMode,
        _cursor: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
        Box::pin(async move {
            self.reading = None;
            self.reading = Some(self.open().await?);
            let reason = match mode {
                SyncMode::Delta => Some(DELTA_REASON.to_string()),
                SyncMode::Full => None,
            };
            Ok(ReadPlan { kind: ReadKind::Full, reason })
        })
    }

    fn next_page(&mut self) -> futures::future::BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
        Box::pin(self.page())
    }

    fn cursor(&self) -> Option<String> {
        None
    }
}

/// The row count a response states, and the header it is in.
#[derive(Debug)]
struct StatedRows {
    header: HeaderName,
    rows: u64,
}

/// The row count in `header` of the response: a read that cannot be checked
/// fails, since the Connection asked for the check.
fn stated_row_count(response: &Response, header: &HeaderName) -> Result<u64, ConnectorError> {
    let fail = |what: String| ConnectorError::Source {
        page: None,
        message: format!(
            "{what}; spec.provider.csv.rowCountHeader says the source states its row count there, and without it a \
             cut export cannot be told from a shorter one"
        ),
    };
    let value = response.headers().get(header).ok_or_else(|| fail(format!("the response has no {header} header")))?;
    let text = value.to_str().map(str::trim).unwrap_or_default();
    text.parse::<u64>().map_err(|_| fail(format!("the response's {header} header is not a row count")))
}

enum Input {
    Data { data: Arc<[u8]>, offset: usize, chunk: usize },
    Http(Box<Response>),
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Data { data, offset, .. } => write!(f, "Data({offset}/{} bytes)", data.len()),
            Input::Http(response) => response.fmt(f),
        }
    }
}

/// One read in progress.
struct Reading {
    input: Input,
    records: Records,
    mapper: Mapper,
    /// Accounts parsed and not yet handed out, in file order.
    pending: VecDeque<Account>,
    /// The first bad row (or header), raised once `pending` is handed out.
    error: Option<ConnectorError>,
    eof: bool,
    /// The last byte of the export read so far.
    last_byte: Option<u8>,
    /// The row count the source stated, to check at the end.
    stated_rows: Option<StatedRows>,
    next_number: u64,
    done: bool,
}

/// The read's progress, not the accounts it holds.
impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("input", &self.input)
            .field("records", &self.records)
            .field("pending", &self.pending.len())
            .field("error", &self.error)
            .field("next_number", &self.next_number)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Reading {
    fn new(input: Input, settings: Arc<Settings>) -> Self {
        Reading {
            input,
            records: Records::new(settings.delimiter),
            mapper: Mapper { settings, layout: None, seen: HashMap::new() },
            pending: VecDeque::new(),
            error: None,
            eof: false,
            last_byte: None,
            stated_rows: None,
            next_number: 1,
            done: false,
        }
    }

    /// Reads until the header is known and `want` accounts are pending, or
    /// until the end of the export or its first bad row. Errors of the input
    /// itself (a broken connection) are returned, placed on `page`.
    async fn fill(&mut self, want: usize, page: Option<u64>) -> Result<(), ConnectorError> {
        while self.error.is_none() && !self.eof && (self.mapper.layout.is_none() || self.pending.len() < want) {
            let (mapper, pending) = (&mut self.mapper, &mut self.pending);
            let mut each = |fields: Fields<'_>, line: u64| mapper.take(fields, line, pending);
            let split = match &mut self.input {
                Input::Data { data, offset, chunk } => {
                    let end = (*offset + *chunk).min(data.len());
                    let piece = &data[*offset..end];
                    *offset = end;
                    self.eof = piece.is_empty();
                    self.last_byte = piece.last().copied().or(self.last_byte);
                    if self.eof { self.records.finish(&mut each) } else { self.records.feed(piece, &mut each) }
                }
                Input::Http(response) => {
                    response.set_page(page);
                    match response.chunk().await? {
                        Some(bytes) => {
                            self.last_byte = bytes.last().copied().or(self.last_byte);
                            self.records.feed(&bytes, &mut each)
                        }
                        None => {
                            self.eof = true;
                            self.records.finish(&mut each)
                        }
                    }
                }
            };
            if let Err(error) = split {
                self.error = Some(self.split_error(error));
            }
            if self.eof && self.error.is_none() {
                self.error = self.incomplete();
            }
        }
        Ok(())
    }

    /// At the end of a well-formed export: why it may have been cut short,
    /// by the checks the Connection asked for.
    fn incomplete(&self) -> Option<ConnectorError> {
        let settings = &self.mapper.settings;
        // An empty export (no header) is reported as such.
        self.mapper.layout.as_ref()?;
        if settings.require_trailing_newline && !matches!(self.last_byte, Some(b'\n' | b'\r')) {
            return Some(ConnectorError::Source {
                page: None,
                message: "the export does not end with a line break, so its last row may have been cut short \
                          (spec.provider.csv.requireTrailingNewline is true)"
                    .to_string(),
            });
        }
        let stated = self.stated_rows.as_ref()?;
        let read = self.mapper.seen.len() as u64;
        (read != stated.rows).then(|| ConnectorError::Source {
            page: None,
            message: format!(
                "the export holds {read} rows but its {} header says {}: it was cut short or changed while it was read",
                stated.header, stated.rows
            ),
        })
    }

    fn split_error(&self, error: SplitError<ConnectorError>) -> ConnectorError {
        let layout = self.mapper.layout.as_ref();
        match error {
            SplitError::Record(error) => error,
            SplitError::TooLong { line, column, max } => source_error(
                line,
                format!(
                    "the record starting on this line is longer than {max} bytes, reached in {} (a quoted field that is never closed?)",
                    column_name(layout, column - 1)
                ),
            ),
            SplitError::UnclosedQuote { line, column } => source_error(
                line,
                format!(
                    "the quoted field in {} is not closed before the end of the export",
                    column_name(layout, column - 1)
                ),
            ),
        }
    }
}

fn source_error(line: u64, message: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Source { page: None, message: format!("line {line}: {message}") }
}

/// A column as an error names it: by its header name, or by its 1-based
/// position (in the header itself, or for a column without a name).
fn column_name(layout: Option<&Layout>, index: usize) -> String {
    match layout.and_then(|l| l.names.get(index)).filter(|name| !name.is_empty()) {
        Some(name) => format!("column \"{name}\""),
        None => format!("column {}", index + 1),
    }
}

/// Turns records into accounts.
#[derive(Debug)]
struct Mapper {
    settings: Arc<Settings>,
    layout: Option<Layout>,
    /// Ids seen so far, with their line.
    seen: HashMap<String, u64>,
}

/// Where each field is, from the header.
#[derive(Debug)]
struct Layout {
    names: Vec<String>,
    id: usize,
    username: Option<usize>,
    email: Option<usize>,
    display_name: Option<usize>,
    enabled: Option<usize>,
    groups: Option<usize>,
    /// Columns kept as attributes: every named one but the id column.
    attributes: Vec<usize>,
}

impl Mapper {
    fn take(&mut self, record: Fields<'_>, line: u64, pending: &mut VecDeque<Account>) -> Result<(), ConnectorError> {
        match &self.layout {
            None => {
                self.layout = Some(self.header(record, line)?);
                Ok(())
            }
            Some(layout) => {
                let account = self.row(layout, record, line)?;
                if let Some(first) = self.seen.get(&account.id) {
                    return Err(source_error(
                        line,
                        format!("id \"{}\" appears again (first on line {first})", account.id),
                    ));
                }
                self.seen.insert(account.id.clone(), line);
                pending.push_back(account);
                Ok(())
            }
        }
    }

    fn header(&self, record: Fields<'_>, line: u64) -> Result<Layout, ConnectorError> {
        let mut names = Vec::with_capacity(record.len());
        for (i, field) in record.iter().enumerate() {
            let name = std::str::from_utf8(field)
                .map_err(|_| source_error(line, format!("the header's column {} is not valid UTF-8", i + 1)))?;
            let name = name.trim().to_string();
            if !name.is_empty() && names.contains(&name) {
                return Err(source_error(line, format!("column \"{name}\" appears twice in the header")));
            }
            names.push(name);
        }
        let find = |field: &str, column: &str| -> Result<usize, ConnectorError> {
            names.iter().position(|n| n == column).ok_or_else(|| {
                let mut shown: Vec<String> =
                    names.iter().filter(|n| !n.is_empty()).take(30).map(|n| format!("\"{n}\"")).collect();
                if names.len() > 30 {
                    shown.push("…".to_string());
                }
                config(
                    field,
                    format!(
                        "column \"{column}\" is not in the export's header (line {line}), which has {}",
                        shown.join(", ")
                    ),
                )
            })
        };
        let s = &self.settings;
        let optional = |name: &str, column: &Option<String>| -> Result<Option<usize>, ConnectorError> {
            column.as_deref().map(|c| find(&format!("spec.provider.csv.columns.{name}"), c)).transpose()
        };
        let id = find("spec.provider.csv.idColumn", &s.id_column)?;
        let layout = Layout {
            id,
            username: optional("username", &s.username)?,
            email: optional("email", &s.email)?,
            display_name: optional("displayName", &s.display_name)?,
            enabled: optional("enabled", &s.enabled)?,
            groups: optional("groups", &s.groups)?,
            attributes: (0..names.len()).filter(|i| *i != id && !names[*i].is_empty()).collect(),
            names,
        };
        Ok(layout)
    }

    fn row(&self, layout: &Layout, record: Fields<'_>, line: u64) -> Result<Account, ConnectorError> {
        let expected = layout.names.len();
        if record.len() != expected {
            let fields = if record.len() == 1 { "field" } else { "fields" };
            return Err(source_error(line, format!("{} {fields}, the header has {expected}", record.len())));
        }
        let mut cells: Vec<&str> = Vec::with_capacity(expected);
        for (i, field) in record.iter().enumerate() {
            let cell = std::str::from_utf8(field)
                .map_err(|_| source_error(line, format!("{} is not valid UTF-8", column_name(Some(layout), i))))?;
            cells.push(cell);
        }
        let id = cells[layout.id].trim();
        if id.is_empty() {
            return Err(source_error(line, format!("the id (column \"{}\") is empty", layout.names[layout.id])));
        }
        let text = |index: Option<usize>| index.map(|i| cells[i].trim()).filter(|v| !v.is_empty()).map(str::to_string);
        let mut account = Account::new(id);
        account.username = text(layout.username);
        account.email = text(layout.email);
        account.display_name = text(layout.display_name);
        if let Some(i) = layout.enabled {
            let value = cells[i].trim();
            account.enabled = TRUTHY.iter().any(|t| value.eq_ignore_ascii_case(t));
        }
        if let Some(i) = layout.groups {
            account.groups = cells[i]
                .split(self.settings.groups_separator.as_str())
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect();
        }
        for &i in &layout.attributes {
            account.attributes.insert(layout.names[i].clone(), Value::String(cells[i].to_string()));
        }
        account.normalize();
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::connectors::build;
    use crate::connectors::testing::{channel_body, handler, respond, serve};
    use idsync_api::Connection;
    use idsync_api::connection::CsvSource;
    use idsync_api::fixtures::ConnectionBuilder;

    /// The HR export from key `export.csv` of the ConfigMap `hr`, id column
    /// `id`.
    fn from_config_map() -> ConnectionBuilder {
        Connection::test("hr").csv_config_map("hr", "export.csv")
    }

    fn data_connector(csv: ConnectionBuilder, page_size: u32, data: &[u8]) -> CsvConnector {
        let spec = csv.page_size(page_size).spec();
        let inputs = ProviderInputs { csv_data: Some(data.to_vec()), ..Default::default() };
        CsvConnector::new(&spec, spec.expect_csv(), inputs).unwrap()
    }

    async fn read_all(connector: &mut dyn Connector) -> Result<Vec<Page>, ConnectorError> {
        connector.begin(SyncMode::Full, None).await?;
        let mut pages = Vec::new();
        while let Some(page) = connector.next_page().await? {
            assert_eq!(page.number, pages.len() as u64 + 1);
            assert!(page.deleted.is_empty());
            pages.push(page);
        }
        assert_eq!(connector.next_page().await?, None, "None again after the last page");
        Ok(pages)
    }

    fn accounts(pages: Vec<Page>) -> Vec<Account> {
        pages.into_iter().flat_map(|p| p.accounts).collect()
    }

    fn attrs(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect()
    }

    const HR_EXPORT: &str = "\u{FEFF}Employee ID , Username,Work Email ,Full Name,Employment Status,Department,Groups,Notes,\r\n\
        E001,ada,ada@example.com,\"Lovelace, Ada\",Active,Engineering,\"eng; admins ;;eng\",,\r\n\
        E002,alan,,\"Turing, Alan\",TERMINATED,Research,research,\"Left in 1954,\r\nsee \"\"file\"\" 12\",\r\n\
        \x20E003 ,grace,grace@example.com,Grace Hopper,yes,Navy,,\"multi\nline\nnote\",\r\n\
        E004,  edith ,edith@example.com,Édith Piaf,1,Music,  ,,\r\n\
        E005,,,,on leave,Sales,sales,,\r\n\
        E006,kim,kim@example.com,Kim,ENABLED,Sales,sales;x,,";

    fn hr_csv() -> ConnectionBuilder {
        from_config_map()
            .id_column("Employee ID")
            .column("username", "Username")
            .column("email", "Work Email")
            .column("displayName", "Full Name")
            .column("enabled", "Employment Status")
            .column("groups", "Groups")
    }

    #[tokio::test]
    async fn maps_a_realistic_hr_export() {
        let mut connector = data_connector(hr_csv(), 500, HR_EXPORT.as_bytes());
        assert_eq!(connector.capabilities(), Capabilities { delta: false, delta_deletions: false, groups: true });
        let pages = read_all(&mut connector).await.unwrap();
        assert_eq!(pages.len(), 1);
        let accounts = accounts(pages);
        assert_eq!(accounts.len(), 6);

        let mut ada = Account::new("E001");
        ada.username = Some("ada".into());
        ada.email = Some("ada@example.com".into());
        ada.display_name = Some("Lovelace, Ada".into());
        ada.groups = vec!["admins".into(), "eng".into()];
        ada.attributes = attrs(&[
            ("Username", "ada"),
            ("Work Email", "ada@example.com"),
            ("Full Name", "Lovelace, Ada"),
            ("Employment Status", "Active"),
            ("Department", "Engineering"),
            ("Groups", "eng; admins ;;eng"),
            ("Notes", ""),
        ]);
        assert_eq!(accounts[0], ada);

        let alan = &accounts[1];
        assert_eq!(alan.id, "E002");
        assert_eq!(alan.email, None, "an empty cell leaves the field unset");
        assert!(!alan.enabled);
        assert_eq!(alan.groups, vec!["research".to_string()]);
        assert_eq!(alan.attributes["Notes"], json!("Left in 1954,\r\nsee \"file\" 12"));
        assert_eq!(alan.attributes["Work Email"], json!(""), "attributes keep empty cells");

        let grace = &accounts[2];
        assert_eq!(grace.id, "E003", "the id is trimmed");
        assert!(grace.enabled);
        assert!(grace.groups.is_empty());
        assert_eq!(grace.attributes["Notes"], json!("multi\nline\nnote"));

        let edith = &accounts[3];
        assert_eq!(edith.username.as_deref(), Some("edith"), "mapped fields are trimmed");
        assert_eq!(edith.display_name.as_deref(), Some("Édith Piaf"));
        assert!(edith.enabled);
        assert!(edith.groups.is_empty(), "blank groups are dropped");
        assert_eq!(edith.attributes["Username"], json!("  edith "), "attributes are verbatim");

        let e5 = &accounts[4];
        assert!(!e5.enabled && e5.username.is_none() && e5.display_name.is_none());
        let kim = &accounts[5];
        assert!(kim.enabled, "ENABLED, any case");
        assert_eq!(kim.groups, vec!["sales".to_string(), "x".to_string()]);

        for account in &accounts {
            assert!(!account.attributes.contains_key("Employee ID"), "the id column is not an attribute");
            assert!(!account.attributes.contains_key(""), "unnamed columns are ignored");
            assert_eq!(account.attributes.len(), 7);
        }
    }

    #[tokio::test]
    async fn without_mapped_columns_every_account_is_enabled_and_groupless() {
        let data = "id;name;status\n1;a;inactive\n2;b;\n";
        let mut connector = data_connector(from_config_map().delimiter(";").groups_separator("|"), 10, data.as_bytes());
        assert!(!connector.capabilities().groups);
        let accounts = accounts(read_all(&mut connector).await.unwrap());
        assert_eq!(accounts.len(), 2);
        assert!(accounts.iter().all(|a| a.enabled && a.groups.is_empty() && a.username.is_none()));
        assert_eq!(accounts[0].attributes, attrs(&[("name", "a"), ("status", "inactive")]));
    }

    #[tokio::test]
    async fn groups_split_on_a_multi_character_separator() {
        let data = "id,groups\n1, a || b ||| c||\n";
        let csv = from_config_map().column("groups", "groups").groups_separator("||");
        let accounts = accounts(read_all(&mut data_connector(csv, 10, data.as_bytes())).await.unwrap());
        // " a ", " b ", "| c", "": trimmed, the empty one dropped, sorted.
        assert_eq!(accounts[0].groups, vec!["a".to_string(), "b".to_string(), "| c".to_string()]);
    }

    #[tokio::test]
    async fn pages_hold_page_size_rows() {
        let mut data = String::from("id,email\n");
        for i in 0..2500 {
            data.push_str(&format!("E{i:05},user{i}@example.com\n"));
        }
        let mut connector = data_connector(from_config_map().column("email", "email"), 1000, data.as_bytes());
        let plan = connector.begin(SyncMode::Delta, Some("ignored")).await.unwrap();
        assert_eq!(plan, ReadPlan { kind: ReadKind::Full, reason: Some(DELTA_REASON.to_string()) });
        let mut sizes = Vec::new();
        while let Some(page) = connector.next_page().await.unwrap() {
            sizes.push((page.number, page.accounts.len()));
            if page.number == 3 {
                assert_eq!(page.accounts.last().unwrap().id, "E02499");
            }
        }
        assert_eq!(sizes, vec![(1, 1000), (2, 1000), (3, 500)]);
        assert_eq!(connector.cursor(), None);

        // A new read starts over; a Full request needs no reason.
        let plan = connector.begin(SyncMode::Full, None).await.unwrap();
        assert_eq!(plan, ReadPlan { kind: ReadKind::Full, reason: None });
        assert_eq!(connector.next_page().await.unwrap().unwrap().accounts[0].id, "E00000");
    }

    #[tokio::test]
    async fn exact_multiples_and_header_only_exports() {
        let mut data = String::from("id\n");
        for i in 0..4 {
            data.push_str(&format!("{i}\n"));
        }
        let pages = read_all(&mut data_connector(from_config_map(), 2, data.as_bytes())).await.unwrap();
        assert_eq!(pages.iter().map(|p| p.accounts.len()).collect::<Vec<_>>(), vec![2, 2]);
        let pages = read_all(&mut data_connector(from_config_map(), 2, b"\xEF\xBB\xBFid\r\n")).await.unwrap();
        assert!(pages.is_empty(), "a header alone is an export without accounts");
    }

    async fn read_error(csv: ConnectionBuilder, page_size: u32, data: &[u8]) -> ConnectorError {
        read_all(&mut data_connector(csv, page_size, data)).await.unwrap_err()
    }

    #[tokio::test]
    async fn bad_rows_fail_the_read_with_their_line() {
        let cases: &[(&[u8], u32, &str)] = &[
            // A multi-line record and a blank line before the bad row.
            (
                b"id,name,email\n1,a,a@x\n2,\"multi\nline\",b@x\n\n3,c,c@x\n4,d\n",
                10,
                "page 1: line 7: 2 fields, the header has 3",
            ),
            (
                b"id,name,email\n1,a,a@x\n2,\"multi\nline\",b@x\n\n3,c,c@x\n4,d\n",
                2,
                "page 2: line 7: 2 fields, the header has 3",
            ),
            (b"id,name\n1,a\n2,b,c\n", 10, "page 1: line 3: 3 fields, the header has 2"),
            (b"id,name\n1,a\n2\n", 10, "page 1: line 3: 1 field, the header has 2"),
            (b"id,name\n1,a\n  ,b\n", 10, "page 1: line 3: the id (column \"id\") is empty"),
            (b"id,name\r\n1,a\r\n2,b\r\n\"1\",c\r\n", 10, "page 1: line 4: id \"1\" appears again (first on line 2)"),
            (b"id,name\n1,a\n2,caf\xE9\n", 10, "page 1: line 3: column \"name\" is not valid UTF-8"),
            (
                b"id,name\n1,a\n2,\"never\nclosed\n",
                1,
                "page 2: line 3: the quoted field in column \"name\" is not closed before the end of the export",
            ),
            (b"", 10, "the export is empty: it has no header line"),
            (b"\xEF\xBB\xBF\n\n", 10, "the export is empty: it has no header line"),
            (b"id,name,name\n1,a,b\n", 10, "line 1: column \"name\" appears twice in the header"),
            (b"id,n\xFFme\n1,a\n", 10, "line 1: the header's column 2 is not valid UTF-8"),
        ];
        for (data, page_size, expected) in cases {
            let e = read_error(from_config_map(), *page_size, data).await;
            assert_eq!(e.to_string(), *expected, "{}", String::from_utf8_lossy(data));
            assert!(matches!(e, ConnectorError::Source { .. }), "{e:?}");
            assert_eq!(e.reason(), "SourceError");
        }
    }

    /// LF, CR LF and CR-only (old Mac) exports: a bad row is reported on
    /// its own line, after blank lines and a quoted field with a line break
    /// of the same style, and read in any piece size. The error says where,
    /// never what the row holds (an export may be a Secret).
    #[tokio::test]
    async fn every_line_ending_reports_the_bad_rows_line() {
        for (style, end) in [("LF", "\n"), ("CRLF", "\r\n"), ("CR", "\r")] {
            // `~` stands for a byte that is not UTF-8.
            let export = |rows: &[&str]| -> Vec<u8> {
                rows.join(end).bytes().map(|b| if b == b'~' { 0xFF } else { b }).collect()
            };
            let cases = [
                // Row 4 lacks a field.
                (export(&["id,name", "1,a", "2,b", "SECRET-4", "5,e"]), "line 4: 1 field, the header has 2"),
                // Row 4, after a blank line and a two-line quoted field.
                (
                    export(&["id,name", "1,\"two", "lines\"", "", "1,SECRET-4", ""]),
                    "line 5: id \"1\" appears again (first on line 2)",
                ),
                (export(&["id,name", "", "2,b", "3,c~SECRET", ""]), "line 4: column \"name\" is not valid UTF-8"),
                (
                    export(&["id,name", "1,a", "", "4,\"SECRET", "never closed"]),
                    "line 4: the quoted field in column \"name\" is not closed before the end of the export",
                ),
            ];
            for (data, expected) in &cases {
                for chunk in [1, 2, 3, 7, DATA_CHUNK] {
                    let mut connector = data_connector(from_config_map(), 10, data);
                    connector.data_chunk = chunk;
                    let e = read_all(&mut connector).await.unwrap_err();
                    assert_eq!(e.to_string(), format!("page 1: {expected}"), "{style}, pieces of {chunk}");
                    assert!(!format!("{e}{e:?}").contains("SECRET"), "{style}: {e:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn an_endless_record_is_refused_before_it_fills_memory() {
        let data = format!("id,note\n1,a\n2,\"{}", "x".repeat(5000));
        let mut connector = data_connector(from_config_map(), 10, data.as_bytes());
        connector.data_chunk = 1000;
        connector.begin(SyncMode::Full, None).await.unwrap();
        connector.reading.as_mut().unwrap().records.max_record = 2000;
        let e = connector.next_page().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "page 1: line 3: the record starting on this line is longer than 2000 bytes, reached in column \"note\" (a quoted field that is never closed?)"
        );
    }

    #[tokio::test]
    async fn rows_before_a_bad_row_are_paged_out_first() {
        let mut connector = data_connector(from_config_map(), 2, b"id\n1\n2\n3\n3\n");
        connector.begin(SyncMode::Full, None).await.unwrap();
        assert_eq!(connector.next_page().await.unwrap().unwrap().accounts.len(), 2);
        let e = connector.next_page().await.unwrap_err();
        assert_eq!(e.to_string(), "page 2: line 5: id \"3\" appears again (first on line 4)");
        assert_eq!(e.page(), Some(2));
        // The read is over.
        assert!(connector.next_page().await.is_err());
    }

    #[tokio::test]
    async fn columns_missing_from_the_header_are_configuration_errors() {
        let e = read_error(from_config_map().id_column("employeeId"), 10, b"id,email\n1,a@x\n").await;
        assert!(e.is_stalled());
        assert!(matches!(&e, ConnectorError::Config { field, .. } if field == "spec.provider.csv.idColumn"), "{e:?}");
        assert_eq!(
            e.to_string(),
            "spec.provider.csv.idColumn: column \"employeeId\" is not in the export's header (line 1), which has \"id\", \"email\""
        );
        let e = read_error(from_config_map().column("email", "mail"), 10, b"id,email\n1,a@x\n").await;
        assert!(
            matches!(&e, ConnectorError::Config { field, .. } if field == "spec.provider.csv.columns.email"),
            "{e:?}"
        );
        let e = read_error(from_config_map().column("displayName", "Name"), 10, b"id,email\n").await;
        assert!(matches!(&e, ConnectorError::Config { field, .. } if field == "spec.provider.csv.columns.displayName"));
    }

    #[test]
    fn bad_settings_are_configuration_errors() {
        let build_err = |csv: ConnectionBuilder, inputs: ProviderInputs| {
            let spec = csv.page_size(10).spec();
            build(&spec, inputs).err().unwrap()
        };
        let data = || ProviderInputs { csv_data: Some(b"id\n".to_vec()), ..Default::default() };
        for delimiter in [";;", "\"", "\n", "é"] {
            let e = build_err(from_config_map().delimiter(delimiter), data());
            assert!(e.to_string().starts_with("spec.provider.csv.delimiter: "), "{e}");
        }
        let e = build_err(from_config_map(), ProviderInputs::default());
        assert_eq!(
            e.to_string(),
            "spec.provider.csv.source.configMapKeyRef: no content was supplied for key \"export.csv\" of ConfigMap \"hr\""
        );
        let e = build_err(
            from_config_map().csv_source(CsvSource { config_map_key_ref: None, secret_key_ref: None, url: None }),
            data(),
        );
        assert!(e.to_string().starts_with("spec.provider.csv.source: exactly one"), "{e}");
        let e = build_err(from_config_map().csv_url("http://example.com/x.csv"), data());
        assert!(e.to_string().starts_with("spec.provider.csv.source.url: "), "{e}");
        let mut inputs = ProviderInputs::default();
        inputs.secret.insert("token".into(), vec![0xff]);
        let e = build_err(from_config_map().csv_url("https://hr.example.com/x.csv"), inputs);
        assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"token\" is not valid UTF-8");
        let e = build_err(from_config_map().column("groups", " "), data());
        assert!(e.to_string().starts_with("spec.provider.csv.columns.groups: "), "{e}");
    }

    /// Record boundaries found in a stream agree with the parser wherever
    /// the pieces are cut: reads in pieces of 1..40 bytes equal the whole.
    #[tokio::test]
    async fn any_chunking_gives_the_same_result() {
        let tricky = "\u{FEFF}id,a,b\r\n1,\"x,\r\ny\",\"\"\"q\"\"\"\r2,z\"w,\"p\"\"\"\n\n3,\"\",\r\n4,\"a\"b,c\n5,\"\"\"\",\n\"6\",\"\n\",\"\r\"";
        let bad = "id,a\n1,\"x\n\"\n2,b\n3\n";
        for data in [tricky, HR_EXPORT, bad] {
            let csv = if data == HR_EXPORT { hr_csv() } else { from_config_map() };
            let expected = match read_all(&mut data_connector(csv.clone(), 2, data.as_bytes())).await {
                Ok(pages) => Ok(pages),
                Err(e) => Err(e.to_string()),
            };
            for chunk in 1..40 {
                let mut connector = data_connector(csv.clone(), 2, data.as_bytes());
                connector.data_chunk = chunk;
                let got = read_all(&mut connector).await.map_err(|e| e.to_string());
                assert_eq!(got, expected, "chunk {chunk}");
            }
        }
        let pages = read_all(&mut data_connector(from_config_map(), 10, tricky.as_bytes())).await.unwrap();
        let accounts = accounts(pages);
        let ids: Vec<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3", "4", "5", "6"]);
        assert_eq!(accounts[0].attributes, attrs(&[("a", "x,\r\ny"), ("b", "\"q\"")]));
        assert_eq!(accounts[1].attributes, attrs(&[("a", "z\"w"), ("b", "p\"")]));
        assert_eq!(accounts[3].attributes, attrs(&[("a", "ab"), ("b", "c")]));
        assert_eq!(accounts[5].attributes, attrs(&[("a", "\n"), ("b", "\r")]));
        let e = read_all(&mut data_connector(from_config_map(), 10, bad.as_bytes())).await.unwrap_err();
        assert_eq!(e.to_string(), "page 1: line 5: 1 field, the header has 2");
    }

    // --- URL sources -------------------------------------------------------

    const TOKEN: &str = "csv-TOKEN-7f3a9";

    fn url_connector(url: String, page_size: u32, token: Option<&str>) -> CsvConnector {
        url_connector_with(from_config_map().csv_url(&url), page_size, token)
    }

    /// A connector for `csv` (a url source), with e-mail column `email`.
    fn url_connector_with(csv: ConnectionBuilder, page_size: u32, token: Option<&str>) -> CsvConnector {
        let spec = csv.column("email", "email").page_size(page_size).spec();
        let mut inputs = ProviderInputs::default();
        if let Some(token) = token {
            inputs.secret.insert("token".into(), format!("{token}\n").into_bytes());
        }
        let http = HttpSettings {
            timeout: Duration::from_secs(5),
            requests_per_second: None,
            max_retries: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            address_policy: HttpSettings::from_spec(&spec).address_policy,
        };
        CsvConnector::with_http_settings(&spec, spec.expect_csv(), inputs, http).unwrap()
    }

    fn rows(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("E{i:05},user{i}@example.com\n")).collect()
    }

    fn authorized(parts: &http::request::Parts) -> bool {
        parts.headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
    }

    #[tokio::test]
    async fn reads_a_url_with_the_bearer_token() {
        let server = serve(handler(|_, parts| {
            Box::pin(async move {
                if !authorized(&parts) {
                    return respond(401, &[], "no");
                }
                respond(200, &[("content-type", "text/csv")], format!("id,email\n{}", rows(0..5)))
            })
        }))
        .await;
        let mut connector = url_connector(server.url("/export.csv").to_string(), 2, Some(TOKEN));
        let pages = read_all(&mut connector).await.unwrap();
        assert_eq!(pages.iter().map(|p| p.accounts.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert_eq!(pages[2].accounts[0].email.as_deref(), Some("user4@example.com"));
        assert!(!format!("{connector:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn a_server_error_is_retried() {
        let server = serve(handler(|n, _| {
            Box::pin(async move {
                if n == 0 { respond(500, &[], "oops") } else { respond(200, &[], format!("id,email\n{}", rows(0..3))) }
            })
        }))
        .await;
        let mut connector = url_connector(server.url("/export.csv").to_string(), 10, None);
        let accounts = accounts(read_all(&mut connector).await.unwrap());
        assert_eq!(accounts.len(), 3);
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn a_body_cut_off_fails_on_the_page_being_read() {
        let server = serve(handler(|_, _| {
            Box::pin(async move {
                let (tx, response) = channel_body();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from("id,email\n"))).await;
                    for start in (0..2500).step_by(100) {
                        let _ = tx.send(Ok(Bytes::from(rows(start..start + 100)))).await;
                    }
                    // Half a row, then the connection breaks.
                    let _ = tx.send(Ok(Bytes::from("E02500,us"))).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = tx.send(Err(std::io::Error::other("the server goes away"))).await;
                });
                response
            })
        }))
        .await;
        let mut connector = url_connector(server.url("/export.csv").to_string(), 1000, None);
        connector.begin(SyncMode::Full, None).await.unwrap();
        assert_eq!(connector.next_page().await.unwrap().unwrap().accounts.len(), 1000);
        assert_eq!(connector.next_page().await.unwrap().unwrap().accounts.len(), 1000);
        let e = connector.next_page().await.unwrap_err();
        assert!(matches!(e, ConnectorError::Transport { page: Some(3), .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("page 3: connection closed before the end of the response to GET http://127.0.0.1:"),
            "{text}"
        );
        assert_eq!(server.requests(), 1, "a broken stream is not retried");
    }

    #[tokio::test]
    async fn pages_come_as_the_body_streams() {
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let release = std::sync::Mutex::new(Some(release_rx));
        let server = serve(handler(move |_, _| {
            let release = release.lock().unwrap().take();
            Box::pin(async move {
                let (tx, response) = channel_body();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from(format!("id,email\n{}", rows(0..3))))).await;
                    // The rest only once the test has its first page.
                    if let Some(release) = release {
                        let _ = release.await;
                    }
                    let _ = tx.send(Ok(Bytes::from(rows(3..5)))).await;
                });
                response
            })
        }))
        .await;
        let mut connector = url_connector(server.url("/export.csv").to_string(), 2, None);
        connector.begin(SyncMode::Full, None).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(2), connector.next_page()).await;
        assert_eq!(first.expect("page 1 before the end of the body").unwrap().unwrap().accounts.len(), 2);
        release_tx.send(()).unwrap();
        assert_eq!(connector.next_page().await.unwrap().unwrap().accounts.len(), 2);
        assert_eq!(connector.next_page().await.unwrap().unwrap().accounts.len(), 1);
        assert_eq!(connector.next_page().await.unwrap(), None);
    }

    #[tokio::test]
    async fn unauthorized_urls_stall_and_never_show_the_token() {
        // The server echoes what it was sent, the Authorization header too.
        let server = serve(handler(|_, parts| {
            Box::pin(async move {
                let auth =
                    parts.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                respond(401, &[("www-authenticate", "Bearer")], format!("token rejected: {auth}"))
            })
        }))
        .await;
        let url = format!("{}/export.csv?access_token={TOKEN}", server.base);
        let mut connector = url_connector(url, 10, Some(TOKEN));
        let e = read_all(&mut connector).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
        assert!(e.is_stalled());
        assert_eq!(server.requests(), 1);
        for text in [e.to_string(), format!("{e:?}"), format!("{connector:?}")] {
            assert!(!text.contains(TOKEN), "{text}");
        }
        assert!(e.to_string().contains("HTTP 401 Unauthorized: token rejected: Bearer [REDACTED]"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_url_is_an_http_error() {
        let server = serve(handler(|_, _| Box::pin(async { respond(404, &[], "gone") }))).await;
        let e = read_all(&mut url_connector(server.url("/old.csv").to_string(), 10, None)).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Http { status: 404, page: None, .. }), "{e:?}");
        assert_eq!(server.requests(), 1);
    }

    /// A raw HTTP/1.1 server that answers every request with `head` and
    /// then `body`, and closes the connection: a body cut short.
    async fn raw_server(head: String, body: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        format!("http://{addr}/export.csv")
    }

    /// Short reads never delete: a body that ends before its Content-Length,
    /// or before the last chunk of a chunked body, at a line boundary where
    /// the rows read so far parse, fails the read instead of passing as a
    /// shorter export.
    #[tokio::test]
    async fn a_body_cut_at_a_line_boundary_fails_the_read() {
        let full = format!("id,email\n{}", rows(0..1000));
        let cut = full[..full.len() / 10].rsplit_once('\n').map(|(kept, _)| format!("{kept}\n")).unwrap();
        let length = raw_server(
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ncontent-length: {}\r\n\r\n", full.len()),
            cut.clone(),
        )
        .await;
        let chunked = raw_server(
            "HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
            format!("{:x}\r\n{cut}\r\n", cut.len()),
        )
        .await;
        for url in [length, chunked] {
            let e = read_all(&mut url_connector(url.clone(), 100, None)).await.unwrap_err();
            assert!(
                matches!(e, ConnectorError::Transport { .. } | ConnectorError::Source { .. }),
                "{url}: a cut body was taken as complete: {e:?}"
            );
        }
    }

    /// A row cut inside its last column still has every field: only the
    /// trailing line break policy tells it from a shorter value.
    #[tokio::test]
    async fn require_trailing_newline_fails_a_last_row_without_one() {
        let cut = b"id,email\n1,a@acme.example\n2,b@acme.exa";
        let passed = accounts(read_all(&mut data_connector(from_config_map(), 10, cut)).await.unwrap());
        assert_eq!(passed.len(), 2, "without the policy the cut row passes");
        let strict = || from_config_map().require_trailing_newline();
        let e = read_error(strict(), 10, cut).await;
        assert!(matches!(e, ConnectorError::Source { page: Some(1), .. }), "{e:?}");
        assert!(!e.is_stalled(), "a cut read fails this sync; the next one reads the export again");
        assert_eq!(
            e.to_string(),
            "page 1: the export does not end with a line break, so its last row may have been cut short \
             (spec.provider.csv.requireTrailingNewline is true)"
        );
        for whole in [&b"id,email\n1,a@x\n2,b@x\n"[..], b"id,email\r\n1,a@x\r\n", b"id,email\r1,a@x\r", b"id\n1\n\n"] {
            for chunk in [1, 3, 64] {
                let mut connector = data_connector(strict(), 10, whole);
                connector.data_chunk = chunk;
                read_all(&mut connector).await.unwrap();
            }
        }
        // A header alone without a line break is cut short too.
        assert!(read_error(strict(), 10, b"id,email").await.to_string().contains("does not end with a line break"));
    }

    /// The case nothing in the transfer shows: a close-delimited body (no
    /// Content-Length, not chunked) cut at a line boundary. Only a row
    /// count the source states tells it from a shorter export.
    #[tokio::test]
    async fn a_stated_row_count_fails_a_body_cut_at_a_line_boundary() {
        let full = format!("id,email\n{}", rows(0..1000));
        let cut = full[..full.len() / 10].rsplit_once('\n').map(|(kept, _)| format!("{kept}\n")).unwrap();
        let kept_rows = cut.lines().count() - 1;
        let head =
            |count: &str| format!("HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\n{count}connection: close\r\n\r\n");
        let short = raw_server(head("x-total-count: 1000\r\n"), cut.clone()).await;
        let whole = raw_server(head("X-Total-Count: 1000\r\n"), full.clone()).await;
        let unstated = raw_server(head(""), full.clone()).await;
        let garbled = raw_server(head("x-total-count: lots\r\n"), full.clone()).await;

        // Without the setting a cut body passes as a shorter export.
        let passed = accounts(read_all(&mut url_connector(short.clone(), 100, None)).await.unwrap());
        assert_eq!(passed.len(), kept_rows);

        let counted =
            |url: &str| url_connector_with(from_config_map().csv_url(url).row_count_header("X-Total-Count"), 100, None);
        let e = read_all(&mut counted(&short)).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Source { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "page {}: the export holds {kept_rows} rows but its x-total-count header says 1000: it was cut short or changed while it was read",
                kept_rows / 100 + 1
            )
        );
        let read = accounts(read_all(&mut counted(&whole)).await.unwrap());
        assert_eq!(read.len(), 1000, "a matching count passes");
        for (url, why) in [(unstated, "the response has no x-total-count header"), (garbled, "is not a row count")] {
            let e = read_all(&mut counted(&url)).await.unwrap_err();
            assert!(matches!(e, ConnectorError::Source { page: None, .. }), "{e:?}");
            assert!(e.to_string().contains(why) && e.to_string().contains("spec.provider.csv.rowCountHeader"), "{e}");
        }
    }

    #[test]
    fn a_row_count_header_needs_a_url_source_and_a_header_name() {
        let data = || ProviderInputs { csv_data: Some(b"id\n".to_vec()), ..Default::default() };
        let spec = from_config_map().row_count_header("X-Total-Count").spec();
        let e = build(&spec, data()).err().unwrap();
        assert_eq!(e.to_string(), "spec.provider.csv.rowCountHeader: applies to url sources only");
        let spec = from_config_map().csv_url("https://hr.example.com/x.csv").row_count_header("X Count").spec();
        let e = build(&spec, ProviderInputs::default()).err().unwrap();
        assert_eq!(e.to_string(), "spec.provider.csv.rowCountHeader: \"X Count\" is not an HTTP header name");
    }
}
