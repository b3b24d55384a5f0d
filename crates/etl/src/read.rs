//! Reading a raw export: decompression, CSV parsing, header normalisation.

use std::io::{Read, Seek};
use std::path::Path;

use crate::{EtlError, Result};

mod split;

/// The fields of a transactions export, in canonical snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    /// `InvoiceNo` / `Invoice`.
    InvoiceNo,
    /// `StockCode`.
    StockCode,
    /// `Description` (optional).
    Description,
    /// `Quantity`.
    Quantity,
    /// `InvoiceDate`.
    InvoiceDate,
    /// `UnitPrice` / `Price`.
    UnitPrice,
    /// `CustomerID` / `Customer ID` (optional).
    CustomerId,
    /// `Country` (optional).
    Country,
}

impl Column {
    /// All fields.
    pub const ALL: [Column; 8] = [
        Column::InvoiceNo,
        Column::StockCode,
        Column::Description,
        Column::Quantity,
        Column::InvoiceDate,
        Column::UnitPrice,
        Column::CustomerId,
        Column::Country,
    ];

    /// The canonical snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Column::InvoiceNo => "invoice_no",
            Column::StockCode => "stock_code",
            Column::Description => "description",
            Column::Quantity => "quantity",
            Column::InvoiceDate => "invoice_date",
            Column::UnitPrice => "unit_price",
            Column::CustomerId => "customer_id",
            Column::Country => "country",
        }
    }

    /// Header spellings accepted, after lower-casing and removing everything
    /// but letters and digits.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Column::InvoiceNo => &["invoiceno", "invoice", "invoicenumber", "invoiceid"],
            Column::StockCode => &["stockcode", "sku", "productcode"],
            Column::Description => &["description", "productdescription"],
            Column::Quantity => &["quantity", "qty"],
            Column::InvoiceDate => &["invoicedate", "date", "invoicedatetime"],
            Column::UnitPrice => &["unitprice", "price"],
            Column::CustomerId => &["customerid", "customer", "customerno"],
            Column::Country => &["country"],
        }
    }

    /// Whether the pipeline cannot work without this column.
    pub fn required(self) -> bool {
        !matches!(
            self,
            Column::Description | Column::CustomerId | Column::Country
        )
    }

    fn from_header(header: &str) -> Option<Column> {
        let norm: String = header
            .trim_start_matches('\u{feff}')
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect();
        Column::ALL
            .into_iter()
            .find(|c| c.aliases().contains(&norm.as_str()))
    }
}

/// One column of a parsed export, as text, interned: each distinct value is
/// stored once and rows hold its index. Exports repeat values heavily (541,909
/// UCI rows have ~26,000 invoices, ~4,000 stock codes, ~23,000 timestamps), so
/// a whole export fits in a fraction of its text size, and work per distinct
/// value (parsing a date, matching a pattern) is done once.
#[derive(Debug, Clone, Default)]
pub struct TextColumn {
    values: Vec<Box<str>>,
    ids: Vec<u32>,
}

impl TextColumn {
    /// The value of row `row`.
    pub fn get(&self, row: usize) -> &str {
        &self.values[self.ids[row] as usize]
    }

    /// The values, row by row.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.ids.iter().map(|&i| &*self.values[i as usize])
    }

    /// The distinct values.
    pub fn distinct(&self) -> &[Box<str>] {
        &self.values
    }

    /// Each row's index into [`TextColumn::distinct`].
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Builds a [`TextColumn`]. Fields are looked up by their bytes, so only a
/// value seen for the first time is checked to be UTF-8; fields of up to 15
/// bytes (codes, numbers, most countries) are keyed by one integer, with no
/// string comparison.
#[derive(Default)]
struct Interner {
    column: TextColumn,
    short: rustc_hash::FxHashMap<u128, u32>,
    long: rustc_hash::FxHashMap<Box<[u8]>, u32>,
}

