//! Kernel tests for kernels/attention.cu: forward (out, lse) and backward (dqkv) against the CPU
//! backend, for every head-dim capacity the kernels are compiled for, with sizes that are no multiple
//! of any tile, in the padded layout (padding at the end of sequences, holes in masks and sequences
//! that are all padding) and the packed one (sequences of their own lengths back to back, from 1 row
//! to several 64-row tiles); the bf16 kernels (tensor-core and CUDA-core, forward and backward)
//! against the CPU run on the same bf16-rounded inputs; and the schedule of tiles the grid runs.

use crate::harness::{assert_close, cpu, gpus, gpus_bf16, random, rng, round_bf16, upload_bf16};
use std::sync::Arc;

use undertale_maskedlm::backend::Backend;
use undertale_maskedlm::backend::cuda::GpuBackend;
use undertale_maskedlm::backend::cuda::emulated::EmulatedRuntime;
use undertale_maskedlm::backend::cuda::emulator::ScheduleOrder;
use undertale_maskedlm::backend::cuda::ops::attention::{BackwardKernel, ForwardKernel, schedule};
use undertale_maskedlm::ops::sequences::Sequences;
use undertale_maskedlm::{DType, Error, Tensor};

/// How a batch's rows are divided into sequences.
enum Layout {
    /// `masks.len()` sequences of `seq` rows, each with its key mask (padding and holes).
    Padded { seq: usize, masks: Vec<Vec<i32>> },
    /// Sequences of these lengths back to back, every key real or, with a key mask (one 0/1 per
    /// row), holes inside the sequences.
    Packed(Vec<usize>, Option<Vec<i32>>),
}

/// One attention call: sizes and the sequences.
struct Case {
    heads: usize,
    head_dim: usize,
    layout: Layout,
}

impl Case {
    fn padded(heads: usize, head_dim: usize, seq: usize, masks: Vec<Vec<i32>>) -> Self {
        Case {
            heads,
            head_dim,
            layout: Layout::Padded { seq, masks },
        }
    }

    fn packed(heads: usize, head_dim: usize, lengths: &[usize]) -> Self {
        Case {
            heads,
            head_dim,
            layout: Layout::Packed(lengths.to_vec(), None),
        }
    }

    /// Packed sequences whose keys at the rows in `holes` (of the whole token axis) are padding.
    fn packed_with_holes(
        heads: usize,
        head_dim: usize,
        lengths: &[usize],
        holes: &[usize],
    ) -> Self {
        let mut mask = vec![1; lengths.iter().sum()];
        for &row in holes {
            mask[row] = 0;
        }
        Case {
            heads,
            head_dim,
            layout: Layout::Packed(lengths.to_vec(), Some(mask)),
        }
    }

    /// Rows in all sequences.
    fn tokens(&self) -> usize {
        match &self.layout {
            Layout::Padded { seq, masks } => seq * masks.len(),
            Layout::Packed(lengths, _) => lengths.iter().sum(),
        }
    }

    /// The sequences on `backend`.
    fn sequences(&self, backend: &dyn Backend) -> Sequences {
        match &self.layout {
            Layout::Padded { seq, masks } => {
                Sequences::padded(backend, masks.len(), *seq, &masks.concat()).unwrap()
            }
            Layout::Packed(lengths, mask) => {
                Sequences::new(backend, lengths, mask.as_deref(), None).unwrap()
            }
        }
    }

    /// Whether each row is a real key, and whether its sequence has any real key.
    fn rows(&self) -> Vec<(bool, bool)> {
        match &self.layout {
            Layout::Padded { masks, .. } => masks
                .iter()
                .flat_map(|mask| {
                    let any = mask.contains(&1);
                    mask.iter().map(move |&m| (m != 0, any))
                })
                .collect(),
            Layout::Packed(lengths, mask) => {
                let mut rows = Vec::new();
                let mut start = 0;
                for &len in lengths {
                    let keys: Vec<bool> = match mask {
                        Some(m) => m[start..start + len].iter().map(|&k| k != 0).collect(),
                        None => vec![true; len],
                    };
                    let any = keys.contains(&true);
                    rows.extend(keys.into_iter().map(|k| (k, any)));
                    start += len;
                }
                rows
            }
        }
    }

    fn describe(&self) -> String {
        let layout = match &self.layout {
            Layout::Padded { seq, masks } => format!("batch {} seq {seq}", masks.len()),
            Layout::Packed(lengths, mask) => format!(
                "packed {lengths:?}{}",
                if mask.is_some() { " with holes" } else { "" }
            ),
        };
        format!("{layout} heads {} head_dim {}", self.heads, self.head_dim)
    }
}

