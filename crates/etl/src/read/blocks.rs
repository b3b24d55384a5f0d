//! Parsing CSV text on every core: one thread reads the input
//! (decompressing it, for a gzip file) and cuts it into blocks of whole
//! records ([`super::split::Cutter`]), worker threads parse blocks as they
//! come, and the calling thread merges them in input order. Block buffers
//! go back to the reading thread once parsed, so the text passes through
//! a few buffers that stay mapped instead of a fresh one per block.

use std::io::Read;

use super::records::Records;
use super::{Column, Interner, PushError, RawTable, csv_reader, split, too_large};
use crate::{EtlError, Result};

/// Text a parse block holds at least: it ends at the first record boundary
/// after this many bytes (or at the end of the input).
const BLOCK_BYTES: usize = 1 << 20;
/// Blocks read ahead of the parsers.
const READ_AHEAD_BLOCKS: usize = 4;
/// Bytes read from the input at a time.
const READ_BYTES: usize = 1 << 18;

/// Why no next block.
enum SourceError {
    Io(std::io::Error),
    TooLarge,
}

/// The input cut into blocks of whole records ([`split::Cutter`]), with a
/// bound on the bytes read.
struct Blocks<R> {
    input: R,
    /// [`BLOCK_BYTES`], but for tests.
    block_bytes: usize,
    buf: Vec<u8>,
    cutter: split::Cutter,
    at_end: bool,
    read: u64,
    max_bytes: u64,
    /// Buffers of parsed blocks, to hold the next blocks.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl<R: Read> Blocks<R> {
    fn new(
        input: R,
        max_bytes: u64,
        block_bytes: usize,
        spare: std::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Self {
        let mut blocks = Self {
            input,
            block_bytes,
            buf: Vec::new(),
            cutter: split::Cutter::default(),
            at_end: false,
            read: 0,
            max_bytes,
            spare,
        };
        blocks.buf.reserve_exact(blocks.capacity());
        blocks
    }

    /// The next block: at least `block_bytes` of whole records, or the
    /// rest of the input; `None` once it has all been returned.
    fn next_block(&mut self) -> std::result::Result<Option<Vec<u8>>, SourceError> {
        loop {
            if self.at_end {
                return Ok((!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf)));
            }
            if self.buf.len() >= self.block_bytes {
                self.cutter.scan(&self.buf, false);
                let cut = self.cutter.boundary();
                if cut > 0 {
                    let mut rest = self.spare.try_recv().unwrap_or_default();
                    rest.clear();
                    // Exactly: `reserve` would double a smaller spare (the
                    // header's block is one), and capacities would ratchet up.
                    rest.reserve_exact(self.capacity());
                    rest.extend_from_slice(&self.buf[cut..]);
                    let mut block = std::mem::replace(&mut self.buf, rest);
                    block.truncate(cut);
                    self.cutter.cut(cut);
                    return Ok(Some(block));
                }
            }
            let n = self.fill().map_err(SourceError::Io)?;
            self.read += n as u64;
            if self.read > self.max_bytes {
                return Err(SourceError::TooLarge);
            }
            self.at_end = n < READ_BYTES;
        }
    }

    /// The capacity of a block buffer: a block is cut once it holds
    /// `block_bytes`, after a read of at most [`READ_BYTES`], so with room
    /// for both from the start a buffer never doubles (and copies) its way
    /// up. (Tests read in blocks of up to the whole input: those grow.)
    fn capacity(&self) -> usize {
        self.block_bytes.min(BLOCK_BYTES) + READ_BYTES
    }