/// A field of up to 15 bytes as one integer: the bytes, then the length.
fn short_key(bytes: &[u8]) -> Option<u128> {
    let mut key = [0u8; 16];
    key.get_mut(..bytes.len())?.copy_from_slice(bytes);
    key[15] = u8::try_from(bytes.len()).ok().filter(|&n| n < 16)?;
    Some(u128::from_le_bytes(key))
}

/// Why a value could not be interned.
#[derive(Debug)]
enum PushError {
    Utf8(std::str::Utf8Error),
    TooMany,
}

impl Interner {
    /// Appends a field.
    fn push(&mut self, bytes: &[u8]) -> std::result::Result<(), PushError> {
        let key = short_key(bytes);
        let known = match key {
            Some(k) => self.short.get(&k),
            None => self.long.get(bytes),
        };
        let id = match known {
            Some(&id) => id,
            None => {
                let value = std::str::from_utf8(bytes).map_err(PushError::Utf8)?;
                self.insert(key, value.into())?
            }
        };
        self.column.ids.push(id);
        Ok(())
    }

    /// The id of `value`, numbering it if it is new (no row is appended).
    fn intern(&mut self, value: Box<str>) -> std::result::Result<u32, PushError> {
        let key = short_key(value.as_bytes());
        let known = match key {
            Some(k) => self.short.get(&k),
            None => self.long.get(value.as_bytes()),
        };
        match known {
            Some(&id) => Ok(id),
            None => self.insert(key, value),
        }
    }

    /// Numbers a value not seen before.
    fn insert(
        &mut self,
        key: Option<u128>,
        value: Box<str>,
    ) -> std::result::Result<u32, PushError> {
        let id = u32::try_from(self.column.values.len()).map_err(|_| PushError::TooMany)?;
        match key {
            Some(k) => self.short.insert(k, id),
            None => self.long.insert(value.as_bytes().into(), id),
        };
        self.column.values.push(value);
        Ok(id)
    }
}

/// A parsed export: every field still text (interned), columns mapped to
/// [`Column`]s, and the line each row starts on (for error messages).
#[derive(Debug, Clone)]
pub struct RawTable {
    /// The file name used in error messages.
    pub file: String,
    /// (field, header as written, its column).
    columns: Vec<(Column, String, TextColumn)>,
    /// 1-based line on which each data row starts.
    lines: Vec<u32>,
}

impl RawTable {
    /// Number of data rows.
    pub fn height(&self) -> usize {
        self.lines.len()
    }

    /// The header as written in the file for a field, if present.
    pub fn header(&self, column: Column) -> Option<&str> {
        self.columns
            .iter()
            .find(|(c, _, _)| *c == column)
            .map(|(_, h, _)| h.as_str())
    }

    /// The text values of a field, if the column is present.
    pub fn strings(&self, column: Column) -> Option<&TextColumn> {
        self.columns
            .iter()
            .find(|(c, _, _)| *c == column)
            .map(|(_, _, t)| t)
    }

    /// The 1-based line on which data row `row` (0-based) starts, honouring
    /// quoted fields that contain line breaks.
    pub fn line_of_row(&self, row: usize) -> u64 {
        self.lines.get(row).map_or(0, |&l| u64::from(l))
    }

    /// An [`EtlError::InvalidField`] for data row `row` of `column`.
    pub fn field_error(&self, row: usize, column: Column, value: &str, problem: &str) -> EtlError {
        EtlError::InvalidField {
            file: self.file.clone(),
            line: self.line_of_row(row),
            column: self.header(column).unwrap_or(column.name()).to_string(),
            value: value.chars().take(80).collect(),
            problem: problem.to_string(),
        }
    }
}

/// The default bound on a (decompressed) export: 4 GiB.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// Reads a CSV or gzip-compressed CSV file (detected by content, not name),
/// of at most [`DEFAULT_MAX_DECOMPRESSED_BYTES`] once decompressed.
pub fn read_raw_file(path: &Path) -> Result<RawTable> {
    read_raw_file_limited(path, DEFAULT_MAX_DECOMPRESSED_BYTES)
}