/// A mask whose first `len` keys are real: padding at the end (all padding for `len` 0).
fn prefix(seq: usize, len: usize) -> Vec<i32> {
    (0..seq).map(|j| i32::from(j < len)).collect()
}

/// A mask with padding at the end and holes: keys in `holes` are padding too.
fn with_holes(seq: usize, len: usize, holes: &[usize]) -> Vec<i32> {
    let mut mask = prefix(seq, len);
    for &j in holes {
        mask[j] = 0;
    }
    mask
}

/// `lse` equal to `want`: the same rows are -inf (no real key), the others within `rel`.
fn assert_lse(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g == f32::NEG_INFINITY,
            w == f32::NEG_INFINITY,
            "{what}[{i}]: got {g}, want {w}"
        );
    }
    let finite = |v: &[f32]| -> Vec<f32> { v.iter().copied().filter(|x| x.is_finite()).collect() };
    assert_close(what, &finite(got), &finite(want), rel, 0.0);
}

/// The largest difference relative to the largest magnitude of `want` (finite entries).
fn worst(got: &[f32], want: &[f32]) -> f32 {
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .filter(|(_, w)| w.is_finite())
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0.0f32, f32::max)
}

/// Forward and backward of `case` on the emulated GPU, in every scheduling order, against the CPU.
fn check(case: &Case, seed: u64) {
    let (heads, tokens) = (case.heads, case.tokens());
    let hidden = heads * case.head_dim;
    let mut rng = rng(seed);
    // Scores of a few units: softmax rows are peaked, so the online max moves between key tiles.
    let qkv = random(&mut rng, tokens * 3 * hidden, 2.0);
    let dout = random(&mut rng, tokens * hidden, 1.0);
    let (qkv_shape, out_shape) = ([tokens, 3 * hidden], [tokens, hidden]);
    let what = case.describe();

    let cpu = cpu();
    let c_qkv = cpu.upload_f32(&qkv_shape, &qkv).unwrap();
    let c_mask = case.sequences(&cpu);
    let c_dout = cpu.upload_f32(&out_shape, &dout).unwrap();
    let want = cpu.attention_forward(&c_qkv, &c_mask, heads).unwrap();
    let want_dqkv = cpu
        .attention_backward(&c_dout, &c_qkv, &c_mask, &want.out, &want.lse, heads)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let (want_out, want_lse) = (
        want.out.to_vec_f32().unwrap(),
        want.lse.to_vec_f32().unwrap(),
    );

    for (order, gpu) in gpus() {
        let g_qkv = gpu.upload_f32(&qkv_shape, &qkv).unwrap();
        let g_mask = case.sequences(gpu.as_ref());
        let g_dout = gpu.upload_f32(&out_shape, &dout).unwrap();
        let got = gpu.attention_forward(&g_qkv, &g_mask, heads).unwrap();
        assert_eq!(got.out.shape(), want.out.shape());
        assert_eq!(got.lse.shape(), want.lse.shape());
        let out = got.out.to_vec_f32().unwrap();
        let lse = got.lse.to_vec_f32().unwrap();
        assert_close(&format!("{what} out {order:?}"), &out, &want_out, 1e-5, 0.0);
        assert_lse(&format!("{what} lse {order:?}"), &lse, &want_lse, 1e-5);

        let dqkv = gpu
            .attention_backward(&g_dout, &g_qkv, &g_mask, &got.out, &got.lse, heads)
            .unwrap();
        assert_eq!(dqkv.shape(), &qkv_shape);
        let dqkv = dqkv.to_vec_f32().unwrap();
        assert_close(
            &format!("{what} dqkv {order:?}"),
            &dqkv,
            &want_dqkv,
            1e-5,
            0.0,
        );
        eprintln!(
            "{what} {order:?}: worst relative difference out {:.1e}, lse {:.1e}, dqkv {:.1e}",
            worst(&out, &want_out),
            worst(&lse, &want_lse),
            worst(&dqkv, &want_dqkv)
        );
    }
}

#[test]
fn head_dim_16_with_padding_and_an_all_padding_sequence() {
    let seq = 37;
    check(
        &Case::padded(
            2,
            16,
            seq,
            vec![prefix(seq, seq), prefix(seq, 20), prefix(seq, 0)],
        ),
        1,
    );
    // The tiny preset's shape: 4 heads of 16 over 128 positions, two whole tiles.
    let seq = 128;
    check(
        &Case::padded(4, 16, seq, vec![prefix(seq, 64), prefix(seq, 100)]),
        7,
    );
}

