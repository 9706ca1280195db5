//! The `maskedlm` binary end to end on real data made by `disassemble` on this machine, and its
//! errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use undertale_maskedlm::Device;
use undertale_maskedlm::data::parquet::{read_corpus, read_tokenized};
use undertale_maskedlm::train::metrics::{Record, read_records};

mod common;
use common::damaged_copies;

fn maskedlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_maskedlm"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = maskedlm(args);
    assert!(
        out.status.success(),
        "maskedlm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str], expect: &str) {
    let out = maskedlm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "maskedlm {args:?} should fail");
    assert!(
        !stderr.contains("panicked"),
        "maskedlm {args:?} panicked: {stderr}"
    );
    assert!(
        stderr.contains(expect),
        "maskedlm {args:?}: {stderr:?} lacks {expect:?}"
    );
}

/// A real binary of this machine: libc if present, else this test's own executable.
fn some_binary() -> PathBuf {
    let libc = Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6");
    if libc.exists() {
        libc.to_path_buf()
    } else {
        std::env::current_exe().unwrap()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_whole_workflow_on_real_disassembly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = d.join("corpus.parquet");
    let tokenizer = d.join("tokenizer.json");
    let data = d.join("data.parquet");
    let out = d.join("run");
    let binary = some_binary();
    let not_elf = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    let said = ok(&["disassemble", s(&binary), not_elf, "-o", s(&corpus)]);
    assert!(said.contains("1 files skipped"), "{said}");
    let rows = read_corpus(&corpus).unwrap();
    assert!(rows.len() > 100, "{} functions", rows.len());
    assert!(
        rows.iter()
            .all(|r| !r.disassembly.is_empty() && r.id.contains(":0x"))
    );

    ok(&[
        "train-tokenizer",
        s(&corpus),
        "-o",
        s(&tokenizer),
        "--vocab-size",
        "512",
        "--sequence-length",
        "64",
    ]);
    ok(&["tokenize", s(&corpus), s(&tokenizer), s(&data)]);
    let tokenized = read_tokenized(&data).unwrap();
    assert_eq!(tokenized.len(), rows.len());
    assert!(
        tokenized
            .iter()
            .all(|r| r.tokens.len() == 64 && r.mask.len() == 64)
    );

    let config = d.join("config.json");
    std::fs::write(
        &config,
        r#"{"depth": 1, "hidden_dimensions": 32, "heads": 2, "intermediate_dimensions": 64, "sequence_length": 64, "dropout": 0.1}"#,
    )
    .unwrap();
    let common = [
        "--tokenizer",
        s(&tokenizer),
        s(&data),
        s(&out),
        "--validation",
        s(&data),
        "--config",
        s(&config),
        "--batch-size",
        "64",
        "--epochs",
        "3",
        "--learning-rate",
        "0.002",
    ];
    // (Stopping part-way and resuming is checked by
    // `ctrl_c_stops_after_the_step_and_the_run_resumes_exactly`.)
    let mut run: Vec<&str> = vec!["pretrain"];
    run.extend(common);
    let last = out.join("last");
    let said = ok(&run);
    assert!(said.contains("epoch 3"), "{said}");

    let records = read_records(&out.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    let per_epoch = rows.len().div_ceil(64) as u64;
    assert_eq!(
        steps,
        (1..=3 * per_epoch).collect::<Vec<_>>(),
        "one record per step, none twice"
    );
    let epochs: Vec<(u64, Option<f64>)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Epoch {
                epoch,
                validation_f1,
                ..
            } => Some((*epoch, *validation_f1)),
            _ => None,
        })
        .collect();
    assert_eq!(
        epochs.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        epochs
            .iter()
            .all(|e| e.1.is_some_and(|f| (0.0..=1.0).contains(&f)))
    );
    assert!(out.join("metrics.png").exists());
    assert!(out.join("best/model.safetensors").exists());

    let filled = ok(&[
        "infer",
        "--checkpoint",
        s(&last),
        "--tokenizer",
        s(&tokenizer),
        "push rbp [NEXT] [MASK] rbp rsp",
    ]);
    assert!(
        filled.starts_with("push rbp [NEXT] ") && !filled.contains("[MASK]"),
        "{filled}"
    );
    // Every checkpoint carries its tokenizer: without --tokenizer, infer uses the checkpoint's.
    assert!(out.join("best/tokenizer.json").exists());
    assert_eq!(
        ok(&[
            "infer",
            "--checkpoint",
            s(&last),
            "push rbp [NEXT] [MASK] rbp rsp"
        ]),
        filled
    );
    let json = ok(&[
        "infer",
        "--checkpoint",
        s(&last),
        "--tokenizer",
        s(&tokenizer),
        "--json",
        "--top-k",
        "3",
        "xor eax [MASK]",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let candidates = v["masks"][0]["candidates"].as_array().unwrap();
    assert_eq!(v["masks"][0]["position"], 2);
    assert_eq!(candidates.len(), 3);
    let p: Vec<f64> = candidates
        .iter()
        .map(|c| c["probability"].as_f64().unwrap())
        .collect();
    assert!(p[0] >= p[1] && p[1] >= p[2] && p[0] <= 1.0, "{p:?}");
    assert_eq!(
        v["output"].as_str().unwrap(),
        format!("xor eax {}", candidates[0]["token"].as_str().unwrap())
    );

    let report = ok(&[
        "evaluate",
        "--checkpoint",
        s(&last),
        "--tokenizer",
        s(&tokenizer),
        s(&data),
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(r["sequences"].as_u64().unwrap() as usize, rows.len());
    assert!(
        r["accuracy"].as_f64().unwrap() > 0.0 && r["sequences_per_second"].as_f64().unwrap() > 0.0
    );

    // Bad input against real files. Without a GPU, `--device cuda` says what is missing.
    if Device::Cuda(0).backend().is_err() {
        fails(
            &[
                "infer",
                "--checkpoint",
                s(&last),
                "--tokenizer",
                s(&tokenizer),
                "--device",
                "cuda",
                "x",
            ],
            "device cuda:0: ",
        );
    }
    fails(
        &[
            "infer",
            "--checkpoint",
            s(&last),
            "--tokenizer",
            s(&tokenizer),
            "--device",
            "tpu",
            "x",
        ],
        "unknown device",
    );
    // bf16 on the CPU fills the masks where the CPU has AVX512_BF16, and says why not elsewhere.
    let bf16_args = [
        "infer",
        "--checkpoint",
        s(&last),
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "push rbp [NEXT] [MASK] rbp rsp",
    ];
    if undertale_maskedlm::backend::cpu::gemm_bf16::Bf16Gemm::Avx512Bf16.available() {
        let filled = ok(&bf16_args);
        assert!(
            filled.starts_with("push rbp [NEXT] ") && !filled.contains("[MASK]"),
            "{filled}"
        );
    } else {
        fails(&bf16_args, "needs AVX512_BF16");
    }
    fails(
        &[
            "infer",
            "--checkpoint",
            s(&last),
            "--tokenizer",
            s(&tokenizer),
            "--precision",
            "fp8",
            "x",
        ],
        "unknown precision \"fp8\"",
    );
    fails(
        &["tokenize", not_elf, s(&tokenizer), s(&d.join("x.parquet"))],
        "Cargo.toml",
    );
    fails(
        &[
            "pretrain",
            "--tokenizer",
            s(&tokenizer),
            s(&corpus),
            s(&d.join("r2")),
            "--config",
            "tiny",
        ],
        "missing columns `tokens`",
    );
    fails(
        &[
            "pretrain",
            "--tokenizer",
            s(&tokenizer),
            s(&data),
            s(&d.join("r3")),
            "--config",
            "huge",
        ],
        "huge",
    );
    std::fs::write(last.join("model.safetensors"), b"not a safetensors file").unwrap();
    fails(
        &[
            "infer",
            "--checkpoint",
            s(&last),
            "--tokenizer",
            s(&tokenizer),
            "x",
        ],
        "model.safetensors",
    );
}

#[test]
fn missing_files_are_clear_errors() {
    fails(
        &[
            "disassemble",
            "/nonexistent/binary",
            "-o",
            "/tmp/never.parquet",
        ],
        "/nonexistent/binary",
    );
    fails(
        &[
            "tokenize",
            "/nonexistent/corpus.parquet",
            "/nonexistent/t.json",
            "/tmp/never.parquet",
        ],
        "nonexistent",
    );
    fails(
        &[
            "infer",
            "--checkpoint",
            "/nonexistent/ckpt",
            "--tokenizer",
            "/nonexistent/t.json",
            "x",
        ],
        "/nonexistent/ckpt",
    );
}

#[test]
fn tokenize_matches_the_reference_pipeline_and_pretrain_reads_its_files() {
    // Fixtures from scripts/pipeline_fixtures.py: a corpus, a tokenizer trained the reference's
    // way, and the dataset the reference's Python tokenize makes from them.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let corpus = fixtures.join("reference_corpus.parquet");
    let tokenizer = fixtures.join("tokenizer_reference.json");
    let reference = fixtures.join("reference_tokenized.parquet");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.parquet");
    let said = ok(&["tokenize", s(&corpus), s(&tokenizer), s(&ours)]);
    assert!(
        !said.contains("(0 truncated"),
        "the fixture exercises truncation: {said}"
    );
    let (ours, reference_rows) = (
        read_tokenized(&ours).unwrap(),
        read_tokenized(&reference).unwrap(),
    );
    assert_eq!(ours.len(), reference_rows.len());
    assert_eq!(ours, reference_rows, "identical ids, tokens and masks");

    // The reference's dataset trains directly.
    let out = dir.path().join("run");
    ok(&[
        "pretrain",
        "--tokenizer",
        s(&tokenizer),
        s(&reference),
        s(&out),
        "--config",
        "tiny",
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ]);
    assert!(out.join("last/trainer_state.json").exists());
}

fn reference_fixtures() -> (PathBuf, PathBuf) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    (
        fixtures.join("tokenizer_reference.json"),
        fixtures.join("reference_tokenized.parquet"),
    )
}

#[test]
fn early_stopping_ends_a_run_that_stops_improving() {
    // With a vanishing learning rate validation F1 cannot gain min_delta: the first epoch sets
    // the best value and five more without improvement stop the run (patience 5).
    let (tokenizer, data) = reference_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let said = ok(&[
        "pretrain",
        "--tokenizer",
        s(&tokenizer),
        s(&data),
        s(&out),
        "--validation",
        s(&data),
        "--config",
        "tiny",
        "--epochs",
        "48",
        "--batch-size",
        "16",
        "--learning-rate",
        "1e-12",
    ]);
    assert!(said.contains("6 epochs, stopped early"), "{said}");
    let epochs = || {
        read_records(&out.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|r| matches!(r, Record::Epoch { .. }))
            .count()
    };
    assert_eq!(epochs(), 6);
    // Resuming a run that already stopped trains nothing more.
    let said = ok(&[
        "pretrain",
        "--tokenizer",
        s(&tokenizer),
        s(&data),
        s(&out),
        "--validation",
        s(&data),
        "--checkpoint",
        s(&out.join("last")),
    ]);
    assert!(said.contains("6 epochs, stopped early"), "{said}");
    assert_eq!(epochs(), 6);
    // A resumed run keeps its batch size; asking for another is an error, not ignored.
    fails(
        &[
            "pretrain",
            "--tokenizer",
            s(&tokenizer),
            s(&data),
            s(&out),
            "--checkpoint",
            s(&out.join("last")),
            "--batch-size",
            "4",
        ],
        "--batch-size 4 differs",
    );
}

#[test]
fn bad_rows_are_reported_before_training_with_their_id() {
    use undertale_maskedlm::data::parquet::write_tokenized;
    let (tokenizer, data) = reference_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mut rows = read_tokenized(&data).unwrap();
    rows[7].tokens[3] = 100_000;
    let bad = dir.path().join("bad.parquet");
    write_tokenized(&bad, &rows).unwrap();
    let id = rows[7].id.clone();
    fails(
        &[
            "pretrain",
            "--tokenizer",
            s(&tokenizer),
            s(&bad),
            s(&dir.path().join("run")),
            "--config",
            "tiny",
        ],
        &format!("row {id:?}: token id 100000 at position 3"),
    );
    assert!(
        !dir.path().join("run/metrics.jsonl").exists(),
        "nothing was trained"
    );
}

#[test]
fn long_inputs_are_truncated_with_a_warning() {
    let (tokenizer, data) = reference_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    ok(&[
        "pretrain",
        "--tokenizer",
        s(&tokenizer),
        s(&data),
        s(&out),
        "--config",
        "tiny",
        "--max-steps",
        "1",
    ]);
    let long = vec!["mov rax [MASK]"; 40].join(" [NEXT] ");
    let run = maskedlm(&[
        "infer",
        "--checkpoint",
        s(&out.join("last")),
        "--tokenizer",
        s(&tokenizer),
        &long,
    ]);
    assert!(run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("truncated"));
    let filled = String::from_utf8_lossy(&run.stdout);
    // 64 tokens survive: the filled output has no [MASK] left and is shorter than the input.
    assert!(
        !filled.contains("[MASK]") && filled.split_whitespace().count() <= 64,
        "{filled}"
    );
}

#[test]
fn a_killed_run_resumes_from_its_last_complete_checkpoint() {
    let (tokenizer, data) = reference_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_maskedlm"))
        .args([
            "pretrain",
            "--tokenizer",
            s(&tokenizer),
            s(&data),
            s(&out),
            "--config",
            "tiny",
            "--epochs",
            "500",
            "--batch-size",
            "4",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = out.join("last/trainer_state.json");
    wait_until("a checkpoint appears", || state.exists());
    // Kill it at some point of a later epoch, possibly mid-write of the next checkpoint.
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = undertale_maskedlm::train::Trainer::resume(
        &out.join("last"),
        undertale_maskedlm::Device::Cpu,
    )
    .expect("the last checkpoint is complete");
    assert!(resumed.state().epoch >= 1 && resumed.state().batch_in_epoch == 0);
    let epochs_done = resumed.state().epoch;
    let target = (epochs_done + 1).to_string();
    let said = ok(&[
        "pretrain",
        "--tokenizer",
        s(&tokenizer),
        s(&data),
        s(&out),
        "--config",
        "tiny",
        "--epochs",
        &target,
        "--batch-size",
        "4",
        "--checkpoint",
        s(&out.join("last")),
    ]);
    assert!(said.contains(&format!("epoch {target}")), "{said}");
}

/// Pretrains `tiny` on the reference fixtures into `out`, with extra arguments.
fn pretrain_tiny(out: &Path, extra: &[&str]) -> Output {
    let (tokenizer, data) = reference_fixtures();
    let mut args = vec![
        "pretrain",
        "--tokenizer",
        s(&tokenizer),
        s(&data),
        s(out),
        "--config",
        "tiny",
        "--batch-size",
        "4",
    ];
    args.extend(extra);
    maskedlm(&args)
}

/// Polls `done` every few milliseconds, for two minutes at most.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed().as_secs() < 120,
            "waited 2 minutes for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A run that failed with an error saying each of `expect`, and no panic.
fn refused(run: &Output, expect: &[&str]) {
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "accepted; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{stderr:?} lacks {e:?}");
    }
}

fn step_records(out: &Path) -> Vec<(u64, f64)> {
    read_records(&out.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Record::Step { step, lr, .. } => Some((step, lr)),
            _ => None,
        })
        .collect()
}

#[test]
fn max_steps_plans_the_learning_rate_schedule_over_the_steps_that_run() {
    use undertale_maskedlm::train::LrSchedule;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = pretrain_tiny(&out, &["--max-steps", "12", "--learning-rate", "0.001"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("last/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["total_steps"], 12);
    // The reference's warmup fraction of 12 steps, then a cosine that ends at the 12th.
    let warmup = undertale_maskedlm::Config::new(undertale_maskedlm::Size::TINY, 10, 1, 2).warmup;
    let schedule = LrSchedule::new(0.001, warmup, 12);
    let records = step_records(&out);
    assert_eq!(records.len(), 12);
    // A resumed run keeps that schedule: more epochs than it spans are refused.
    let past = pretrain_tiny(
        &out,
        &["--checkpoint", s(&out.join("last")), "--epochs", "3"],
    );
    refused(&past, &["--epochs 3", "past the 12"]);
    for (step, lr) in records {
        let want = schedule.lr(step - 1);
        assert!(
            (lr - want).abs() <= 1e-12 * want.max(1e-12),
            "step {step}: lr {lr}, schedule {want}"
        );
    }
}

#[test]
fn pretrain_refuses_to_overwrite_a_run_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    assert!(pretrain_tiny(&out, &["--max-steps", "3"]).status.success());
    std::fs::create_dir_all(out.join("best")).unwrap();
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();

    let again = pretrain_tiny(&out, &["--max-steps", "2"]);
    refused(&again, &["already holds a run", "--overwrite"]);
    assert_eq!(
        std::fs::read(out.join("metrics.jsonl")).unwrap(),
        metrics,
        "the old run was touched"
    );

    let replaced = pretrain_tiny(&out, &["--max-steps", "2", "--overwrite"]);
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    assert_eq!(step_records(&out).len(), 2);
    assert!(!out.join("best").exists(), "the old run's best/ was kept");
}

#[test]
fn a_pretrain_that_cannot_start_leaves_no_output_folder() {
    let (tokenizer, _) = reference_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let missing = dir.path().join("missing.parquet");
    fails(
        &[
            "pretrain",
            "--tokenizer",
            s(&tokenizer),
            s(&missing),
            s(&out),
            "--config",
            "tiny",
        ],
        "missing.parquet",
    );
    assert!(!out.exists(), "an empty output folder was left behind");
}

#[test]
fn a_tokenizer_longer_than_the_config_is_refused_with_the_fix() {
    use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
    let (reference, data) = reference_fixtures();
    let dir = tempfile::tempdir().unwrap();
    // The reference tokenizer's vocabulary, saved with train-tokenizer's default length of 512.
    let text = std::fs::read_to_string(&reference).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json["padding"]["strategy"]["Fixed"], 64,
        "{}",
        json["padding"]
    );
    json["padding"]["strategy"]["Fixed"] = 512.into();
    json["truncation"]["max_length"] = 512.into();
    let long = dir.path().join("tokenizer512.json");
    std::fs::write(&long, json.to_string()).unwrap();
    assert_eq!(
        InstructionTokenizer::load(&long).unwrap().sequence_length(),
        512
    );
    let out = dir.path().join("run");
    fails(
        &[
            "pretrain",
            "--tokenizer",
            s(&long),
            s(&data),
            s(&out),
            "--config",
            "tiny",
        ],
        "train-tokenizer --sequence-length 128",
    );
    assert!(!out.exists());
}

#[test]
fn pretrain_names_its_default_model_and_warns_on_a_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // A folder holding a run stops it right after the model is announced.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "").unwrap();
    let (tokenizer, data) = reference_fixtures();
    let run = maskedlm(&[
        "pretrain",
        "--tokenizer",
        s(&tokenizer),
        s(&data),
        s(&out),
        "--device",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("model: medium (the default)"), "{stderr}");
    assert!(stderr.contains("--config tiny"), "{stderr}");
}

#[test]
fn ctrl_c_stops_after_the_step_and_the_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    let steps = "300";
    assert!(
        pretrain_tiny(&whole, &["--max-steps", steps])
            .status
            .success()
    );

    let (tokenizer, data) = reference_fixtures();
    let child = Command::new(env!("CARGO_BIN_EXE_maskedlm"))
        .args([
            "pretrain",
            "--tokenizer",
            s(&tokenizer),
            s(&data),
            s(&parts),
            "--config",
            "tiny",
            "--batch-size",
            "4",
            "--max-steps",
            steps,
        ])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = parts.join("metrics.jsonl");
    wait_until("training starts", || {
        std::fs::read_to_string(&metrics).is_ok_and(|t| t.lines().count() >= 3)
    });
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let state = undertale_maskedlm::train::Trainer::resume(
        &parts.join("last"),
        undertale_maskedlm::Device::Cpu,
    )
    .expect("the interrupt wrote a checkpoint");
    let stopped = state.state().step;
    assert!((1..300).contains(&stopped), "stopped at step {stopped}");
    assert!(
        stderr.contains(&format!(
            "interrupted at step {stopped}; resume with --checkpoint"
        )),
        "{stderr}"
    );

    let resumed = pretrain_tiny(&parts, &["--checkpoint", s(&parts.join("last"))]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let steps: Vec<u64> = step_records(&parts).iter().map(|r| r.0).collect();
    assert_eq!(
        steps,
        (1..=300).collect::<Vec<_>>(),
        "one record per step, none twice"
    );
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(whole.join("last").join(file)).unwrap()
                == std::fs::read(parts.join("last").join(file)).unwrap(),
            "{file} differs from the uninterrupted run's"
        );
    }
}

#[test]
fn a_validation_set_too_small_to_score_fails_before_training() {
    use undertale_maskedlm::data::parquet::write_tokenized;
    use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
    use undertale_maskedlm::data::{RowKeyedCollator, collator::DEFAULT_PROBABILITY};
    use undertale_maskedlm::pipeline::evaluate::EVALUATION_SEED;
    let (tokenizer, data) = reference_fixtures();
    let dir = tempfile::tempdir().unwrap();
    // One row with a single real token, which the evaluation masks (keyed by the fixed seed and
    // the row) must leave unmasked for this test to mean anything: checked first.
    let mut row = read_tokenized(&data).unwrap().remove(0);
    row.mask.iter_mut().skip(1).for_each(|m| *m = 0);
    let vocab = InstructionTokenizer::load(&tokenizer).unwrap();
    let masked = RowKeyedCollator::new(
        vocab.mask_token_id(),
        vocab.vocab_size(),
        DEFAULT_PROBABILITY,
        EVALUATION_SEED,
    )
    .unwrap()
    .collate(&[row.example()], 0)
    .unwrap();
    assert!(
        masked
            .labels
            .to_vec_i32()
            .unwrap()
            .iter()
            .all(|&l| l == -100),
        "the evaluation masks pick the row's one token: choose another row for this test"
    );
    let small = dir.path().join("small.parquet");
    write_tokenized(&small, &[row]).unwrap();
    let out = dir.path().join("run");
    fails(
        &[
            "pretrain",
            "--tokenizer",
            s(&tokenizer),
            s(&data),
            s(&out),
            "--validation",
            s(&small),
            "--config",
            "tiny",
            "--max-steps",
            "1",
        ],
        "masks no token",
    );
    assert!(!out.exists(), "it failed before anything was written");
}

/// `maskedlm bench` on the tiny preset: every figure measured, positive, written to the JSON file
/// in the schema `scripts/compare_table.py` reads, the real-data rows from a lengths file; and a bad
/// lengths file is a clear error.
#[test]
fn bench_measures_every_figure_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let lengths = dir.path().join("lengths.json");
    std::fs::write(
        &lengths,
        r#"{"source": "test", "lengths": [5, 128, 40, 300, 7, 9]}"#,
    )
    .unwrap();
    let json = dir.path().join("ours.json");
    let common = [
        "bench",
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--infer-batch",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--length-batches",
        "2",
    ];
    let mut args = common.to_vec();
    args.extend(["--lengths", s(&lengths), "--json", s(&json)]);
    let table = ok(&args);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["implementation"], "undertale-maskedlm");
    let metrics: Vec<(&str, f64)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["metric"].as_str().unwrap(), r["value"].as_f64().unwrap()))
        .collect();
    for want in [
        "train_tokens_per_s",
        "peak_memory_mib",
        "infer_latency_b1_ms",
        "infer_tokens_per_s_b2",
        "lengths_pad512_real_tokens_per_s",
        "lengths_padlongest_real_tokens_per_s",
    ] {
        let value = metrics.iter().find(|(m, _)| *m == want).map(|(_, v)| *v);
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{want}: {value:?} in {metrics:?}"
        );
        assert!(table.contains(want), "the table lists {want}:\n{table}");
    }
    // Host traffic per training step and per inference call: counted, and nothing on the CPU.
    for what in ["train_step", "infer_call"] {
        for figure in ["downloads", "download_bytes", "synchronizations", "uploads"] {
            let want = format!("host_{figure}_per_{what}");
            let value = metrics.iter().find(|(m, _)| *m == want).map(|(_, v)| *v);
            assert_eq!(value, Some(0.0), "{want} in {metrics:?}");
        }
    }

    std::fs::write(&lengths, "not json").unwrap();
    let mut args = common.to_vec();
    args.extend(["--lengths", s(&lengths)]);
    fails(&args, "not a lengths file");
}

