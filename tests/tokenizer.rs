//! The tokenizer against the Python reference: `scripts/tokenizer_fixtures.py` trains the
//! reference recipe with the `tokenizers` Python package and writes
//! `tests/fixtures/tokenizer_reference.json` (the trained tokenizer) and
//! `tests/fixtures/tokenizer_expected.json` (its corpus, and Python's encodings and decodes).

use std::path::{Path, PathBuf};

use serde_json::Value;
use undertale_maskedlm::Error;
use undertale_maskedlm::data::tokenizer::{InstructionTokenizer, SPECIAL_TOKENS};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference_path() -> PathBuf {
    fixture("tokenizer_reference.json")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("tokenizer_expected.json"))
        .expect("fixture exists (scripts/tokenizer_fixtures.py writes it)");
    serde_json::from_str(&text).unwrap()
}

fn reference() -> InstructionTokenizer {
    InstructionTokenizer::load(&reference_path()).unwrap()
}

fn as_usize(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

fn ints(v: &Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// The fixture's training corpus: each text repeated `copies` times, in order.
fn training_corpus(expected: &Value) -> Vec<String> {
    let texts = strings(&expected["corpus"]);
    let copies = ints(&expected["copies"]);
    assert_eq!(texts.len(), copies.len());
    texts
        .iter()
        .zip(copies)
        .flat_map(|(text, n)| std::iter::repeat_n(text.clone(), n as usize))
        .collect()
}

fn train_like_python(expected: &Value) -> InstructionTokenizer {
    let corpus = training_corpus(expected);
    InstructionTokenizer::train(
        corpus.iter().map(String::as_str),
        as_usize(&expected["vocab_size"]),
        as_usize(&expected["sequence_length"]),
    )
    .unwrap()
}

/// Asserts that `tokenizer` encodes and decodes every probe exactly as Python did.
fn assert_matches_probes(tokenizer: &InstructionTokenizer, expected: &Value) {
    let probes = expected["probes"].as_array().unwrap();
    assert!(probes.len() >= 10);
    for probe in probes {
        let text = probe["text"].as_str().unwrap();
        let ids = ints(&probe["ids"]);
        let encoding = tokenizer.encode(text).unwrap();
        assert_eq!(encoding.tokens, ids, "ids of {text:?}");
        assert_eq!(
            encoding.mask,
            ints(&probe["attention_mask"]),
            "mask of {text:?}"
        );
        assert_eq!(
            encoding.truncated,
            probe["truncated"].as_bool().unwrap(),
            "truncated of {text:?}"
        );
        let tokens: Vec<String> = ids.iter().map(|&i| tokenizer.token(i).unwrap()).collect();
        assert_eq!(tokens, strings(&probe["tokens"]), "tokens of {text:?}");
        assert_eq!(
            tokenizer.decode(&ids).unwrap(),
            probe["decoded"].as_str().unwrap(),
            "decode of {text:?}"
        );
    }
}

#[test]
fn fixture_was_made_with_the_crate_version() {
    // The Python package wraps the Rust crate of the same version.
    assert_eq!(expected()["tokenizers_version"], "0.22.2");
}

#[test]
fn special_tokens_have_ids_0_to_5() {
    let tokenizer = reference();
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tokenizer.token(id as i32).as_deref(), Some(*token));
        assert_eq!(tokenizer.token_id(token), Some(id as i32));
    }
    assert_eq!(tokenizer.pad_token_id(), 0);
    assert_eq!(tokenizer.mask_token_id(), 4);
    assert_eq!(tokenizer.next_token_id(), 5);
}

#[test]
fn sizes_match_python() {
    let expected = expected();
    let tokenizer = reference();
    assert_eq!(
        tokenizer.vocab_size(),
        as_usize(&expected["total_vocab_size"])
    );
    assert_eq!(
        tokenizer.sequence_length(),
        as_usize(&expected["sequence_length"])
    );
    assert_eq!(tokenizer.token(-1), None);
    assert_eq!(tokenizer.token(tokenizer.vocab_size() as i32), None);
    assert!(tokenizer.token(tokenizer.vocab_size() as i32 - 1).is_some());
}