#[test]
fn head_dim_64_over_more_than_two_tiles() {
    // 150 rows: three 64-row query tiles and three 64-key tiles, the last ones ragged. The second
    // sequence has holes in its mask and padding after 140; its last key tile is partly padding.
    let seq = 150;
    check(
        &Case::padded(
            2,
            64,
            seq,
            vec![
                prefix(seq, 131),
                with_holes(seq, 140, &[0, 3, 63, 64, 70, 71, 72, 100]),
                prefix(seq, 0),
            ],
        ),
        2,
    );
}

#[test]
fn odd_head_dims_of_every_capacity() {
    // head_dim 7 (capacity 16), 27 (32) and 100 (128, where key tiles are 32 rows): features past
    // head_dim are padding inside the kernels. One real key only; padding crossing a row tile.
    let seq = 45;
    check(
        &Case::padded(3, 7, seq, vec![prefix(seq, 1), prefix(seq, seq)]),
        3,
    );
    let seq = 70;
    check(
        &Case::padded(
            1,
            27,
            seq,
            vec![prefix(seq, 65), with_holes(seq, seq, &[1, 2, 69])],
        ),
        4,
    );
    let seq = 41;
    check(
        &Case::padded(
            2,
            100,
            seq,
            vec![prefix(seq, 33), prefix(seq, 0), prefix(seq, seq)],
        ),
        5,
    );
}

#[test]
fn packed_sequences_of_odd_lengths() {
    // Many sequences back to back: length 1, lengths that are no multiple of 16 or 64, exactly one
    // and two tiles, and one of 300 rows spanning five 64-row tiles (its last one ragged), in an
    // order that is not the schedule's. Every capacity's tiling, the 128 one streaming 32-row tiles.
    check(&Case::packed(2, 16, &[5, 1, 300, 64, 37, 128, 1, 65]), 31);
    check(&Case::packed(1, 27, &[130, 3, 1, 17]), 32);
    check(&Case::packed(2, 64, &[1, 150, 9]), 33);
    check(&Case::packed(1, 100, &[70, 1, 33]), 34);
    // Holes inside packed sequences: the key mask starts at each sequence's own first row.
    check(
        &Case::packed_with_holes(2, 16, &[37, 5, 130, 1], &[3, 36, 40, 41, 100, 171]),
        38,
    );
}

#[test]
fn schedule_covers_the_real_tiles_longest_first() {
    // The grid is one block per schedule entry and head; the schedule must list each 64-row tile of
    // each sequence once (ceil(len / 64) per sequence: no tile for rows past a sequence's end, none
    // for an empty sequence), the longest sequences first, and be built once per `Sequences`.
    let lengths = [5usize, 0, 300, 64, 1, 129, 65, 300];
    let gpu = &gpus()[0].1;
    let sequences = Sequences::new(gpu.as_ref(), &lengths, None, None).unwrap();
    let (heads, head_dim) = (2, 16);
    let tokens: usize = lengths.iter().sum();
    let hidden = heads * head_dim;
    let qkv = random(&mut rng(41), tokens * 3 * hidden, 1.0);
    let qkv = gpu.upload_f32(&[tokens, 3 * hidden], &qkv).unwrap();
    gpu.attention_forward(&qkv, &sequences, heads).unwrap();
    // The forward built and cached it: asking again does not build.
    let cached = sequences
        .schedule(|_| panic!("the schedule is built once"))
        .unwrap()
        .to_vec_i32()
        .unwrap();
    assert_eq!(cached, schedule(sequences.offsets()));
    let entries: Vec<(usize, usize)> = cached
        .chunks(2)
        .map(|e| (e[0] as usize, e[1] as usize))
        .collect();
    let tiles: usize = lengths.iter().map(|len| len.div_ceil(64)).sum();
    assert_eq!(entries.len(), tiles, "one entry per tile of real rows");
    let mut seen = entries.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), entries.len(), "a tile listed twice");
    for &(s, tile) in &entries {
        assert!(
            tile * 64 < lengths[s],
            "tile {tile} of sequence {s} (length {}) is past its end",
            lengths[s]
        );
    }
    let listed: Vec<usize> = entries.iter().map(|&(s, _)| lengths[s]).collect();
    assert!(
        listed.windows(2).all(|w| w[0] >= w[1]),
        "not longest first: {listed:?}"
    );
}