/// A corrupt dataset is an `error:` line naming the file, never a panic message or a backtrace,
/// even where the Parquet decoder itself panics and even with `RUST_BACKTRACE=1`.
#[test]
fn corrupt_parquet_is_an_error_line_without_panic_output() {
    use rand::{Rng, SeedableRng};
    use undertale_maskedlm::data::parquet::{TokenizedRow, write_tokenized};
    use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tokenizer = d.join("tokenizer.json");
    let trained = InstructionTokenizer::train(
        ["push rbp [NEXT] mov eax 4096 [NEXT] ret"].into_iter(),
        64,
        8,
    )
    .unwrap();
    trained.save(&tokenizer).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let rows: Vec<TokenizedRow> = (0..48)
        .map(|i| TokenizedRow {
            id: format!("f:{i:#x}"),
            tokens: (0..24)
                .map(|_| rng.random_range(0..trained.vocab_size() as i32))
                .collect(),
            mask: vec![1; 24],
        })
        .collect();
    let dataset = d.join("data.parquet");
    write_tokenized(&dataset, &rows).unwrap();
    // A model shorter than the rows (its tokenizer shorter still, so that the rows are read): a
    // copy that still reads is refused right after reading, naming the file, so no copy trains.
    let config = d.join("config.json");
    std::fs::write(
        &config,
        r#"{"depth": 1, "hidden_dimensions": 16, "heads": 2, "intermediate_dimensions": 32, "sequence_length": 16}"#,
    )
    .unwrap();
    let (mut failures, mut decoder_panics) = (0, 0);
    for (i, damaged) in damaged_copies(&std::fs::read(&dataset).unwrap(), 60, 11)
        .into_iter()
        .enumerate()
    {
        let bad = d.join(format!("bad-{i}.parquet"));
        std::fs::write(&bad, damaged).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_maskedlm"))
            .args(["pretrain", "--tokenizer", s(&tokenizer), s(&bad)])
            .arg(d.join(format!("run-{i}")))
            .args([
                "--config",
                s(&config),
                "--device",
                "cpu",
                "--max-steps",
                "1",
            ])
            .env("RAYON_NUM_THREADS", "2")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        for noise in ["panicked", "backtrace"] {
            assert!(!stderr.contains(noise), "copy {i}: {stderr}");
        }
        if !out.status.success() {
            failures += 1;
            assert!(
                stderr.starts_with("error: ") && stderr.contains(s(&bad)),
                "copy {i}: {stderr}"
            );
            decoder_panics += usize::from(stderr.contains("the decoder failed"));
        }
    }
    assert!(failures > 0, "no damaged copy failed");
    // Otherwise this test never reached the silenced panic.
    assert!(decoder_panics > 0, "no damaged copy made the decoder panic");
}

