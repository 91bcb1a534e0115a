//! Splitting a streamed CSV export into records with `csv-core`, and the
//! line each record starts on.
//!
//! `csv-core` does the parsing (quotes, `""` escapes, CR, LF and CR LF
//! record ends, blank lines skipped) on whatever piece of the export has
//! arrived, and keeps its state between pieces, so nothing but the record
//! being read is held here. What it does not do is counted beside it:
//!
//! - **Lines.** `csv-core` counts `\n` only, which puts every record of a
//!   CR-only export on line 1. Here a line ends at LF, CR LF or a lone CR,
//!   inside quoted fields too, and a record's line is the one its first
//!   byte is on.
//! - **An unclosed quote.** At the end of the input `csv-core` ends a
//!   record whose quoted field is still open as if it were closed. That
//!   swallows the rest of the export into one field, so it is reported.
//! - **A bound.** A record longer than `max_record` bytes is refused before
//!   it fills memory (most likely a quote that is never closed).
//!
//! Errors name a line and a column, never the bytes of the record: the
//! export may come from a Secret.

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

const BOM: &[u8] = b"\xEF\xBB\xBF";
/// The longest record accepted by default.
pub(super) const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// The fields of one record.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fields<'a> {
    bytes: &'a [u8],
    /// Where each field ends in `bytes`.
    ends: &'a [usize],
}

impl<'a> Fields<'a> {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        self.ends.iter().scan(0, move |start, &end| {
            let field = &bytes[*start..end];
            *start = end;
            Some(field)
        })
    }
}

/// Why a record could not be read. The caller words it; the column is the
/// 1-based index of the field the record had reached.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SplitError<E> {
    /// The record is longer than `max_record` bytes.
    TooLong { line: u64, column: usize, max: usize },
    /// The export ends inside a quoted field.
    UnclosedQuote { line: u64, column: usize },
    /// The caller refused a record.
    Record(E),
}

/// A record splitter for one export, fed piece by piece.
pub(super) struct Records {
    parser: Reader,
    /// The export's first bytes, held until there are enough to tell
    /// whether they are a byte order mark (`csv-core` strips one only when
    /// it sees it whole in its first input); `None` once released.
    head: Option<Vec<u8>>,
    /// How many bytes of a byte order mark `csv-core` will report as read
    /// and that are not part of any line or record.
    bom_left: usize,
    /// The unescaped fields of the record being read, and where each ends.
    output: Vec<u8>,
    written: usize,
    ends: Vec<usize>,
    ended: usize,
    /// The line of the next byte, from 1.
    line: u64,
    /// The last byte was a CR (the LF of a CR LF starts no new line).
    after_cr: bool,
    /// The line of the record being read; `None` between records.
    record_line: Option<u64>,
    /// The bytes of the export the record being read spans so far.
    record_bytes: usize,
    pub(super) max_record: usize,
}

/// Where the split is, never what the record holds.
impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("line", &self.line)
            .field("record_line", &self.record_line)
            .field("record_bytes", &self.record_bytes)
            .finish_non_exhaustive()
    }
}

impl Records {
    pub(super) fn new(delimiter: u8) -> Self {
        Records {
            // The defaults are the ones the `csv` crate uses: double quotes,
            // `""` escapes, CR, LF and CR LF all end a record, no comments.
            parser: ReaderBuilder::new().delimiter(delimiter).build(),
            head: Some(Vec::new()),
            bom_left: 0,
            output: vec![0; 1024],
            written: 0,
            ends: vec![0; 64],
            ended: 0,
            line: 1,
            after_cr: false,
            record_line: None,
            record_bytes: 0,
            max_record: MAX_RECORD_BYTES,
        }
    }

