//! Parquet datasets in the reference's layouts: corpora (`id`, `name`, `disassembly`) and
//! tokenized rows (`id`, `tokens`, `mask`).
//!
//! # Layouts
//!
//! **Corpus** — one row per disassembled function:
//!
//! | column        | Arrow type written | accepted when reading                        |
//! |---------------|--------------------|----------------------------------------------|
//! | `id`          | `Utf8`             | required; any string type                    |
//! | `name`        | `Utf8`             | optional (empty string when absent or null)  |
//! | `disassembly` | `Utf8`             | required; any string type                    |
//!
//! **Tokenized** — one row per training sequence (see SPEC "Data"):
//!
//! | column   | Arrow type written     | accepted when reading                                |
//! |----------|------------------------|------------------------------------------------------|
//! | `id`     | `Utf8`                 | required; any string type                            |
//! | `tokens` | `List<element: Int64>` | required; list of integers (see below)               |
//! | `mask`   | `List<element: Int64>` | required; list of integers, same length as `tokens`  |
//!
//! `List<Int64>` with a nullable child named `element` is exactly what pyarrow and pandas write for
//! columns of Python `int` lists, so files written here and files written by the reference's
//! Python code are interchangeable. Strings are written as `Utf8` (pyarrow reads them back as
//! `string`); pandas 3 writes `LargeUtf8`, which is read as well.
//!
//! # Reading
//!
//! * A path names either one Parquet file or a directory. A directory is read file by file in
//!   sorted (byte-wise) name order, taking every regular file whose name ends in `.parquet`,
//!   except hidden or metadata files whose names start with `.` or `_` (as pyarrow does).
//!   Subdirectories are not searched. A directory with no such file is an error.
//! * Rows come back in file order, files in name order; nothing is shuffled here.
//! * Columns other than the ones above are ignored and never decoded (the reader projects onto
//!   the columns it needs). Record batches are streamed and converted one at a time.
//! * Strings may be `Utf8`, `LargeUtf8`, `Utf8View`, or dictionary-encoded versions of those.
//! * `tokens` and `mask` may be `List`, `LargeList` or `FixedSizeList` of any signed or
//!   unsigned integer width; every value must fit in `i32`.
//! * Null ids, disassemblies, lists or list elements are errors.
//!
//! Every problem with a file is an [`Error::Dataset`] naming the file and the problem: a missing
//! column by name, a column of the wrong type (expected and found), a row whose `tokens` and
//! `mask` differ in length (the row's index and id, and both lengths), a value outside `i32`, a
//! file that is not Parquet or is corrupt, an empty directory. The `parquet` crate's decoder
//! panics on some corrupt files rather than returning an error; such a panic is caught and
//! becomes an error too, reason `corrupt Parquet file: the decoder failed (...)`. While a read is
//! under way on a thread, panics on that thread print nothing (no message, no backtrace): the
//! first read installs, once per process, a panic hook that stays silent for such threads and
//! hands every other panic to the hook that was installed before it.
//!
//! # Writing
//!
//! Writes are atomic: the data goes to a hidden temporary file in the destination's directory
//! (created if missing), which is then renamed over the destination. Pages are compressed with
//! Snappy, pyarrow's default. A tokenized row whose `tokens` and `mask` differ in length is
//! refused, so a written file always reads back.

use std::cell::Cell;
use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};

use arrow_array::builder::{Int64Builder, ListBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::data::Example;
use crate::error::{Error, Result};

/// Rows decoded per record batch when reading.
const READ_BATCH_ROWS: usize = 8192;
/// Rows per record batch (and per row group) when writing.
const WRITE_BATCH_ROWS: usize = 8192;

/// One function of a corpus: columns `id`, `name`, `disassembly` (all strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusRow {
    /// Unique within the corpus: `disassemble` writes the file's path and the function's address
    /// (`path:0x1234`).
    pub id: String,
    /// The function's symbol name.
    pub name: String,
    /// The pre-tokenized disassembly ([`Function::disassembly`](crate::data::disassemble::Function::disassembly)).
    pub disassembly: String,
}

/// One tokenized row: columns `id` (string), `tokens` (list of int), `mask` (list of int).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedRow {
    /// The [`CorpusRow::id`] the row was tokenized from.
    pub id: String,
    /// Token ids, padded or truncated to the tokenizer's sequence length.
    pub tokens: Vec<i32>,
    /// Attention mask, as long as `tokens`: 1 for a real token, 0 for padding.
    pub mask: Vec<i32>,
}

