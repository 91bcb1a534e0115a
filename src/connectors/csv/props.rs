//! The generated bad-input corpus of the csv provider: arbitrary bytes for
//! the record splitter, and hostile exports (quotes, line breaks, invalid
//! UTF-8, byte order marks, short and long rows) for the whole read. A
//! bounded number of cases per property, so CI's time stays bounded.
//!
//! What must hold whatever the export: nothing panics; how the export is cut
//! into network pieces changes nothing; a read that fails names its line and
//! never quotes a cell it was not asked to name (the export may be a
//! Secret).

use proptest::prelude::*;

use super::records::{Fields, Records, SplitError};
use super::{CsvConnector, ProviderInputs};
use crate::connectors::{Connector, ConnectorError};
use idsync_api::{Connection, SyncMode};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 512,
        // A failure prints its minimal input; no regression files in src/.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes that matter to a CSV parser, often, and any byte, sometimes.
fn csv_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"\",;\r\n a1\xEF\xBB\xBF\xFF\x00".to_vec()),
        1 => any::<u8>(),
    ]
}

type Split = (Vec<(u64, Vec<Vec<u8>>)>, Result<(), SplitError<()>>);

/// The records of `data` fed in pieces of the given sizes (cycled), and how
/// the split ended.
fn split(data: &[u8], delimiter: u8, pieces: &[usize]) -> Split {
    let mut records = Records::new(delimiter);
    let mut got = Vec::new();
    let mut each = |fields: Fields<'_>, line: u64| -> Result<(), ()> {
        got.push((line, fields.iter().map(<[u8]>::to_vec).collect()));
        Ok(())
    };
    let mut rest = data;
    let mut sizes = pieces.iter().copied().cycle();
    let mut result = Ok(());
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, after) = rest.split_at(size);
        rest = after;
        result = records.feed(piece, &mut each);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = records.finish(&mut each);
    }
    (got, result)
}

/// The lines of `data` as the splitter counts them: LF, CR LF and a lone
/// CR each end one.
fn line_count(data: &[u8]) -> u64 {
    let mut lines = 1;
    let mut after_cr = false;
    for &b in data {
        if b == b'\r' || (b == b'\n' && !after_cr) {
            lines += 1;
        }
        after_cr = b == b'\r';
    }
    lines
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes split the same in one piece or in many, records in line
    /// order, every line and column within the input.
    #[test]
    fn any_bytes_split_the_same_in_any_pieces(
        data in prop::collection::vec(csv_byte(), 0..1500),
        pieces in prop::collection::vec(1usize..64, 1..8),
        delimiter in prop::sample::select(vec![b',', b';', b'\t', b'|']),
    ) {
        let whole = split(&data, delimiter, &[data.len().max(1)]);
        let cut = split(&data, delimiter, &pieces);
        prop_assert_eq!(&cut, &whole, "pieces {:?}", pieces);
        let lines = line_count(&data);
        let mut previous = 0;
        for (line, _) in &whole.0 {
            prop_assert!(*line > previous && *line <= lines, "line {} after {} of {}", line, previous, lines);
            previous = *line;
        }
        match whole.1 {
            Ok(()) | Err(SplitError::Record(())) => {}
            Err(SplitError::UnclosedQuote { line, column }) | Err(SplitError::TooLong { line, column, .. }) => {
                prop_assert!(line >= previous && line <= lines, "error on line {} of {}", line, lines);
                prop_assert!(column >= 1 && column <= data.len() + 1, "column {}", column);
            }
        }
    }

    /// A record never grows past the bound, whatever it holds.
    #[test]
    fn no_record_grows_past_its_bound(
        data in prop::collection::vec(csv_byte(), 0..3000),
        max in 16usize..512,
    ) {
        let mut records = Records::new(b',');
        records.max_record = max;
        let mut longest = 0;
        let mut each = |fields: Fields<'_>, _: u64| -> Result<(), ()> {
            longest = longest.max(fields.iter().map(<[u8]>::len).sum::<usize>());
            Ok(())
        };
        let result = records.feed(&data, &mut each).and_then(|()| records.finish(&mut each));
        prop_assert!(longest <= max, "a record of {} bytes passed a bound of {}", longest, max);
        if let Err(SplitError::TooLong { max: said, .. }) = result {
            prop_assert_eq!(said, max);
        }
    }
}

/// Text a cell of the `secret` column starts with: it must never appear in
/// an error, since nothing in an error quotes that column.
const MARKER: &str = "s3cr3t-MARK";

