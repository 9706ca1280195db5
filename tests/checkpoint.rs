//! Checkpoints: model round trips, atomic replacement, and training that resumes exactly.

use undertale_maskedlm::checkpoint::{load_model, read_f32_tensors, save_model};
use undertale_maskedlm::data::synthetic::{Vocabulary, dataset};
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size,
};
use undertale_maskedlm::train::{Continue, Trainer, TrainerOptions};
use undertale_maskedlm::{Device, Tensor};

fn small_config(vocab: &Vocabulary) -> Config {
    let size = Size {
        depth: 2,
        hidden_dimensions: 32,
        heads: 4,
        intermediate_dimensions: 64,
        sequence_length: 48,
    };
    Config::new(size, vocab.len(), vocab.next_id(), vocab.mask_id())
}

#[test]
fn a_saved_model_loads_with_identical_weights_and_reference_names() {
    let vocab = Vocabulary::synthetic();
    let model = Model::new(small_config(&vocab), Device::Cpu, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    save_model(&path, &model, None).unwrap();

    let loaded = load_model(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.config(), model.config());
    assert_eq!(
        loaded.parameters().to_vec_f32().unwrap(),
        model.parameters().to_vec_f32().unwrap()
    );
    let tokens = Tensor::from_i32(
        &[20],
        vocab
            .encode_padded(
                "push rbp [NEXT] mov rbp rsp [NEXT] xor eax eax [NEXT] ret",
                20,
            )
            .tokens,
    )
    .unwrap();
    assert_eq!(
        loaded.forward(&tokens, None).unwrap().to_vec_f32().unwrap(),
        model.forward(&tokens, None).unwrap().to_vec_f32().unwrap()
    );

    // The file holds the reference's per-head names, never the internal fused QKV.
    let tensors = read_f32_tensors(&path.join("model.safetensors")).unwrap();
    assert!(tensors.contains_key("encoder.layers.1.attention.heads.3.v.bias"));
    assert_eq!(
        tensors["encoder.layers.0.attention.heads.0.q.weight"].0,
        vec![8, 32]
    );
    assert!(tensors.keys().all(|k| !k.contains("qkv")));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("config.json")).unwrap()).unwrap();
    for key in [
        "depth",
        "hidden_dimensions",
        "vocab_size",
        "sequence_length",
        "heads",
        "intermediate_dimensions",
        "next_token_id",
        "mask_token_id",
        "dropout",
        "eps",
        "lr",
        "warmup",
    ] {
        assert!(config.get(key).is_some(), "config.json lacks {key}");
    }
}

#[test]
fn saving_over_a_checkpoint_replaces_it_and_leaves_no_temporary_files() {
    let vocab = Vocabulary::synthetic();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last");
    let first = Model::new(small_config(&vocab), Device::Cpu, 1).unwrap();
    let second = Model::new(small_config(&vocab), Device::Cpu, 2).unwrap();
    save_model(&path, &first, None).unwrap();
    save_model(&path, &second, None).unwrap();
    let loaded = load_model(&path, Device::Cpu).unwrap();
    assert_eq!(
        loaded.parameters().to_vec_f32().unwrap(),
        second.parameters().to_vec_f32().unwrap()
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["last".to_string()],
        "only the checkpoint remains"
    );
}

/// Trains `steps` steps from scratch, or stops after `split` steps, saves, resumes from the
/// checkpoint and finishes. Returns the final parameters.
fn train(split: Option<u64>, steps: u64) -> Params {
    let vocab = Vocabulary::synthetic();
    let config = small_config(&vocab);
    let data = dataset(&vocab, 36, config.sequence_length, 3); // 5 batches of 8 (last partial)
    let epochs = 4;
    let model = Model::new(config, Device::Cpu, 11).unwrap();
    let mut trainer = Trainer::new(
        model,
        TrainerOptions {
            batch_size: 8,
            seed: 5,
            ..TrainerOptions::new(epochs * 5)
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    if let Some(split) = split {
        trainer
            .train(
                &data,
                epochs,
                Some(split),
                |_, _| Ok(()),
                |_, _| Ok(Continue::Yes),
            )
            .unwrap();
        assert_eq!(trainer.state().step, split);
        trainer.save(&dir.path().join("ckpt")).unwrap();
        let before = trainer.state().clone();
        drop(trainer);
        trainer = Trainer::resume(&dir.path().join("ckpt"), Device::Cpu).unwrap();
        // The whole state, the masking stream's position included, is what was running.
        assert_eq!(trainer.state(), &before);
    }
    trainer
        .train(
            &data,
            epochs,
            Some(steps),
            |_, _| Ok(()),
            |_, _| Ok(Continue::Yes),
        )
        .unwrap();
    assert_eq!(trainer.state().step, steps);
    Params(trainer.model.parameters().to_vec_f32().unwrap())
}

/// Parameters compared bit for bit, reporting the first difference instead of both vectors.
#[derive(PartialEq)]
struct Params(Vec<f32>);

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} parameters, first {:?}",
            self.0.len(),
            &self.0[..4.min(self.0.len())]
        )
    }
}