impl TokenizedRow {
    /// The row's tokens and mask, copied, as a collator input.
    pub fn example(&self) -> Example {
        Example {
            tokens: self.tokens.clone(),
            mask: self.mask.clone(),
        }
    }

    /// The row's tokens and mask as a collator input, without copying.
    pub fn into_example(self) -> Example {
        Example {
            tokens: self.tokens,
            mask: self.mask,
        }
    }
}

/// The Parquet files a path names: itself, or the sorted `*.parquet` files of a directory.
///
/// A directory's files are sorted by name (byte-wise); names starting with `.` or `_` and
/// subdirectories are skipped. A missing path or a directory without Parquet files is an error.
pub fn parquet_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::dataset(path, format!("cannot read the path: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Error::dataset(path, format!("cannot list the directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::dataset(path, format!("cannot list the directory: {e}")))?;
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if !bytes.ends_with(b".parquet") || bytes.starts_with(b".") || bytes.starts_with(b"_") {
            continue;
        }
        // Follow symlinks: a linked Parquet file counts, a linked directory does not.
        let entry_path = entry.path();
        let is_file = std::fs::metadata(&entry_path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if is_file {
            files.push(entry_path);
        }
    }
    if files.is_empty() {
        return Err(Error::dataset(
            path,
            "the directory contains no `*.parquet` files",
        ));
    }
    files.sort_by(|a, b| {
        let a = a.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b"");
        let b = b.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b"");
        a.cmp(b)
    });
    Ok(files)
}

/// Reads a corpus: a file, or a directory of `*.parquet` files read in sorted name order; rows in
/// order. `name` is optional (empty string if absent); `id` and `disassembly` are required.
pub fn read_corpus(path: &Path) -> Result<Vec<CorpusRow>> {
    let mut rows = Vec::new();
    for file in parquet_files(path)? {
        guarded(&file, || read_corpus_file(&file, &mut rows))?;
    }
    Ok(rows)
}

/// Reads a tokenized dataset: a file, or a directory of `*.parquet` files read in sorted name
/// order; rows in order. Extra columns are ignored. `tokens`/`mask` may be list, large list or
/// fixed-size list of any integer width; values outside `i32` are errors.
pub fn read_tokenized(path: &Path) -> Result<Vec<TokenizedRow>> {
    let mut rows = Vec::new();
    for file in parquet_files(path)? {
        guarded(&file, || read_tokenized_file(&file, &mut rows))?;
    }
    Ok(rows)
}

/// Writes a corpus file (`id`, `name`, `disassembly` as `Utf8`), atomically, Snappy-compressed.
pub fn write_corpus(path: &Path, rows: &[CorpusRow]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("disassembly", DataType::Utf8, true),
    ]));
    let batch_schema = schema.clone();
    write_atomic(path, schema, rows.chunks(WRITE_BATCH_ROWS), move |chunk| {
        let id = StringArray::from_iter_values(chunk.iter().map(|r| r.id.as_str()));
        let name = StringArray::from_iter_values(chunk.iter().map(|r| r.name.as_str()));
        let disassembly =
            StringArray::from_iter_values(chunk.iter().map(|r| r.disassembly.as_str()));
        RecordBatch::try_new(
            batch_schema.clone(),
            vec![Arc::new(id), Arc::new(name), Arc::new(disassembly)],
        )
        .map_err(|e| e.to_string())
    })
}

/// Writes a tokenized file (`id` as `Utf8`, `tokens` and `mask` as `List<element: Int64>`, as
/// pyarrow writes Python int lists), atomically, Snappy-compressed. A row whose `tokens` and
/// `mask` differ in length is an error and nothing is written.
pub fn write_tokenized(path: &Path, rows: &[TokenizedRow]) -> Result<()> {
    for (index, row) in rows.iter().enumerate() {
        if row.tokens.len() != row.mask.len() {
            return Err(Error::dataset(
                path,
                format!(
                    "cannot write row {index} (id `{}`): `tokens` has {} values but `mask` has {}",
                    row.id,
                    row.tokens.len(),
                    row.mask.len()
                ),
            ));
        }
    }
    let element = Arc::new(Field::new("element", DataType::Int64, true));
    let list_type = DataType::List(element.clone());
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("tokens", list_type.clone(), true),
        Field::new("mask", list_type, true),
    ]));
    let batch_schema = schema.clone();
    write_atomic(path, schema, rows.chunks(WRITE_BATCH_ROWS), move |chunk| {
        let id = StringArray::from_iter_values(chunk.iter().map(|r| r.id.as_str()));
        let tokens = int64_list(&element, chunk.iter().map(|r| r.tokens.as_slice()))?;
        let mask = int64_list(&element, chunk.iter().map(|r| r.mask.as_slice()))?;
        RecordBatch::try_new(
            batch_schema.clone(),
            vec![Arc::new(id), Arc::new(tokens), Arc::new(mask)],
        )
        .map_err(|e| e.to_string())
    })
}