/// `--threads` beyond four per core is refused at once, with the value and the limit; `--help`
/// says what 0 means, and 0 runs.
#[test]
fn threads_are_bounded_and_zero_means_every_core() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let limit = 4 * cores;
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.parquet");
    let too_many = (limit + 1).to_string();
    for threads in [too_many.as_str(), "10000"] {
        let started = std::time::Instant::now();
        let out = maskedlm(&["--threads", threads, "demo", "--steps", "1"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--threads {threads} ran: {stderr}");
        assert!(
            stderr.contains(&format!("--threads {threads} is more than {limit}")),
            "{stderr}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "--threads {threads} took {:?} to be refused",
            started.elapsed()
        );
    }
    let help = ok(&["--help"]);
    assert!(
        help.contains("0 (or leaving it out) means one per core"),
        "{help}"
    );
    for threads in [cores.to_string(), "0".to_string()] {
        let said = ok(&[
            "--threads",
            &threads,
            "disassemble",
            s(&some_binary()),
            "-o",
            s(&corpus),
        ]);
        assert!(said.contains("functions from 1 ELF files"), "{said}");
    }
}

/// `train-tokenizer` refuses a corpus without functions and warns when a small corpus gives a
/// vocabulary far below `--vocab-size`.
#[test]
fn train_tokenizer_refuses_an_empty_corpus_and_warns_on_a_small_one() {
    use undertale_maskedlm::data::parquet::{CorpusRow, write_corpus};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = d.join("empty.parquet");
    write_corpus(&empty, &[]).unwrap();
    let tokenizer = d.join("tokenizer.json");
    fails(
        &["train-tokenizer", s(&empty), "-o", s(&tokenizer)],
        "the corpus has no functions",
    );
    assert!(!tokenizer.exists());

    let small = d.join("small.parquet");
    let rows: Vec<CorpusRow> = (0..6)
        .map(|i| CorpusRow {
            id: format!("f:{i:#x}"),
            name: format!("f{i}"),
            disassembly: format!("push rbp [NEXT] mov eax {} [NEXT] ret", 100 + i * 37),
        })
        .collect();
    write_corpus(&small, &rows).unwrap();
    let train = |vocab_size: &str| {
        maskedlm(&[
            "train-tokenizer",
            s(&small),
            "-o",
            s(&tokenizer),
            "--vocab-size",
            vocab_size,
        ])
    };
    let out = train("4096");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let trained = undertale_maskedlm::data::tokenizer::InstructionTokenizer::load(&tokenizer)
        .unwrap()
        .vocab_size();
    assert!(trained < 2048);
    assert!(
        stderr.contains(&format!(
            "warning: the trained vocabulary has {trained} tokens, under half the --vocab-size \
             of 4096: the corpus (6 functions) is too small"
        )),
        "{stderr}"
    );
    // A vocabulary size the corpus can fill is not warned about.
    let out = train(&trained.to_string());
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}