/// [`read_raw_file`] with a bound on the decompressed size: a larger input
/// (a gzip bomb, or the wrong file) is an error as soon as the bound is
/// passed. The file is streamed (decompressed, cut into blocks of whole
/// records and parsed on every core), so memory holds the interned columns
/// and a few blocks, never the whole text.
pub fn read_raw_file_limited(path: &Path, max_bytes: u64) -> Result<RawTable> {
    let file = path.display().to_string();
    let io = |e| EtlError::Io {
        path: file.clone(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io)?;
    f.rewind().map_err(io)?;
    let reader = std::io::BufReader::with_capacity(1 << 16, f);
    if magic[..n] == [0x1f, 0x8b] {
        // Decompression runs on its own thread, a chunk ahead of the parser.
        let gz = flate2::bufread::MultiGzDecoder::new(reader);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD_CHUNKS);
            scope.spawn(move || decompress(gz, &tx));
            parse_csv(ChunkReader::new(rx), &file, max_bytes)
        })
    } else {
        parse_csv(reader, &file, max_bytes)
    }
}

/// Bytes a decompression chunk holds.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks decompressed ahead of the parser.
const READ_AHEAD_CHUNKS: usize = 4;

type Chunk = std::io::Result<Vec<u8>>;

/// Reads `input` in chunks into `tx` until it ends, fails, or the receiver
/// is gone (the parser stopped early).
fn decompress(mut input: impl Read, tx: &std::sync::mpsc::SyncSender<Chunk>) {
    loop {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut filled = 0;
        let end = loop {
            match input.read(&mut chunk[filled..]) {
                Ok(0) => break true,
                Ok(n) => {
                    filled += n;
                    if filled == chunk.len() {
                        break false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        };
        chunk.truncate(filled);
        if (!chunk.is_empty() && tx.send(Ok(chunk)).is_err()) || end {
            return;
        }
    }
}

/// The parser's side of [`decompress`]: the chunks as one byte stream.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Chunk>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    fn new(rx: std::sync::mpsc::Receiver<Chunk>) -> Self {
        Self {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk?;
                    self.pos = 0;
                }
                // The sender is done: the input has ended.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn too_large(file: &str, max_bytes: u64) -> EtlError {
    EtlError::TooLarge {
        file: file.to_string(),
        max_bytes,
    }
}

/// Parses CSV bytes (gzip is detected by its magic number). `file` names the
/// source in error messages.
pub fn read_raw_bytes(bytes: &[u8], file: &str) -> Result<RawTable> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        parse_csv(
            flate2::read::MultiGzDecoder::new(bytes),
            file,
            DEFAULT_MAX_DECOMPRESSED_BYTES,
        )
    } else {
        parse_csv(bytes, file, DEFAULT_MAX_DECOMPRESSED_BYTES)
    }
}

/// Text a parse block holds at least: it ends at the first record boundary
/// after this many bytes (or at the end of the input).
const BLOCK_BYTES: usize = 1 << 20;
/// Bytes read from the input at a time.
const READ_BYTES: u64 = 1 << 18;

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
}

