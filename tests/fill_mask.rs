//! `MaskFiller`: batched and single inputs agree, each output matches the model's own methods,
//! a checkpoint with its tokenizer is self-contained, and a tokenizer that does not fit the model
//! is refused at load.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::checkpoint::{TOKENIZER_FILE, resolve_tokenizer, save_model};
use undertale_maskedlm::data::synthetic::generate_function;
use undertale_maskedlm::data::tokenizer::{InstructionTokenizer, MASK_TOKEN};
use undertale_maskedlm::pipeline::infer::fill_masks;
use undertale_maskedlm::{
    Config, Device, Error, InstructionTraceTransformerEncoderForMaskedLM as Model, MaskFiller,
    Size, Tensor,
};

fn fixture_tokenizer() -> InstructionTokenizer {
    InstructionTokenizer::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_reference.json"),
    )
    .unwrap()
}

fn model_for(tokenizer: &InstructionTokenizer, seed: u64) -> Model {
    let config = Config::for_tokenizer(Size::TINY, tokenizer);
    Model::new(config, Device::Cpu, seed).unwrap()
}

/// Random functions of different lengths, each with one to three words replaced by `[MASK]`.
fn masked_texts(rng: &mut ChaCha8Rng, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let text = generate_function(rng);
            let mut words: Vec<&str> = text.split(' ').take(40).collect();
            for _ in 0..rng.random_range(1..4) {
                let j = rng.random_range(0..words.len());
                words[j] = MASK_TOKEN;
            }
            words.join(" ")
        })
        .collect()
}

