// Kernel tests for kernels/embedding.cu: the [NEXT] position scan, the three-table gather and its
// atomic adjoint, against the CPU backend, plus the typed errors; in bf16 mixed precision, the bf16
// output and the bf16 dout against the CPU on rounded values; packed sequences (each row cut after
// its real tokens, back to back) against the padded batch at the real rows.

use crate::harness::{assert_close, cpu, gpus, gpus_bf16, random, rng, round_bf16, upload_bf16};
use rand::Rng;
use undertale_maskedlm::backend::{Backend, Param};
use undertale_maskedlm::ops::sequences::Sequences;
use undertale_maskedlm::{DType, Error};

const NEXT: i32 = 5;
const PAD: i32 = 0;

/// Tables at odd offsets inside a flat buffer, with gaps the kernels must leave alone.
struct Case {
    seq: usize,
    /// Each sequence's length: `seq` for every row of the padded batch, or a packed batch's.
    lengths: Vec<usize>,
    hidden: usize,
    tables: [Param; 3],
    params: Vec<f32>,
    tokens: Vec<i32>,
}

impl Case {
    fn new(
        seed: u64,
        batch: usize,
        seq: usize,
        hidden: usize,
        vocab: usize,
        positions: usize,
    ) -> Self {
        let mut rng = rng(seed);
        let token = Param {
            offset: 3,
            len: vocab * hidden,
        };
        let instruction = Param {
            offset: token.offset + token.len + 2,
            len: positions * hidden,
        };
        let argument = Param {
            offset: instruction.offset + instruction.len + 1,
            len: positions * hidden,
        };
        let params = random(&mut rng, argument.offset + argument.len + 5, 1.0);
        // Random ids with [NEXT] one time in four; row 0 opens with two [NEXT]s (a leading and an
        // empty instruction), the last row ends in a run of padding, which continues the count.
        let mut tokens: Vec<i32> = (0..batch * seq)
            .map(|_| {
                if rng.random_range(0..4) == 0 {
                    NEXT
                } else {
                    rng.random_range(0..vocab as i32)
                }
            })
            .collect();
        tokens[0] = NEXT;
        tokens[1] = NEXT;
        // With three rows or more, row 1 is all padding.
        if batch >= 3 {
            tokens[seq..2 * seq].fill(PAD);
        }
        let last = (batch - 1) * seq;
        for t in &mut tokens[last + seq / 2..last + seq] {
            *t = PAD;
        }
        Case {
            seq,
            lengths: vec![seq; batch],
            hidden,
            tables: [token, instruction, argument],
            params,
            tokens,
        }
    }

    /// The same batch packed: row b cut after its first `lengths[b]` tokens, the rows back to back.
    fn packed(&self, lengths: &[usize]) -> Self {
        let tokens = lengths
            .iter()
            .enumerate()
            .flat_map(|(b, &len)| {
                self.tokens[b * self.seq..b * self.seq + len]
                    .iter()
                    .copied()
            })
            .collect();
        Case {
            lengths: lengths.to_vec(),
            tokens,
            params: self.params.clone(),
            ..*self
        }
    }

    fn rows(&self) -> usize {
        self.tokens.len()
    }

    fn sequences(&self, backend: &dyn Backend) -> Sequences {
        Sequences::new(backend, &self.lengths, None, None).unwrap()
    }

    fn forward(&self, backend: &dyn Backend) -> undertale_maskedlm::Result<Vec<f32>> {
        let tokens = backend.upload_i32(&[self.rows()], &self.tokens)?;
        let params = backend.upload_f32(&[self.params.len()], &self.params)?;
        let [t, i, a] = self.tables;
        let sequences = self.sequences(backend);
        let out =
            backend.embedding_forward(&tokens, &sequences, NEXT, &params, t, i, a, self.hidden)?;
        assert_eq!(out.shape(), &[self.rows(), self.hidden]);
        backend.download_f32(&out)
    }