impl<R: Read> Blocks<R> {
    fn new(input: R, max_bytes: u64, block_bytes: usize) -> Self {
        Self {
            input,
            block_bytes,
            buf: Vec::new(),
            cutter: split::Cutter::default(),
            at_end: false,
            read: 0,
            max_bytes,
        }
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
                    let mut rest = Vec::with_capacity(self.buf.capacity());
                    rest.extend_from_slice(&self.buf[cut..]);
                    let mut block = std::mem::replace(&mut self.buf, rest);
                    block.truncate(cut);
                    self.cutter.cut(cut);
                    return Ok(Some(block));
                }
            }
            let n = (&mut self.input)
                .take(READ_BYTES)
                .read_to_end(&mut self.buf)
                .map_err(SourceError::Io)?;
            self.read += n as u64;
            if self.read > self.max_bytes {
                return Err(SourceError::TooLarge);
            }
            self.at_end = n < READ_BYTES as usize;
        }
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
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(block);
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
/// block to block: a column's ids are the worker's, and `new_values` are the
/// values the worker first saw in this block, in the order it saw them.
struct ParsedBlock {
    worker: usize,
    columns: Vec<(Vec<Box<str>>, Vec<u32>)>,
    lines: Vec<u64>,
    /// Line breaks in the block.
    newlines: u64,
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

/// Parses one block of whole records on worker `worker`, into its interners.
fn parse_block(
    bytes: &[u8],
    layout: &Layout,
    worker: usize,
    interners: &mut [Interner],
) -> BlockResult {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 16)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let known: Vec<usize> = interners.iter().map(|i| i.column.values.len()).collect();
    for interner in interners.iter_mut() {
        interner.column.ids.clear();
    }
    let mut lines = Vec::new();
    // A reader over bytes in memory has no I/O to fail, and byte records no
    // encoding: it stops only at the end.
    while reader.read_byte_record(&mut record).unwrap_or(false) {
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(<[u8]>::is_empty) {
            continue; // a blank line
        }
        if record.len() != layout.width {
            return Err(BlockError::Width {
                line,
                found: record.len(),
            });
        }
        for (field, ((_, _, index), interner)) in
            layout.mapping.iter().zip(interners.iter_mut()).enumerate()
        {
            let bytes = record.get(*index).unwrap_or(b"");
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
            .zip(known)
            .map(|(i, known)| {
                let column = &mut i.column;
                (
                    column.values[known..].to_vec(),
                    std::mem::take(&mut column.ids),
                )
            })
            .collect(),
        lines,
        newlines: memchr::memchr_iter(b'\n', bytes).count() as u64,
    })
}