/// A `List<element: Int64>` array of the given rows.
fn int64_list<'a>(
    element: &Arc<Field>,
    rows: impl Iterator<Item = &'a [i32]> + Clone,
) -> std::result::Result<ListArray, String> {
    let count = rows.clone().count();
    let total: usize = rows.clone().map(<[i32]>::len).sum();
    if i32::try_from(total).is_err() {
        return Err(format!(
            "{total} list values in one record batch of {count} rows: more than a List's i32 \
             offsets can hold"
        ));
    }
    let mut builder = ListBuilder::with_capacity(Int64Builder::with_capacity(total), count)
        .with_field(element.clone());
    for row in rows {
        builder
            .values()
            .extend(row.iter().map(|&v| Some(i64::from(v))));
        builder.append(true);
    }
    Ok(builder.finish())
}

thread_local! {
    /// How many guarded reads are under way on this thread (reads do not nest today, but a count
    /// stays right if they ever do).
    static READS_IN_PROGRESS: Cell<usize> = const { Cell::new(0) };
}

/// Installs, once per process, a panic hook that prints nothing for a panic on a thread inside a
/// guarded read (the panic becomes an error there, so the message and backtrace would only be
/// noise) and passes every other panic to the hook installed before it.
fn install_quiet_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // `try_with`: a panic while this thread's locals are being destroyed is not ours.
            let in_read = READS_IN_PROGRESS
                .try_with(|count| count.get() > 0)
                .unwrap_or(false);
            if !in_read {
                previous(info);
            }
        }));
    });
}

/// Marks the current thread as inside a guarded read until dropped, even when unwinding.
struct QuietPanics;

impl QuietPanics {
    fn enter() -> Self {
        install_quiet_hook();
        READS_IN_PROGRESS.with(|count| count.set(count.get() + 1));
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        READS_IN_PROGRESS.with(|count| count.set(count.get() - 1));
    }
}

/// Runs `read` and turns a panic inside it into an error: the Parquet decoder panics on some
/// corrupt files instead of returning an error. The panic prints nothing (see
/// [`install_quiet_hook`]).
fn guarded<T>(file: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    let quiet = QuietPanics::enter();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    drop(quiet);
    outcome.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Err(Error::dataset(
            file,
            format!("corrupt Parquet file: the decoder failed ({message})"),
        ))
    })
}

/// Writes `chunks` (each turned into one record batch by `make_batch`) to a temporary file next to
/// `path`, then renames it over `path`.
fn write_atomic<C>(
    path: &Path,
    schema: SchemaRef,
    chunks: impl Iterator<Item = C>,
    make_batch: impl FnMut(C) -> std::result::Result<RecordBatch, String>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::dataset(path, "the path does not name a file"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::dataset(
            path,
            format!("cannot create the directory {}: {e}", dir.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = write_file(&tmp, schema, chunks, make_batch).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| {
            format!(
                "cannot move the temporary file {} into place: {e}",
                tmp.display()
            )
        })
    });
    if let Err(reason) = result {
        // Best effort: the temporary file may not exist if creating it failed.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::dataset(path, reason));
    }
    Ok(())
}