#[test]
fn batched_and_single_fills_agree_with_the_cli_path() {
    let tokenizer = fixture_tokenizer();
    let filler = MaskFiller::new(model_for(&tokenizer, 3), tokenizer.clone()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let texts = masked_texts(&mut rng, 5);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batched = filler.candidates_batch(&refs, 4).unwrap();
    let filled = filler.fill_batch(&refs).unwrap();
    for ((text, from_batch), filled) in texts.iter().zip(&batched).zip(&filled) {
        let single = fill_masks(filler.model(), &tokenizer, text, 4).unwrap();
        assert_eq!(from_batch.output, single.output, "{text}");
        assert_eq!(filled, &single.output);
        assert!(!filled.contains(MASK_TOKEN), "{filled}");
        assert_eq!(from_batch.masks.len(), single.masks.len());
        for (b, s) in from_batch.masks.iter().zip(&single.masks) {
            assert_eq!(b.position, s.position);
            assert_eq!(b.candidates.len(), 4);
            for (bc, sc) in b.candidates.iter().zip(&s.candidates) {
                assert_eq!(bc.id, sc.id);
                assert!((bc.probability - sc.probability).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn logits_at_masks_are_the_forward_logits_there() {
    let tokenizer = fixture_tokenizer();
    let filler = MaskFiller::new(model_for(&tokenizer, 4), tokenizer.clone()).unwrap();
    let vocab = tokenizer.vocab_size();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let texts = masked_texts(&mut rng, 3);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (text, at_masks) in texts.iter().zip(filler.logits_batch(&refs).unwrap()) {
        let ids = tokenizer.encode(text).unwrap().real_tokens();
        let expected_positions: Vec<usize> = (0..ids.len())
            .filter(|&j| ids[j] == tokenizer.mask_token_id())
            .collect();
        assert_eq!(at_masks.positions, expected_positions);
        let all = filler
            .model()
            .forward(&Tensor::from_i32(&[ids.len()], ids.clone()).unwrap(), None)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let got = at_masks.logits.to_vec_f32().unwrap();
        assert_eq!(at_masks.logits.shape(), &[expected_positions.len(), vocab]);
        for (i, &p) in expected_positions.iter().enumerate() {
            for v in 0..vocab {
                let (g, w) = (got[i * vocab + v], all[p * vocab + v]);
                assert!((g - w).abs() < 1e-4, "position {p}, id {v}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn embeddings_are_the_mean_hidden_state_over_real_tokens() {
    let tokenizer = fixture_tokenizer();
    let filler = MaskFiller::new(model_for(&tokenizer, 5), tokenizer.clone()).unwrap();
    let hidden = Size::TINY.hidden_dimensions;
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let texts = masked_texts(&mut rng, 4);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (text, embedding) in texts.iter().zip(filler.embed_batch(&refs).unwrap()) {
        let ids = tokenizer.encode(text).unwrap().real_tokens();
        let states = filler
            .model()
            .hidden_states(&Tensor::from_i32(&[ids.len()], ids.clone()).unwrap(), None)
            .unwrap();
        assert_eq!(states.shape(), &[1, ids.len(), hidden]);
        let states = states.to_vec_f32().unwrap();
        assert_eq!(embedding.len(), hidden);
        for (h, &e) in embedding.iter().enumerate() {
            let mean =
                (0..ids.len()).map(|j| states[j * hidden + h]).sum::<f32>() / ids.len() as f32;
            assert!((e - mean).abs() < 1e-4, "dimension {h}: {e} vs {mean}");
        }
        assert_eq!(filler.embed(text).unwrap().len(), hidden);
    }
}

#[test]
fn a_checkpoint_with_its_tokenizer_is_self_contained() {
    let tokenizer = fixture_tokenizer();
    let model = model_for(&tokenizer, 6);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint");
    save_model(&path, &model, Some(&tokenizer)).unwrap();
    assert!(path.join(TOKENIZER_FILE).exists());
    let loaded = MaskFiller::from_checkpoint(&path, Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let text = &masked_texts(&mut rng, 1)[0];
    let direct = MaskFiller::new(model, tokenizer).unwrap();
    assert_eq!(loaded.fill(text).unwrap(), direct.fill(text).unwrap());
    assert_eq!(
        loaded.tokenizer().to_json().unwrap(),
        direct.tokenizer().to_json().unwrap()
    );
}

#[test]
fn a_checkpoint_without_a_tokenizer_names_both_places() {
    let tokenizer = fixture_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint");
    save_model(&path, &model_for(&tokenizer, 7), None).unwrap();
    let err = MaskFiller::from_checkpoint(&path, Device::Cpu)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("--tokenizer")
            && msg.contains(&path.join(TOKENIZER_FILE).display().to_string()),
        "{msg}"
    );
    let given: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_reference.json");
    assert_eq!(
        resolve_tokenizer(&path, Some(&given)).unwrap().vocab_size(),
        tokenizer.vocab_size()
    );
}

#[test]
fn a_tokenizer_longer_than_the_model_is_refused_at_load() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let corpus: Vec<String> = (0..20).map(|_| generate_function(&mut rng)).collect();
    let long = rng.random_range(129..1024);
    let tokenizer =
        InstructionTokenizer::train(corpus.iter().map(String::as_str), 300, long).unwrap();
    let model = model_for(&tokenizer, 8);
    let model_length = model.config().sequence_length;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint");
    // Saving a mismatched pair is refused too, so the checkpoint is written without it and the
    // tokenizer is given as `infer --tokenizer` would.
    assert!(save_model(&path, &model, Some(&tokenizer)).is_err());
    save_model(&path, &model, None).unwrap();
    let model = Model::from_checkpoint(&path, Device::Cpu).unwrap();
    let err = MaskFiller::new(model, tokenizer).err().unwrap();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let msg = err.to_string();
    for needle in [
        long.to_string(),
        model_length.to_string(),
        format!("--sequence-length {model_length}"),
    ] {
        assert!(msg.contains(&needle), "{needle:?} not in {msg}");
    }
}

#[test]
fn no_texts_is_an_error() {
    let tokenizer = fixture_tokenizer();
    let filler = MaskFiller::new(model_for(&tokenizer, 9), tokenizer).unwrap();
    assert!(matches!(
        filler.fill_batch(&[]).unwrap_err(),
        Error::Shape { .. }
    ));
}
