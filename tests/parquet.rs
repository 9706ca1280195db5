//! Parquet datasets: Python-written fixtures (`scripts/parquet_fixtures.py`), round trips, pyarrow
//! reading our files, and the errors for bad files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int8Builder, Int32Builder, Int64Builder, LargeListBuilder, ListBuilder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, LargeStringArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};
use parquet::arrow::ArrowWriter;
use undertale_maskedlm::Error;
use undertale_maskedlm::data::Example;
use undertale_maskedlm::data::parquet::{
    CorpusRow, TokenizedRow, parquet_files, read_corpus, read_tokenized, write_corpus,
    write_tokenized,
};

mod common;
use common::damaged_copies;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("parquet_expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ints(value: &serde_json::Value) -> Vec<i32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| i32::try_from(v.as_i64().unwrap()).unwrap())
        .collect()
}

fn tokenized_from_json(value: &serde_json::Value) -> Vec<TokenizedRow> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| TokenizedRow {
            id: row["id"].as_str().unwrap().to_string(),
            tokens: ints(&row["tokens"]),
            mask: ints(&row["mask"]),
        })
        .collect()
}

fn corpus_from_json(value: &serde_json::Value) -> Vec<CorpusRow> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| CorpusRow {
            id: row["id"].as_str().unwrap().to_string(),
            name: row["name"].as_str().unwrap().to_string(),
            disassembly: row["disassembly"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// The `Dataset` error's path and reason; panics on any other error or on success.
fn dataset_error<T: std::fmt::Debug>(result: undertale_maskedlm::Result<T>) -> (PathBuf, String) {
    match result {
        Err(Error::Dataset { path, reason }) => {
            eprintln!("dataset {}: {reason}", path.display());
            (path, reason)
        }
        other => panic!("expected a Dataset error, got {other:?}"),
    }
}

/// Writes one record batch to `path` with arrow directly (no checks), for malformed files.
fn write_batch(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn int64_lists(rows: &[&[i64]]) -> ArrayRef {
    let mut builder = ListBuilder::new(Int64Builder::new());
    for row in rows {
        builder.values().append_slice(row);
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn sample_tokenized(rows: usize, length: usize) -> Vec<TokenizedRow> {
    (0..rows)
        .map(|r| {
            let real = 1 + (r * 7) % length;
            TokenizedRow {
                id: format!("row-{r}"),
                tokens: (0..length)
                    .map(|j| if j < real { (r * 31 + j) as i32 } else { 0 })
                    .collect(),
                mask: (0..length).map(|j| i32::from(j < real)).collect(),
            }
        })
        .collect()
}

fn sample_corpus() -> Vec<CorpusRow> {
    vec![
        CorpusRow {
            id: "x:0x10".into(),
            name: "main".into(),
            disassembly: "push rbp [NEXT] ret".into(),
        },
        CorpusRow {
            id: "x:0x20".into(),
            name: String::new(),
            disassembly: "nop".into(),
        },
        CorpusRow {
            id: "y:0x30".into(),
            name: "ünïcode".into(),
            disassembly: String::new(),
        },
    ]
}

#[test]
fn reads_python_corpus() {
    let rows = read_corpus(&fixtures().join("parquet_corpus.parquet")).unwrap();
    assert_eq!(rows, corpus_from_json(&expected()["corpus"]));
}

#[test]
fn reads_python_tokenized_directory_in_sorted_order() {
    let dir = fixtures().join("parquet_tokenized");
    let files = parquet_files(&dir).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["part-0.parquet", "part-1.parquet"]);
    let rows = read_tokenized(&dir).unwrap();
    assert_eq!(rows, tokenized_from_json(&expected()["tokenized"]));
    // A single file of the directory reads too.
    let first = read_tokenized(&files[0]).unwrap();
    assert_eq!(first[..], rows[..first.len()]);
}

#[test]
fn example_conversion() {
    let row = sample_tokenized(1, 4).remove(0);
    let example = row.example();
    assert_eq!(
        example,
        Example {
            tokens: row.tokens.clone(),
            mask: row.mask.clone()
        }
    );
    assert_eq!(row.into_example(), example);
}

#[test]
fn directory_order_is_by_name_and_skips_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample_tokenized(30, 8);
    // Written out of order; `b` sorts after `a-…`; non-Parquet and hidden files are skipped.
    write_tokenized(&dir.path().join("b.parquet"), &rows[20..]).unwrap();
    write_tokenized(&dir.path().join("a-1.parquet"), &rows[10..20]).unwrap();
    write_tokenized(&dir.path().join("a-0.parquet"), &rows[..10]).unwrap();
    std::fs::write(dir.path().join("README.txt"), "not data").unwrap();
    std::fs::write(dir.path().join("_SUCCESS"), "").unwrap();
    std::fs::write(dir.path().join(".hidden.parquet"), "junk").unwrap();
    std::fs::create_dir(dir.path().join("sub.parquet")).unwrap();
    assert_eq!(read_tokenized(dir.path()).unwrap(), rows);
}

#[test]
fn round_trip_tokenized_file_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    // More rows than one record batch / row group (8192), so batching is exercised.
    let rows = sample_tokenized(9000, 16);
    let file = dir.path().join("nested/out.parquet");
    write_tokenized(&file, &rows).unwrap();
    assert_eq!(read_tokenized(&file).unwrap(), rows);

    let parts = dir.path().join("parts");
    write_tokenized(&parts.join("part-0.parquet"), &rows[..4000]).unwrap();
    write_tokenized(&parts.join("part-1.parquet"), &rows[4000..]).unwrap();
    assert_eq!(read_tokenized(&parts).unwrap(), rows);

    // Overwriting replaces the file; no temporary files are left behind.
    write_tokenized(&file, &rows[..3]).unwrap();
    assert_eq!(read_tokenized(&file).unwrap(), rows[..3]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["out.parquet"]);

    // Empty rows and an empty file.
    let odd = vec![TokenizedRow {
        id: String::new(),
        tokens: vec![],
        mask: vec![],
    }];
    write_tokenized(&file, &odd).unwrap();
    assert_eq!(read_tokenized(&file).unwrap(), odd);
    write_tokenized(&file, &[]).unwrap();
    assert!(read_tokenized(&file).unwrap().is_empty());
}

#[test]
fn round_trip_corpus_file_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample_corpus();
    let file = dir.path().join("corpus.parquet");
    write_corpus(&file, &rows).unwrap();
    assert_eq!(read_corpus(&file).unwrap(), rows);

    let parts = dir.path().join("parts");
    write_corpus(&parts.join("0.parquet"), &rows[..1]).unwrap();
    write_corpus(&parts.join("1.parquet"), &rows[1..]).unwrap();
    assert_eq!(read_corpus(&parts).unwrap(), rows);
}

#[test]
fn written_types_are_utf8_and_list_int64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.parquet");
    write_tokenized(&file, &sample_tokenized(3, 4)).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&file).unwrap(),
    )
    .unwrap();
    let schema = reader.schema();
    assert_eq!(
        schema.field_with_name("id").unwrap().data_type(),
        &DataType::Utf8
    );
    let list = DataType::List(Arc::new(Field::new("element", DataType::Int64, true)));
    assert_eq!(schema.field_with_name("tokens").unwrap().data_type(), &list);
    assert_eq!(schema.field_with_name("mask").unwrap().data_type(), &list);
    let column = reader.metadata().row_group(0).column(1);
    assert_eq!(column.compression(), parquet::basic::Compression::SNAPPY);
}