/// What the emulator launched for one attention forward and backward over packed sequences: every
/// attention kernel's grid is exactly one block per (64-row tile of real rows, head), and the same
/// batch padded to its longest sequence launches a block for every padded tile.
#[test]
fn no_attention_block_is_launched_for_padding() {
    let lengths = [37usize, 1, 200, 64, 3];
    let (heads, head_dim) = (3, 16);
    let hidden = heads * head_dim;
    let runtime = Arc::new(EmulatedRuntime::new(ScheduleOrder::Forward).recording_launches());
    let gpu = GpuBackend::new(runtime.clone());
    let attention_blocks = |sequences: &Sequences| -> Vec<(String, u64)> {
        let before = runtime.launches().len();
        let tokens = sequences.tokens();
        let qkv = gpu
            .upload_f32(
                &[tokens, 3 * hidden],
                &random(&mut rng(43), tokens * 3 * hidden, 1.0),
            )
            .unwrap();
        let dout = gpu
            .upload_f32(
                &[tokens, hidden],
                &random(&mut rng(44), tokens * hidden, 1.0),
            )
            .unwrap();
        let saved = gpu.attention_forward(&qkv, sequences, heads).unwrap();
        gpu.attention_backward(&dout, &qkv, sequences, &saved.out, &saved.lse, heads)
            .unwrap();
        runtime.launches()[before..]
            .iter()
            .map(|l| (l.kernel.clone(), l.blocks))
            .collect()
    };

    let packed = Sequences::new(&*gpu, &lengths, None, None).unwrap();
    let launched = attention_blocks(&packed);
    let real_tiles: usize = lengths.iter().map(|len| len.div_ceil(64)).sum();
    assert_eq!(
        launched.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        [
            "attention_forward_f32_d16",
            "attention_backward_dq_f32_d16",
            "attention_backward_dkv_f32_d16"
        ]
    );
    for (kernel, blocks) in &launched {
        assert_eq!(*blocks, (real_tiles * heads) as u64, "{kernel}");
    }

    let longest = *lengths.iter().max().unwrap();
    let mask: Vec<i32> = lengths
        .iter()
        .flat_map(|&len| (0..longest).map(move |j| i32::from(j < len)))
        .collect();
    let padded = Sequences::padded(&*gpu, lengths.len(), longest, &mask).unwrap();
    let padded_tiles = lengths.len() * longest.div_ceil(64);
    for (kernel, blocks) in attention_blocks(&padded) {
        assert_eq!(blocks, (padded_tiles * heads) as u64, "padded {kernel}");
    }
    assert!(real_tiles < padded_tiles);
}

#[test]
fn backward_is_deterministic() {
    // A padded batch with padding and a packed one: the same bits from two runs.
    let (heads, head_dim) = (2, 32);
    let hidden = heads * head_dim;
    let gpu = &gpus()[2].1;
    let seq = 70;
    for case in [
        Case::padded(
            heads,
            head_dim,
            seq,
            vec![prefix(seq, 50), prefix(seq, seq)],
        ),
        Case::packed(heads, head_dim, &[3, 70, 129, 1]),
    ] {
        let tokens = case.tokens();
        let mut rng = rng(6);
        let qkv = random(&mut rng, tokens * 3 * hidden, 2.0);
        let dout = random(&mut rng, tokens * hidden, 1.0);
        let qkv = gpu.upload_f32(&[tokens, 3 * hidden], &qkv).unwrap();
        let sequences = case.sequences(gpu.as_ref());
        let dout = gpu.upload_f32(&[tokens, hidden], &dout).unwrap();
        let fwd = gpu.attention_forward(&qkv, &sequences, heads).unwrap();
        let run = || {
            gpu.attention_backward(&dout, &qkv, &sequences, &fwd.out, &fwd.lse, heads)
                .unwrap()
                .to_vec_f32()
                .unwrap()
        };
        let (a, b) = (run(), run());
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{}: two backward runs differ",
            case.describe()
        );
    }
}

#[test]
fn empty_sizes() {
    // No token (two empty sequences, or none): empty outputs (and no launch on the GPU), on every
    // backend.
    let cpu = cpu();
    let gpu = gpus()[0].1.clone();
    for backend in [&cpu as &dyn Backend, gpu.as_ref()] {
        for lengths in [&[0usize, 0][..], &[]] {
            let qkv = backend.upload_f32(&[0, 12], &[]).unwrap();
            let sequences = Sequences::new(backend, lengths, None, None).unwrap();
            let fwd = backend.attention_forward(&qkv, &sequences, 2).unwrap();
            assert_eq!(fwd.out.shape(), &[0, 4]);
            assert_eq!(fwd.lse.shape(), &[2, 0]);
            let dout = backend.upload_f32(&[0, 4], &[]).unwrap();
            let dqkv = backend
                .attention_backward(&dout, &qkv, &sequences, &fwd.out, &fwd.lse, 2)
                .unwrap();
            assert_eq!(dqkv.shape(), &[0, 12]);
        }
    }
}

