//! Every bad input gets a typed error whose message names the bad value, never a panic: tensors
//! of the wrong rank, dtype or shape; ids, masks and labels out of range; impossible
//! configurations; broken checkpoints; and a non-finite training loss.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, tensor::TensorView};
use undertale_maskedlm::checkpoint::{
    CONFIG_FILE, MODEL_FILE, load_model, read_f32_tensors, save_model, write_f32_tensors,
};
use undertale_maskedlm::data::Example;
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size,
};
use undertale_maskedlm::train::{Trainer, TrainerOptions};
use undertale_maskedlm::{DType, Device, Error, Storage, Tensor};

const VOCAB: usize = 50;
const NEXT: i32 = 5;
const MASK: i32 = 4;
const SEQ_LEN: usize = 16;

fn config() -> Config {
    let mut c = Config::new(Size::TINY, VOCAB, NEXT, MASK);
    c.sequence_length = SEQ_LEN;
    c
}

fn model() -> Model {
    Model::new(config(), Device::Cpu, 0).unwrap()
}

/// `batch * seq` random ids in `[0, VOCAB)`, row-major.
fn tokens(rng: &mut ChaCha8Rng, batch: usize, seq: usize) -> Vec<i32> {
    (0..batch * seq)
        .map(|_| rng.random_range(0..VOCAB as i32))
        .collect()
}

fn i32s(shape: &[usize], v: Vec<i32>) -> Tensor {
    Tensor::from_i32(shape, v).unwrap()
}

fn ones(batch: usize, seq: usize) -> Tensor {
    i32s(&[batch, seq], vec![1; batch * seq])
}

/// Asserts the error's message contains every needle.
fn assert_names(err: &Error, needles: &[&str]) {
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} does not name {n:?}");
    }
}

// Tokens of rank 3 are a shape error naming the shape, in forward, infer and the loss.
#[test]
fn tokens_of_rank_three() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let t = i32s(&[2, 3, 8], tokens(&mut rng, 6, 8));
    let err = m.forward(&t, None).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { what, got, .. } if what == "tokens" && got == &vec![2, 3, 8]),
        "{err:?}"
    );
    assert_names(&err, &["tokens", "[2, 3, 8]"]);
    let err = m.infer(&t, None).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { got, .. } if got == &vec![2, 3, 8]),
        "{err:?}"
    );
    let mut grads = Tensor::from_f32(&[m.num_parameters()], vec![0.0; m.num_parameters()]).unwrap();
    let err = m
        .loss_and_backward(&t, &ones(2, 24), &ones(2, 24), &mut grads, None)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Shape { got, .. } if got == &vec![2, 3, 8]),
        "{err:?}"
    );
}

// Empty tokens ([0], [0, seq] or [batch, 0]) are a shape error naming the shape.
#[test]
fn empty_tokens() {
    let m = model();
    for shape in [vec![0usize], vec![0, 8], vec![2, 0]] {
        let err = m.forward(&i32s(&shape, Vec::new()), None).unwrap_err();
        assert!(
            matches!(&err, Error::Shape { got, .. } if got == &shape),
            "{shape:?}: {err:?}"
        );
        assert_names(&err, &[&format!("{shape:?}")]);
    }
}