#[test]
fn corpus_name_is_optional_and_other_string_types_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.parquet");
    write_batch(
        &file,
        vec![
            (
                "disassembly",
                Arc::new(LargeStringArray::from(vec!["ret", "nop"])) as ArrayRef,
            ),
            ("id", Arc::new(StringArray::from(vec!["a", "b"]))),
        ],
    );
    let rows = read_corpus(&file).unwrap();
    assert_eq!(
        rows,
        [
            CorpusRow {
                id: "a".into(),
                name: String::new(),
                disassembly: "ret".into()
            },
            CorpusRow {
                id: "b".into(),
                name: String::new(),
                disassembly: "nop".into()
            },
        ]
    );
}

#[test]
fn other_integer_widths_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.parquet");
    // tokens: List<Int32>; mask: LargeList<Int8>; two rows: [5, 6], [7].
    let mut tokens = ListBuilder::new(Int32Builder::new());
    let mut mask = LargeListBuilder::new(Int8Builder::new());
    for (t, m) in [(&[5, 6][..], &[1, 0][..]), (&[7][..], &[1][..])] {
        tokens.values().append_slice(t);
        tokens.append(true);
        mask.values().append_slice(m);
        mask.append(true);
    }
    write_batch(
        &file,
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["p", "q"])) as ArrayRef,
            ),
            ("tokens", Arc::new(tokens.finish())),
            ("mask", Arc::new(mask.finish())),
        ],
    );
    let rows = read_tokenized(&file).unwrap();
    assert_eq!(
        rows,
        [
            TokenizedRow {
                id: "p".into(),
                tokens: vec![5, 6],
                mask: vec![1, 0]
            },
            TokenizedRow {
                id: "q".into(),
                tokens: vec![7],
                mask: vec![1]
            },
        ]
    );
}