    /// Appends up to [`READ_BYTES`] of input to the buffer (fewer only at
    /// the end of the input); returns how many.
    fn fill(&mut self) -> std::io::Result<usize> {
        let start = self.buf.len();
        self.buf.resize(start + READ_BYTES, 0);
        let mut filled = 0;
        while filled < READ_BYTES {
            match self.input.read(&mut self.buf[start + filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(start + filled);
        Ok(filled)
    }
}

/// Where the mapped columns are in each record.
struct Layout {
    /// Fields per record (the header's).
    width: usize,
    /// (field, header as written, its index in a record), in column order.
    mapping: Vec<(Column, String, usize)>,
}

/// The header of an export: the first record with a non-empty field.
/// Returns its layout, and where the data starts in `block` (byte offset,
/// and line breaks before it), or `None` if `block` holds no such record.
fn read_header(block: &[u8], file: &str) -> Result<Option<(Layout, usize, u64)>> {
    let mut reader = csv_reader(block);
    let mut record = csv::ByteRecord::new();
    let header: Vec<String> = loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| EtlError::Csv {
                file: file.to_string(),
                message: e.to_string(),
            })?;
        if !more {
            return Ok(None);
        }
        // Leading blank lines are skipped by the reader; a header of empty
        // names is not a header.
        if record.iter().any(|f| !f.is_empty()) {
            break record
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
        }
    };
    let mut mapping: Vec<(Column, String, usize)> = Vec::new();
    for (index, name) in header.iter().enumerate() {
        if let Some(col) = Column::from_header(name) {
            if let Some((_, first, _)) = mapping.iter().find(|(c, _, _)| *c == col) {
                return Err(EtlError::DuplicateColumn {
                    file: file.to_string(),
                    column: col.name(),
                    first: first.clone(),
                    second: name.to_string(),
                });
            }
            mapping.push((col, name.to_string(), index));
        }
    }
    for col in Column::ALL.into_iter().filter(|c| c.required()) {
        if !mapping.iter().any(|(c, _, _)| *c == col) {
            return Err(EtlError::MissingColumn {
                file: file.to_string(),
                column: col.name(),
                accepted: col.aliases().join(", "),
                found: header.join(", "),
            });
        }
    }
    let position = reader.position();
    let start = usize::try_from(position.byte()).unwrap_or(block.len());
    let layout = Layout {
        width: header.len(),
        mapping,
    };
    Ok(Some((layout, start.min(block.len()), position.line() - 1)))
}

/// A block's records, with lines counted from the block's start (1 = its
/// first line). Each worker interns into its own [`Interner`]s, kept from
/// block to block.
struct ParsedBlock {
    worker: usize,
    columns: Vec<BlockColumn>,
    lines: Vec<u64>,
    /// Line breaks in the block.
    newlines: u64,
}

/// One column of a parsed block.
struct BlockColumn {
    /// The values the worker first saw in this block, in the order it saw
    /// them (its ids for them follow those of its earlier blocks).
    new_values: Vec<Box<str>>,
    /// Each row's id, in the worker's numbering.
    ids: Vec<u32>,
}

/// What is wrong with a record of a block (its line counted from the
/// block's start).
enum BlockError {
    Utf8 {
        line: u64,
        field: usize,
        value: String,
        source: std::str::Utf8Error,
    },
    Width {
        line: u64,
        found: usize,
    },
    TooManyValues,
}

type BlockResult = std::result::Result<ParsedBlock, BlockError>;

/// Parses one block of whole records on worker `worker`, into its interners;
/// `expected_rows` sizes the block's row vectors (they grow past it if need be).
fn parse_block(
    bytes: &[u8],
    layout: &Layout,
    worker: usize,
    interners: &mut [Interner],
    expected_rows: usize,
) -> BlockResult {
    let mut records = Records::new(bytes);
    for interner in interners.iter_mut() {
        interner.column.ids.clear();
        interner.column.ids.reserve(expected_rows);
    }
    let mut lines = Vec::with_capacity(expected_rows);
    while let Some(line) = records.next_record() {
        if records.len() == 1 && records.field(0).is_empty() {
            continue; // a record of one empty field (`""`)
        }
        if records.len() != layout.width {
            return Err(BlockError::Width {
                line,
                found: records.len(),
            });
        }
        for (field, ((_, _, index), interner)) in
            layout.mapping.iter().zip(interners.iter_mut()).enumerate()
        {
            let bytes = records.field(*index);
            interner.push(bytes).map_err(|e| match e {
                PushError::Utf8(source) => BlockError::Utf8 {
                    line,
                    field,
                    value: String::from_utf8_lossy(bytes).chars().take(80).collect(),
                    source,
                },
                PushError::TooMany => BlockError::TooManyValues,
            })?;
        }
        lines.push(line);
    }
    Ok(ParsedBlock {
        worker,
        columns: interners
            .iter_mut()
            .map(|i| {
                let new_values = std::mem::take(&mut i.column.values);
                i.handed_on += new_values.len();
                BlockColumn {
                    new_values,
                    ids: std::mem::take(&mut i.column.ids),
                }
            })
            .collect(),
        lines,
        newlines: records.newlines(),
    })
}

/// The whole table, built from blocks in input order.
struct Merged<'a> {
    file: &'a str,
    layout: &'a Layout,
    interners: Vec<Interner>,
    /// Per worker and column, the global id of each of the worker's ids.
    global_ids: Vec<Vec<Vec<u32>>>,
    /// Per column, each merged block's rows as global ids: joined once at
    /// the end, at their final size, instead of growing one vector.
    id_blocks: Vec<Vec<Vec<u32>>>,
    /// Each merged block's line numbers, joined likewise.
    line_blocks: Vec<Vec<u32>>,
    /// Line breaks before the next block.
    line_offset: u64,
}