/// A cell built to break a parser: quotes opened and not closed, line
/// breaks of every kind, delimiters, invalid UTF-8, a byte order mark,
/// nothing at all, or plain text.
fn hostile_cell() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\"".to_vec()),
        Just(b"\"\"".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b",".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\xFF\xFE".to_vec()),
        Just("é✓".as_bytes().to_vec()),
        Just(b" ".to_vec()),
        "[a-z0-9@.]{1,8}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(piece, 0..5).prop_map(|pieces| pieces.concat())
}

/// An id: short, from a small alphabet so that ids repeat, sometimes blank.
/// Never a quote or a line break, so no other cell can become an id.
fn id_cell() -> impl Strategy<Value = Vec<u8>> {
    "[AB1 ]{0,3}".prop_map(String::into_bytes)
}

/// Rows of `id,name,secret` (some short, some long), each with a line end.
fn hostile_rows() -> impl Strategy<Value = Vec<u8>> {
    let row = (id_cell(), hostile_cell(), hostile_cell(), 0usize..4, prop::sample::select(vec!["\n", "\r\n", "\r"]));
    prop::collection::vec(row, 0..24).prop_map(|rows| {
        let mut out = b"id,name,secret\n".to_vec();
        for (id, name, secret, shape, end) in rows {
            out.extend_from_slice(&id);
            out.push(b',');
            out.extend_from_slice(&name);
            // The marker follows a delimiter: it never starts a record, so it
            // is never an id (the one cell an error may quote).
            out.push(b',');
            out.extend_from_slice(MARKER.as_bytes());
            out.extend_from_slice(&secret);
            match shape {
                0 => out.extend_from_slice(b",extra"),
                1 => out.extend_from_slice(b","),
                _ => {}
            }
            out.extend_from_slice(end.as_bytes());
        }
        out
    })
}

/// Reads `data` whole through the connector, pages of `page_size`.
fn read(data: &[u8], page_size: u32, chunk: usize) -> Result<usize, ConnectorError> {
    let spec = Connection::test("hr")
        .csv_config_map("hr", "export.csv")
        .id_column("id")
        .column("email", "name")
        .column("groups", "secret")
        .page_size(page_size)
        .spec();
    let inputs = ProviderInputs { csv_data: Some(data.to_vec()), ..Default::default() };
    let mut connector = CsvConnector::new(&spec, spec.expect_csv(), inputs).expect("a valid spec");
    connector.data_chunk = chunk;
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    runtime.block_on(async {
        connector.begin(SyncMode::Full, None).await?;
        let mut accounts = 0;
        while let Some(page) = connector.next_page().await? {
            check_page(&page, page_size);
            accounts += page.accounts.len();
        }
        Ok(accounts)
    })
}

/// A page is never empty and never over the page size.
fn check_page(page: &crate::connectors::Page, page_size: u32) {
    assert!(!page.accounts.is_empty() && page.accounts.len() <= page_size as usize, "page {}", page.number);
}

proptest! {
    #![proptest_config(config(256))]

    /// A hostile export is read or refused with its line; never a panic,
    /// never the content of the secret column in the message.
    #[test]
    fn a_hostile_export_fails_by_line_and_never_quotes_a_cell(
        data in hostile_rows(),
        page_size in 1u32..8,
        chunk in 1usize..200,
    ) {
        let lines = line_count(&data);
        match read(&data, page_size, chunk) {
            Ok(accounts) => prop_assert!(accounts < lines as usize, "{} accounts from {} lines", accounts, lines),
            Err(error) => {
                let message = error.to_string();
                prop_assert!(matches!(error, ConnectorError::Source { .. }), "{:?}", error);
                prop_assert!(!message.contains(MARKER), "a cell reached the error: {}", message);
                let line: Option<u64> = message
                    .split("line ")
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok());
                prop_assert!(line.is_some_and(|l| l >= 2 && l <= lines), "no line in {:?} ({} lines)", message, lines);
            }
        }
    }

    /// Whatever follows the header, bytes of any kind: a result, never a
    /// panic, and the same result however the export is cut.
    #[test]
    fn any_bytes_after_the_header_read_the_same_in_any_chunks(
        body in prop::collection::vec(csv_byte(), 0..1200),
        chunk in 1usize..100,
    ) {
        let mut data = b"id,name,secret\r\n".to_vec();
        data.extend_from_slice(&body);
        let whole = read(&data, 5, data.len()).map_err(|e| e.to_string());
        let cut = read(&data, 5, chunk).map_err(|e| e.to_string());
        prop_assert_eq!(cut, whole);
    }
}