#[test]
fn error_missing_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.parquet");
    let (path, reason) = dataset_error(read_tokenized(&missing));
    assert_eq!(path, missing);
    assert!(reason.contains("cannot read the path"), "{reason}");
    let (path, _) = dataset_error(read_corpus(&missing));
    assert_eq!(path, missing);
}

#[test]
fn error_not_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fake.parquet");
    std::fs::write(&file, "id,tokens,mask\n").unwrap();
    let (path, reason) = dataset_error(read_tokenized(&file));
    assert_eq!(path, file);
    assert!(reason.contains("not a readable Parquet file"), "{reason}");

    // A truncated real file: the footer is gone.
    let good = dir.path().join("good.parquet");
    write_tokenized(&good, &sample_tokenized(50, 32)).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (path, reason) = dataset_error(read_tokenized(&truncated));
    assert_eq!(path, truncated);
    assert!(reason.contains("Parquet"), "{reason}");
}

#[test]
fn error_missing_mask_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-mask.parquet");
    write_batch(
        &file,
        vec![
            ("id", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("tokens", int64_lists(&[&[1, 2]])),
        ],
    );
    let (path, reason) = dataset_error(read_tokenized(&file));
    assert_eq!(path, file);
    assert!(reason.contains("missing column `mask`"), "{reason}");
    // The tokenized file is not a corpus either: `disassembly` is missing.
    let (_, reason) = dataset_error(read_corpus(&file));
    assert!(reason.contains("`disassembly`"), "{reason}");
}

#[test]
fn error_tokens_of_wrong_type() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("string-tokens.parquet");
    write_batch(
        &file,
        vec![
            ("id", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("tokens", Arc::new(StringArray::from(vec!["1 2 3"]))),
            ("mask", int64_lists(&[&[1, 1, 1]])),
        ],
    );
    let (path, reason) = dataset_error(read_tokenized(&file));
    assert_eq!(path, file);
    assert!(
        reason.contains("column `tokens` has type Utf8") && reason.contains("expected a list"),
        "{reason}"
    );

    // A list of floats is not a list of integers either.
    let mut floats = ListBuilder::new(Float64Builder::new());
    floats.values().append_slice(&[1.0]);
    floats.append(true);
    write_batch(
        &file,
        vec![
            ("id", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("tokens", int64_lists(&[&[1]])),
            ("mask", Arc::new(floats.finish())),
        ],
    );
    let (_, reason) = dataset_error(read_tokenized(&file));
    assert!(reason.contains("column `mask` has type List"), "{reason}");
}

#[test]
fn error_values_outside_i32() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wide.parquet");
    let mut tokens = ListBuilder::new(UInt64Builder::new());
    tokens.values().append_slice(&[1, 2]);
    tokens.append(true);
    tokens.values().append_slice(&[3, u64::MAX]);
    tokens.append(true);
    write_batch(
        &file,
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["ok", "big"])) as ArrayRef,
            ),
            ("tokens", Arc::new(tokens.finish())),
            ("mask", int64_lists(&[&[1, 1], &[1, 1]])),
        ],
    );
    let (_, reason) = dataset_error(read_tokenized(&file));
    assert!(
        reason.contains("row 1 (id `big`)") && reason.contains(&u64::MAX.to_string()),
        "{reason}"
    );
}

