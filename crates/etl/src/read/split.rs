//! Cutting CSV text into blocks of whole records, so that blocks can be
//! parsed on every core.
//!
//! A record ends at a line break outside a quoted field. Whether a byte is
//! inside one depends on everything before it, so the text is scanned once,
//! in order, jumping from quote to quote (`memchr`): with the CSV crate's
//! defaults a quote opens a quoted field only at the start of a field, `""`
//! inside one is an escaped quote, and any other quote there closes it.

/// What a scan of a growing buffer knows so far.
#[derive(Debug, Default)]
pub(super) struct Cutter {
    /// Bytes of the buffer scanned.
    scanned: usize,
    /// Whether the byte at `scanned` is inside a quoted field.
    in_quotes: bool,
    /// One past the last line break outside quotes in the scanned bytes
    /// (0: none yet).
    boundary: usize,
    /// Where the buffer's first field starts (after a byte-order mark).
    first_field: usize,
    /// Whether the buffer's start was checked for a byte-order mark.
    started: bool,
}

impl Cutter {
    /// Scans `buf` past what was scanned before; `at_end` says no byte
    /// follows it (a quote at its very end then closes its field).
    pub(super) fn scan(&mut self, buf: &[u8], at_end: bool) {
        if !self.started {
            // Not yet enough bytes to tell whether a mark is there.
            if buf.len() < 3 && !at_end && b"\xef\xbb\xbf".starts_with(buf) {
                return;
            }
            self.started = true;
            if buf.starts_with(b"\xef\xbb\xbf") {
                self.first_field = 3;
                self.scanned = 3;
            }
        }
        let mut i = self.scanned;
        while i < buf.len() {
            if self.in_quotes {
                let Some(q) = memchr::memchr(b'"', &buf[i..]).map(|q| i + q) else {
                    i = buf.len();
                    break;
                };
                match buf.get(q + 1) {
                    // An escaped quote: still inside.
                    Some(b'"') => i = q + 2,
                    Some(_) => {
                        self.in_quotes = false;
                        i = q + 1;
                    }
                    None if at_end => {
                        self.in_quotes = false;
                        i = q + 1;
                    }
                    // Whether it is `""` depends on the next byte: wait for it.
                    None => {
                        i = q;
                        break;
                    }
                }
            } else {
                let quote = memchr::memchr(b'"', &buf[i..]).map(|q| i + q);
                let end = quote.unwrap_or(buf.len());
                if let Some(n) = memchr::memrchr(b'\n', &buf[i..end]) {
                    self.boundary = i + n + 1;
                }
                let Some(q) = quote else {
                    i = end;
                    break;
                };
                // Elsewhere in a field a quote is an ordinary byte.
                if q == self.first_field || matches!(buf[q - 1], b',' | b'\n' | b'\r') {
                    self.in_quotes = true;
                }
                i = q + 1;
            }
        }
        self.scanned = i;
    }

    /// One past the last record boundary found (0: none).
    pub(super) fn boundary(&self) -> usize {
        self.boundary
    }

    /// The first `n` bytes (up to a boundary) were cut off the buffer.
    pub(super) fn cut(&mut self, n: usize) {
        self.scanned -= n;
        self.boundary = 0;
        self.first_field = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::csv_reader;

    /// Every boundary the cutter finds, feeding `text` `step` bytes at a
    /// time and cutting whenever it can.
    fn boundaries(text: &[u8], step: usize) -> Vec<usize> {
        let mut cutter = Cutter::default();
        let (mut buf, mut cut_at, mut found) = (Vec::new(), 0, Vec::new());
        for (k, piece) in text.chunks(step).enumerate() {
            buf.extend_from_slice(piece);
            cutter.scan(&buf, (k + 1) * step >= text.len());
            let b = cutter.boundary();
            if b > 0 {
                found.push(cut_at + b);
                cut_at += b;
                buf.drain(..b);
                cutter.cut(b);
            }
        }
        found
    }

    /// The ends of records (one past each line break that ends one) as the
    /// CSV crate reads them.
    fn record_ends(text: &[u8]) -> Vec<usize> {
        let mut reader = csv_reader(text);
        let mut record = csv::ByteRecord::new();
        let mut ends = Vec::new();
        while reader.read_byte_record(&mut record).unwrap_or(false) {
            let mut end = reader.position().byte() as usize;
            // The reader stops after the `\r` of a `\r\n`.
            if text.get(end.wrapping_sub(1)) == Some(&b'\r') && text.get(end) == Some(&b'\n') {
                end += 1;
            }
            if end > 0 && text[end - 1] == b'\n' {
                ends.push(end);
            }
        }
        ends
    }

    #[test]
    fn cuts_only_where_the_csv_reader_ends_a_record() {
        let text = "a,b,c\n\
            \"quoted, with comma\",2,\"two\nlines\"\n\
            plain \"mid-field\" quotes,3,\"\"\"escaped\"\"\nstill inside\"\n\
            \"closed\"then more,4,x\r\n\
            \"\",\"\"\"\",\"\n\"\n\
            last,5,\"ends in a quote\"";
        let expected = record_ends(text.as_bytes());
        assert_eq!(expected.len(), 5);
        for step in 1..=text.len() {
            let got = boundaries(text.as_bytes(), step);
            assert!(
                got.iter().all(|b| expected.contains(b)),
                "step {step}: {got:?} not all in {expected:?}"
            );
            // Cutting as soon as possible finds every record end.
            if step == 1 {
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn a_byte_order_mark_does_not_hide_an_opening_quote() {
        let text = "\u{feff}\"multi\nline header\",b\n1,2\n";
        assert_eq!(boundaries(text.as_bytes(), 1), record_ends(text.as_bytes()));
    }
}