/// The same call on both backends: both fail with the same message.
fn same_error(what: &str, call: impl Fn(&dyn Backend) -> Result<(), Error>) -> Error {
    let cpu_error = call(&cpu()).expect_err(what);
    let gpu_error = call(gpus()[0].1.as_ref()).expect_err(what);
    assert_eq!(gpu_error.to_string(), cpu_error.to_string(), "{what}");
    gpu_error
}

#[test]
fn bad_shapes_fail_as_on_the_cpu() {
    let upload = |backend: &dyn Backend, shape: &[usize]| -> Tensor {
        let n = shape.iter().product();
        backend.upload_f32(shape, &vec![0.5; n]).unwrap()
    };
    // Two sequences of 5 rows.
    let sequences = |backend: &dyn Backend| Sequences::new(backend, &[5, 5], None, None).unwrap();
    let forward = |qkv: &'static [usize], heads: usize| {
        move |b: &dyn Backend| {
            b.attention_forward(&upload(b, qkv), &sequences(b), heads)
                .map(|_| ())
        }
    };
    // qkv width not a multiple of 3, hidden not divisible by the heads, rows not the sequences'.
    for (what, call) in [
        ("width 13", forward(&[10, 13], 1)),
        ("hidden 8 over 3 heads", forward(&[10, 24], 3)),
        ("9 rows", forward(&[9, 24], 2)),
    ] {
        let error = same_error(what, call);
        assert!(matches!(error, Error::Shape { .. }), "{what}: {error}");
    }

    // A key mask that is not one entry per row: the same shape error.
    let error = same_error("mask of 9", |b| {
        Sequences::new(b, &[5, 5], Some(&[1; 9]), None).map(|_| ())
    });
    assert!(matches!(error, Error::Shape { .. }), "{error}");

    // Backward: dout not shaped like out, and an lse of the wrong size.
    let backward = |dout: &'static [usize], lse: &'static [usize]| {
        move |b: &dyn Backend| {
            b.attention_backward(
                &upload(b, dout),
                &upload(b, &[10, 24]),
                &sequences(b),
                &upload(b, &[10, 8]),
                &upload(b, lse),
                2,
            )
            .map(|_| ())
        }
    };
    for (what, call) in [
        ("dout [10, 9]", backward(&[10, 9], &[2, 10])),
        ("lse [2, 9]", backward(&[10, 8], &[2, 9])),
    ] {
        let error = same_error(what, call);
        assert!(matches!(error, Error::Shape { .. }), "{what}: {error}");
    }
    // The right size in another layout (the padded [batch, heads, seq]) is refused, by name.
    let error = same_error("lse [2, 2, 5]", backward(&[10, 8], &[2, 2, 5]));
    assert!(error.to_string().contains("attention lse"), "{error}");

    // Sequence tensors with values no kernel can use: a key mask of 2, a negative padded row.
    let error = same_error("key mask of 2", |b| {
        Sequences::new(b, &[2, 1], Some(&[1, 2, 1]), None).map(|_| ())
    });
    assert!(error.to_string().contains("value 2 at row 1"), "{error}");
    let error = same_error("dropout row -4", |b| {
        Sequences::new(b, &[2, 1], None, Some(&[0, 1, -4])).map(|_| ())
    });
    assert!(
        matches!(error, Error::IndexOutOfRange { index: -4, .. }),
        "{error}"
    );
}

#[test]
fn head_dims_past_128_are_a_clear_error() {
    // The CPU takes any head_dim; the kernels stop at 128 and say so instead of computing garbage.
    let gpu = &gpus()[0].1;
    let qkv = gpu
        .upload_f32(&[2, 3 * 136], &vec![0.5; 2 * 3 * 136])
        .unwrap();
    let sequences = Sequences::new(gpu.as_ref(), &[2], None, None).unwrap();
    let error = gpu.attention_forward(&qkv, &sequences, 1).unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");
    assert!(error.to_string().contains("head_dim 136"), "{error}");
    let cpu = cpu();
    let c_qkv = cpu
        .upload_f32(&[2, 3 * 136], &vec![0.5; 2 * 3 * 136])
        .unwrap();
    let c_sequences = Sequences::new(&cpu, &[2], None, None).unwrap();
    assert!(cpu.attention_forward(&c_qkv, &c_sequences, 1).is_ok());
}