// Tokens stored as f32 are a dtype error naming both dtypes.
#[test]
fn tokens_of_dtype_f32() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let t = Tensor::from_f32(
        &[2, 8],
        tokens(&mut rng, 2, 8).iter().map(|&x| x as f32).collect(),
    )
    .unwrap();
    let err = m.forward(&t, None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DType {
                expected: DType::I32,
                got: DType::F32,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, &["tokens", "I32", "F32"]);
    // A float mask too.
    let t = i32s(&[2, 8], tokens(&mut rng, 2, 8));
    let mask = Tensor::from_f32(&[2, 8], vec![1.0; 16]).unwrap();
    let err = m.forward(&t, Some(&mask)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DType {
                got: DType::F32,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, &["mask", "F32"]);
}

// A mask whose shape differs from the tokens' is a shape error naming the mask's shape.
#[test]
fn mask_of_another_shape() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let t = i32s(&[2, 8], tokens(&mut rng, 2, 8));
    for shape in [vec![2usize, 7], vec![1, 8], vec![16], vec![2, 8, 1]] {
        let n = shape.iter().product();
        let mask = i32s(&shape, vec![1; n]);
        let err = m.forward(&t, Some(&mask)).unwrap_err();
        assert!(
            matches!(&err, Error::Shape { got, .. } if got == &shape),
            "mask {shape:?}: {err:?}"
        );
        assert_names(&err, &["mask", &format!("{shape:?}")]);
    }
}

// A token id equal to vocab_size, or negative, is TokenOutOfRange naming the id, row and position.
#[test]
fn token_id_out_of_range() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (bad, row, position) in [
        (VOCAB as i32, 1usize, 3usize),
        (-3, 0, 5),
        (i32::MAX, 1, 7),
        (i32::MIN, 0, 0),
    ] {
        let mut v = tokens(&mut rng, 2, 8);
        v[row * 8 + position] = bad;
        let err = m.forward(&i32s(&[2, 8], v), Some(&ones(2, 8))).unwrap_err();
        assert!(
            matches!(err, Error::TokenOutOfRange { id, row: r, position: p, vocab_size: VOCAB }
                if id == bad as i64 && r == row && p == position),
            "{err:?}"
        );
        assert_names(
            &err,
            &[
                &bad.to_string(),
                &format!("row {row}"),
                &format!("position {position}"),
                "50",
            ],
        );
    }
}

// A mask entry of 2 (or -1) is MaskValue naming the value, row and position.
#[test]
fn mask_value_not_zero_or_one() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let t = i32s(&[2, 8], tokens(&mut rng, 2, 8));
    for (bad, row, position) in [(2, 1usize, 2usize), (-1, 0, 6)] {
        let mut mask = vec![1; 16];
        mask[row * 8 + position] = bad;
        let err = m.forward(&t, Some(&i32s(&[2, 8], mask))).unwrap_err();
        assert!(
            matches!(err, Error::MaskValue { value, row: r, position: p }
                if value == bad as i64 && r == row && p == position),
            "{err:?}"
        );
        assert_names(
            &err,
            &[
                &format!("mask value {bad}"),
                &format!("row {row}"),
                &format!("position {position}"),
            ],
        );
    }
}

// A sequence longer than sequence_length is SequenceTooLong naming both lengths.
#[test]
fn sequence_longer_than_the_model() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let n = SEQ_LEN + 1;
    let err = m
        .forward(&i32s(&[2, n], tokens(&mut rng, 2, n)), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SequenceTooLong {
                length: 17,
                max: SEQ_LEN
            }
        ),
        "{err:?}"
    );
    assert_names(&err, &["17", "16"]);
    let err = m
        .infer(&i32s(&[n], tokens(&mut rng, 1, n)), None)
        .unwrap_err();
    assert!(
        matches!(err, Error::SequenceTooLong { length: 17, .. }),
        "{err:?}"
    );
    // Exactly sequence_length is fine.
    assert!(
        m.forward(&i32s(&[2, SEQ_LEN], tokens(&mut rng, 2, SEQ_LEN)), None)
            .is_ok()
    );
}

// hidden_dimensions not divisible by heads is a Config error from validate and from the model.
#[test]
fn hidden_not_divisible_by_heads() {
    let mut c = config();
    c.heads = 5;
    let err = c.validate().unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_names(&err, &["hidden_dimensions 64", "heads 5"]);
    let err = Model::new(c, Device::Cpu, 0)
        .err()
        .expect("model with 64 % 5 != 0 must not build");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_names(&err, &["64", "5"]);
}