    /// Splits the next piece of the export, calling `each` with every
    /// record it completes and its line. Stops at the first error.
    pub(super) fn feed<E>(
        &mut self,
        piece: &[u8],
        each: &mut impl FnMut(Fields<'_>, u64) -> Result<(), E>,
    ) -> Result<(), SplitError<E>> {
        let Some(mut head) = self.head.take() else {
            return self.split(piece, false, each);
        };
        head.extend_from_slice(piece);
        if head.len() < BOM.len() && BOM.starts_with(&head) {
            self.head = Some(head);
            return Ok(());
        }
        self.bom_left = if head.starts_with(BOM) { BOM.len() } else { 0 };
        self.split(&head, false, each)
    }

    /// Ends the export: completes its last record, if it has one.
    pub(super) fn finish<E>(
        &mut self,
        each: &mut impl FnMut(Fields<'_>, u64) -> Result<(), E>,
    ) -> Result<(), SplitError<E>> {
        if let Some(head) = self.head.take() {
            // Too short to be a byte order mark.
            self.split(&head, false, each)?;
        }
        if let Some(line) = self.record_line {
            // Does a line break end the record? Only outside quotes. (The
            // parser itself is asked: its `Clone` does not copy a working
            // parser, and past the end its state no longer matters.)
            if self.written == self.output.len() {
                self.output.push(0);
            }
            if self.ended == self.ends.len() {
                self.ends.push(0);
            }
            let column = self.ended + 1;
            let (result, _, written, ended) =
                self.parser.read_record(b"\n", &mut self.output[self.written..], &mut self.ends[self.ended..]);
            if result != ReadRecordResult::Record {
                return Err(SplitError::UnclosedQuote { line, column });
            }
            self.written += written;
            self.ended += ended;
            self.record_line = None;
            return self.emit(line, each);
        }
        self.split(&[], true, each)
    }

    /// Splits `input`; at the end, `input` is empty.
    fn split<E>(
        &mut self,
        mut input: &[u8],
        at_end: bool,
        each: &mut impl FnMut(Fields<'_>, u64) -> Result<(), E>,
    ) -> Result<(), SplitError<E>> {
        loop {
            // An empty input tells `csv-core` the export has ended: only
            // pass one at the end.
            if input.is_empty() && !at_end {
                return Ok(());
            }
            let (result, read, written, ended) =
                self.parser.read_record(input, &mut self.output[self.written..], &mut self.ends[self.ended..]);
            self.count(&input[..read]);
            input = &input[read..];
            self.written += written;
            self.ended += ended;
            if self.record_bytes > self.max_record {
                let line = self.record_line.unwrap_or(self.line);
                return Err(SplitError::TooLong { line, column: self.ended + 1, max: self.max_record });
            }
            match result {
                ReadRecordResult::InputEmpty | ReadRecordResult::End => return Ok(()),
                // Room for the rest of the record: it is bounded by
                // `max_record`, checked above as it is read.
                ReadRecordResult::OutputFull => self.output.resize(self.output.len() * 2, 0),
                ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                ReadRecordResult::Record => {
                    let line = self.record_line.take().unwrap_or(self.line);
                    self.emit(line, each)?;
                }
            }
        }
    }

    /// Hands out the record just read and starts the next one.
    fn emit<E>(
        &mut self,
        line: u64,
        each: &mut impl FnMut(Fields<'_>, u64) -> Result<(), E>,
    ) -> Result<(), SplitError<E>> {
        let fields = Fields { bytes: &self.output[..self.written], ends: &self.ends[..self.ended] };
        let done = each(fields, line);
        self.written = 0;
        self.ended = 0;
        self.record_bytes = 0;
        done.map_err(SplitError::Record)
    }

    /// Follows the lines and the record being read over bytes `csv-core`
    /// has read: between records, CR and LF are blank lines it skips, and
    /// any other byte starts a record.
    fn count(&mut self, read: &[u8]) {
        let skip = self.bom_left.min(read.len());
        self.bom_left -= skip;
        for &b in &read[skip..] {
            let line_end = b == b'\n' || b == b'\r';
            if self.record_line.is_none() && !line_end {
                self.record_line = Some(self.line);
            }
            if self.record_line.is_some() {
                self.record_bytes += 1;
            }
            if b == b'\r' || (b == b'\n' && !self.after_cr) {
                self.line += 1;
            }
            self.after_cr = b == b'\r';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Split = (Vec<(u64, Vec<String>)>, Result<(), SplitError<()>>);

    /// The records of `data` fed in pieces of `piece` bytes, with their
    /// lines, and how the split ended.
    fn split(data: &[u8], piece: usize) -> Split {
        let mut records = Records::new(b',');
        let mut got = Vec::new();
        let mut each = |fields: Fields<'_>, line: u64| -> Result<(), ()> {
            got.push((line, fields.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()));
            Ok(())
        };
        let mut result = Ok(());
        for chunk in data.chunks(piece) {
            result = records.feed(chunk, &mut each);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = records.finish(&mut each);
        }
        (got, result)
    }

    fn lines(data: &[u8]) -> Vec<u64> {
        let (records, result) = split(data, data.len().max(1));
        assert_eq!(result, Ok(()));
        records.into_iter().map(|(line, _)| line).collect()
    }

    #[test]
    fn each_line_ending_counts_one_line() {
        for end in ["\n", "\r\n", "\r"] {
            let data = ["id,name", "1,a", "", "2,b", "3,c"].join(end);
            assert_eq!(lines(data.as_bytes()), [1, 2, 4, 5], "{end:?}");
            assert_eq!(lines(format!("{data}{end}{end}").as_bytes()), [1, 2, 4, 5], "{end:?}");
        }
        // Mixed, as an export edited by hand may be.
        assert_eq!(lines(b"h\r\n1\r2\n\r\n3\n\r4"), [1, 2, 3, 5, 7]);
    }

    #[test]
    fn a_record_with_line_breaks_in_quotes_is_on_the_line_it_starts_on() {
        for end in ["\n", "\r\n", "\r"] {
            let data = format!("h,n{end}1,\"two{end}lines\"{end}2,\"{end}{end}\"{end}3,x");
            let (records, result) = split(data.as_bytes(), 1000);
            assert_eq!(result, Ok(()));
            let got: Vec<u64> = records.iter().map(|(line, _)| *line).collect();
            assert_eq!(got, [1, 2, 4, 7], "{end:?}");
            assert_eq!(records[1].1, ["1".to_string(), format!("two{end}lines")]);
        }
    }

    #[test]
    fn any_piece_size_gives_the_same_records_and_lines() {
        let data = "\u{FEFF}id,a\r\n1,\"x,\r\ny\"\r2,\"\"\"q\"\"\"\n\n\r3,\"\r\",\"a\"b\r\n,\r4";
        let whole = split(data.as_bytes(), data.len());
        assert_eq!(whole.1, Ok(()));
        assert_eq!(whole.0.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [1, 2, 4, 7, 9, 10]);
        assert_eq!(whole.0[0].1, ["id", "a"], "the byte order mark is dropped");
        assert_eq!(whole.0[3].1, ["3", "\r", "ab"]);
        for piece in 1..data.len() {
            assert_eq!(split(data.as_bytes(), piece), whole, "pieces of {piece}");
        }
    }

    #[test]
    fn a_byte_order_mark_is_dropped_once_and_only_whole() {
        assert_eq!(split(b"\xEF\xBB\xBF\n\n", 1), (vec![], Ok(())));
        assert_eq!(split(b"\xEF\xBB\xBFa\n", 1).0, [(1, vec!["a".to_string()])]);
        // Not a byte order mark: kept as data.
        let (records, _) = split(b"\xEF\xBB", 1);
        assert_eq!(records, [(1, vec![String::from_utf8_lossy(b"\xEF\xBB").into_owned()])]);
        assert_eq!(split(b"\xEF\xBB\xBF\xEF\xBB\xBFa", 2).0[0].1[0].as_bytes(), b"\xEF\xBB\xBFa");
    }

    #[test]
    fn an_unclosed_quote_names_the_record_line_and_the_column() {
        for end in ["\n", "\r\n", "\r"] {
            let data = format!("h,n,m{end}1,a,b{end}2,x,\"open{end}and{end}never closed{end}");
            for piece in [1, 3, 1000] {
                let (records, result) = split(data.as_bytes(), piece);
                assert_eq!(records.len(), 2);
                assert_eq!(result, Err(SplitError::UnclosedQuote { line: 3, column: 3 }), "{end:?} {piece}");
            }
        }
        // A quote closed right at the end is a record.
        assert_eq!(split(b"h\n\"a\"", 1), (vec![(1, vec!["h".into()]), (2, vec!["a".into()])], Ok(())));
    }

    #[test]
    fn a_record_longer_than_the_bound_is_refused_as_it_grows() {
        let mut records = Records::new(b',');
        records.max_record = 5000;
        let mut seen = 0;
        let mut each = |_: Fields<'_>, _: u64| -> Result<(), ()> {
            seen += 1;
            Ok(())
        };
        records.feed(b"h,n\r1,a\r2,\"", &mut each).unwrap();
        let mut fed = 0;
        let result = loop {
            fed += 1;
            if let Err(e) = records.feed(&[b'x'; 100], &mut each) {
                break e;
            }
            assert!(fed < 100, "never refused");
        };
        assert_eq!(result, SplitError::TooLong { line: 3, column: 2, max: 5000 });
        assert_eq!(fed, 50, "refused as soon as it is too long");
        assert_eq!(seen, 2);
        assert!(records.output.len() <= 2 * 5000, "memory stays bounded: {}", records.output.len());
    }

    #[test]
    fn debug_shows_no_content() {
        let mut records = Records::new(b',');
        records.feed(b"id,password\n1,hunter2", &mut |_, _| -> Result<(), ()> { Ok(()) }).unwrap();
        let debug = format!("{records:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("104, 117"), "{debug}");
        assert!(debug.contains("record_line: Some(2)"), "{debug}");
    }

    #[test]
    fn a_refused_record_stops_the_split_with_its_line() {
        let mut records = Records::new(b';');
        let mut each =
            |fields: Fields<'_>, line: u64| -> Result<(), u64> { if fields.len() == 2 { Ok(()) } else { Err(line) } };
        assert_eq!(records.feed(b"a;b\r1;2\r3\r4;5\r", &mut each), Err(SplitError::Record(3)));
    }
}