#[test]
fn training_resumes_exactly_mid_epoch_and_at_an_epoch_boundary() {
    let uninterrupted = train(None, 17);
    let initial = Params(
        Model::new(small_config(&Vocabulary::synthetic()), Device::Cpu, 11)
            .unwrap()
            .parameters()
            .to_vec_f32()
            .unwrap(),
    );
    assert_ne!(uninterrupted, initial, "training moved the weights");
    assert_eq!(train(None, 17), uninterrupted, "training is deterministic");
    assert_eq!(train(Some(7), 17), uninterrupted, "resumed mid-epoch");
    assert_eq!(
        train(Some(10), 17),
        uninterrupted,
        "resumed at an epoch boundary"
    );
}

#[test]
fn dropout_changes_the_step_and_depends_only_on_seed_and_step() {
    // Two trainers with the same seeds take bit-identical steps (dropout masks are keyed, not
    // drawn from hidden state); a zero-dropout trainer takes a different one.
    let vocab = Vocabulary::synthetic();
    let config = small_config(&vocab);
    let data = dataset(&vocab, 8, config.sequence_length, 9);
    let step = |dropout: f32| {
        let mut c = config.clone();
        c.dropout = dropout;
        let mut t = Trainer::new(
            Model::new(c, Device::Cpu, 4).unwrap(),
            TrainerOptions {
                batch_size: 8,
                seed: 6,
                ..TrainerOptions::new(10)
            },
        )
        .unwrap();
        t.step(&data).unwrap().loss
    };
    assert_eq!(step(0.1), step(0.1));
    assert_ne!(step(0.1), step(0.0));
}

#[test]
fn a_batch_with_nothing_masked_still_takes_the_optimiser_step_like_the_reference() {
    // One row with one real token: the collator masks nothing 85% of the time. The reference then
    // gets a NaN loss with zero gradients and AdamW still applies: on a first step (zero moments)
    // that is exactly the weight decay p * (1 - lr * wd).
    let vocab = Vocabulary::synthetic();
    let config = small_config(&vocab);
    let mut row = vocab.encode_padded("ret", 8);
    row.tokens[0] = vocab.id("ret").unwrap();
    for seed in 0..20 {
        let model = Model::new(config.clone(), Device::Cpu, 1).unwrap();
        let before = model.parameters().to_vec_f32().unwrap();
        let mut trainer = Trainer::new(
            model,
            TrainerOptions {
                batch_size: 1,
                seed,
                ..TrainerOptions::new(10)
            },
        )
        .unwrap();
        let report = trainer.step(std::slice::from_ref(&row)).unwrap();
        if !report.loss.is_nan() {
            continue;
        }
        let decay = (1.0 - report.lr * 0.01) as f32;
        let after = trainer.model.parameters().to_vec_f32().unwrap();
        assert!(before.iter().zip(&after).all(|(b, a)| b * decay == *a));
        assert_eq!(trainer.state().step, 1, "the schedule advanced");
        assert_eq!(
            trainer.state().epoch_loss_count,
            0,
            "no loss enters the epoch mean"
        );
        return;
    }
    panic!("no seed in 0..20 left the batch unmasked");
}

#[test]
fn training_checkpoints_carry_the_tokenizer_through_a_resume() {
    let tokenizer = undertale_maskedlm::data::tokenizer::InstructionTokenizer::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizer_reference.json"),
    )
    .unwrap();
    let mut size = Size::TINY;
    size.sequence_length = tokenizer.sequence_length();
    let config = Config::for_tokenizer(size, &tokenizer);
    let rows: Vec<_> = (0..4)
        .map(|i| {
            let e = tokenizer
                .encode(&format!("push rbp [NEXT] mov eax {i} [NEXT] ret"))
                .unwrap();
            undertale_maskedlm::data::Example {
                tokens: e.tokens,
                mask: e.mask,
            }
        })
        .collect();
    let mut trainer = Trainer::new(
        Model::new(config, Device::Cpu, 1).unwrap(),
        TrainerOptions {
            batch_size: 2,
            tokenizer: Some(tokenizer.clone()),
            ..TrainerOptions::new(4)
        },
    )
    .unwrap();
    trainer.step(&rows[..2]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    trainer.save(&first).unwrap();
    let resumed = Trainer::resume(&first, Device::Cpu).unwrap();
    let kept = resumed
        .tokenizer()
        .expect("the checkpoint's tokenizer is restored");
    assert_eq!(kept.to_json().unwrap(), tokenizer.to_json().unwrap());
    let second = dir.path().join("second");
    resumed.save(&second).unwrap();
    assert_eq!(
        std::fs::read_to_string(first.join("tokenizer.json")).unwrap(),
        std::fs::read_to_string(second.join("tokenizer.json")).unwrap()
    );
}
