//! Finite-difference checks of every backward op of the CPU backend, one op at a time and composed
//! through the [`Tape`].
//!
//! Method. The ops run in f32, so a naive finite difference drowns in rounding noise. Instead each
//! check reduces the op's output to a scalar `L(x) = sum(r * f(x))` with a fixed random projection
//! `r`, accumulated in f64, and runs the op's backward with `dy = r`, which must give `dL/dx`. Then:
//! - for several random directions `u` (every coordinate moves) the analytic directional
//!   derivative `<grad, u>` is compared with `(L(x + h u) - L(x - h u)) / 2h`. Moving every
//!   coordinate at once makes the change in `L` large compared with f32 noise;
//! - individual coordinates (all of them for the single ops, a handful in the composed check) are
//!   compared the same way, so the gradient is also compared elementwise.
//!
//! The perturbed inputs are f32, so `x + h u` is rounded; the analytic side uses the perturbation
//! actually realised (`(x + h u) as f32 - (x - h u) as f32`, exact in f64), not `2 h u`.
//!
//! Tolerance: relative 1e-2, plus an absolute floor of 1e-3 times the gradient's scale (its l2
//! norm for a direction, its largest element for a coordinate) for quantities that cancel to
//! nearly zero. That is tight enough to catch a wrong formula: a wrong backward (a missing term, a
//! transposed index, a wrong scale such as 1/d instead of 1/sqrt(d), a dropped mask) is typically
//! off by O(1) relative, i.e. 100x the tolerance, and with several random directions the chance
//! that such an error is hidden in every one of them is negligible. It is loose enough for the
//! noise: the central difference has truncation error O(h^2) ~ 1e-4 relative with h = 1e-2, and
//! the f32 evaluation noise, ~1e-7 relative in `L`, divided by 2h is ~1e-5.
//!
//! Parameter gradients are checked on a `grads` buffer prefilled with random values: the op must
//! add into it, so the check uses `after - prefill` inside the parameter's slot and requires every
//! element outside the op's slots to be bit-for-bit untouched.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use undertale_maskedlm::Tensor;
use undertale_maskedlm::backend::cpu::{CpuBackend, IGNORE_INDEX};
use undertale_maskedlm::backend::{DropoutKey, Param};
use undertale_maskedlm::ops::sequences::Sequences;
use undertale_maskedlm::philox::dropout_uniform;
use undertale_maskedlm::tape::Tape;

