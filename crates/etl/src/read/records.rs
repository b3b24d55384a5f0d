//! Splitting a block of whole records into fields, as the csv crate's
//! reader with its defaults (`,` delimiter, `"` quotes, `\r`, `\n` or
//! `\r\n` line ends, blank lines skipped) would, without copying the fields
//! of the common record.
//!
//! A record with no quote and no carriage return is split where it stands:
//! its commas and line break are found eight bytes at a time and its
//! fields are slices of the block. Any other record (1 % of the UCI export)
//! goes through `csv_core`, the csv crate's own parser, which unquotes it
//! into a buffer. Both see the same record boundaries: after a record's
//! line end `csv_core` is in its start state (after `\r` it waits to drop
//! a `\n`, which its start state drops as a blank line anyway), so either
//! can take the next record. Line numbers are the csv crate's: a record is
//! reported on the line where reading it began, blank lines before it
//! included.

/// The records of one block, one at a time.
pub(super) struct Records<'a> {
    bytes: &'a [u8],
    /// Where the next record's read begins.
    pos: usize,
    /// 1 + the line breaks consumed (`csv_core::Reader::line`'s count).
    line: u64,
    core: csv_core::Reader,
    /// Each field's end: in `bytes` for a plain record (its comma or line
    /// break), in `unquoted` for one `csv_core` read.
    ends: Vec<usize>,
    /// A plain record's first byte in `bytes`; `None` while the current
    /// record is one `csv_core` read into `unquoted`.
    plain_start: Option<usize>,
    unquoted: Vec<u8>,
}