// ---- bf16 -------------------------------------------------------------------------------------------

/// The dQ, dK and dV columns of a [rows, 3 hidden] gradient, each as one vector.
fn parts(dqkv: &[f32], hidden: usize) -> [Vec<f32>; 3] {
    std::array::from_fn(|p| {
        dqkv.chunks(3 * hidden)
            .flat_map(|row| &row[p * hidden..(p + 1) * hidden])
            .copied()
            .collect()
    })
}

/// The worst of `worst` over dQ, dK and dV, each against its own largest magnitude.
fn worst_part(got: &[f32], want: &[f32], hidden: usize) -> f32 {
    parts(got, hidden)
        .iter()
        .zip(parts(want, hidden))
        .map(|(g, w)| worst(g, &w))
        .fold(0.0f32, f32::max)
}

/// A bf16 dqkv against the reference: dQ, dK and dV each within 1e-2 of their own largest
/// magnitude (dV is the largest, and would hide an error in dK or dQ against the whole).
fn assert_parts_close(what: &str, got: &[f32], want: &[f32], hidden: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for ((part, got), want) in ["dQ", "dK", "dV"]
        .iter()
        .zip(parts(got, hidden))
        .zip(parts(want, hidden))
    {
        assert_close(&format!("{what} {part}"), &got, &want, 1e-2, 0.0);
    }
}