/// The `[NEXT]` token id used throughout.
const NEXT: i32 = 3;
/// Finite-difference step.
const H: f64 = 1e-2;
/// Relative tolerance (see the module comment for why it is tight enough).
const RTOL: f64 = 1e-2;
/// Absolute floor, as a fraction of the gradient's scale.
const ATOL_FRAC: f64 = 1e-3;
/// Random directions per check.
const DIRECTIONS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn seeded(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` draws from N(mean, std^2), never (nearly) zero.
fn normal(rng: &mut ChaCha8Rng, n: usize, mean: f32, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            loop {
                let z: f32 = rng.sample(StandardNormal);
                let v = mean + std * z;
                if v.abs() > 1e-3 {
                    break v;
                }
            }
        })
        .collect()
}

fn f32t(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::from_f32(shape, data).unwrap()
}

fn i32t(shape: &[usize], data: Vec<i32>) -> Tensor {
    Tensor::from_i32(shape, data).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// `sum(r * y)` in f64.
fn project(r: &[f32], y: &[f32]) -> f64 {
    assert_eq!(r.len(), y.len(), "projection length");
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

fn l2(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

fn max_abs(x: &[f32]) -> f64 {
    x.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64))
}

/// Which coordinates [`gradcheck`] compares one at a time.
#[derive(Clone, Copy)]
enum Coords {
    /// Every coordinate: the gradient is compared elementwise.
    All,
    /// This many random coordinates plus the largest-magnitude one.
    Some(usize),
}

/// One comparison of an analytic derivative with its finite difference; returns the error as a
/// fraction of the allowed error.
fn assert_agrees(what: &str, at: &str, analytic: f64, fd: f64, atol: f64) -> f64 {
    let err = (analytic - fd).abs();
    let allowed = RTOL * analytic.abs().max(fd.abs()) + atol;
    assert!(
        analytic.is_finite() && fd.is_finite() && err <= allowed,
        "{what}, {at}: analytic {analytic:.8e} vs finite difference {fd:.8e} \
         (error {err:.3e}, allowed {allowed:.3e})"
    );
    err / allowed
}

/// Checks `grad` = dL/dx at `x` against central finite differences of `loss`, along
/// [`DIRECTIONS`] random directions and on the coordinates `coords`.
fn gradcheck(
    what: &str,
    x: &[f32],
    grad: &[f32],
    coords: Coords,
    rng: &mut ChaCha8Rng,
    loss: impl Fn(&[f32]) -> f64,
) {
    assert_eq!(x.len(), grad.len(), "{what}: gradient length");
    assert!(
        grad.iter().all(|g| g.is_finite()),
        "{what}: gradient not finite"
    );
    let n = x.len();
    let mut worst = 0.0f64;
    for k in 0..DIRECTIONS {
        let u = normal(rng, n, 0.0, 1.0);
        let plus: Vec<f32> = x
            .iter()
            .zip(&u)
            .map(|(&a, &d)| (a as f64 + H * d as f64) as f32)
            .collect();
        let minus: Vec<f32> = x
            .iter()
            .zip(&u)
            .map(|(&a, &d)| (a as f64 - H * d as f64) as f32)
            .collect();
        // The realised perturbation, exact in f64.
        let step: f64 = grad
            .iter()
            .zip(plus.iter().zip(&minus))
            .map(|(&g, (&p, &m))| g as f64 * (p as f64 - m as f64))
            .sum();
        let analytic = step / (2.0 * H);
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * H);
        worst = worst.max(assert_agrees(
            what,
            &format!("direction {k}"),
            analytic,
            fd,
            ATOL_FRAC * l2(grad),
        ));
    }
    let indices: Vec<usize> = match coords {
        Coords::All => (0..n).collect(),
        Coords::Some(k) => {
            let largest = (0..n)
                .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
                .expect("non-empty");
            let mut v: Vec<usize> = (0..k).map(|_| rng.random_range(0..n)).collect();
            v.push(largest);
            v
        }
    };
    let atol = ATOL_FRAC * max_abs(grad);
    for i in indices {
        let mut plus = x.to_vec();
        let mut minus = x.to_vec();
        plus[i] = (x[i] as f64 + H) as f32;
        minus[i] = (x[i] as f64 - H) as f32;
        let fd = (loss(&plus) - loss(&minus)) / (plus[i] as f64 - minus[i] as f64);
        worst = worst.max(assert_agrees(
            what,
            &format!("coordinate {i}"),
            grad[i] as f64,
            fd,
            atol,
        ));
    }
    // Visible with `--nocapture`: how close the check came to failing.
    eprintln!("{what}: worst error {worst:.3} of the tolerance");
}

/// Allocates parameters in one flat buffer, with gaps between them so that a backward writing
/// outside its slot shows up.
struct Layout {
    len: usize,
}

impl Layout {
    fn new() -> Self {
        Layout { len: 3 }
    }

    fn param(&mut self, len: usize) -> Param {
        let p = Param {
            offset: self.len,
            len,
        };
        self.len += len + 3;
        p
    }
}

fn slot(buf: &[f32], p: Param) -> &[f32] {
    &buf[p.offset..p.offset + p.len]
}

fn set_slot(buf: &mut [f32], p: Param, v: &[f32]) {
    buf[p.offset..p.offset + p.len].copy_from_slice(v);
}

/// The flat buffer `buf` with parameter `p` replaced by `v`, as a tensor.
fn with_slot(buf: &[f32], p: Param, v: &[f32]) -> Tensor {
    let mut b = buf.to_vec();
    set_slot(&mut b, p, v);
    f32t(&[b.len()], b)
}

/// What a backward added into parameter `p`: `after - prefill` inside its slot.
fn added(after: &Tensor, prefill: &[f32], p: Param) -> Vec<f32> {
    slot(&vals(after), p)
        .iter()
        .zip(slot(prefill, p))
        .map(|(a, b)| a - b)
        .collect()
}

/// Every element of `after` outside the slots `ps` still equals the prefill, bit for bit.
fn assert_untouched_outside(what: &str, after: &Tensor, prefill: &[f32], ps: &[Param]) {
    let after = vals(after);
    for i in 0..prefill.len() {
        if ps.iter().any(|p| (p.offset..p.offset + p.len).contains(&i)) {
            continue;
        }
        assert_eq!(
            after[i].to_bits(),
            prefill[i].to_bits(),
            "{what}: grads[{i}] outside the op's slots changed"
        );
    }
}

/// Elementwise `|got - want| <= 1e-5 * (1 + |want|)`, for forward outputs against f64 references.
fn assert_forward_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: got {g} want {w}"
        );
    }
}

/// Straightforward f64 multi-head attention with a key-padding mask (masked keys get probability
/// 0; a query with no valid key gets output 0).
fn reference_attention(
    qkv: &[f32],
    mask: &[i32],
    batch: usize,
    seq: usize,
    heads: usize,
    d: usize,
) -> Vec<f64> {
    let hidden = heads * d;
    let at = |b: usize, i: usize, part: usize, h: usize, c: usize| {
        qkv[(b * seq + i) * 3 * hidden + part * hidden + h * d + c] as f64
    };
    let mut out = vec![0.0f64; batch * seq * hidden];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                let scores: Vec<Option<f64>> = (0..seq)
                    .map(|j| {
                        (mask[b * seq + j] != 0).then(|| {
                            (0..d)
                                .map(|c| at(b, i, 0, h, c) * at(b, j, 1, h, c))
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                    })
                    .collect();
                let max = scores
                    .iter()
                    .flatten()
                    .fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = scores.iter().flatten().map(|s| (s - max).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    if let Some(s) = s {
                        let p = (s - max).exp() / z;
                        for c in 0..d {
                            out[(b * seq + i) * hidden + h * d + c] += p * at(b, j, 2, h, c);
                        }
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Single ops
// ---------------------------------------------------------------------------------------------

/// Embedding: the forward gathers the right token/instruction/argument rows (positions derived
/// from several `[NEXT]`s, a leading one and consecutive ones), and the backward adds exactly the
/// gradient of each of the three tables into their slots and nowhere else.
#[test]
fn embedding_tables_gradient() {
    let b = CpuBackend::new();
    let mut rng = seeded(1);
    let (batch, seq, hidden, vocab, positions) = (2, 7, 4, 9, 8);
    let tokens_v = vec![3, 5, 6, 3, 7, 3, 3, 4, 8, 3, 1, 2, 0, 3];
    // Derived by hand: a new instruction starts after each [NEXT].
    let want_ins = [0, 1, 1, 1, 2, 2, 3, 0, 0, 0, 1, 1, 1, 1];
    let want_arg = [0, 0, 1, 2, 0, 1, 0, 0, 1, 2, 0, 1, 2, 3];
    let tokens = i32t(&[batch * seq], tokens_v.clone());
    let sequences = Sequences::padded(&b, batch, seq, &[1; 14]).unwrap();

    let mut layout = Layout::new();
    let tables = [
        layout.param(vocab * hidden),
        layout.param(positions * hidden),
        layout.param(positions * hidden),
    ];
    let params = normal(&mut rng, layout.len, 0.0, 1.0);
    let forward = |p: &Tensor| {
        vals(
            &b.embedding_forward(
                &tokens, &sequences, NEXT, p, tables[0], tables[1], tables[2], hidden,
            )
            .unwrap(),
        )
    };

    let out = forward(&f32t(&[params.len()], params.clone()));
    let want: Vec<f64> = (0..batch * seq)
        .flat_map(|row| {
            let rows = [tokens_v[row] as usize, want_ins[row], want_arg[row]];
            let params = &params;
            (0..hidden).map(move |c| {
                (0..3)
                    .map(|t| params[tables[t].offset + rows[t] * hidden + c] as f64)
                    .sum::<f64>()
            })
        })
        .collect();
    assert_forward_close("embedding output", &out, &want);

    let r = normal(&mut rng, out.len(), 0.0, 1.0);
    let prefill = normal(&mut rng, layout.len, 0.0, 1.0);
    let mut grads = f32t(&[layout.len], prefill.clone());
    b.embedding_backward(
        &f32t(&[batch * seq, hidden], r.clone()),
        &tokens,
        &sequences,
        NEXT,
        &mut grads,
        tables[0],
        tables[1],
        tables[2],
    )
    .unwrap();
    assert_untouched_outside("embedding", &grads, &prefill, &tables);
    for (name, p) in ["token table", "instruction table", "argument table"]
        .into_iter()
        .zip(tables)
    {
        gradcheck(
            &format!("embedding {name}"),
            slot(&params, p),
            &added(&grads, &prefill, p),
            Coords::All,
            &mut rng,
            |v| project(&r, &forward(&with_slot(&params, p, v))),
        );
    }
}

/// LayerNorm (eps 1e-5): dx, dweight and dbias against finite differences, with weights around 1
/// and inputs off-centre so the mean and variance terms of dx matter.
#[test]
fn layernorm_gradients() {
    let b = CpuBackend::new();
    let mut rng = seeded(2);
    let (rows, c, eps) = (6, 10, 1e-5f32);
    let x = normal(&mut rng, rows * c, 0.5, 1.5);
    let mut layout = Layout::new();
    let (w, bias) = (layout.param(c), layout.param(c));
    let mut params = normal(&mut rng, layout.len, 0.0, 0.1);
    let weight_v = normal(&mut rng, c, 1.0, 0.1);
    set_slot(&mut params, w, &weight_v);
    let forward = |x: &[f32], p: &Tensor| {
        vals(
            &b.layernorm_forward(&f32t(&[rows, c], x.to_vec()), p, w, bias, eps)
                .unwrap()
                .y,
        )
    };
    let pt = f32t(&[params.len()], params.clone());

    let out = b
        .layernorm_forward(&f32t(&[rows, c], x.clone()), &pt, w, bias, eps)
        .unwrap();
    let want: Vec<f64> = x
        .chunks(c)
        .flat_map(|row| {
            let m = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
            let s = 1.0 / (var + eps as f64).sqrt();
            let params = &params;
            row.iter().enumerate().map(move |(i, &v)| {
                (v as f64 - m) * s * params[w.offset + i] as f64 + params[bias.offset + i] as f64
            })
        })
        .collect();
    assert_forward_close("layernorm output", &vals(&out.y), &want);

    let r = normal(&mut rng, rows * c, 0.0, 1.0);
    let prefill = normal(&mut rng, layout.len, 0.0, 1.0);
    let mut grads = f32t(&[layout.len], prefill.clone());
    let dx = b
        .layernorm_backward(
            &f32t(&[rows, c], r.clone()),
            &f32t(&[rows, c], x.clone()),
            &out.mean,
            &out.rstd,
            &pt,
            &mut grads,
            w,
            bias,
        )
        .unwrap();
    assert_eq!(dx.shape(), &[rows, c]);
    assert_untouched_outside("layernorm", &grads, &prefill, &[w, bias]);

    gradcheck("layernorm dx", &x, &vals(&dx), Coords::All, &mut rng, |v| {
        project(&r, &forward(v, &pt))
    });
    for (name, p) in [("dweight", w), ("dbias", bias)] {
        gradcheck(
            &format!("layernorm {name}"),
            slot(&params, p),
            &added(&grads, &prefill, p),
            Coords::All,
            &mut rng,
            |v| project(&r, &forward(&x, &with_slot(&params, p, v))),
        );
    }
}

/// Linear `y = x W^T + b` with W `[out, in]`: dx, dW and db against finite differences.
#[test]
fn linear_gradients() {
    let b = CpuBackend::new();
    let mut rng = seeded(3);
    let (rows, inp, out_f) = (6, 7, 5);
    let x = normal(&mut rng, rows * inp, 0.0, 1.0);
    let mut layout = Layout::new();
    let (w, bias) = (layout.param(out_f * inp), layout.param(out_f));
    let params = normal(&mut rng, layout.len, 0.0, 0.4);
    let pt = f32t(&[params.len()], params.clone());
    let forward = |x: &[f32], p: &Tensor| {
        vals(
            &b.linear_forward(&f32t(&[rows, inp], x.to_vec()), p, w, bias, out_f)
                .unwrap(),
        )
    };

    let y = b
        .linear_forward(&f32t(&[rows, inp], x.clone()), &pt, w, bias, out_f)
        .unwrap();
    assert_eq!(y.shape(), &[rows, out_f]);
    let want: Vec<f64> = (0..rows * out_f)
        .map(|k| {
            let (i, o) = (k / out_f, k % out_f);
            params[bias.offset + o] as f64
                + (0..inp)
                    .map(|j| x[i * inp + j] as f64 * params[w.offset + o * inp + j] as f64)
                    .sum::<f64>()
        })
        .collect();
    assert_forward_close("linear output", &vals(&y), &want);

    let r = normal(&mut rng, rows * out_f, 0.0, 1.0);
    let prefill = normal(&mut rng, layout.len, 0.0, 1.0);
    let mut grads = f32t(&[layout.len], prefill.clone());
    let dx = b
        .linear_backward(
            &f32t(&[rows, out_f], r.clone()),
            &f32t(&[rows, inp], x.clone()),
            &pt,
            &mut grads,
            w,
            bias,
        )
        .unwrap();
    assert_eq!(dx.shape(), &[rows, inp]);
    assert_untouched_outside("linear", &grads, &prefill, &[w, bias]);

    gradcheck("linear dx", &x, &vals(&dx), Coords::All, &mut rng, |v| {
        project(&r, &forward(v, &pt))
    });
    for (name, p) in [("dW", w), ("db", bias)] {
        gradcheck(
            &format!("linear {name}"),
            slot(&params, p),
            &added(&grads, &prefill, p),
            Coords::All,
            &mut rng,
            |v| project(&r, &forward(&x, &with_slot(&params, p, v))),
        );
    }
}

/// Exact (erf) GELU: forward against an f64 reference and dx against finite differences, over
/// inputs of both signs and several magnitudes.
#[test]
fn gelu_gradient() {
    let b = CpuBackend::new();
    let mut rng = seeded(4);
    let shape = [9, 13];
    let x = normal(&mut rng, 9 * 13, 0.0, 2.0);
    let forward = |v: &[f32]| vals(&b.gelu_forward(&f32t(&shape, v.to_vec())).unwrap());
    let want: Vec<f64> = x
        .iter()
        .map(|&v| {
            let v = v as f64;
            0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
        })
        .collect();
    assert_forward_close("gelu output", &forward(&x), &want);

    let r = normal(&mut rng, x.len(), 0.0, 1.0);
    let dx = b
        .gelu_backward(&f32t(&shape, r.clone()), &f32t(&shape, x.clone()))
        .unwrap();
    gradcheck("gelu dx", &x, &vals(&dx), Coords::All, &mut rng, |v| {
        project(&r, &forward(v))
    });
}

/// Attention (batch 2, seq 7, 3 heads of dim 5, some keys masked in each sequence): the output
/// matches an f64 reference, dqkv matches finite differences elementwise, and masked keys get
/// exactly zero k and v gradients.
#[test]
fn attention_gradient() {
    let b = CpuBackend::new();
    let mut rng = seeded(5);
    let (batch, seq, heads, d) = (2, 7, 3, 5);
    let hidden = heads * d;
    let mask_v = vec![1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0];
    let mask = Sequences::padded(&b, batch, seq, &mask_v).unwrap();
    let shape = [batch * seq, 3 * hidden];
    let qkv = normal(&mut rng, batch * seq * 3 * hidden, 0.0, 1.0);
    let forward = |v: &[f32]| {
        vals(
            &b.attention_forward(&f32t(&shape, v.to_vec()), &mask, heads)
                .unwrap()
                .out,
        )
    };

    let fwd = b
        .attention_forward(&f32t(&shape, qkv.clone()), &mask, heads)
        .unwrap();
    assert_eq!(fwd.out.shape(), &[batch * seq, hidden]);
    assert_eq!(fwd.lse.shape(), &[heads, batch * seq]);
    assert_forward_close(
        "attention output",
        &vals(&fwd.out),
        &reference_attention(&qkv, &mask_v, batch, seq, heads, d),
    );

    let r = normal(&mut rng, batch * seq * hidden, 0.0, 1.0);
    let dqkv = b
        .attention_backward(
            &f32t(&[batch * seq, hidden], r.clone()),
            &f32t(&shape, qkv.clone()),
            &mask,
            &fwd.out,
            &fwd.lse,
            heads,
        )
        .unwrap();
    assert_eq!(dqkv.shape(), &shape);
    let dqkv = vals(&dqkv);

    // A masked key never reaches the output, so its k and v get exactly zero gradient.
    for bi in 0..batch {
        for j in (0..seq).filter(|&j| mask_v[bi * seq + j] == 0) {
            let row = &dqkv[(bi * seq + j) * 3 * hidden..][..3 * hidden];
            assert!(
                row[hidden..].iter().all(|&g| g == 0.0),
                "masked key {bi},{j} has non-zero dk/dv"
            );
        }
    }
    gradcheck("attention dqkv", &qkv, &dqkv, Coords::All, &mut rng, |v| {
        project(&r, &forward(v))
    });
}

/// Variable-length attention (sequences back to back, no mask): each sequence's output matches an
/// f64 reference of that sequence alone, no key of one sequence reaches another (a sequence's
/// gradient is zero outside its rows), and dqkv matches finite differences elementwise.
#[test]
fn variable_length_attention_gradient() {
    let b = CpuBackend::new();
    let mut rng = seeded(12);
    let (lengths, heads, d) = ([5usize, 1, 8, 3], 2, 4);
    let hidden = heads * d;
    let tokens: usize = lengths.iter().sum();
    let sequences = Sequences::new(&b, &lengths, None, None).unwrap();
    let shape = [tokens, 3 * hidden];
    let qkv = normal(&mut rng, tokens * 3 * hidden, 0.0, 1.0);
    let forward = |v: &[f32]| {
        vals(
            &b.attention_forward(&f32t(&shape, v.to_vec()), &sequences, heads)
                .unwrap()
                .out,
        )
    };

    let fwd = b
        .attention_forward(&f32t(&shape, qkv.clone()), &sequences, heads)
        .unwrap();
    assert_eq!(fwd.lse.shape(), &[heads, tokens]);
    let out = vals(&fwd.out);
    let mut start = 0;
    for &len in &lengths {
        let alone = &qkv[start * 3 * hidden..(start + len) * 3 * hidden];
        assert_forward_close(
            "variable-length attention output",
            &out[start * hidden..(start + len) * hidden],
            &reference_attention(alone, &vec![1; len], 1, len, heads, d),
        );
        start += len;
    }

    let r = normal(&mut rng, tokens * hidden, 0.0, 1.0);
    let dqkv = vals(
        &b.attention_backward(
            &f32t(&[tokens, hidden], r.clone()),
            &f32t(&shape, qkv.clone()),
            &sequences,
            &fwd.out,
            &fwd.lse,
            heads,
        )
        .unwrap(),
    );
    gradcheck(
        "variable-length attention dqkv",
        &qkv,
        &dqkv,
        Coords::All,
        &mut rng,
        |v| project(&r, &forward(v)),
    );
    // A sequence's output depends on its own rows only: perturbing sequence 0 leaves the others.
    let mut moved = qkv.clone();
    moved[..lengths[0] * 3 * hidden]
        .iter_mut()
        .for_each(|x| *x += 1.0);
    let after = forward(&moved);
    assert_eq!(after[lengths[0] * hidden..], out[lengths[0] * hidden..]);
}

/// Sequences longer than the CPU kernel's query block (96 rows), back to back, with holes in the
/// key mask: the output matches an f64 reference of each sequence alone, every masked key gets
/// exactly zero k and v gradients, and dqkv matches finite differences (the backward sums dK and
/// dV over several query blocks).
#[test]
fn attention_over_several_query_blocks() {
    let b = CpuBackend::new();
    let mut rng = seeded(21);
    let (lengths, heads, d) = ([200usize, 97, 1, 130], 2, 4);
    let hidden = heads * d;
    let tokens: usize = lengths.iter().sum();
    let mask_v: Vec<i32> = (0..tokens)
        .map(|i| i32::from(i % 7 != 3 && !(250..260).contains(&i)))
        .collect();
    let sequences = Sequences::new(&b, &lengths, Some(&mask_v), None).unwrap();
    let shape = [tokens, 3 * hidden];
    let qkv = normal(&mut rng, tokens * 3 * hidden, 0.0, 1.0);
    let forward = |v: &[f32]| {
        vals(
            &b.attention_forward(&f32t(&shape, v.to_vec()), &sequences, heads)
                .unwrap()
                .out,
        )
    };

    let out = forward(&qkv);
    let mut start = 0;
    for &len in &lengths {
        assert_forward_close(
            "multi-block attention output",
            &out[start * hidden..(start + len) * hidden],
            &reference_attention(
                &qkv[start * 3 * hidden..(start + len) * 3 * hidden],
                &mask_v[start..start + len],
                1,
                len,
                heads,
                d,
            ),
        );
        start += len;
    }

    let fwd = b
        .attention_forward(&f32t(&shape, qkv.clone()), &sequences, heads)
        .unwrap();
    let r = normal(&mut rng, tokens * hidden, 0.0, 1.0);
    let dqkv = vals(
        &b.attention_backward(
            &f32t(&[tokens, hidden], r.clone()),
            &f32t(&shape, qkv.clone()),
            &sequences,
            &fwd.out,
            &fwd.lse,
            heads,
        )
        .unwrap(),
    );
    for j in (0..tokens).filter(|&j| mask_v[j] == 0) {
        assert!(
            dqkv[j * 3 * hidden + hidden..][..2 * hidden]
                .iter()
                .all(|&g| g == 0.0),
            "masked key {j} has non-zero dk/dv"
        );
    }
    gradcheck(
        "multi-block attention dqkv",
        &qkv,
        &dqkv,
        Coords::Some(64),
        &mut rng,
        |v| project(&r, &forward(v)),
    );
}

/// A sequence whose keys are all masked: forward gives a finite (zero) output and lse -inf for
/// it, backward gives finite, zero gradients for it, and the other sequence is unaffected (equal
/// to running it alone).
#[test]
fn attention_fully_masked_row_is_finite() {
    let b = CpuBackend::new();
    let mut rng = seeded(6);
    let (batch, seq, heads, d) = (2, 5, 2, 3);
    let hidden = heads * d;
    let mask = Sequences::padded(&b, batch, seq, &[1, 1, 1, 0, 1, 0, 0, 0, 0, 0]).unwrap();
    let qkv = normal(&mut rng, batch * seq * 3 * hidden, 0.0, 1.0);
    let dout = normal(&mut rng, batch * seq * hidden, 0.0, 1.0);
    let qkv_t = f32t(&[batch * seq, 3 * hidden], qkv.clone());
    let dout_t = f32t(&[batch * seq, hidden], dout.clone());

    let fwd = b.attention_forward(&qkv_t, &mask, heads).unwrap();
    let out = vals(&fwd.out);
    let lse = vals(&fwd.lse);
    assert!(
        out.iter().all(|v| v.is_finite()),
        "attention output not finite"
    );
    assert!(
        out[seq * hidden..].iter().all(|&v| v == 0.0),
        "fully masked sequence has non-zero output"
    );
    // lse is [heads, tokens]: the second sequence's rows of every head.
    assert!(
        (0..heads)
            .flat_map(|h| &lse[h * batch * seq + seq..][..seq])
            .all(|&v| v == f32::NEG_INFINITY),
        "fully masked lse is not -inf"
    );
    let dqkv = vals(
        &b.attention_backward(&dout_t, &qkv_t, &mask, &fwd.out, &fwd.lse, heads)
            .unwrap(),
    );
    assert!(
        dqkv.iter().all(|v| v.is_finite()),
        "attention gradient not finite"
    );
    assert!(
        dqkv[seq * 3 * hidden..].iter().all(|&v| v == 0.0),
        "fully masked sequence has non-zero gradient"
    );

    // The first sequence alone gives the same output and gradient.
    let mask0 = Sequences::padded(&b, 1, seq, &[1, 1, 1, 0, 1]).unwrap();
    let qkv0 = f32t(&[seq, 3 * hidden], qkv[..seq * 3 * hidden].to_vec());
    let fwd0 = b.attention_forward(&qkv0, &mask0, heads).unwrap();
    assert_eq!(vals(&fwd0.out), out[..seq * hidden].to_vec());
    let dout0 = f32t(&[seq, hidden], dout[..seq * hidden].to_vec());
    let dqkv0 = vals(
        &b.attention_backward(&dout0, &qkv0, &mask0, &fwd0.out, &fwd0.lse, heads)
            .unwrap(),
    );
    assert_eq!(dqkv0, dqkv[..seq * 3 * hidden].to_vec());
}

/// Add: the op is elementwise `a + b`, and through the tape its gradient reaches both operands,
/// accumulating when one value feeds the sum twice (`(ya + yb) + ya`), checked on the parameters
/// of the two linears that produce the operands.
#[test]
fn add_through_the_tape() {
    let b = CpuBackend::new();
    let mut rng = seeded(7);
    let (rows, inp, out_f) = (6, 5, 4);

    let (av, bv) = (
        normal(&mut rng, 12, 0.0, 1.0),
        normal(&mut rng, 12, 0.0, 1.0),
    );
    let sum = vals(
        &b.add(&f32t(&[3, 4], av.clone()), &f32t(&[3, 4], bv.clone()))
            .unwrap(),
    );
    assert_eq!(
        sum,
        av.iter().zip(&bv).map(|(x, y)| x + y).collect::<Vec<_>>()
    );
    let mut acc = f32t(&[3, 4], av.clone());
    b.add_assign(&mut acc, &f32t(&[3, 4], bv.clone())).unwrap();
    assert_eq!(vals(&acc), sum);

    let x = f32t(&[rows, inp], normal(&mut rng, rows * inp, 0.0, 1.0));
    let mut layout = Layout::new();
    let ps = [
        layout.param(out_f * inp),
        layout.param(out_f),
        layout.param(out_f * inp),
        layout.param(out_f),
    ];
    let params = normal(&mut rng, layout.len, 0.0, 0.5);
    let r = normal(&mut rng, rows * out_f, 0.0, 1.0);
    // Returns the output and, with `grads`, back-propagates `r` into them.
    let run = |p: &Tensor, grads: Option<&mut Tensor>| -> Vec<f32> {
        let mut tape = Tape::new(&b, p);
        let xv = tape.input(x.clone());
        let ya = tape.linear(xv, ps[0], ps[1], out_f).unwrap();
        let yb = tape.linear(xv, ps[2], ps[3], out_f).unwrap();
        let s = tape.add(ya, yb).unwrap();
        let s2 = tape.add(s, ya).unwrap();
        let out = vals(tape.value(s2).unwrap());
        if let Some(g) = grads {
            tape.backward(s2, f32t(&[rows, out_f], r.clone()), g)
                .unwrap();
        }
        out
    };
    let pt = f32t(&[params.len()], params.clone());
    let out = run(&pt, None);
    let ya = vals(&b.linear_forward(&x, &pt, ps[0], ps[1], out_f).unwrap());
    let yb = vals(&b.linear_forward(&x, &pt, ps[2], ps[3], out_f).unwrap());
    let want: Vec<f32> = (0..out.len()).map(|i| (ya[i] + yb[i]) + ya[i]).collect();
    assert_eq!(out, want);

    let prefill = normal(&mut rng, layout.len, 0.0, 1.0);
    let mut grads = f32t(&[layout.len], prefill.clone());
    run(&pt, Some(&mut grads));
    assert_untouched_outside("add", &grads, &prefill, &ps);
    for (name, p) in ["Wa", "ba", "Wb", "bb"].into_iter().zip(ps) {
        gradcheck(
            &format!("add {name}"),
            slot(&params, p),
            &added(&grads, &prefill, p),
            Coords::All,
            &mut rng,
            |v| project(&r, &run(&with_slot(&params, p, v), None)),
        );
    }
}

/// Dropout (p = 0.3): forward keeps exactly the elements whose Philox uniform is >= p, scaled by
/// 1/(1-p); backward applies that same mask (over more than one 4096-element chunk, so chunk
/// offsets line up), about 30% is dropped, another step draws another mask, and the backward is
/// the gradient of the (linear) forward by finite differences.
#[test]
fn dropout_backward_applies_the_forward_mask() {
    let b = CpuBackend::new();
    let mut rng = seeded(8);
    let shape = [50, 200];
    let n = 50 * 200;
    let key = DropoutKey {
        p: 0.3,
        seed: 42,
        step: 7,
        site: 2,
    };
    let scale = 1.0f32 / (1.0 - key.p);
    let keep: Vec<bool> = (0..n)
        .map(|i| dropout_uniform(key.seed, key.step, key.site, i as u64) >= key.p)
        .collect();
    let dropped = keep.iter().filter(|k| !**k).count() as f64 / n as f64;
    assert!((dropped - 0.3).abs() < 0.02, "dropped fraction {dropped}");

    let x = normal(&mut rng, n, 0.0, 1.0);
    let forward = |v: &[f32]| {
        vals(
            &b.dropout_forward(&f32t(&shape, v.to_vec()), key, None)
                .unwrap(),
        )
    };
    let y = forward(&x);
    for i in 0..n {
        assert_eq!(
            y[i],
            if keep[i] { x[i] * scale } else { 0.0 },
            "dropout forward element {i}"
        );
    }
    let r = normal(&mut rng, n, 0.0, 1.0);
    let dx = vals(
        &b.dropout_backward(&f32t(&shape, r.clone()), key, None)
            .unwrap(),
    );
    for i in 0..n {
        assert_eq!(
            dx[i],
            if keep[i] { r[i] * scale } else { 0.0 },
            "dropout backward element {i}"
        );
    }

    let other = forward_with(&b, &x, &shape, DropoutKey { step: 8, ..key });
    assert_ne!(other, y, "a new step must draw a new mask");

    gradcheck("dropout dx", &x, &dx, Coords::Some(16), &mut rng, |v| {
        project(&r, &forward(v))
    });
}

fn forward_with(b: &CpuBackend, x: &[f32], shape: &[usize], key: DropoutKey) -> Vec<f32> {
    vals(
        &b.dropout_forward(&f32t(shape, x.to_vec()), key, None)
            .unwrap(),
    )
}

/// Cross-entropy with some labels -100: the loss is the mean over labelled rows (against an f64
/// reference), ignored rows get exactly zero gradient, and dlogits matches finite differences of
/// the loss elementwise.
#[test]
fn cross_entropy_gradient() {
    let b = CpuBackend::new();
    let mut rng = seeded(9);
    let (rows, vocab) = (7, 11);
    let labels_v = vec![2, IGNORE_INDEX, 5, 0, IGNORE_INDEX, 10, 7];
    let labels = i32t(&[rows], labels_v.clone());
    let logits = normal(&mut rng, rows * vocab, 0.0, 2.0);
    let loss = |v: &[f32]| {
        b.cross_entropy(&f32t(&[rows, vocab], v.to_vec()), &labels, false)
            .unwrap()
            .loss_value()
            .unwrap() as f64
    };

    let out = b
        .cross_entropy(&f32t(&[rows, vocab], logits.clone()), &labels, true)
        .unwrap();
    assert_eq!(out.count, 5);
    let want: f64 = logits
        .chunks(vocab)
        .zip(&labels_v)
        .filter(|(_, l)| **l != IGNORE_INDEX)
        .map(|(x, &l)| x.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln() - x[l as usize] as f64)
        .sum::<f64>()
        / 5.0;
    assert!(
        (out.loss_value().unwrap() as f64 - want).abs() <= 1e-6 * want.abs(),
        "loss {} want {want}",
        out.loss_value().unwrap()
    );
    assert!(
        (loss(&logits) - out.loss_value().unwrap() as f64).abs() <= 1e-6 * want.abs(),
        "loss differs without the gradient"
    );

    let dlogits = vals(out.dlogits.as_ref().expect("asked for the gradient"));
    assert_eq!(out.dlogits.as_ref().unwrap().shape(), &[rows, vocab]);
    for (row, &l) in labels_v.iter().enumerate() {
        if l == IGNORE_INDEX {
            assert!(
                dlogits[row * vocab..][..vocab].iter().all(|&g| g == 0.0),
                "ignored row {row} has gradient"
            );
        }
    }
    gradcheck(
        "cross-entropy dlogits",
        &logits,
        &dlogits,
        Coords::All,
        &mut rng,
        loss,
    );
}

/// gather_rows / scatter_rows: gather picks the rows elementwise, and scatter is its adjoint,
/// `<gather(x), y> == <x, scatter(y)>`, with repeated rows accumulating.
#[test]
fn gather_and_scatter_are_adjoint() {
    let b = CpuBackend::new();
    let mut rng = seeded(10);
    let (n, width) = (9, 4);
    let idx = vec![3, 0, 3, 8, 5, 3];
    let rows = i32t(&[idx.len()], idx.clone());
    let x = normal(&mut rng, n * width, 0.0, 1.0);
    let y = normal(&mut rng, idx.len() * width, 0.0, 1.0);

    let g = b.gather_rows(&f32t(&[n, width], x.clone()), &rows).unwrap();
    assert_eq!(g.shape(), &[idx.len(), width]);
    let g = vals(&g);
    for (i, &r) in idx.iter().enumerate() {
        assert_eq!(
            g[i * width..][..width],
            x[r as usize * width..][..width],
            "gathered row {i}"
        );
    }
    let s = b
        .scatter_rows(&f32t(&[idx.len(), width], y.clone()), &rows, n)
        .unwrap();
    assert_eq!(s.shape(), &[n, width]);
    let s = vals(&s);
    // Rows never gathered get nothing back.
    for r in (0..n).filter(|r| !idx.contains(&(*r as i32))) {
        assert!(
            s[r * width..][..width].iter().all(|&v| v == 0.0),
            "row {r} was never gathered"
        );
    }
    let (lhs, rhs) = (project(&g, &y), project(&x, &s));
    let scale: f64 = g.iter().zip(&y).map(|(a, b)| (a * b).abs() as f64).sum();
    assert!(
        (lhs - rhs).abs() <= 1e-5 * scale,
        "<gather(x), y> = {lhs} but <x, scatter(y)> = {rhs}"
    );
}

// ---------------------------------------------------------------------------------------------
// Composed through the tape
// ---------------------------------------------------------------------------------------------

/// The parameters and inputs of the composed network.
struct Composed {
    /// `[batch * seq]` ids of `batch` padded rows.
    tokens: Tensor,
    mask: Vec<i32>,
    batch: usize,
    rows: Tensor,
    labels: Tensor,
    hidden: usize,
    heads: usize,
    vocab: usize,
    tables: [Param; 3],
    ln: [Param; 2],
    ff: [Param; 2],
    qkv: [Param; 2],
    head: [Param; 2],
    dropout: DropoutKey,
}

impl Composed {
    fn params(&self) -> Vec<Param> {
        let mut v = self.tables.to_vec();
        for p in [self.ln, self.ff, self.qkv, self.head] {
            v.extend(p);
        }
        v
    }

    /// embedding -> layernorm -> linear -> gelu -> dropout -> linear (qkv) -> attention -> add
    /// (residual) -> gather_rows -> linear (to the vocabulary) -> cross_entropy. Returns the loss;
    /// with `grads`, back-propagates it through the tape into them.
    fn loss(&self, b: &CpuBackend, params: &Tensor, grads: Option<&mut Tensor>) -> f64 {
        let h = self.hidden;
        let seq = self.mask.len() / self.batch;
        let sequences = Sequences::padded(b, self.batch, seq, &self.mask).unwrap();
        let mut tape = Tape::new(b, params);
        let tokens = tape.input(self.tokens.clone());
        let rows = tape.input(self.rows.clone());
        let e = tape
            .embedding(tokens, &sequences, NEXT, self.tables, h)
            .unwrap();
        let n = tape.layernorm(e, self.ln[0], self.ln[1], 1e-5).unwrap();
        let f = tape.linear(n, self.ff[0], self.ff[1], h).unwrap();
        let g = tape.gelu(f).unwrap();
        let g = tape.dropout(g, Some(self.dropout), None).unwrap();
        let qkv = tape.linear(g, self.qkv[0], self.qkv[1], 3 * h).unwrap();
        let a = tape.attention(qkv, &sequences, self.heads).unwrap();
        let s = tape.add(a, g).unwrap();
        let sel = tape.gather_rows(s, rows).unwrap();
        let logits = tape
            .linear(sel, self.head[0], self.head[1], self.vocab)
            .unwrap();
        let ce = b
            .cross_entropy(tape.value(logits).unwrap(), &self.labels, grads.is_some())
            .unwrap();
        let loss = ce.loss_value().unwrap() as f64;
        if let Some(grads) = grads {
            tape.backward(logits, ce.dlogits.unwrap(), grads).unwrap();
        }
        loss
    }
}

/// The whole chain through the tape: every parameter's gradient (embedding tables, LayerNorm,
/// feed-forward, QKV projection, output head) matches finite differences of the cross-entropy
/// loss, both along random directions within it and on single coordinates, and the tape adds into
/// the prefilled buffer without touching anything else.
#[test]
fn composed_tape_gradients() {
    let b = CpuBackend::new();
    let mut rng = seeded(11);
    let (batch, seq, hidden, heads, vocab, positions) = (2, 7, 9, 3, 10, 8);
    let mut layout = Layout::new();
    let c = Composed {
        tokens: i32t(
            &[batch * seq],
            vec![3, 5, 6, 3, 7, 3, 3, 4, 8, 3, 1, 2, 9, 3],
        ),
        mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        batch,
        rows: i32t(&[6], vec![1, 4, 6, 8, 10, 12]),
        labels: i32t(&[6], vec![2, IGNORE_INDEX, 7, 0, 9, IGNORE_INDEX]),
        hidden,
        heads,
        vocab,
        tables: [
            layout.param(vocab * hidden),
            layout.param(positions * hidden),
            layout.param(positions * hidden),
        ],
        ln: [layout.param(hidden), layout.param(hidden)],
        ff: [layout.param(hidden * hidden), layout.param(hidden)],
        qkv: [layout.param(3 * hidden * hidden), layout.param(3 * hidden)],
        head: [layout.param(vocab * hidden), layout.param(vocab)],
        dropout: DropoutKey {
            p: 0.3,
            seed: 5,
            step: 1,
            site: 0,
        },
    };
    let mut params = normal(&mut rng, layout.len, 0.0, 0.1);
    let inv = 1.0 / (hidden as f32).sqrt();
    for (p, mean, std) in [
        (c.tables[0], 0.0, 1.0),
        (c.tables[1], 0.0, 1.0),
        (c.tables[2], 0.0, 1.0),
        (c.ln[0], 1.0, 0.1),
        (c.ff[0], 0.0, inv),
        (c.qkv[0], 0.0, 1.5 * inv),
        (c.head[0], 0.0, inv),
    ] {
        let v = normal(&mut rng, p.len, mean, std);
        set_slot(&mut params, p, &v);
    }
    let pt = f32t(&[params.len()], params.clone());

    let prefill = normal(&mut rng, layout.len, 0.0, 1.0);
    let mut grads = f32t(&[layout.len], prefill.clone());
    let loss = c.loss(&b, &pt, Some(&mut grads));
    assert!(loss.is_finite() && loss > 0.0);
    let all = c.params();
    assert_untouched_outside("composed", &grads, &prefill, &all);

    let names = [
        "token table",
        "instruction table",
        "argument table",
        "ln weight",
        "ln bias",
        "ff W",
        "ff b",
        "qkv W",
        "qkv b",
        "head W",
        "head b",
    ];
    for (name, p) in names.into_iter().zip(all) {
        let g = added(&grads, &prefill, p);
        assert!(max_abs(&g) > 0.0, "composed {name}: no gradient reached it");
        gradcheck(
            &format!("composed {name}"),
            slot(&params, p),
            &g,
            Coords::Some(6),
            &mut rng,
            |v| c.loss(&b, &with_slot(&params, p, v), None),
        );
    }
}