#[test]
fn python_trained_tokenizer_encodes_and_decodes_as_python() {
    assert_matches_probes(&reference(), &expected());
}

#[test]
fn encode_batch_matches_python() {
    let expected = expected();
    let tokenizer = reference();
    let probes = expected["probes"].as_array().unwrap();
    let texts: Vec<&str> = probes.iter().map(|p| p["text"].as_str().unwrap()).collect();
    let encodings = tokenizer.encode_batch(&texts).unwrap();
    assert_eq!(encodings.len(), probes.len());
    for (encoding, probe) in encodings.iter().zip(probes) {
        assert_eq!(encoding.tokens, ints(&probe["ids"]));
        assert_eq!(encoding.mask, ints(&probe["attention_mask"]));
        assert_eq!(encoding.truncated, probe["truncated"].as_bool().unwrap());
        assert_eq!(
            encoding,
            &tokenizer.encode(probe["text"].as_str().unwrap()).unwrap()
        );
    }
    assert!(tokenizer.encode_batch(&[]).unwrap().is_empty());
}

/// A batch longer than the chunks `encode_batch` works in comes back whole and in order, each
/// encoding that of its text alone.
#[test]
fn a_batch_of_several_chunks_keeps_every_text_in_order() {
    let expected = expected();
    let tokenizer = reference();
    let probes: Vec<&str> = expected["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    let texts: Vec<&str> = (0..5000).map(|i| probes[(i * 7) % probes.len()]).collect();
    let encodings = tokenizer.encode_batch(&texts).unwrap();
    assert_eq!(encodings.len(), texts.len());
    let alone: Vec<_> = probes
        .iter()
        .map(|t| tokenizer.encode(t).unwrap())
        .collect();
    for (i, encoding) in encodings.iter().enumerate() {
        assert_eq!(encoding, &alone[(i * 7) % probes.len()], "text {i}");
    }
}

#[test]
fn every_encoding_is_sequence_length_long() {
    let expected = expected();
    let tokenizer = reference();
    for text in strings(&expected["corpus"]) {
        let encoding = tokenizer.encode(&text).unwrap();
        assert_eq!(encoding.tokens.len(), 64);
        assert_eq!(encoding.mask.len(), 64);
        let real = encoding.mask.iter().filter(|&&m| m == 1).count();
        // The mask is 1 then 0, and padding is [PAD].
        assert!(encoding.mask[..real].iter().all(|&m| m == 1));
        assert!(encoding.tokens[real..].iter().all(|&t| t == 0));
    }
}

#[test]
fn decodes_match_python() {
    let expected = expected();
    let tokenizer = reference();
    for case in expected["decodes"].as_array().unwrap() {
        let ids = ints(&case["ids"]);
        assert_eq!(
            tokenizer.decode(&ids).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode of {ids:?}"
        );
    }
    // [PAD] between tokens leaves its two spaces, as the reference prints.
    assert_eq!(
        tokenizer.decode(&[3, 5, 0, 4, 0, 2]).unwrap(),
        "[CLS] [NEXT]  [MASK]  [SEP]"
    );
}

#[test]
fn decode_rejects_ids_without_a_token() {
    let tokenizer = reference();
    for bad in [-1, -100, tokenizer.vocab_size() as i32, i32::MAX] {
        let err = tokenizer.decode(&[5, bad]).unwrap_err();
        match err {
            Error::Tokenizer { reason } => {
                assert!(reason.contains(&bad.to_string()), "{reason}");
                assert!(reason.contains("position 1"), "{reason}");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
}

/// Added tokens are matched in the raw text before pre-tokenization, leftmost-longest: a known
/// word splits an unknown one, but never a longer known word.
#[test]
fn added_tokens_match_inside_words() {
    let tokenizer = reference();
    let tokens = |text: &str| -> Vec<String> {
        let encoding = tokenizer.encode(text).unwrap();
        encoding
            .tokens
            .iter()
            .zip(&encoding.mask)
            .filter(|&(_, &m)| m == 1)
            .map(|(&id, _)| tokenizer.token(id).unwrap())
            .collect()
    };
    assert_eq!(tokens("rax ax eax"), ["rax", "ax", "eax"]);
    assert_eq!(tokens("raxeax xax"), ["rax", "eax", "[UNK]", "ax"]);
    assert_eq!(tokens("movs"), ["mov", "[UNK]"]);
    assert_eq!(tokens("eax4096"), ["eax", "40", "__96"]);
    assert_eq!(tokens("4198400"), ["41984", "__00"]);
}

#[test]
fn rust_training_matches_python_training() {
    let expected = expected();
    let python_text = std::fs::read_to_string(reference_path()).unwrap();
    let python: Value = serde_json::from_str(&python_text).unwrap();
    // Training is parallel and its hash maps are seeded at random: train a few times.
    for _ in 0..3 {
        let tokenizer = train_like_python(&expected);
        let rust_text = tokenizer.to_json().unwrap();
        let rust: Value = serde_json::from_str(&rust_text).unwrap();
        // Piece by piece first, for a readable failure.
        assert_eq!(
            rust["model"]["vocab"], python["model"]["vocab"],
            "BPE vocab"
        );
        assert_eq!(rust["model"]["merges"], python["model"]["merges"], "merges");
        assert_eq!(rust["added_tokens"], python["added_tokens"], "added tokens");
        assert_eq!(rust["padding"], python["padding"], "padding");
        assert_eq!(rust["truncation"], python["truncation"], "truncation");
        assert_eq!(rust, python);
        // Byte for byte what the reference's `tokenizer.save` wrote.
        assert_eq!(rust_text, python_text);
        assert_eq!(tokenizer.vocab_size(), reference().vocab_size());
        assert_matches_probes(&tokenizer, &expected);
    }
}

#[test]
fn rust_training_matches_python_on_edge_cases() {
    // Signed and underscored immediates, Python-only whitespace, special tokens in the corpus.
    let edge = &expected()["edge"];
    let corpus = strings(&edge["corpus"]);
    for _ in 0..3 {
        let tokenizer = InstructionTokenizer::train(
            corpus.iter().map(String::as_str),
            as_usize(&edge["vocab_size"]),
            as_usize(&edge["sequence_length"]),
        )
        .unwrap();
        let rust: Value = serde_json::from_str(&tokenizer.to_json().unwrap()).unwrap();
        assert_eq!(rust["model"]["vocab"], edge["tokenizer"]["model"]["vocab"]);
        assert_eq!(rust["added_tokens"], edge["tokenizer"]["added_tokens"]);
        assert_eq!(rust, edge["tokenizer"]);
        // `-` is a BPE token (from `-16`) and a word (from `[ rbp - 8 ]`): one id.
        assert!(tokenizer.token_id("-").unwrap() < 25);
        assert_eq!(tokenizer.token_id("1_000"), None);
    }
}

#[test]
fn trained_special_tokens_come_first() {
    let tokenizer = InstructionTokenizer::train(
        [
            "push rbp [NEXT] mov eax 4096 [NEXT] ret",
            "xor eax eax [NEXT] ret",
        ]
        .into_iter(),
        4096,
        8,
    )
    .unwrap();
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tokenizer.token_id(token), Some(id as i32));
    }
    assert_eq!(tokenizer.sequence_length(), 8);
    let encoding = tokenizer.encode("push rbp [NEXT] ret").unwrap();
    assert_eq!(encoding.mask, [1, 1, 1, 1, 0, 0, 0, 0]);
    assert!(!encoding.truncated);
    let long = tokenizer
        .encode("xor eax eax [NEXT] mov eax 4096 [NEXT] ret")
        .unwrap();
    assert_eq!(long.tokens.len(), 8);
    assert!(long.truncated);
    assert_eq!(
        tokenizer.decode(&encoding.tokens).unwrap(),
        "push rbp [NEXT] ret"
    );
}

#[test]
fn train_refuses_an_empty_corpus() {
    let err = InstructionTokenizer::train(std::iter::empty(), 4096, 4).unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer { reason } if reason.contains("no functions")),
        "{err:?}"
    );
}