// Other impossible configurations name the bad key.
#[test]
fn other_bad_configs() {
    type Edit = fn(&mut Config);
    let cases: Vec<(Edit, &str)> = vec![
        (|c| c.heads = 0, "heads"),
        (|c| c.depth = 0, "depth"),
        (|c| c.mask_token_id = VOCAB as i32, "mask_token_id 50"),
        (|c| c.next_token_id = VOCAB as i32 + 3, "next_token_id 53"),
        (|c| c.mask_token_id = -1, "mask_token_id -1"),
        (|c| c.dropout = 1.0, "dropout 1"),
        (|c| c.eps = -1.0, "eps -1"),
    ];
    for (edit, needle) in cases {
        let mut c = config();
        edit(&mut c);
        let err = Model::new(c, Device::Cpu, 0)
            .err()
            .expect("bad config must not build");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert_names(&err, &[needle]);
    }
}

// A row whose mask is all zero is EmptyRow naming the row.
#[test]
fn row_with_no_real_token() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let t = i32s(&[3, 8], tokens(&mut rng, 3, 8));
    let mut mask = vec![1; 24];
    mask[16..24].fill(0);
    mask[3..8].fill(0);
    let err = m.forward(&t, Some(&i32s(&[3, 8], mask))).unwrap_err();
    assert!(matches!(err, Error::EmptyRow { row: 2 }), "{err:?}");
    assert_names(&err, &["row 2"]);
}

// A batch in which every label is -100 is NoLabels, in training and in evaluation.
#[test]
fn batch_without_labels() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let t = i32s(&[2, 8], tokens(&mut rng, 2, 8));
    let labels = i32s(&[2, 8], vec![-100; 16]);
    let mut grads = Tensor::from_f32(&[m.num_parameters()], vec![0.0; m.num_parameters()]).unwrap();
    let err = m
        .loss_and_backward(&t, &ones(2, 8), &labels, &mut grads, None)
        .unwrap_err();
    assert!(matches!(err, Error::NoLabels), "{err:?}");
    assert_names(&err, &["-100"]);
    // The failed call left the gradient untouched.
    assert!(grads.to_vec_f32().unwrap().iter().all(|&g| g == 0.0));
    let err = m.evaluate(&t, &ones(2, 8), &labels).unwrap_err();
    assert!(matches!(err, Error::NoLabels), "{err:?}");
}

// A label that is neither -100 nor a valid id is LabelOutOfRange naming the label, row and
// position; labels of another shape are a shape error.
#[test]
fn label_out_of_range() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let t = i32s(&[2, 8], tokens(&mut rng, 2, 8));
    let mut grads = Tensor::from_f32(&[m.num_parameters()], vec![0.0; m.num_parameters()]).unwrap();
    for (bad, row, position) in [(VOCAB as i32, 0usize, 2usize), (-5, 1, 4), (-101, 1, 0)] {
        let mut labels = vec![-100; 16];
        labels[9] = 7; // one valid label elsewhere
        labels[row * 8 + position] = bad;
        let labels = i32s(&[2, 8], labels);
        let check = |err: Error| {
            assert!(
                matches!(err, Error::LabelOutOfRange { label, row: r, position: p, vocab_size: VOCAB }
                    if label == bad as i64 && r == row && p == position),
                "{err:?}"
            );
            assert_names(
                &err,
                &[
                    &format!("label {bad}"),
                    &format!("row {row}"),
                    &format!("position {position}"),
                ],
            );
        };
        check(
            m.loss_and_backward(&t, &ones(2, 8), &labels, &mut grads, None)
                .unwrap_err(),
        );
        check(m.evaluate(&t, &ones(2, 8), &labels).unwrap_err());
    }
    let err = m
        .evaluate(&t, &ones(2, 8), &i32s(&[2, 7], vec![3; 14]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Shape { what, got, .. } if what == "labels" && got == &vec![2, 7]),
        "{err:?}"
    );
}

