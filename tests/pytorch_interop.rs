//! A checkpoint written here loads into the PyTorch reference with `load_state_dict(strict=True)`
//! and gives the same logits. Needs python3 with torch and safetensors; without them the test
//! says so and checks nothing else.

use std::process::Command;

use undertale_maskedlm::checkpoint::save_model;
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size,
};
use undertale_maskedlm::{Device, Tensor};

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn pytorch_loads_our_checkpoint_strictly_and_agrees() {
    if !torch_available() {
        eprintln!("skipped: python3 with torch and safetensors is not installed");
        return;
    }
    let size = Size {
        depth: 2,
        hidden_dimensions: 48,
        heads: 3,
        intermediate_dimensions: 96,
        sequence_length: 24,
    };
    let model = Model::new(Config::new(size, 60, 5, 4), Device::Cpu, 21).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    save_model(&ckpt, &model, None).unwrap();

    let ids: Vec<i32> = vec![7, 12, 5, 30, 4, 41, 5, 59, 6, 5, 18, 4, 22];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/load_in_pytorch.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&ckpt)
        .args(ids.iter().map(|i| i.to_string()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyTorch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<f64> = json["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();

    let got = model
        .forward(&Tensor::from_i32(&[ids.len()], ids.clone()).unwrap(), None)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "logit {i}: {g} vs {w}"
        );
    }
}

#[test]
fn lightning_checkpoints_convert_both_ways_without_changing_a_value() {
    if !torch_available() {
        eprintln!("skipped: python3 with torch and safetensors is not installed");
        return;
    }
    let model = Model::new(Config::new(Size::TINY, 70, 5, 4), Device::Cpu, 8).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    let ckpt = dir.path().join("model.ckpt");
    let back = dir.path().join("back");
    save_model(&original, &model, None).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/convert_checkpoint.py");
    for args in [
        vec!["to-ckpt".as_ref(), original.as_os_str(), ckpt.as_os_str()],
        vec!["to-dir".as_ref(), ckpt.as_os_str(), back.as_os_str()],
    ] {
        let out = Command::new("python3")
            .arg(script)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let loaded = undertale_maskedlm::checkpoint::load_model(&back, Device::Cpu).unwrap();
    assert_eq!(loaded.config(), model.config());
    assert_eq!(
        loaded.parameters().to_vec_f32().unwrap(),
        model.parameters().to_vec_f32().unwrap()
    );
}
