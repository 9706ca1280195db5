//! Number-for-number parity with the reference (fixtures from `scripts/reference.py`, float64
//! PyTorch): logits, loss, every gradient, two AdamW steps, the LR schedule.

mod common;

use common::{Fixture, assert_close};
use undertale_maskedlm::model::InstructionTraceTransformerEncoderForMaskedLM as Model;
use undertale_maskedlm::model::state_dict::{from_state_dict, to_state_dict};
use undertale_maskedlm::train::{AdamW, AdamWConfig, LrSchedule};
use undertale_maskedlm::{Device, Tensor};

fn model(fx: &Fixture) -> Model {
    let values = from_state_dict(&fx.config, &fx.state_dict("param")).unwrap();
    Model::from_parameters(fx.config.clone(), Device::Cpu, &values).unwrap()
}

fn inputs(fx: &Fixture) -> (Tensor, Tensor, Tensor) {
    let t = |name: &str| {
        let (shape, v) = fx.i32(name);
        Tensor::from_i32(&shape, v).unwrap()
    };
    (t("input.tokens"), t("input.mask"), t("input.labels"))
}

/// Relative tolerance with an absolute floor scaled to the tensor's magnitude, so elements that
/// are nearly zero by cancellation are judged against the tensor's scale.
fn floor(want: &[f64], scale: f64) -> f64 {
    want.iter().fold(0.0f64, |m, x| m.max(x.abs())) * scale
}

#[test]
fn logits_match_the_reference() {
    let fx = Fixture::load();
    let m = model(&fx);
    let (tokens, mask, _) = inputs(&fx);
    let logits = m.forward(&tokens, Some(&mask)).unwrap();
    assert_eq!(logits.shape(), &[3, 16, 40]);
    let want = fx.f64("output.logits");
    assert_close(
        "logits",
        &logits.to_vec_f32().unwrap(),
        want,
        1e-5,
        floor(want, 1e-6),
    );
}

#[test]
fn shorter_input_without_padding_gives_the_same_logits() {
    let fx = Fixture::load();
    let m = model(&fx);
    let (tokens, mask, _) = inputs(&fx);
    let (tok, msk) = (tokens.to_vec_i32().unwrap(), mask.to_vec_i32().unwrap());
    let want = fx.f64("output.logits");
    for row in 1..3 {
        let real = msk[row * 16..][..16].iter().filter(|&&m| m == 1).count();
        let short = Tensor::from_i32(&[real], tok[row * 16..][..real].to_vec()).unwrap();
        let logits = m.forward(&short, None).unwrap().to_vec_f32().unwrap();
        let expect = &want[row * 16 * 40..][..real * 40];
        assert_close(
            &format!("row {row} unpadded logits"),
            &logits,
            expect,
            1e-5,
            floor(expect, 1e-6),
        );
    }
}

#[test]
fn loss_and_every_gradient_match_the_reference() {
    let fx = Fixture::load();
    let m = model(&fx);
    let (tokens, mask, labels) = inputs(&fx);
    let mut grads = Tensor::from_f32(&[m.num_parameters()], vec![0.0; m.num_parameters()]).unwrap();
    let loss = m
        .loss_and_backward(&tokens, &mask, &labels, &mut grads, None)
        .unwrap();
    assert_close("loss", &[loss], fx.f64("output.loss"), 1e-5, 0.0);

    let got = to_state_dict(&fx.config, &grads.to_vec_f32().unwrap()).unwrap();
    let want = fx.state_dict("grad");
    assert_eq!(
        got.len(),
        want.len(),
        "one gradient per reference parameter"
    );
    // The absolute floor is taken from the gradient scale of the whole model: some gradients are
    // exactly zero in exact arithmetic (the key biases: adding a constant to every score of a
    // softmax row changes nothing), and f32 leaves rounding noise there.
    let all: Vec<f64> = want
        .keys()
        .flat_map(|k| fx.f64(&format!("grad.{k}")).to_vec())
        .collect();
    let abs = floor(&all, 1e-6);
    for t in got {
        let w = fx.f64(&format!("grad.{}", t.name));
        assert_eq!(t.shape, want[&t.name].0, "{} shape", t.name);
        assert_close(&format!("grad {}", t.name), &t.data, w, 1e-4, abs);
    }
}

#[test]
fn two_adamw_steps_match_the_reference() {
    let fx = Fixture::load();
    let mut m = model(&fx);
    let (tokens, mask, labels) = inputs(&fx);
    let n = m.num_parameters();
    let backend = Device::Cpu.backend().unwrap();
    let mut opt = AdamW::new(backend.as_ref(), n, AdamWConfig::default()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..2 {
        let mut grads = Tensor::from_f32(&[n], vec![0.0; n]).unwrap();
        losses.push(
            m.loss_and_backward(&tokens, &mask, &labels, &mut grads, None)
                .unwrap(),
        );
        opt.step(
            backend.as_ref(),
            m.parameters_mut(),
            &grads,
            fx.config.lr,
            None,
        )
        .unwrap();
    }
    assert_close(
        "loss at step 2",
        &losses[1..],
        fx.f64("adamw.loss_step2"),
        1e-5,
        0.0,
    );
    for t in to_state_dict(&fx.config, &m.parameters().to_vec_f32().unwrap()).unwrap() {
        let w = fx.f64(&format!("adamw.{}", t.name));
        // A key bias's true gradient is identically zero, so Adam divides rounding noise by
        // (|noise| + eps) and may move it by up to lr per step in f32 where float64 does not move;
        // the gradient test above shows that noise is negligible against the gradient scale.
        let abs = if t.name.ends_with(".k.bias") {
            2.0 * fx.config.lr
        } else {
            1e-6
        };
        assert_close(&format!("adamw {}", t.name), &t.data, w, 1e-6, abs);
    }
}

#[test]
fn lr_schedule_matches_the_reference() {
    let fx = Fixture::load();
    let mut checked = 0;
    for (name, (_, values)) in fx.f64s.iter().filter(|(n, _)| n.starts_with("lr.")) {
        // lr.total_{T}.warmup_steps_{W}
        let parts: Vec<u64> = name
            .split('.')
            .skip(1)
            .map(|p| p.rsplit('_').next().unwrap().parse().unwrap())
            .collect();
        let (total, warmup_steps) = (parts[0], parts[1]);
        let schedule = LrSchedule {
            base: 1e-4,
            warmup_steps,
            total_steps: total,
        };
        for (s, &want) in values.iter().enumerate() {
            let got = schedule.lr(s as u64);
            assert!(
                (got - want).abs() <= 1e-9 * want.abs(),
                "{name} step {s}: {got} vs {want}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 6, "fixture holds the schedule cases");
}

#[test]
fn warmup_fraction_rounds_down_like_the_reference() {
    assert_eq!(LrSchedule::new(1e-4, 0.025, 100).warmup_steps, 2);
    assert_eq!(LrSchedule::new(1e-4, 0.3, 3).warmup_steps, 0);
    assert_eq!(LrSchedule::new(1e-4, 0.0, 10).warmup_steps, 0);
}