impl Merged<'_> {
    /// Appends the next block: its values get the ids they would have had
    /// had the file been read in one pass (first seen, first numbered).
    fn push(&mut self, block: BlockResult) -> Result<()> {
        let block = block.map_err(|e| self.block_error(e))?;
        if self.global_ids.len() <= block.worker {
            let columns = self.interners.len();
            self.global_ids
                .resize(block.worker + 1, vec![Vec::new(); columns]);
        }
        let global_ids = &mut self.global_ids[block.worker];
        for (
            (
                (
                    global,
                    BlockColumn {
                        new_values,
                        mut ids,
                    },
                ),
                remap,
            ),
            blocks,
        ) in self
            .interners
            .iter_mut()
            .zip(block.columns)
            .zip(global_ids.iter_mut())
            .zip(self.id_blocks.iter_mut())
        {
            for value in new_values {
                remap.push(global.intern(value).map_err(|_| too_many_values())?);
            }
            for id in &mut ids {
                *id = remap[*id as usize];
            }
            blocks.push(ids);
        }
        let lines = block
            .lines
            .iter()
            .map(|line| u32::try_from(line + self.line_offset))
            .collect::<std::result::Result<Vec<u32>, _>>()
            .map_err(|_| EtlError::Csv {
                file: self.file.to_string(),
                message: "more than 2^32 lines".into(),
            })?;
        self.line_blocks.push(lines);
        self.line_offset += block.newlines;
        Ok(())
    }

    /// Appends the parsed blocks that come next in input order; `count`
    /// is the number merged so far.
    fn push_ready(
        &mut self,
        done: &mut std::collections::BTreeMap<usize, BlockResult>,
        count: &mut usize,
    ) -> Result<()> {
        while let Some(block) = done.remove(count) {
            self.push(block)?;
            *count += 1;
        }
        Ok(())
    }

    fn block_error(&self, e: BlockError) -> EtlError {
        match e {
            BlockError::Utf8 {
                line,
                field,
                value,
                source,
            } => {
                let (col, name, _) = &self.layout.mapping[field];
                EtlError::InvalidField {
                    file: self.file.to_string(),
                    line: line + self.line_offset,
                    column: name.clone(),
                    value,
                    problem: format!("not valid UTF-8 ({source}) in column {}", col.name()),
                }
            }
            BlockError::Width { line, found } => EtlError::Csv {
                file: self.file.to_string(),
                message: format!(
                    "line {}: a record of {found} fields where the header has {}",
                    line + self.line_offset,
                    self.layout.width
                ),
            },
            BlockError::TooManyValues => too_many_values(),
        }
    }

    fn finish(mut self) -> Result<RawTable> {
        let rows = self.line_blocks.iter().map(Vec::len).sum();
        if rows == 0 {
            return Err(EtlError::Empty {
                file: self.file.to_string(),
            });
        }
        let mut lines = Vec::with_capacity(rows);
        for block in std::mem::take(&mut self.line_blocks) {
            lines.extend_from_slice(&block);
        }
        // A column's blocks are freed as soon as they are joined, so memory
        // holds at most one joined column per core besides the blocks.
        let id_blocks: Vec<std::sync::Mutex<Vec<Vec<u32>>>> = std::mem::take(&mut self.id_blocks)
            .into_iter()
            .map(std::sync::Mutex::new)
            .collect();
        let joined = crate::map_on_every_core(id_blocks.len(), 1, |column| {
            let blocks = std::mem::take(
                &mut *id_blocks[column]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            let mut ids = Vec::with_capacity(rows);
            for block in blocks {
                ids.extend_from_slice(&block);
            }
            ids
        });
        for (interner, ids) in self.interners.iter_mut().zip(joined) {
            interner.column.ids = ids;
        }
        Ok(RawTable {
            file: self.file.to_string(),
            columns: self
                .layout
                .mapping
                .iter()
                .zip(self.interners)
                .map(|((col, name, _), interner)| (*col, name.clone(), interner.column))
                .collect(),
            lines,
        })
    }
}