#[test]
fn error_tokens_and_mask_of_different_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ragged.parquet");
    write_batch(
        &file,
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["fine", "ragged-row"])) as ArrayRef,
            ),
            ("tokens", int64_lists(&[&[1, 2], &[1, 2, 3]])),
            ("mask", int64_lists(&[&[1, 1], &[1, 1]])),
        ],
    );
    let (path, reason) = dataset_error(read_tokenized(&file));
    assert_eq!(path, file);
    assert!(
        reason.contains("row 1 (id `ragged-row`)")
            && reason.contains("`tokens` has 3 values but `mask` has 2"),
        "{reason}"
    );

    // The writer refuses such a row and leaves nothing behind.
    let out = dir.path().join("out.parquet");
    let mut rows = sample_tokenized(2, 4);
    rows[1].mask.pop();
    let (path, reason) = dataset_error(write_tokenized(&out, &rows));
    assert_eq!(path, out);
    assert!(reason.contains("row-1"), "{reason}");
    assert!(!out.exists());
}

#[test]
fn error_null_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nulls.parquet");
    let mut tokens = ListBuilder::new(Int64Builder::new());
    tokens.values().append_slice(&[1, 2]);
    tokens.append(true);
    tokens.append(false);
    write_batch(
        &file,
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            ("tokens", Arc::new(tokens.finish())),
            ("mask", int64_lists(&[&[1, 1], &[]])),
        ],
    );
    let (_, reason) = dataset_error(read_tokenized(&file));
    assert!(
        reason.contains("row 1 (id `b`): `tokens` is null"),
        "{reason}"
    );

    write_batch(
        &file,
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ),
            (
                "disassembly",
                Arc::new(StringArray::from(vec!["ret", "nop"])),
            ),
        ],
    );
    let (_, reason) = dataset_error(read_corpus(&file));
    assert!(reason.contains("row 1: `id` is null"), "{reason}");
}

#[test]
fn error_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "no data here").unwrap();
    let (path, reason) = dataset_error(read_tokenized(dir.path()));
    assert_eq!(path, dir.path());
    assert!(reason.contains("no `*.parquet` files"), "{reason}");
    let (_, reason) = dataset_error(parquet_files(dir.path()));
    assert!(reason.contains("no `*.parquet` files"), "{reason}");
}

/// Runs `script` with `python3` if pyarrow imports; `None` (skipped) otherwise.
fn python_with_pyarrow(script: &str, arg: &Path) -> Option<String> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output();
    if !matches!(probe, Ok(ref o) if o.status.success()) {
        eprintln!("skipped: python3 with pyarrow is not available");
        return None;
    }
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
}

#[test]
fn pyarrow_reads_our_files() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample_tokenized(20, 6);
    let file = dir.path().join("ours.parquet");
    write_tokenized(&file, &rows).unwrap();
    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
types = {f.name: str(f.type) for f in table.schema}
print(json.dumps({"types": types, "rows": table.to_pylist()}))
"#;
    let Some(out) = python_with_pyarrow(script, &file) else {
        return;
    };
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["types"]["id"], "string");
    assert_eq!(value["types"]["tokens"], "list<element: int64>");
    assert_eq!(value["types"]["mask"], "list<element: int64>");
    assert_eq!(tokenized_from_json(&value["rows"]), rows);

    let corpus = sample_corpus();
    let file = dir.path().join("corpus.parquet");
    write_corpus(&file, &corpus).unwrap();
    let out = python_with_pyarrow(script, &file).unwrap();
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    for column in ["id", "name", "disassembly"] {
        assert_eq!(value["types"][column], "string");
    }
    assert_eq!(corpus_from_json(&value["rows"]), corpus);
}

/// Reading speed: `cargo test --release --test parquet -- --ignored --nocapture read_speed`.
#[test]
#[ignore]
fn read_speed() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample_tokenized(20_000, 512);
    let file = dir.path().join("big.parquet");
    let start = std::time::Instant::now();
    write_tokenized(&file, &rows).unwrap();
    let write = start.elapsed();
    let size = std::fs::metadata(&file).unwrap().len();
    let start = std::time::Instant::now();
    let read = read_tokenized(&file).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(read.len(), rows.len());
    assert_eq!(read, rows);
    eprintln!(
        "20000 rows x 512 tokens: write {write:?}, read {elapsed:?}, file {:.1} MiB",
        size as f64 / (1 << 20) as f64
    );
}

