//! The two row passes of a softmax, the max and the sum of `e^(x - max)`, written as `LANES`
//! independent partials so that they vectorise (see [`super::simd`]; a running max or sum taken in
//! order cannot be reordered by the compiler). The callers are the cross-entropy and top-k rows.

use super::exp::exp;
use super::simd::fold_lanes;

const LANES: usize = 16;

/// The largest element of `x`, NaN ignored as `f32::max` does (-inf for an empty or all-NaN row).
#[inline(always)]
pub fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] = acc[l].max(v);
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `e^(v - max)` in f32 (2 ulp, see [`exp`]); -inf logits give exactly 0, even when `max` is -inf.
#[inline(always)]
fn term(v: f32, max: f32) -> f32 {
    if v == f32::NEG_INFINITY {
        0.0
    } else {
        exp(v - max)
    }
}

/// `sum_i e^(x_i - max)`: f32 terms summed in f64, so the sum is as accurate as its terms.
#[inline(always)]
pub fn sum_exp(x: &[f32], max: f32) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += term(c[l], max) as f64;
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] += term(v, max) as f64;
    }
    fold_lanes(acc)
}

/// [`sum_exp`], also writing each term to `out` (as long as `x`).
#[inline(always)]
pub fn sum_exp_into(out: &mut [f32], x: &[f32], max: f32) -> f64 {
    let mut acc = [0.0f64; LANES];
    let n = x.len() / LANES * LANES;
    let (x_main, x_tail) = x.split_at(n);
    let (out_main, out_tail) = out.split_at_mut(n);
    for (c, o) in x_main
        .chunks_exact(LANES)
        .zip(out_main.chunks_exact_mut(LANES))
    {
        for l in 0..LANES {
            o[l] = term(c[l], max);
            acc[l] += o[l] as f64;
        }
    }
    for (l, (o, &v)) in out_tail.iter_mut().zip(x_tail).enumerate() {
        *o = term(v, max);
        acc[l] += *o as f64;
    }
    fold_lanes(acc)
}