/// Texts that hold nothing but whitespace and special tokens would train a vocabulary of only
/// the special tokens, in which every real token is `[UNK]`.
#[test]
fn train_refuses_a_corpus_of_only_special_tokens() {
    let corpus = ["", "  \t", "[NEXT]", "[MASK] [NEXT] [PAD]"];
    let err = InstructionTokenizer::train(corpus.into_iter(), 4096, 4).unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer { reason }
            if reason.contains("4 functions") && reason.contains("special tokens")),
        "{err:?}"
    );
    // One real token is enough.
    let tokenizer = InstructionTokenizer::train(corpus.into_iter().chain(["ret"]), 4096, 4);
    assert_eq!(tokenizer.unwrap().vocab_size(), SPECIAL_TOKENS.len() + 1);
}

#[test]
fn train_rejects_a_zero_sequence_length() {
    let err = InstructionTokenizer::train(["ret"].into_iter(), 100, 0).unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer { reason } if reason.contains("sequence_length")),
        "{err:?}"
    );
}

#[test]
fn save_then_load_round_trips() {
    let expected = expected();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tokenizer = reference();
    tokenizer.save(&path).unwrap();
    // Saving again replaces the file.
    tokenizer.save(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["tokenizer.json"], "no temporary file left behind");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        std::fs::read_to_string(reference_path()).unwrap()
    );
    let loaded = InstructionTokenizer::load(&path).unwrap();
    assert_eq!(loaded.to_json().unwrap(), tokenizer.to_json().unwrap());
    assert_eq!(loaded.vocab_size(), tokenizer.vocab_size());
    assert_eq!(loaded.sequence_length(), tokenizer.sequence_length());
    assert_matches_probes(&loaded, &expected);

    // A trained tokenizer round-trips too.
    let trained = train_like_python(&expected);
    trained.save(&path).unwrap();
    let loaded = InstructionTokenizer::load(&path).unwrap();
    assert_eq!(loaded.to_json().unwrap(), trained.to_json().unwrap());
}