/// The whole table, built from blocks in input order.
struct Merged<'a> {
    file: &'a str,
    layout: &'a Layout,
    interners: Vec<Interner>,
    /// Per worker and column, the global id of each of the worker's ids.
    global_ids: Vec<Vec<Vec<u32>>>,
    lines: Vec<u32>,
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
        for ((global, (new_values, ids)), remap) in self
            .interners
            .iter_mut()
            .zip(block.columns)
            .zip(global_ids.iter_mut())
        {
            for value in new_values {
                remap.push(global.intern(value).map_err(|_| too_many_values())?);
            }
            global
                .column
                .ids
                .extend(ids.iter().map(|&id| remap[id as usize]));
        }
        for line in block.lines {
            self.lines.push(
                u32::try_from(line + self.line_offset).map_err(|_| EtlError::Csv {
                    file: self.file.to_string(),
                    message: "more than 2^32 lines".into(),
                })?,
            );
        }
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

    fn finish(self) -> Result<RawTable> {
        if self.lines.is_empty() {
            return Err(EtlError::Empty {
                file: self.file.to_string(),
            });
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
            lines: self.lines,
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
fn parse_csv<R: Read>(input: R, file: &str, max_bytes: u64) -> Result<RawTable> {
    parse_csv_in_blocks(input, file, max_bytes, BLOCK_BYTES)
}

/// [`parse_csv`] with blocks of at least `block_bytes`.
fn parse_csv_in_blocks<R: Read>(
    input: R,
    file: &str,
    max_bytes: u64,
    block_bytes: usize,
) -> Result<RawTable> {
    let mut blocks = Blocks::new(input, max_bytes, block_bytes);
    let source_error = |e: SourceError| match e {
        SourceError::Io(source) => EtlError::Io {
            path: file.to_string(),
            source,
        },
        SourceError::TooLarge => too_large(file, max_bytes),
    };
    // The header, and the block it is in.
    let mut line_offset = 0;
    let (layout, first) = loop {
        let Some(block) = blocks.next_block().map_err(source_error)? else {
            return Err(EtlError::Empty {
                file: file.to_string(),
            });
        };
        match read_header(&block, file)? {
            Some((layout, start, header_lines)) => {
                line_offset += header_lines;
                break (layout, block[start..].to_vec());
            }
            None => line_offset += memchr::memchr_iter(b'\n', &block).count() as u64,
        }
    };
    let mut merged = Merged {
        file,
        layout: &layout,
        interners: layout.mapping.iter().map(|_| Interner::default()).collect(),
        global_ids: Vec::new(),
        lines: Vec::new(),
        line_offset,
    };
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    std::thread::scope(|scope| -> Result<()> {
        let (block_tx, block_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(workers);
        // Shared by the workers only: once they are all gone, sending fails
        // instead of waiting.
        let block_rx = std::sync::Arc::new(std::sync::Mutex::new(block_rx));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for worker in 0..workers {
            let (block_rx, done_tx, layout) = (block_rx.clone(), done_tx.clone(), &layout);
            scope.spawn(move || {
                let mut interners: Vec<Interner> =
                    layout.mapping.iter().map(|_| Interner::default()).collect();
                loop {
                    let next = match block_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok((index, bytes)) = next else { break };
                    let block = parse_block(&bytes, layout, worker, &mut interners);
                    if done_tx.send((index, block)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((block_rx, done_tx));
        let stopped = || EtlError::Csv {
            file: file.to_string(),
            message: "a parser thread stopped".into(),
        };
        // Blocks parsed but not merged yet, by index; blocks sent and merged.
        let mut done = std::collections::BTreeMap::new();
        let (mut sent, mut merged_count) = (0usize, 0usize);
        let (mut next, mut failed) = (Some(first), None);
        while let Some(bytes) = next.take() {
            block_tx.send((sent, bytes)).map_err(|_| stopped())?;
            sent += 1;
            while let Ok((index, block)) = done_rx.try_recv() {
                done.insert(index, block);
            }
            merged.push_ready(&mut done, &mut merged_count)?;
            match blocks.next_block() {
                Ok(block) => next = block,
                Err(e) => failed = Some(e),
            }
        }
        drop(block_tx);
        // An error in the text before the point where reading failed comes
        // first, as it would reading in one pass.
        while merged_count < sent {
            let (index, block) = done_rx.recv().map_err(|_| stopped())?;
            done.insert(index, block);
            merged.push_ready(&mut done, &mut merged_count)?;
        }
        match failed {
            Some(e) => Err(source_error(e)),
            None => Ok(()),
        }
    })?;
    merged.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_fields_share_an_id_and_no_two_different_fields_do() {
        let fields: [&[u8]; 9] = [
            b"",
            b"A",
            b"A\0",
            b"85123A",
            b"exactly15bytes!",
            b"exactly16bytes!!",
            b"a description longer than fifteen bytes",
            b"85123A",
            b"exactly16bytes!!",
        ];
        let mut interner = Interner::default();
        for f in fields {
            interner.push(f).unwrap_or_else(|e| panic!("{e:?}"));
        }
        let col = interner.column;
        assert_eq!(col.ids(), [0, 1, 2, 3, 4, 5, 6, 3, 5]);
        let back: Vec<&[u8]> = col.iter().map(str::as_bytes).collect();
        assert_eq!(back, fields);
    }

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

    #[test]
    fn a_field_that_is_not_utf8_is_an_error_even_after_valid_ones() {
        let mut interner = Interner::default();
        assert!(interner.push(b"caf\xc3\xa9").is_ok());
        assert!(interner.push(b"caf\xe9").is_err());
        assert!(interner.push(b"a long field that ends badly \xff").is_err());
        assert_eq!(interner.column.len(), 1);
    }
}