/// Forward and backward of `case` with bf16 activations, in every bf16 backend, against the CPU run
/// on the bf16-rounded qkv and dout: out and dqkv are bf16 (within 1e-2 of the largest magnitude, of
/// each of dQ, dK and dV for dqkv),
/// lse is f32 (within 1e-3: the scores are sums of bf16 products in f32). Forward and backward run
/// on tensor cores (the default) and on CUDA cores; the two agree within the same tolerances, and the
/// tensor-core backward gives the same bits in every scheduling order (every output has one owner
/// and a fixed summation order).
fn check_bf16(case: &Case, seed: u64) {
    let (heads, tokens) = (case.heads, case.tokens());
    let hidden = heads * case.head_dim;
    let mut rng = rng(seed);
    let qkv = round_bf16(&random(&mut rng, tokens * 3 * hidden, 2.0));
    let dout = round_bf16(&random(&mut rng, tokens * hidden, 1.0));
    let (qkv_shape, out_shape) = ([tokens, 3 * hidden], [tokens, hidden]);
    let what = format!("bf16 {}", case.describe());
    let rows = case.rows();

    let cpu = cpu();
    let c_qkv = cpu.upload_f32(&qkv_shape, &qkv).unwrap();
    let c_mask = case.sequences(&cpu);
    let c_dout = cpu.upload_f32(&out_shape, &dout).unwrap();
    let want = cpu.attention_forward(&c_qkv, &c_mask, heads).unwrap();
    let want_dqkv = cpu
        .attention_backward(&c_dout, &c_qkv, &c_mask, &want.out, &want.lse, heads)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let (want_out, want_lse) = (
        want.out.to_vec_f32().unwrap(),
        want.lse.to_vec_f32().unwrap(),
    );

    let mut first_dqkv: Option<(String, Vec<f32>)> = None;
    for (name, gpu) in gpus_bf16() {
        let g_qkv = upload_bf16(&gpu, &qkv_shape, &qkv);
        let g_mask = case.sequences(&gpu);
        let g_dout = upload_bf16(&gpu, &out_shape, &dout);
        let got = gpu.attention_forward(&g_qkv, &g_mask, heads).unwrap();
        assert_eq!(got.out.shape(), want.out.shape());
        assert_eq!(got.lse.shape(), want.lse.shape());
        assert_eq!(got.out.dtype(), DType::BF16, "{what} out dtype");
        assert_eq!(got.lse.dtype(), DType::F32, "{what} lse dtype");
        let out = got.out.to_vec_f32().unwrap();
        let lse = got.lse.to_vec_f32().unwrap();
        assert_close(&format!("{what} out {name}"), &out, &want_out, 1e-2, 0.0);
        assert_lse(&format!("{what} lse {name}"), &lse, &want_lse, 1e-3);

        let on_cores = gpu
            .clone()
            .with_attention_kernels(ForwardKernel::CudaCores, BackwardKernel::CudaCores);
        let cores = on_cores.attention_forward(&g_qkv, &g_mask, heads).unwrap();
        assert_eq!(cores.out.dtype(), DType::BF16, "{what} CUDA-core out dtype");
        assert_eq!(cores.lse.dtype(), DType::F32, "{what} CUDA-core lse dtype");
        let cores_out = cores.out.to_vec_f32().unwrap();
        let cores_lse = cores.lse.to_vec_f32().unwrap();
        assert_close(
            &format!("{what} CUDA-core out {name}"),
            &cores_out,
            &want_out,
            1e-2,
            0.0,
        );
        assert_lse(
            &format!("{what} CUDA-core lse {name}"),
            &cores_lse,
            &want_lse,
            1e-3,
        );
        assert_close(
            &format!("{what} tensor-core vs CUDA-core out {name}"),
            &out,
            &cores_out,
            1e-2,
            0.0,
        );
        assert_lse(
            &format!("{what} tensor-core vs CUDA-core lse {name}"),
            &lse,
            &cores_lse,
            1e-3,
        );

        let dqkv = gpu
            .attention_backward(&g_dout, &g_qkv, &g_mask, &got.out, &got.lse, heads)
            .unwrap();
        assert_eq!(dqkv.shape(), &qkv_shape);
        assert_eq!(dqkv.dtype(), DType::BF16, "{what} dqkv dtype");
        let dqkv = dqkv.to_vec_f32().unwrap();
        assert_parts_close(&format!("{what} dqkv {name}"), &dqkv, &want_dqkv, hidden);

        let cores_dqkv = on_cores
            .attention_backward(&g_dout, &g_qkv, &g_mask, &got.out, &got.lse, heads)
            .unwrap();
        assert_eq!(
            cores_dqkv.dtype(),
            DType::BF16,
            "{what} CUDA-core dqkv dtype"
        );
        let cores_dqkv = cores_dqkv.to_vec_f32().unwrap();
        assert_parts_close(
            &format!("{what} CUDA-core dqkv {name}"),
            &cores_dqkv,
            &want_dqkv,
            hidden,
        );
        assert_parts_close(
            &format!("{what} tensor-core vs CUDA-core dqkv {name}"),
            &dqkv,
            &cores_dqkv,
            hidden,
        );
        // Every gradient of an all-padding sequence, and dK, dV of every padding key, is exactly 0.
        for (row, values) in dqkv.chunks(3 * hidden).enumerate() {
            let (real, any_real) = rows[row];
            let from = if !any_real {
                0
            } else if !real {
                hidden
            } else {
                continue;
            };
            for (c, &g) in values.iter().enumerate().skip(from) {
                assert_eq!(g, 0.0, "{what} dqkv[{row}, {c}] {name}: want an exact 0");
            }
        }
        if name.starts_with("emulated") {
            match &first_dqkv {
                None => first_dqkv = Some((name.clone(), dqkv.clone())),
                Some((first, bits)) => assert!(
                    bits.iter()
                        .zip(&dqkv)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{what}: the tensor-core dqkv differs between {first} and {name}"
                ),
            }
        }
        eprintln!(
            "{what} {name}: worst relative difference out {:.1e} (CUDA cores {:.1e}), \
             lse {:.1e} ({:.1e}), dQ, dK, dV {:.1e} ({:.1e})",
            worst(&out, &want_out),
            worst(&cores_out, &want_out),
            worst(&lse, &want_lse),
            worst(&cores_lse, &want_lse),
            worst_part(&dqkv, &want_dqkv, hidden),
            worst_part(&cores_dqkv, &want_dqkv, hidden)
        );
    }
}

#[test]
fn bf16_head_dim_16_with_padding_and_an_all_padding_sequence() {
    let seq = 37;
    check_bf16(
        &Case::padded(
            2,
            16,
            seq,
            vec![prefix(seq, seq), prefix(seq, 20), prefix(seq, 0)],
        ),
        11,
    );
}

#[test]
fn bf16_head_dim_64_over_more_than_two_tiles() {
    let seq = 150;
    check_bf16(
        &Case::padded(
            2,
            64,
            seq,
            vec![
                with_holes(seq, 140, &[0, 3, 63, 64, 70, 71, 72, 100]),
                prefix(seq, 0),
            ],
        ),
        12,
    );
}