impl<'a> Records<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        let mut core = csv_core::Reader::new();
        // A blank line: marks the reader as started, so that a record that
        // begins with a byte-order mark keeps it whichever reader takes it
        // (csv_core strips one only before its first read).
        let _ = core.read_record(b"\n", &mut [0; 1], &mut [0; 1]);
        core.set_line(1);
        Self {
            bytes,
            pos: 0,
            line: 1,
            core,
            ends: Vec::with_capacity(16),
            plain_start: Some(0),
            unquoted: Vec::new(),
        }
    }

    /// Line breaks consumed so far (all of them once `next` returned
    /// `None`).
    pub(super) fn newlines(&self) -> u64 {
        self.line - 1
    }

    /// Moves to the next record; returns the line it starts on, or `None`
    /// at the end of the block.
    pub(super) fn next_record(&mut self) -> Option<u64> {
        let (bytes, begin, line) = (self.bytes, self.pos, self.line);
        let start = begin
            + bytes[begin..]
                .iter()
                .position(|&b| b != b'\n')
                .unwrap_or(bytes.len() - begin);
        if start == bytes.len() {
            self.line += (start - begin) as u64;
            self.pos = start;
            return None;
        }
        self.ends.clear();
        if let Some(end) = split_plain(bytes, start, &mut self.ends) {
            self.line += (start - begin) as u64 + u64::from(end < bytes.len());
            self.pos = (end + 1).min(bytes.len());
            self.plain_start = Some(start);
            return Some(line);
        }
        self.plain_start = None;
        self.read_quoted(begin).then_some(line)
    }

    /// Reads the record whose read begins at `begin` with `csv_core`;
    /// `false` if only blank lines were left.
    fn read_quoted(&mut self, begin: usize) -> bool {
        use csv_core::ReadRecordResult as R;
        let line_before = self.core.line();
        let (mut consumed, mut outlen, mut endlen) = (0, 0, 0);
        if self.unquoted.is_empty() {
            self.unquoted.resize(256, 0);
        }
        self.ends.resize(self.ends.capacity().max(16), 0);
        let found = loop {
            let input = &self.bytes[begin + consumed..];
            let (result, nin, nout, nend) = self.core.read_record(
                input,
                &mut self.unquoted[outlen..],
                &mut self.ends[endlen..],
            );
            consumed += nin;
            outlen += nout;
            endlen += nend;
            match result {
                R::OutputFull => self.unquoted.resize(self.unquoted.len() * 2, 0),
                R::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                // csv_core asks for more until it is given an empty input,
                // which ends the last record.
                R::InputEmpty if !input.is_empty() => {}
                R::Record => break true,
                R::InputEmpty | R::End => break false,
            }
        };
        self.ends.truncate(endlen);
        self.line += self.core.line() - line_before;
        self.pos = begin + consumed;
        found
    }

    /// Fields in the current record.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Field `k` of the current record (empty past the last).
    pub(super) fn field(&self, k: usize) -> &[u8] {
        let Some(&end) = self.ends.get(k) else {
            return &[];
        };
        match self.plain_start {
            Some(start) => {
                let from = k.checked_sub(1).map_or(start, |j| self.ends[j] + 1);
                &self.bytes[from..end]
            }
            None => {
                let from = k.checked_sub(1).map_or(0, |j| self.ends[j]);
                &self.unquoted[from..end]
            }
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// 0x80 in each byte of `word` equal to `byte`, 0 in every other (exact:
/// no carry crosses a byte).
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let y = word ^ (ONES * u64::from(byte));
    !(((y & LOW7) + LOW7) | y | LOW7)
}

/// Splits the record that starts at `start` if it is plain (no quote, no
/// carriage return before its line break): pushes each field's end (its
/// comma, or the line break or end of `bytes`) onto `ends` and returns
/// where the record ends. `None` if it is not plain.
fn split_plain(bytes: &[u8], start: usize, ends: &mut Vec<usize>) -> Option<usize> {
    let mut i = start;
    while let Some(word) = bytes.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*word);
        let mut special = bytes_equal(word, b',')
            | bytes_equal(word, b'\n')
            | bytes_equal(word, b'"')
            | bytes_equal(word, b'\r');
        while special != 0 {
            let shift = special.trailing_zeros() & !7;
            let at = i + (shift / 8) as usize;
            match (word >> shift) as u8 {
                b',' => ends.push(at),
                b'\n' => {
                    ends.push(at);
                    return Some(at);
                }
                _ => return None,
            }
            special &= special - 1;
        }
        i += 8;
    }
    for (at, &b) in bytes.iter().enumerate().skip(i) {
        match b {
            b',' => ends.push(at),
            b'\n' => {
                ends.push(at);
                return Some(at);
            }
            b'"' | b'\r' => return None,
            _ => {}
        }
    }
    ends.push(bytes.len());
    Some(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::csv_reader;

    /// Records as (line, fields).
    type Read = Vec<(u64, Vec<Vec<u8>>)>;

    /// Each record as (line, fields), read by the csv crate.
    fn by_csv(text: &[u8]) -> Read {
        let mut reader = csv_reader(text);
        let mut record = csv::ByteRecord::new();
        let mut out = Vec::new();
        while reader.read_byte_record(&mut record).unwrap_or(false) {
            let line = record.position().map_or(0, |p| p.line());
            out.push((line, record.iter().map(<[u8]>::to_vec).collect()));
        }
        out
    }

    /// The same by [`Records`], with the line breaks it counted.
    fn by_records(text: &[u8]) -> (Read, u64) {
        let mut records = Records::new(text);
        let mut out = Vec::new();
        while let Some(line) = records.next_record() {
            let fields = (0..records.len()).map(|k| records.field(k).to_vec());
            out.push((line, fields.collect()));
        }
        (out, records.newlines())
    }

    fn check(text: &[u8]) {
        let (records, newlines) = by_records(text);
        assert_eq!(records, by_csv(text), "{:?}", String::from_utf8_lossy(text));
        assert_eq!(newlines, memchr::memchr_iter(b'\n', text).count() as u64);
    }

    #[test]
    fn records_split_as_the_csv_crate_splits_them() {
        for text in [
            &b""[..],
            b"\n\n",
            b"a",
            b"a,b\nc,d",
            b"a,b\nc,d\n",
            b"\n\na,b,\n,\n\nlonger field,x\n",
            b"a,b\r\nc,d\r\n\r\ne\rf\n",
            b"a,\"b,\"\"c\"\"\nd\",e\nf,g\n",
            b"a,\"unterminated\nb,c\n",
            b"12 \"INCH\",x\n\"\"\ny,z",
            // A byte-order mark after the start is data (csv strips one
            // only at the very start, where a block never starts).
            b"a,b\n\xef\xbb\xbf\"c\",d\n\xef\xbb\xbfe,f\n",
            b"0123456789,0123456789abcdef,\n,,,,,,,,,,,,,,,,,\n",
        ] {
            check(text);
        }
    }

    #[test]
    fn random_text_splits_as_the_csv_crate_splits_it() {
        // Short random texts over the bytes that matter, plus letters.
        let alphabet = b",,\n\n\r\"\"aabbcc \xc3\xa9";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..3000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let mut text = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            // No byte-order mark in the alphabet: csv strips one at the very
            // start, and a block never starts with one (the header does).
            check(&text);
        }
    }

    #[test]
    fn bytes_equal_marks_exactly_the_equal_bytes() {
        for byte in [b',', b'\n', b'"', b'\r', 0, 0x80, 0xff] {
            for word in [
                0u64,
                u64::MAX,
                0x2c0a_222c_0d01_802c,
                0x0100_0100_2d2b_0b09,
                u64::from_le_bytes(*b",\n\"\r,\x00\x01\xff"),
            ] {
                let expected = word
                    .to_le_bytes()
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == byte)
                    .fold(0, |m, (k, _)| m | 0x80 << (8 * k));
                assert_eq!(bytes_equal(word, byte), expected, "{word:x} {byte}");
            }
        }
    }
}