fn write_file<C>(
    tmp: &Path,
    schema: SchemaRef,
    chunks: impl Iterator<Item = C>,
    mut make_batch: impl FnMut(C) -> std::result::Result<RecordBatch, String>,
) -> std::result::Result<(), String> {
    let file = File::create_new(tmp)
        .map_err(|e| format!("cannot create the temporary file {}: {e}", tmp.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_size(WRITE_BATCH_ROWS)
        .build();
    let mut writer = ArrowWriter::try_new(&file, schema, Some(props))
        .map_err(|e| format!("cannot start the Parquet writer: {e}"))?;
    for chunk in chunks {
        let batch = make_batch(chunk)?;
        writer
            .write(&batch)
            .map_err(|e| format!("cannot write Parquet data: {e}"))?;
    }
    writer
        .close()
        .map_err(|e| format!("cannot finish the Parquet file: {e}"))?;
    file.sync_all()
        .map_err(|e| format!("cannot flush the temporary file {}: {e}", tmp.display()))
}

/// What a column must hold.
#[derive(Clone, Copy)]
enum Kind {
    /// `Utf8`, `LargeUtf8`, `Utf8View`, or a dictionary of those.
    String,
    /// A list, large list or fixed-size list of any integer type.
    IntList,
}

impl Kind {
    fn accepts(self, data_type: &DataType) -> bool {
        match self {
            Kind::String => match data_type {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
                DataType::Dictionary(_, values) => Kind::String.accepts(values),
                _ => false,
            },
            Kind::IntList => match data_type {
                DataType::List(element)
                | DataType::LargeList(element)
                | DataType::FixedSizeList(element, _) => element.data_type().is_integer(),
                _ => false,
            },
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::String => "a string (Utf8, LargeUtf8 or Utf8View)",
            Kind::IntList => {
                "a list of integers (List, LargeList or FixedSizeList of Int8/16/32/64 or \
                 UInt8/16/32/64)"
            }
        }
    }
}

/// A column a reader wants.
struct Column {
    name: &'static str,
    required: bool,
    kind: Kind,
}

type BatchReader = parquet::arrow::arrow_reader::ParquetRecordBatchReader;

/// Opens `file`, checks that it has the `columns` (the required ones present, every present one of
/// the right type), and returns a reader of record batches projected onto the present ones.
fn open_batches(file: &Path, columns: &[Column]) -> Result<BatchReader> {
    let handle =
        File::open(file).map_err(|e| Error::dataset(file, format!("cannot open the file: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(handle)
        .map_err(|e| Error::dataset(file, format!("not a readable Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let missing: Vec<String> = columns
        .iter()
        .filter(|c| c.required && schema.index_of(c.name).is_err())
        .map(|c| format!("`{}`", c.name))
        .collect();
    if !missing.is_empty() {
        let found: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect();
        let found = if found.is_empty() {
            "none".to_string()
        } else {
            found.join(", ")
        };
        return Err(Error::dataset(
            file,
            format!(
                "missing column{} {} (the file has columns: {found})",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
            ),
        ));
    }
    let mut roots = Vec::new();
    for column in columns {
        let Ok(field) = schema.field_with_name(column.name) else {
            continue;
        };
        if !column.kind.accepts(field.data_type()) {
            return Err(Error::dataset(
                file,
                format!(
                    "column `{}` has type {}, expected {}",
                    column.name,
                    field.data_type(),
                    column.kind.expected()
                ),
            ));
        }
        let root = builder
            .parquet_schema()
            .root_schema()
            .get_fields()
            .iter()
            .position(|f| f.name() == column.name)
            .ok_or_else(|| {
                Error::dataset(
                    file,
                    format!(
                        "column `{}` is in the Arrow schema but not in the Parquet schema",
                        column.name
                    ),
                )
            })?;
        roots.push(root);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| Error::dataset(file, format!("cannot read the Parquet file: {e}")))
}

/// Runs `per_batch(batch, index of its first row in the file)` over every record batch of
/// `reader`.
fn for_each_batch(
    file: &Path,
    reader: BatchReader,
    mut per_batch: impl FnMut(&RecordBatch, usize) -> Result<()>,
) -> Result<()> {
    let mut first_row = 0;
    for batch in reader {
        let batch = batch.map_err(|e| {
            Error::dataset(
                file,
                format!("corrupt Parquet data after row {first_row}: {e}"),
            )
        })?;
        per_batch(&batch, first_row)?;
        first_row += batch.num_rows();
    }
    Ok(())
}

fn read_corpus_file(file: &Path, rows: &mut Vec<CorpusRow>) -> Result<()> {
    let reader = open_batches(
        file,
        &[
            Column {
                name: "id",
                required: true,
                kind: Kind::String,
            },
            Column {
                name: "name",
                required: false,
                kind: Kind::String,
            },
            Column {
                name: "disassembly",
                required: true,
                kind: Kind::String,
            },
        ],
    )?;
    for_each_batch(file, reader, |batch, first_row| {
        let ids = required_strings(file, batch, "id", first_row, None)?;
        let disassemblies = required_strings(file, batch, "disassembly", first_row, Some(&ids))?;
        let names = match batch.column_by_name("name") {
            Some(array) => strings(array.as_ref())
                .map_err(|e| column_error(file, "name", e))?
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect(),
            None => vec![String::new(); batch.num_rows()],
        };
        rows.reserve(batch.num_rows());
        for ((id, name), disassembly) in ids.into_iter().zip(names).zip(disassemblies) {
            rows.push(CorpusRow {
                id,
                name,
                disassembly,
            });
        }
        Ok(())
    })
}

fn read_tokenized_file(file: &Path, rows: &mut Vec<TokenizedRow>) -> Result<()> {
    let reader = open_batches(
        file,
        &[
            Column {
                name: "id",
                required: true,
                kind: Kind::String,
            },
            Column {
                name: "tokens",
                required: true,
                kind: Kind::IntList,
            },
            Column {
                name: "mask",
                required: true,
                kind: Kind::IntList,
            },
        ],
    )?;
    for_each_batch(file, reader, |batch, first_row| {
        let ids = required_strings(file, batch, "id", first_row, None)?;
        let tokens = required_int_lists(file, batch, "tokens", first_row, &ids)?;
        let mask = required_int_lists(file, batch, "mask", first_row, &ids)?;
        rows.reserve(batch.num_rows());
        for (index, ((id, tokens), mask)) in ids.into_iter().zip(tokens).zip(mask).enumerate() {
            if tokens.len() != mask.len() {
                return Err(Error::dataset(
                    file,
                    format!(
                        "row {} (id `{id}`): `tokens` has {} values but `mask` has {}",
                        first_row + index,
                        tokens.len(),
                        mask.len()
                    ),
                ));
            }
            rows.push(TokenizedRow { id, tokens, mask });
        }
        Ok(())
    })
}

/// A problem with one row of a column, found by a converter that does not know the row's id.
struct RowError {
    /// The row in the batch, or `None` when the whole column is at fault.
    row: Option<usize>,
    reason: String,
}

/// Describes row `row` (of the batch starting at `first_row`) for an error message, with its id
/// when known.
fn describe_row(row: usize, first_row: usize, ids: Option<&[String]>) -> String {
    match ids.and_then(|ids| ids.get(row)) {
        Some(id) => format!("row {} (id `{id}`)", first_row + row),
        None => format!("row {}", first_row + row),
    }
}

fn column_error(file: &Path, column: &str, reason: String) -> Error {
    Error::dataset(file, format!("column `{column}`: {reason}"))
}

fn batch_column<'a>(file: &Path, batch: &'a RecordBatch, column: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(column)
        .ok_or_else(|| Error::dataset(file, format!("missing column `{column}`")))
}

/// The values of a string column that must not hold nulls.
fn required_strings(
    file: &Path,
    batch: &RecordBatch,
    column: &str,
    first_row: usize,
    ids: Option<&[String]>,
) -> Result<Vec<String>> {
    let values = strings(batch_column(file, batch, column)?.as_ref())
        .map_err(|e| column_error(file, column, e))?;
    values
        .into_iter()
        .enumerate()
        .map(|(row, value)| {
            value.ok_or_else(|| {
                Error::dataset(
                    file,
                    format!("{}: `{column}` is null", describe_row(row, first_row, ids)),
                )
            })
        })
        .collect()
}

/// The values of a string column (`None` for nulls).
fn strings(array: &dyn Array) -> std::result::Result<Vec<Option<String>>, String> {
    fn collect<'a>(
        array: &dyn Array,
        value: impl Fn(usize) -> &'a str,
    ) -> std::result::Result<Vec<Option<String>>, String> {
        Ok((0..array.len())
            .map(|i| (!array.is_null(i)).then(|| value(i).to_string()))
            .collect())
    }
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            collect(array, |i| a.value(i))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            collect(array, |i| a.value(i))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            collect(array, |i| a.value(i))
        }
        DataType::Dictionary(_, _) => {
            let dictionary = array
                .as_any_dictionary_opt()
                .ok_or_else(|| format!("unsupported dictionary type {}", array.data_type()))?;
            let values = strings(dictionary.values().as_ref())?;
            let keys = dictionary.normalized_keys();
            Ok(keys
                .into_iter()
                .enumerate()
                .map(|(i, key)| {
                    if array.is_null(i) {
                        None
                    } else {
                        values.get(key).cloned().flatten()
                    }
                })
                .collect())
        }
        other => Err(format!(
            "has type {other}, expected {}",
            Kind::String.expected()
        )),
    }
}

/// The values of an integer-list column as `i32` lists; nulls and out-of-range values are errors
/// naming the row and its id.
fn required_int_lists(
    file: &Path,
    batch: &RecordBatch,
    column: &str,
    first_row: usize,
    ids: &[String],
) -> Result<Vec<Vec<i32>>> {
    int_lists(batch_column(file, batch, column)?.as_ref()).map_err(|e| match e.row {
        Some(row) => Error::dataset(
            file,
            format!(
                "{}: `{column}` {}",
                describe_row(row, first_row, Some(ids)),
                e.reason
            ),
        ),
        None => column_error(file, column, e.reason),
    })
}

fn int_lists(array: &dyn Array) -> std::result::Result<Vec<Vec<i32>>, RowError> {
    let whole = |reason: String| RowError { row: None, reason };
    // Each row's range of positions in the child array; `None` for a null list.
    let (ranges, values): (Vec<Option<(usize, usize)>>, &ArrayRef) = match array.data_type() {
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let ranges = list
                .value_offsets()
                .windows(2)
                .enumerate()
                .map(|(i, w)| (!list.is_null(i)).then(|| (w[0] as usize, w[1] as usize)))
                .collect();
            (ranges, list.values())
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            let ranges = list
                .value_offsets()
                .windows(2)
                .enumerate()
                .map(|(i, w)| (!list.is_null(i)).then(|| (w[0] as usize, w[1] as usize)))
                .collect();
            (ranges, list.values())
        }
        DataType::FixedSizeList(_, _) => {
            let list = array.as_fixed_size_list();
            let length = list.value_length() as usize;
            let ranges = (0..list.len())
                .map(|i| {
                    (!list.is_null(i)).then(|| {
                        let start = list.value_offset(i) as usize;
                        (start, start + length)
                    })
                })
                .collect();
            (ranges, list.values())
        }
        other => {
            return Err(whole(format!(
                "has type {other}, expected {}",
                Kind::IntList.expected()
            )));
        }
    };
    let values = values.as_ref();
    match values.data_type() {
        DataType::Int8 => convert::<Int8Type>(values, &ranges),
        DataType::Int16 => convert::<Int16Type>(values, &ranges),
        DataType::Int32 => convert::<Int32Type>(values, &ranges),
        DataType::Int64 => convert::<Int64Type>(values, &ranges),
        DataType::UInt8 => convert::<UInt8Type>(values, &ranges),
        DataType::UInt16 => convert::<UInt16Type>(values, &ranges),
        DataType::UInt32 => convert::<UInt32Type>(values, &ranges),
        DataType::UInt64 => convert::<UInt64Type>(values, &ranges),
        other => Err(whole(format!(
            "has element type {other}, expected {}",
            Kind::IntList.expected()
        ))),
    }
}

fn convert<T>(
    values: &dyn Array,
    ranges: &[Option<(usize, usize)>],
) -> std::result::Result<Vec<Vec<i32>>, RowError>
where
    T: ArrowPrimitiveType,
    T::Native: TryInto<i32> + Display,
{
    let primitive = values.as_primitive::<T>();
    let all = primitive.values();
    let has_nulls = primitive.null_count() > 0;
    let mut out = Vec::with_capacity(ranges.len());
    for (row, range) in ranges.iter().enumerate() {
        let error = |reason: String| RowError {
            row: Some(row),
            reason,
        };
        let (start, end) = range.ok_or_else(|| error("is null".to_string()))?;
        let slice = all
            .get(start..end)
            .ok_or_else(|| error("has list offsets outside its values (corrupt file)".into()))?;
        if has_nulls && let Some(p) = (start..end).position(|j| primitive.is_null(j)) {
            return Err(error(format!("has a null value at position {p}")));
        }
        let mut converted = Vec::with_capacity(slice.len());
        for (position, &value) in slice.iter().enumerate() {
            let value: i32 = value.try_into().map_err(|_| {
                error(format!(
                    "has value {value} at position {position}, outside the i32 range"
                ))
            })?;
            converted.push(value);
        }
        out.push(converted);
    }
    Ok(out)
}