fn too_many_values() -> EtlError {
    EtlError::Schema("more than 2^32 distinct values".into())
}

/// Parses CSV text from `input` into interned columns, on every core: the
/// text is cut into blocks of whole records ([`split::Cutter`]), workers
/// parse blocks as they come, and the blocks are merged in input order, so
/// the table, its value ids, its line numbers and the first error in the
/// file are those of reading it in one pass.
pub(super) fn parse_csv<R: Read + Send>(input: R, file: &str, max_bytes: u64) -> Result<RawTable> {
    parse_csv_in_blocks(input, file, max_bytes, BLOCK_BYTES)
}

/// [`parse_csv`] with blocks of at least `block_bytes`.
fn parse_csv_in_blocks<R: Read + Send>(
    input: R,
    file: &str,
    max_bytes: u64,
    block_bytes: usize,
) -> Result<RawTable> {
    let source_error = |e: SourceError| match e {
        SourceError::Io(source) => EtlError::Io {
            path: file.to_string(),
            source,
        },
        SourceError::TooLarge => too_large(file, max_bytes),
    };
    let stopped = |what: &str| EtlError::Csv {
        file: file.to_string(),
        message: format!("the {what} thread stopped"),
    };
    std::thread::scope(|scope| -> Result<RawTable> {
        // The reading thread: blocks of text, a few ahead of the parsers,
        // then `None`.
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (text_tx, text_rx) = std::sync::mpsc::sync_channel(READ_AHEAD_BLOCKS);
        scope.spawn(move || {
            let mut blocks = Blocks::new(input, max_bytes, block_bytes, spare_rx);
            loop {
                let next = blocks.next_block();
                let last = !matches!(next, Ok(Some(_)));
                if text_tx.send(next).is_err() || last {
                    break;
                }
            }
        });
        let next_block = || -> Result<std::result::Result<Option<Vec<u8>>, SourceError>> {
            text_rx.recv().map_err(|_| stopped("reading"))
        };
        // The header, and the block it is in.
        let mut line_offset = 0;
        let (layout, first) = loop {
            let Some(block) = next_block()?.map_err(source_error)? else {
                return Err(EtlError::Empty {
                    file: file.to_string(),
                });
            };
            let header = read_header(&block, file)?;
            let found = match header {
                Some((layout, start, header_lines)) => {
                    line_offset += header_lines;
                    Some((layout, block[start..].to_vec()))
                }
                None => {
                    line_offset += memchr::memchr_iter(b'\n', &block).count() as u64;
                    None
                }
            };
            let _ = spare_tx.send(block);
            if let Some(found) = found {
                break found;
            }
        };
        let mut merged = Merged {
            file,
            layout: &layout,
            interners: layout.mapping.iter().map(|_| Interner::default()).collect(),
            global_ids: Vec::new(),
            id_blocks: layout.mapping.iter().map(|_| Vec::new()).collect(),
            line_blocks: Vec::new(),
            line_offset,
        };
        let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        std::thread::scope(|workers_scope| -> Result<()> {
            let (block_tx, block_rx) =
                std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(2 * workers);
            // Shared by the workers only: once they are all gone, sending
            // fails instead of waiting.
            let block_rx = std::sync::Arc::new(std::sync::Mutex::new(block_rx));
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            for worker in 0..workers {
                let (block_rx, done_tx, spare_tx, layout) =
                    (block_rx.clone(), done_tx.clone(), spare_tx.clone(), &layout);
                workers_scope.spawn(move || {
                    let mut interners: Vec<Interner> =
                        layout.mapping.iter().map(|_| Interner::default()).collect();
                    loop {
                        let next = match block_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        let Ok((index, bytes)) = next else { break };
                        // A block has at most one record per line break (and
                        // one after the last): its row vectors are allocated
                        // once at that size instead of doubling their way up,
                        // every step a fresh copy.
                        let expected_rows = memchr::memchr_iter(b'\n', &bytes).count() + 1;
                        let block =
                            parse_block(&bytes, layout, worker, &mut interners, expected_rows);
                        // The reading thread may be done: then the buffer is freed.
                        let _ = spare_tx.send(bytes);
                        if done_tx.send((index, block)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop((block_rx, done_tx));
            // Blocks parsed but not merged yet, by index; blocks sent and merged.
            let mut done = std::collections::BTreeMap::new();
            let (mut sent, mut merged_count) = (0usize, 0usize);
            let (mut next, mut failed) = (Some(first), None);
            while let Some(bytes) = next.take() {
                block_tx
                    .send((sent, bytes))
                    .map_err(|_| stopped("parser"))?;
                sent += 1;
                while let Ok((index, block)) = done_rx.try_recv() {
                    done.insert(index, block);
                }
                merged.push_ready(&mut done, &mut merged_count)?;
                match next_block()? {
                    Ok(block) => next = block,
                    Err(e) => failed = Some(e),
                }
            }
            drop(block_tx);
            // An error in the text before the point where reading failed
            // comes first, as it would reading in one pass.
            while merged_count < sent {
                let (index, block) = done_rx.recv().map_err(|_| stopped("parser"))?;
                done.insert(index, block);
                merged.push_ready(&mut done, &mut merged_count)?;
            }
            match failed {
                Some(e) => Err(source_error(e)),
                None => Ok(()),
            }
        })?;
        merged.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic export with the awkward bits of real ones: a byte-order
    /// mark, blank lines, CRLF line ends, quoted fields with commas, quotes
    /// and line breaks, quotes in the middle of unquoted fields.
    fn awkward_csv() -> String {
        let data = crate::synth::generate(&crate::synth::SynthConfig {
            n_invoices: 60,
            ..Default::default()
        });
        let mut text = String::from("\u{feff}");
        for (i, line) in data.csv.lines().enumerate() {
            text.push_str(line);
            text.push_str(match i % 7 {
                3 => "\r\n",
                5 => "\n\n",
                _ => "\n",
            });
            if i % 11 == 4 {
                text.push_str(
                    "536999,\"22,\"\"Q\"\"\",\"TWO\nLINES, \"\"QUOTED\"\"\n\",6,\
                     2010-12-01 08:26:00,2.55,17850,United Kingdom\n\
                     537000,85 \"INCH\",12 \"INCH\" RULER,1,2010-12-01 09:00:00,0.5,,EIRE\n",
                );
            }
        }
        text
    }

    fn table(text: &str, block_bytes: usize) -> Result<RawTable> {
        parse_csv_in_blocks(text.as_bytes(), "t.csv", u64::MAX, block_bytes)
    }

    /// Block buffers keep one capacity however the spares come back,
    /// smaller ones (the header's block is a copy of its records) included:
    /// growing a spare to the last buffer's capacity with `reserve` doubles
    /// one of more than half that size, and then every buffer after it (a
    /// first version of the exact capacity did: on the UCI file, buffers of
    /// tens of MiB and a read 25 times slower).
    #[test]
    fn block_buffers_keep_one_capacity() {
        // Reads are of `READ_BYTES`: enough text for a dozen of them.
        let one = awkward_csv();
        let text = one.repeat(12 * READ_BYTES / one.len() + 1);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel();
        let mut blocks = Blocks::new(text.as_bytes(), u64::MAX, 4096, spare_rx);
        let capacity = blocks.capacity();
        let mut seen = 0;
        while let Ok(Some(block)) = blocks.next_block() {
            assert!(
                block.capacity() <= capacity,
                "{} > {capacity}",
                block.capacity()
            );
            // Every other spare comes back smaller than a block buffer, but
            // more than half its size (as the header's block does).
            let spare = if seen % 2 == 0 {
                let mut smaller = Vec::with_capacity(capacity * 3 / 4);
                smaller.extend_from_slice(&block[..100]);
                smaller
            } else {
                block
            };
            spare_tx.send(spare).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
        assert!(seen > 10, "{seen} blocks");
    }

    #[test]
    fn blocks_of_any_size_read_like_one_pass() {
        let text = awkward_csv();
        let one = table(&text, usize::MAX).unwrap_or_else(|e| panic!("{e}"));
        assert!(one.height() > 200, "{}", one.height());
        let descriptions = one
            .strings(Column::Description)
            .map(|c| c.distinct().to_vec());
        assert!(descriptions.is_some_and(|d| d.iter().any(|v| &**v == "TWO\nLINES, \"QUOTED\"\n")));
        for block_bytes in [1, 2, 5, 64, 1000, 4096] {
            let t = table(&text, block_bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(t.height(), one.height(), "blocks of {block_bytes}");
            for col in Column::ALL {
                let (a, b) = (one.strings(col), t.strings(col));
                assert_eq!(a.map(|c| c.distinct()), b.map(|c| c.distinct()), "{col:?}");
                assert_eq!(a.map(|c| c.ids()), b.map(|c| c.ids()), "{col:?}");
            }
            assert_eq!(t.lines, one.lines, "blocks of {block_bytes}");
        }
    }

    #[test]
    fn the_first_bad_record_is_reported_whatever_the_blocks() {
        let text = awkward_csv();
        let lines: Vec<&str> = text.split('\n').collect();
        let (bad_utf8, ragged) = (lines.len() / 2, lines.len() * 3 / 4);
        let mut bytes = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(line.as_bytes());
            if i == bad_utf8 {
                bytes.extend_from_slice(b"\n1,2,caf\xe9,3,2010-12-01 08:26:00,1.0,1,X");
            }
            if i == ragged {
                bytes.extend_from_slice(b"\n1,2,3");
            }
        }
        let parse = |block_bytes| {
            parse_csv_in_blocks(&bytes[..], "t.csv", u64::MAX, block_bytes)
                .map(|t| t.height())
                .unwrap_err()
                .to_string()
        };
        let one = parse(usize::MAX);
        assert!(one.contains("not valid UTF-8"), "{one}");
        for block_bytes in [1, 64, 4096] {
            assert_eq!(parse(block_bytes), one, "blocks of {block_bytes}");
        }
        // Without the bad value the ragged record is the first error.
        let fixed = String::from_utf8_lossy(&bytes).replace('\u{fffd}', "e");
        let one = table(&fixed, usize::MAX)
            .map(|t| t.height())
            .unwrap_err()
            .to_string();
        assert!(one.contains("3 fields where the header has 8"), "{one}");
        for block_bytes in [1, 64, 4096] {
            let e = table(&fixed, block_bytes).map(|t| t.height()).unwrap_err();
            assert_eq!(e.to_string(), one, "blocks of {block_bytes}");
        }
    }
}