// `infer` takes one sequence: a batch of two rows is a shape error naming the shape.
#[test]
fn infer_with_two_rows() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let mut v = tokens(&mut rng, 2, 8);
    v[3] = MASK;
    let err = m.infer(&i32s(&[2, 8], v.clone()), None).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { got, .. } if got == &vec![2, 8]),
        "{err:?}"
    );
    assert_names(&err, &["[2, 8]"]);
    // One row, as [1, seq] or [seq], is fine.
    assert_eq!(
        m.infer(&i32s(&[1, 8], v[..8].to_vec()), None)
            .unwrap()
            .shape(),
        &[8]
    );
    assert_eq!(
        m.infer(&i32s(&[8], v[..8].to_vec()), None).unwrap().shape(),
        &[8]
    );
}

/// Saves a fresh tiny model into `dir/name` and returns that path.
fn saved(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    save_model(&path, &model(), None).unwrap();
    path
}

/// Asserts a Checkpoint error whose path ends in `file` and whose message names every needle.
fn assert_checkpoint_error(err: Error, file: &str, needles: &[&str]) {
    match &err {
        Error::Checkpoint { path, .. } => {
            assert!(path.ends_with(file), "path {path:?} is not {file}")
        }
        other => panic!("expected Error::Checkpoint, got {other:?}"),
    }
    assert_names(&err, needles);
}

// A good checkpoint loads (the baseline for the broken ones below).
#[test]
fn good_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path(), "good");
    let m = load_model(&path, Device::Cpu).unwrap();
    assert_eq!(
        m.parameters().to_vec_f32().unwrap(),
        model().parameters().to_vec_f32().unwrap()
    );
}

// A directory that does not exist is a Checkpoint error naming the directory.
#[test]
fn checkpoint_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-checkpoint");
    let err = load_model(&missing, Device::Cpu).err().unwrap();
    assert_checkpoint_error(err, CONFIG_FILE, &["no-such-checkpoint"]);
}

// A checkpoint without config.json is a Checkpoint error naming config.json.
#[test]
fn checkpoint_missing_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path(), "ckpt");
    fs::remove_file(path.join(CONFIG_FILE)).unwrap();
    let err = load_model(&path, Device::Cpu).err().unwrap();
    assert_checkpoint_error(err, CONFIG_FILE, &["config.json"]);
}

// A config.json that is not JSON, or lacks a key, is a Checkpoint error naming the problem.
#[test]
fn checkpoint_bad_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path(), "ckpt");
    fs::write(path.join(CONFIG_FILE), "{ not json").unwrap();
    let err = load_model(&path, Device::Cpu).err().unwrap();
    assert_checkpoint_error(err, CONFIG_FILE, &["invalid config"]);
    fs::write(path.join(CONFIG_FILE), r#"{"depth": 2}"#).unwrap();
    let err = load_model(&path, Device::Cpu).err().unwrap();
    assert_checkpoint_error(err, CONFIG_FILE, &["hidden_dimensions"]);
    // Well-formed JSON describing an impossible model.
    let mut c = config();
    c.heads = 5;
    fs::write(path.join(CONFIG_FILE), serde_json::to_string(&c).unwrap()).unwrap();
    let err = load_model(&path, Device::Cpu).err().unwrap();
    assert_checkpoint_error(err, CONFIG_FILE, &["hidden_dimensions 64", "heads 5"]);
}

// A truncated, garbage or missing model.safetensors is a Checkpoint error naming the file.
#[test]
fn checkpoint_corrupt_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path(), "ckpt");
    let file = path.join(MODEL_FILE);
    let bytes = fs::read(&file).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    for (what, content) in [
        ("truncated to half", bytes[..bytes.len() / 2].to_vec()),
        ("truncated to 5 bytes", bytes[..5].to_vec()),
        ("random bytes", garbage),
        ("empty", Vec::new()),
    ] {
        fs::write(&file, &content).unwrap();
        let err = load_model(&path, Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{what}: loaded"));
        assert_checkpoint_error(
            err,
            MODEL_FILE,
            &["model.safetensors", "not a valid safetensors file"],
        );
    }
    fs::remove_file(&file).unwrap();
    let err = load_model(&path, Device::Cpu).err().unwrap();
    assert_checkpoint_error(err, MODEL_FILE, &["model.safetensors", "cannot read"]);
}