    /// The gradient buffer after backward, starting from `start` (non-zero, to show the `+=`).
    fn backward(
        &self,
        backend: &dyn Backend,
        dout: &[f32],
        start: &[f32],
    ) -> undertale_maskedlm::Result<Vec<f32>> {
        let tokens = backend.upload_i32(&[self.rows()], &self.tokens)?;
        let dout = backend.upload_f32(&[self.rows(), self.hidden], dout)?;
        let mut grads = backend.upload_f32(&[start.len()], start)?;
        let [t, i, a] = self.tables;
        let sequences = self.sequences(backend);
        backend.embedding_backward(&dout, &tokens, &sequences, NEXT, &mut grads, t, i, a)?;
        backend.download_f32(&grads)
    }
}

fn check_matches_cpu(case: &Case, seed: u64) {
    let mut rng = rng(seed);
    let dout = random(&mut rng, case.rows() * case.hidden, 1.0);
    let start = random(&mut rng, case.params.len(), 1.0);
    let cpu = cpu();
    let want_out = case.forward(&cpu).unwrap();
    let want_grads = case.backward(&cpu, &dout, &start).unwrap();
    for (order, gpu) in gpus() {
        // Same additions in the same order: bit-identical.
        let out = case.forward(gpu.as_ref()).unwrap();
        assert_close(
            &format!("embedding forward {order:?}"),
            &out,
            &want_out,
            0.0,
            0.0,
        );
        // Atomic adds: the order differs from the CPU's, so the last bits may.
        let grads = case.backward(gpu.as_ref(), &dout, &start).unwrap();
        assert_close(
            &format!("embedding backward {order:?}"),
            &grads,
            &want_grads,
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn forward_and_backward_match_the_cpu() {
    // Odd sizes: 37 positions (two warps, the second partial), 45 features (a partial lane sweep),
    // fewer positions than the tables hold.
    check_matches_cpu(&Case::new(1, 3, 37, 45, 29, 40), 2);
}

#[test]
fn long_sequences_are_scanned_in_chunks() {
    // 300 positions: the scan block has 256 threads, so the second chunk carries the first's
    // count and latest start; the sequence fills the position tables exactly.
    check_matches_cpu(&Case::new(3, 2, 300, 7, 11, 300), 4);
}

#[test]
fn positions_follow_next_tokens() {
    // foo bar baz [NEXT] blah [NEXT] [NEXT] pad pad: instruction 0 0 0 0 1 1 2 3 3, argument
    // 0 1 2 3 0 1 0 0 1. With one-hot-like tables the output shows which rows were gathered.
    let tokens = [10, 11, 12, NEXT, 13, NEXT, NEXT, PAD, PAD];
    let (seq, hidden) = (tokens.len(), 3);
    let (vocab, positions) = (16, 9);
    let token = Param {
        offset: 0,
        len: vocab * hidden,
    };
    let instruction = Param {
        offset: token.len,
        len: positions * hidden,
    };
    let argument = Param {
        offset: instruction.offset + instruction.len,
        len: positions * hidden,
    };
    // Token row t = (t, 0, 0), instruction row i = (0, 100 i, 0), argument row a = (0, 0, 10000 a).
    let mut params = vec![0.0f32; argument.offset + argument.len];
    for t in 0..vocab {
        params[token.offset + t * hidden] = t as f32;
    }
    for p in 0..positions {
        params[instruction.offset + p * hidden + 1] = 100.0 * p as f32;
        params[argument.offset + p * hidden + 2] = 10000.0 * p as f32;
    }
    let ins = [0, 0, 0, 0, 1, 1, 2, 3, 3];
    let arg = [0, 1, 2, 3, 0, 1, 0, 0, 1];
    let want: Vec<f32> = (0..seq)
        .flat_map(|j| {
            [
                tokens[j] as f32,
                100.0 * ins[j] as f32,
                10000.0 * arg[j] as f32,
            ]
        })
        .collect();
    for (order, gpu) in gpus() {
        let t = gpu.upload_i32(&[seq], &tokens).unwrap();
        let p = gpu.upload_f32(&[params.len()], &params).unwrap();
        let sequences = Sequences::new(gpu.as_ref(), &[seq], None, None).unwrap();
        let out = gpu
            .embedding_forward(
                &t,
                &sequences,
                NEXT,
                &p,
                token,
                instruction,
                argument,
                hidden,
            )
            .unwrap();
        assert_eq!(gpu.download_f32(&out).unwrap(), want, "positions {order:?}");
    }
}

#[test]
fn bad_token_ids_are_the_cpus_errors() {
    let cpu = cpu();
    let (_, gpu) = &gpus()[2];
    for (bad, at) in [(29, 37 + 4), (-3, 2 * 37), (1000, 36)] {
        let mut case = Case::new(5, 3, 37, 45, 29, 40);
        case.tokens[at] = bad;
        // A second bad id later on: the first in row-major order is the one reported.
        let later = 3 * 37 - 1;
        if later != at {
            case.tokens[later] = -7;
        }
        let want = case.forward(&cpu).unwrap_err();
        let got = case.forward(gpu.as_ref()).unwrap_err();
        assert!(matches!(got, Error::TokenOutOfRange { .. }), "{got}");
        assert_eq!(got.to_string(), want.to_string());
        assert!(
            got.to_string().contains(&format!("token id {bad}")),
            "{got}"
        );

        // Backward checks the ids too, on both backends, and leaves the gradients alone.
        let start = random(&mut rng(6), case.params.len(), 1.0);
        let dout = random(&mut rng(7), 3 * 37 * 45, 1.0);
        let err = case.backward(gpu.as_ref(), &dout, &start).unwrap_err();
        assert_eq!(err.to_string(), want.to_string());
        let err = case.backward(&cpu, &dout, &start).unwrap_err();
        assert_eq!(err.to_string(), want.to_string());
        let tokens = gpu.upload_i32(&[3 * 37], &case.tokens).unwrap();
        let d = gpu.upload_f32(&[3 * 37, 45], &dout).unwrap();
        let mut grads = gpu.upload_f32(&[start.len()], &start).unwrap();
        let [t, i, a] = case.tables;
        let sequences = case.sequences(gpu.as_ref());
        assert!(
            gpu.embedding_backward(&d, &tokens, &sequences, NEXT, &mut grads, t, i, a)
                .is_err()
        );
        assert_eq!(gpu.download_f32(&grads).unwrap(), start);
    }
}

#[test]
fn sequences_longer_than_the_tables_and_bad_shapes_are_the_cpus_errors() {
    let cpu = cpu();
    let (_, gpu) = &gpus()[0];
    // 41 positions, tables of 40.
    let case = Case::new(8, 2, 41, 6, 13, 40);
    let want = case.forward(&cpu).unwrap_err();
    let got = case.forward(gpu.as_ref()).unwrap_err();
    assert!(
        matches!(
            got,
            Error::SequenceTooLong {
                length: 41,
                max: 40
            }
        ),
        "{got}"
    );
    assert_eq!(got.to_string(), want.to_string());

    // Tokens that are not one per row of the sequences: 10 ids for 9 rows, or [1, 10].
    let case = Case::new(9, 1, 10, 6, 13, 40);
    let [t, i, a] = case.tables;
    let errors: Vec<String> = [
        (&cpu as &dyn Backend, 9),
        (gpu.as_ref(), 9),
        (gpu.as_ref(), 10),
    ]
    .iter()
    .map(|&(b, rows)| {
        let tokens = b.upload_i32(&[1, 10], &case.tokens).unwrap();
        let tokens = if rows == 9 {
            b.upload_i32(&[10], &case.tokens).unwrap()
        } else {
            tokens
        };
        let sequences = Sequences::new(b, &[rows], None, None).unwrap();
        let params = b.upload_f32(&[case.params.len()], &case.params).unwrap();
        b.embedding_forward(&tokens, &sequences, NEXT, &params, t, i, a, case.hidden)
            .unwrap_err()
            .to_string()
    })
    .collect();
    assert_eq!(errors[0], errors[1]);
    for error in &errors {
        assert!(error.contains("embedding tokens"), "{error}");
    }
}

/// One bf16 ulp at `w` (a normal f32): the spacing of bf16 values in `w`'s binade.
fn bf16_ulp(w: f32) -> f32 {
    let exponent = (w.to_bits() >> 23) & 0xff;
    f32::from_bits(exponent.saturating_sub(7).max(1) << 23)
}

fn check_bf16_matches_cpu(case: &Case, seed: u64) {
    let mut rng = rng(seed);
    let dout = random(&mut rng, case.rows() * case.hidden, 1.0);
    let start = random(&mut rng, case.params.len(), 1.0);
    let cpu = cpu();
    // The forward's inputs are f32 parameters: the reference is the CPU's f32 sum, rounded once.
    let want_out = round_bf16(&case.forward(&cpu).unwrap());
    // The backward's dout is bf16: the reference sees the rounded values, into f32 gradients.
    let dout_rounded = round_bf16(&dout);
    let want_grads = case.backward(&cpu, &dout_rounded, &start).unwrap();
    let [t, i, a] = case.tables;
    let rows = case.rows();
    for (name, gpu) in gpus_bf16() {
        let tokens = gpu.upload_i32(&[rows], &case.tokens).unwrap();
        let params = gpu.upload_f32(&[case.params.len()], &case.params).unwrap();
        let sequences = case.sequences(&gpu);
        let out = gpu
            .embedding_forward(&tokens, &sequences, NEXT, &params, t, i, a, case.hidden)
            .unwrap();
        assert_eq!(out.dtype(), DType::BF16, "{name}");
        assert_eq!(out.shape(), &[rows, case.hidden]);
        let got = out.to_vec_f32().unwrap();
        for (k, (&g, &w)) in got.iter().zip(&want_out).enumerate() {
            assert!(
                (g - w).abs() <= bf16_ulp(w),
                "embedding forward {name}[{k}]: got {g}, want {w}"
            );
        }

        let d = upload_bf16(&gpu, &[rows, case.hidden], &dout);
        let mut grads = gpu.upload_f32(&[start.len()], &start).unwrap();
        gpu.embedding_backward(&d, &tokens, &sequences, NEXT, &mut grads, t, i, a)
            .unwrap();
        assert_eq!(grads.dtype(), DType::F32, "{name}");
        // Atomic f32 adds of the same (exactly widened) values: only the order differs.
        assert_close(
            &format!("embedding backward {name}"),
            &gpu.download_f32(&grads).unwrap(),
            &want_grads,
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn bf16_forward_and_backward_match_the_cpu_on_rounded_values() {
    check_bf16_matches_cpu(&Case::new(11, 3, 37, 45, 29, 40), 12);
    check_bf16_matches_cpu(&Case::new(13, 2, 300, 7, 11, 300), 14);
}

#[test]
fn packed_positions_equal_the_padded_ones_at_real_rows() {
    // A padded batch and the same rows packed (cut after 37, 0, 1, 20 and 300 tokens: an empty
    // sequence, one of one token, and one as long as the position tables allow, scanned in two
    // chunks): the packed output is the padded one's real rows, bit for bit, on the CPU and the GPU;
    // the packed backward matches the CPU's packed backward.
    let padded = Case::new(21, 5, 300, 9, 17, 300);
    let lengths = [37usize, 0, 1, 20, 300];
    let packed = padded.packed(&lengths);
    let hidden = padded.hidden;
    let want_padded = padded.forward(&cpu()).unwrap();
    let want: Vec<f32> = lengths
        .iter()
        .enumerate()
        .flat_map(|(b, &len)| {
            let first = b * padded.seq * hidden;
            want_padded[first..first + len * hidden].iter().copied()
        })
        .collect();
    assert_eq!(
        packed.forward(&cpu()).unwrap(),
        want,
        "CPU packed vs padded"
    );
    for (order, gpu) in gpus() {
        let got = packed.forward(gpu.as_ref()).unwrap();
        assert_close(&format!("packed forward {order:?}"), &got, &want, 0.0, 0.0);
    }
    check_matches_cpu(&packed, 22);
    check_bf16_matches_cpu(&packed, 23);
}
