//! The `maskedlm` binary on many inputs: `infer` answers every input line with one output line and
//! names inputs in its warnings and errors, `--top-k` lists candidates in text as in JSON, and a
//! bad dataset row is reported alike by every command that reads a dataset.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::Device;
use undertale_maskedlm::checkpoint::save_model;
use undertale_maskedlm::data::parquet::{read_tokenized, write_tokenized};
use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
use undertale_maskedlm::model::InstructionTraceTransformerEncoderForMaskedLM as Model;
use undertale_maskedlm::pipeline::pretrain::resolve_config;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tokenizer_path() -> PathBuf {
    fixtures().join("tokenizer_reference.json")
}

/// An untrained `tiny` model for the reference tokenizer, saved as a checkpoint in `dir`.
fn checkpoint(dir: &Path, seed: u64) -> PathBuf {
    let tokenizer = InstructionTokenizer::load(&tokenizer_path()).unwrap();
    let config = resolve_config("tiny", &tokenizer, None, None).unwrap();
    let path = dir.join("checkpoint");
    save_model(&path, &Model::new(config, Device::Cpu, seed).unwrap(), None).unwrap();
    path
}

/// Runs the binary with `stdin` as its standard input.
fn maskedlm(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_maskedlm"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn infer_args<'a>(checkpoint: &'a str, tokenizer: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "infer",
        "--checkpoint",
        checkpoint,
        "--tokenizer",
        tokenizer,
    ];
    args.extend(more);
    args
}

/// A line of `n` instructions, each with a mask.
fn long_line(n: usize) -> String {
    vec!["mov rax [MASK]"; n].join(" [NEXT] ")
}

#[test]
fn infer_answers_every_standard_input_line_and_names_lines_in_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let ckpt = checkpoint(dir.path(), rng.random());
    let (ckpt, tok) = (ckpt.to_str().unwrap(), tokenizer_path());
    let tok = tok.to_str().unwrap();
    // Blank lines at random places among masked, mask-less, lower-case-mask and too-long lines.
    let mut lines = vec![
        "push rbp [NEXT] [MASK] rbp rsp".to_string(),
        "xor eax eax".to_string(),
        "mov rax [mask]".to_string(),
        long_line(40),
        "ret [MASK]".to_string(),
    ];
    for _ in 0..3 {
        let at = rng.random_range(0..=lines.len());
        lines.insert(at, [" ", "", "\t "][rng.random_range(0..3)].to_string());
    }
    let line_of = |needle: &str| 1 + lines.iter().position(|l| l == needle).unwrap();
    let input = lines.join("\n") + "\n";

    let out = maskedlm(&infer_args(ckpt, tok, &[]), input.as_bytes());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        answers.len(),
        lines.len(),
        "one line out per line in: {stdout:?}"
    );
    for (line, answer) in lines.iter().zip(&answers) {
        assert_eq!(
            line.trim().is_empty(),
            answer.is_empty(),
            "{line:?} -> {answer:?}"
        );
        assert!(!answer.contains("[MASK]"), "{answer}");
    }
    assert_eq!(answers[line_of("xor eax eax") - 1], "xor eax eax");
    for (line, says) in [
        (line_of("xor eax eax"), "no [MASK] token"),
        (line_of("mov rax [mask]"), "lower-case"),
        (line_of(&long_line(40)), "truncated"),
    ] {
        assert!(
            stderr.contains(&format!("warning: line {line}: ")) && stderr.contains(says),
            "line {line} should warn {says:?}: {stderr}"
        );
    }
    assert_eq!(stderr.matches("warning:").count(), 3, "{stderr}");

    // The same lines as JSON: one object each, blank ones with no masks.
    let out = maskedlm(&infer_args(ckpt, tok, &["--json"]), input.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), lines.len());
    for (line, object) in lines.iter().zip(&objects) {
        assert_eq!(object["input"].as_str().unwrap(), line);
        let masks = object["masks"].as_array().unwrap();
        assert_eq!(masks.is_empty(), !line.contains("[MASK]"), "{line:?}");
        if let Some(first) = masks.first() {
            assert_eq!(
                first["candidates"].as_array().unwrap().len(),
                5,
                "default top-k"
            );
        }
    }

    // Arguments are named by their place.
    let out = maskedlm(&infer_args(ckpt, tok, &["ret [MASK]", "xor eax eax"]), b"");
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("warning: input 2: no [MASK] token"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).lines().count(), 2);
}