/// Corrupt bytes anywhere in a file give an error (or, where the damage goes unnoticed, rows), never
/// a panic: the decoder's own panics are caught and reported as corruption.
#[test]
fn corrupt_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    write_tokenized(&good, &sample_tokenized(50, 32)).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.parquet");
    let mut seed = 12345u64;
    let mut errors = 0;
    for _ in 0..400 {
        let mut damaged = bytes.clone();
        for _ in 0..4 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let position = (seed >> 33) as usize % damaged.len();
            damaged[position] = (seed >> 20) as u8;
        }
        std::fs::write(&bad, &damaged).unwrap();
        match std::panic::catch_unwind(|| read_tokenized(&bad)) {
            Err(_) => panic!("reading a corrupt file panicked"),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                assert!(matches!(error, Error::Dataset { ref path, .. } if *path == bad));
                errors += 1;
            }
        }
    }
    assert!(
        errors > 100,
        "only {errors} of 400 damaged files failed to read"
    );
}

/// Set in the child process of `decoder_panics_print_nothing_and_other_panics_still_print`.
const PANIC_CHILD: &str = "MASKEDLM_TEST_PANIC_CHILD";
/// What the child's deliberate panic (outside any read) says.
const DELIBERATE: &str = "a deliberate panic outside any Parquet read";

/// The decoder's panics on corrupt files become `Dataset` errors naming the file, and print
/// nothing, not even with `RUST_BACKTRACE=1`; a panic on another thread during those reads still
/// reaches the previous hook. Runs itself again in a fresh process, where no other test has
/// touched the panic hook and stderr is not captured.
#[test]
fn decoder_panics_print_nothing_and_other_panics_still_print() {
    const NAME: &str = "decoder_panics_print_nothing_and_other_panics_still_print";
    if let Some(dir) = std::env::var_os(PANIC_CHILD) {
        let dir = PathBuf::from(dir);
        let good = dir.join("good.parquet");
        write_tokenized(&good, &sample_tokenized(40, 24)).unwrap();
        let corpus = dir.join("corpus.parquet");
        write_corpus(&corpus, &sample_corpus()).unwrap();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let bystander = std::thread::spawn(move || {
            wait.recv().unwrap();
            panic!("{DELIBERATE}");
        });
        let mut caught = 0;
        let mut copies = 0;
        for (source, seed) in [(&good, 7), (&corpus, 8)] {
            for (i, damaged) in damaged_copies(&std::fs::read(source).unwrap(), 60, seed)
                .into_iter()
                .enumerate()
            {
                let bad = dir.join(format!("bad-{seed}-{i}.parquet"));
                std::fs::write(&bad, damaged).unwrap();
                let result = if source == &good {
                    read_tokenized(&bad).map(|_| ())
                } else {
                    read_corpus(&bad).map(|_| ())
                };
                if let Err(error) = result {
                    let (path, reason) = dataset_error::<()>(Err(error));
                    assert_eq!(path, bad);
                    caught += usize::from(reason.contains("the decoder failed"));
                }
                copies += 1;
                if copies == 30 {
                    // The bystander panics while this thread goes on reading.
                    go.send(()).unwrap();
                }
            }
        }
        assert!(bystander.join().is_err());
        println!("decoder panics caught: {caught}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(PANIC_CHILD, dir.path())
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    let caught: usize = stdout
        .lines()
        .find_map(|l| l.split_once("decoder panics caught: ").map(|(_, n)| n))
        .unwrap_or_else(|| panic!("no count in the child's output:\n{stdout}"))
        .parse()
        .unwrap();
    // Otherwise nothing here exercised the silenced path.
    assert!(caught > 0, "no damaged file made the decoder panic");
    assert_eq!(
        stderr.matches("panicked").count(),
        1,
        "only the bystander's panic may print:\n{stderr}"
    );
    assert!(stderr.contains(DELIBERATE), "{stderr}");
}