#[test]
fn save_into_a_missing_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing/tokenizer.json");
    let err = reference().save(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

/// Writes the reference JSON, changed by `edit`, to a temporary file, and loads it.
fn load_edited(
    edit: impl FnOnce(&mut Value),
) -> (tempfile::TempDir, Result<InstructionTokenizer, Error>) {
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(reference_path()).unwrap()).unwrap();
    edit(&mut json);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let result = InstructionTokenizer::load(&path);
    (dir, result)
}

fn remove_token(json: &mut Value, token: &str) {
    json["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["content"] != token);
    json["model"]["vocab"]
        .as_object_mut()
        .unwrap()
        .remove(token);
}

#[test]
fn missing_special_tokens_are_named() {
    for token in ["[MASK]", "[NEXT]", "[PAD]"] {
        let (_dir, result) = load_edited(|json| remove_token(json, token));
        match result {
            Err(Error::MissingSpecialToken { token: missing }) => assert_eq!(missing, token),
            other => panic!("expected MissingSpecialToken {token}, got {other:?}"),
        }
    }
}

#[test]
fn missing_file_is_named() {
    let path = Path::new("/nonexistent/dir/tokenizer.json");
    match InstructionTokenizer::load(path) {
        Err(Error::Tokenizer { reason }) => {
            assert!(
                reason.contains("/nonexistent/dir/tokenizer.json"),
                "{reason}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn invalid_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("broken.json", "{ not json"),
        ("empty.json", ""),
        ("object.json", "{}"),
        (
            "wrong_model.json",
            r#"{"version": "1.0", "model": {"type": "Nope"}}"#,
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        match InstructionTokenizer::load(&path) {
            Err(Error::Tokenizer { reason }) => assert!(reason.contains(name), "{reason}"),
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[test]
fn sequence_length_comes_from_truncation_or_padding() {
    // Neither: an error naming the path and sequence_length.
    let (_dir, result) = load_edited(|json| {
        json["padding"] = Value::Null;
        json["truncation"] = Value::Null;
    });
    match result {
        Err(Error::Tokenizer { reason }) => {
            assert!(reason.contains("sequence_length"), "{reason}");
            assert!(reason.contains("tokenizer.json"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }

    // Only truncation (the reference's `load` enables padding itself): padding is enabled.
    let (_dir, result) = load_edited(|json| {
        json["padding"] = Value::Null;
        json["truncation"]["max_length"] = 32.into();
    });
    let tokenizer = result.unwrap();
    assert_eq!(tokenizer.sequence_length(), 32);
    let encoding = tokenizer.encode("push rbp [NEXT] ret").unwrap();
    assert_eq!(encoding.tokens.len(), 32);
    assert_eq!(encoding.tokens[4..], [0; 28]);

    // Only fixed padding: truncation is enabled at its length.
    let (_dir, result) = load_edited(|json| {
        json["truncation"] = Value::Null;
        json["padding"]["strategy"] = serde_json::json!({"Fixed": 8});
    });
    let tokenizer = result.unwrap();
    assert_eq!(tokenizer.sequence_length(), 8);
    let encoding = tokenizer.encode(&"ret ".repeat(20)).unwrap();
    assert_eq!(encoding.tokens.len(), 8);
    assert!(encoding.truncated);

    // Truncation with batch-longest padding: padding becomes fixed.
    let (_dir, result) = load_edited(|json| {
        json["padding"]["strategy"] = "BatchLongest".into();
    });
    let tokenizer = result.unwrap();
    assert_eq!(tokenizer.encode("ret").unwrap().tokens.len(), 64);

    // Both, disagreeing: an error.
    let (_dir, result) = load_edited(|json| {
        json["padding"]["strategy"] = serde_json::json!({"Fixed": 8});
    });
    assert!(
        matches!(&result, Err(Error::Tokenizer { reason }) if reason.contains("max_length")),
        "{result:?}"
    );
}

#[test]
fn padding_must_use_pad() {
    let (_dir, result) = load_edited(|json| {
        json["padding"]["pad_id"] = 1.into();
    });
    assert!(
        matches!(&result, Err(Error::Tokenizer { reason }) if reason.contains("[PAD]")),
        "{result:?}"
    );
}

#[test]
fn a_truncation_stride_that_would_panic_is_an_error() {
    let (_dir, result) = load_edited(|json| {
        json["truncation"]["stride"] = 64.into();
    });
    assert!(
        matches!(&result, Err(Error::Tokenizer { reason }) if reason.contains("stride")),
        "{result:?}"
    );
}

/// Times the recipe on 10,000 functions (the fixture's functions with fresh immediates):
/// `cargo test --release --test tokenizer -- --ignored --nocapture`.
#[test]
#[ignore]
fn train_on_ten_thousand_functions() {
    let texts = strings(&expected()["corpus"]);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let corpus: Vec<String> = (0..10_000)
        .map(|i| {
            texts[i % texts.len()]
                .split(' ')
                .map(|token| {
                    if token.bytes().all(|b| b.is_ascii_digit()) {
                        let r = next();
                        match r % 3 {
                            0 => (r >> 8) % 256,
                            1 => 4_198_400 + (r >> 8) % 65_536,
                            _ => (r >> 8) % (1 << 32),
                        }
                        .to_string()
                    } else {
                        token.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let start = std::time::Instant::now();
    let tokenizer =
        InstructionTokenizer::train(corpus.iter().map(String::as_str), 4096, 512).unwrap();
    let trained = start.elapsed();
    let refs: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let start = std::time::Instant::now();
    let encodings = tokenizer.encode_batch(&refs).unwrap();
    let encoded = start.elapsed();
    assert_eq!(encodings.len(), 10_000);
    println!(
        "trained on {} functions in {trained:?} (vocab {}), encode_batch in {encoded:?}",
        corpus.len(),
        tokenizer.vocab_size()
    );
}