#[test]
fn infer_stops_at_an_unreadable_line_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), 3);
    let tok = tokenizer_path();
    let mut input = b"ret [MASK]\n\nxor eax eax\n".to_vec();
    input.extend(b"mov \xff\xfe [MASK]\nret [MASK]\n");
    let out = maskedlm(
        &infer_args(ckpt.to_str().unwrap(), tok.to_str().unwrap(), &[]),
        &input,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("error: line 4: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The three lines before it were answered.
    assert_eq!(text(&out.stdout).lines().count(), 3);
}

#[test]
fn top_k_lists_candidates_in_text_and_zero_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let ckpt = checkpoint(dir.path(), rng.random());
    let (ckpt, tok) = (ckpt.to_str().unwrap(), tokenizer_path());
    let tok = tok.to_str().unwrap();
    let k = rng.random_range(1..=6usize);
    let k_text = k.to_string();
    let out = maskedlm(
        &infer_args(
            ckpt,
            tok,
            &["--top-k", &k_text, "[MASK] rbp [NEXT] ret [MASK]", "ret"],
        ),
        b"",
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    // Input 1: its filled line, then one indented line per mask (positions 0 and 4); input 2:
    // its line alone.
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        !lines[0].starts_with(' ') && !lines[3].starts_with(' '),
        "{stdout}"
    );
    for (line, position) in [(lines[1], 0), (lines[2], 4)] {
        let rest = line
            .strip_prefix(&format!("    position {position}: "))
            .unwrap_or_else(|| panic!("{line:?}"));
        let probabilities: Vec<f64> = rest
            .split(", ")
            .map(|c| {
                let p = c.rsplit_once(" (").unwrap().1.trim_end_matches(')');
                p.parse().unwrap()
            })
            .collect();
        assert_eq!(probabilities.len(), k, "{line}");
        assert!(probabilities.windows(2).all(|w| w[0] >= w[1]), "{line}");
    }
    // The best candidates are the ones filled in.
    let best = |line: &str| {
        line.split(": ")
            .nth(1)
            .unwrap()
            .split(" (")
            .next()
            .unwrap()
            .to_string()
    };
    let filled: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(
        (filled[0].to_string(), filled[4].to_string()),
        (best(lines[1]), best(lines[2]))
    );

    let out = maskedlm(&infer_args(ckpt, tok, &["--top-k", "0", "ret [MASK]"]), b"");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--top-k 0"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn evaluate_and_pretrain_name_a_bad_row_alike() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(44);
    let ckpt = checkpoint(dir.path(), rng.random());
    let mut rows = read_tokenized(&fixtures().join("reference_tokenized.parquet")).unwrap();
    let (row, position) = (
        rng.random_range(0..rows.len()),
        rng.random_range(0..rows[0].tokens.len()),
    );
    let bad_id = rng.random_range(100_000..2_000_000);
    rows[row].tokens[position] = bad_id;
    let bad = dir.path().join("bad.parquet");
    write_tokenized(&bad, &rows).unwrap();
    let expect = format!(
        "dataset {}: row {:?}: token id {bad_id} at position {position}",
        bad.display(),
        rows[row].id
    );
    let tok = tokenizer_path();
    let (tok, bad) = (tok.to_str().unwrap(), bad.to_str().unwrap());
    let run = dir.path().join("run");
    for args in [
        vec![
            "evaluate",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--tokenizer",
            tok,
            bad,
        ],
        vec![
            "pretrain",
            "--tokenizer",
            tok,
            bad,
            run.to_str().unwrap(),
            "--config",
            "tiny",
        ],
        vec![
            "pretrain",
            "--tokenizer",
            tok,
            fixtures()
                .join("reference_tokenized.parquet")
                .to_str()
                .unwrap(),
            run.to_str().unwrap(),
            "--config",
            "tiny",
            "--validation",
            bad,
        ],
    ] {
        let out = maskedlm(&args, b"");
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(&expect),
            "{args:?}: {stderr:?} lacks {expect:?}"
        );
        assert!(!stderr.contains("label"), "{stderr}");
    }
}