// A config.json with another hidden size than the tensors: the error names a mis-shaped tensor
// and both its shapes.
#[test]
fn checkpoint_config_disagrees_with_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path(), "ckpt");
    let mut c = config();
    c.hidden_dimensions = 32;
    fs::write(path.join(CONFIG_FILE), serde_json::to_string(&c).unwrap()).unwrap();
    let err = load_model(&path, Device::Cpu).err().unwrap();
    assert_checkpoint_error(
        err,
        MODEL_FILE,
        &["encoder.embedding.token.weight", "[50, 64]", "[50, 32]"],
    );
}

/// The good checkpoint's tensors, edited by `edit`, written back; then the load error.
fn load_edited(edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>)) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path(), "ckpt");
    let file = path.join(MODEL_FILE);
    let mut tensors = read_f32_tensors(&file).unwrap();
    edit(&mut tensors);
    let named: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), d.as_slice()))
        .collect();
    write_f32_tensors(&file, &named, None).unwrap();
    load_model(&path, Device::Cpu)
        .err()
        .expect("edited checkpoint must not load")
}

// An extra tensor is named in the error.
#[test]
fn checkpoint_extra_tensor() {
    let err = load_edited(|t| {
        t.insert("encoder.bogus.weight".into(), (vec![2, 3], vec![0.5; 6]));
    });
    assert_checkpoint_error(err, MODEL_FILE, &["unexpected tensor encoder.bogus.weight"]);
}

// A missing tensor is named in the error.
#[test]
fn checkpoint_missing_tensor() {
    let err = load_edited(|t| {
        assert!(
            t.remove("head.decode.bias").is_some(),
            "the fixture has head.decode.bias"
        );
    });
    assert_checkpoint_error(err, MODEL_FILE, &["missing tensor head.decode.bias"]);
}

// A tensor with the right element count but a transposed shape is named with both shapes.
#[test]
fn checkpoint_transposed_tensor() {
    let err = load_edited(|t| {
        let (shape, _) = t
            .get_mut("encoder.embedding.token.weight")
            .expect("the token table exists");
        assert_eq!(shape, &vec![50, 64]);
        *shape = vec![64, 50];
    });
    assert_checkpoint_error(
        err,
        MODEL_FILE,
        &["encoder.embedding.token.weight", "[64, 50]", "[50, 64]"],
    );
}

// A tensor stored as F64 is a Checkpoint error naming the tensor and its dtype.
#[test]
fn checkpoint_f64_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path(), "ckpt");
    let file = path.join(MODEL_FILE);
    let tensors = read_f32_tensors(&file).unwrap();
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, data))| {
            if name == "head.norm.weight" {
                let b = data
                    .iter()
                    .flat_map(|&x| (x as f64).to_le_bytes())
                    .collect();
                (name.clone(), Dtype::F64, shape.clone(), b)
            } else {
                let b = data.iter().flat_map(|&x| x.to_le_bytes()).collect();
                (name.clone(), Dtype::F32, shape.clone(), b)
            }
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    fs::write(
        &file,
        safetensors::serialize(views, Some(metadata)).unwrap(),
    )
    .unwrap();
    let err = load_model(&path, Device::Cpu).err().unwrap();
    assert_checkpoint_error(err, MODEL_FILE, &["head.norm.weight", "F64", "F32"]);
}