#[test]
fn bf16_odd_head_dims() {
    // head_dim 32, and 27 and 100 (capacities 32 and 128), whose padding features the kernels
    // zero-fill.
    let seq = 45;
    check_bf16(
        &Case::padded(
            2,
            32,
            seq,
            vec![prefix(seq, 1), with_holes(seq, seq, &[1, 2, 44])],
        ),
        13,
    );
    let seq = 41;
    check_bf16(
        &Case::padded(1, 27, seq, vec![prefix(seq, 33), prefix(seq, 0)]),
        14,
    );
    check_bf16(&Case::padded(1, 100, seq, vec![prefix(seq, 30)]), 15);
}

#[test]
fn bf16_backward_odd_lengths_and_ragged_head_dims() {
    // Sequence lengths that are no multiple of 16 (the mma step) or 64 (the tiles), one of a single
    // position; head_dim 12, 27, 64, 100 (capacities 16, 32, 64, 128: the last keeps K and V in
    // shared memory and streams 16-row query tiles); padding at the end, holes, and a sequence
    // that is all padding.
    let seq = 1;
    check_bf16(
        &Case::padded(2, 12, seq, vec![prefix(seq, 1), prefix(seq, 0)]),
        21,
    );
    let seq = 17;
    check_bf16(
        &Case::padded(
            3,
            12,
            seq,
            vec![
                with_holes(seq, 15, &[0, 8]),
                prefix(seq, 0),
                prefix(seq, seq),
            ],
        ),
        22,
    );
    let seq = 70;
    check_bf16(
        &Case::padded(
            2,
            27,
            seq,
            vec![prefix(seq, 67), with_holes(seq, seq, &[15, 16, 63, 64, 69])],
        ),
        23,
    );
    let seq = 130;
    check_bf16(
        &Case::padded(
            1,
            64,
            seq,
            vec![with_holes(seq, 129, &[1, 64, 127]), prefix(seq, 0)],
        ),
        24,
    );
    let seq = 70;
    check_bf16(
        &Case::padded(
            1,
            100,
            seq,
            vec![prefix(seq, 0), with_holes(seq, 66, &[0, 31, 32, 65])],
        ),
        25,
    );
}

#[test]
fn bf16_backward_whole_capacities() {
    // head_dim equal to its capacity: whole 16-byte rows, loaded and stored in chunks.
    let seq = 130;
    check_bf16(
        &Case::padded(2, 32, seq, vec![prefix(seq, 100), prefix(seq, seq)]),
        26,
    );
    let seq = 33;
    check_bf16(
        &Case::padded(1, 128, seq, vec![prefix(seq, 20), prefix(seq, 0)]),
        27,
    );
}

#[test]
fn bf16_packed_sequences_of_odd_lengths() {
    // Packed: length 1, ragged lengths, a 200-row sequence over four tiles; head_dim 64 (K and V in
    // registers), 27 (ragged) and 128 (K and V in shared memory, 16-row query tiles).
    check_bf16(&Case::packed(2, 64, &[17, 1, 200, 64, 5]), 35);
    check_bf16(&Case::packed(1, 27, &[1, 70, 3]), 36);
    check_bf16(&Case::packed(1, 128, &[33, 1, 80]), 37);
    check_bf16(
        &Case::packed_with_holes(2, 64, &[37, 5, 130], &[3, 36, 40, 100, 171]),
        39,
    );
}

#[test]
fn mixed_element_types_are_a_dtype_error() {
    let (name, gpu) = &gpus_bf16()[0];
    let (batch, seq, heads, head_dim) = (1, 5, 1, 16);
    let values = vec![0.25; batch * seq * 3 * heads * head_dim];
    let qkv = upload_bf16(gpu, &[batch * seq, 3 * heads * head_dim], &values);
    let qkv_f32 = gpu
        .upload_f32(&[batch * seq, 3 * heads * head_dim], &values)
        .unwrap();
    let mask = Sequences::new(gpu, &[seq], None, None).unwrap();
    let fwd = gpu.attention_forward(&qkv, &mask, heads).unwrap();
    let dout_f32 = gpu
        .upload_f32(&[batch * seq, heads * head_dim], &values[..seq * head_dim])
        .unwrap();
    let dout = upload_bf16(
        gpu,
        &[batch * seq, heads * head_dim],
        &values[..seq * head_dim],
    );
    for (what, result) in [
        (
            "f32 dout",
            gpu.attention_backward(&dout_f32, &qkv, &mask, &fwd.out, &fwd.lse, heads),
        ),
        (
            "f32 qkv",
            gpu.attention_backward(&dout, &qkv_f32, &mask, &fwd.out, &fwd.lse, heads),
        ),
    ] {
        let error = result.expect_err(what);
        assert!(
            matches!(error, Error::DType { .. }),
            "{name} {what}: {error}"
        );
    }
}