// A NaN parameter makes the trainer's step fail with NonFiniteLoss, and leaves the parameters and
// the step counter exactly as they were.
#[test]
fn non_finite_loss_is_an_error_and_changes_nothing() {
    let mut m = model();
    let entry = m
        .layout()
        .get("head.decode.bias")
        .expect("head.decode.bias exists")
        .param;
    match m.parameters_mut().0.storage_mut() {
        Storage::CpuF32(v) => v[entry.offset + 7] = f32::NAN,
        other => panic!("expected CPU f32 parameters, got {other:?}"),
    }
    let before: Vec<u32> = m
        .parameters()
        .to_vec_f32()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    let mut trainer = Trainer::new(
        m,
        TrainerOptions {
            batch_size: 4,
            seed: 3,
            ..TrainerOptions::new(100)
        },
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let rows: Vec<Example> = (0..4)
        .map(|_| Example {
            tokens: tokens(&mut rng, 1, SEQ_LEN),
            mask: vec![1; SEQ_LEN],
        })
        .collect();
    // Any batch with a labelled position fails; try a few in case one draws no label.
    let mut failures = 0;
    for _ in 0..3 {
        match trainer.step(&rows) {
            Err(Error::NonFiniteLoss { loss, step }) => {
                assert!(!loss.is_finite(), "reported loss {loss} is finite");
                assert_eq!(step, 1, "the failed step is step 1");
                let msg = Error::NonFiniteLoss { loss, step }.to_string();
                assert!(msg.contains("NaN") && msg.contains("step 1"), "{msg}");
                failures += 1;
            }
            Err(Error::NoLabels) => {}
            other => panic!("expected NonFiniteLoss, got {other:?}"),
        }
    }
    assert!(failures > 0, "no step reached the loss");
    assert_eq!(trainer.state().step, 0);
    let after: Vec<u32> = trainer
        .model
        .parameters()
        .to_vec_f32()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert!(before == after, "a failed step changed the parameters");
}

// The trainer rejects a zero batch size and bad rows with typed errors.
#[test]
fn trainer_bad_arguments() {
    let err = Trainer::new(
        model(),
        TrainerOptions {
            batch_size: 0,
            seed: 0,
            ..TrainerOptions::new(10)
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_names(&err, &["batch size"]);
    let err = Trainer::new(model(), TrainerOptions::new(0)).err().unwrap();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_names(&err, &["total_steps", "0"]);
    let mut trainer = Trainer::new(
        model(),
        TrainerOptions {
            batch_size: 2,
            seed: 0,
            ..TrainerOptions::new(10)
        },
    )
    .unwrap();
    let err = trainer.step(&[]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err:?}");
    let rows = vec![Example {
        tokens: vec![3, 77, 9],
        mask: vec![1, 1, 1],
    }];
    // Id 77 is out of range for vocab 50: as a token if the collator left it, as a label if it
    // selected and replaced it.
    let err = trainer.step(&rows).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange { id: 77, .. } | Error::LabelOutOfRange { label: 77, .. }
        ),
        "{err:?}"
    );
    assert_names(&err, &["77"]);
}

// A position to read that is negative or past the sequence is IndexOutOfRange naming that very
// index (a negative one used to be reported as 0).
#[test]
fn logits_at_a_position_out_of_range_names_it() {
    let m = model();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let seq = rng.random_range(2..=SEQ_LEN);
    let t = i32s(&[seq], tokens(&mut rng, 1, seq));
    let past = seq as i32 + rng.random_range(0..5);
    let negative = -rng.random_range(1..1000);
    for bad in [-1, negative, past] {
        let err = m.logits_at_positions(&t, None, &[0, bad]).unwrap_err();
        assert!(
            matches!(err, Error::IndexOutOfRange { index, len, .. } if index == i64::from(bad) && len == seq),
            "{err:?}"
        );
        assert_names(
            &err,
            &[&format!("row index {bad} "), &format!("[0, {seq})")],
        );
    }
    assert!(
        m.logits_at_positions(&t, None, &[seq as i32 - 1, 0])
            .is_ok()
    );
}
