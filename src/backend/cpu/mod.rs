//! The CPU backend: every op in plain Rust f32, parallel over rows with rayon, GEMMs through the
//! `gemm` crate. It is the reference every other backend is tested against, so each op lives in
//! its own file as a function over slices, readable on its own; this file only checks shapes and
//! unpacks tensors.

mod adamw;
mod attention;
mod cross_entropy;
mod dropout;
pub mod embedding;
mod exp;
mod gelu;
pub mod gemm;
mod layernorm;
mod linear;
pub(crate) mod reduce;
mod rows;

pub use cross_entropy::IGNORE_INDEX;

use crate::backend::checks::{
    attention_dims, check_attention_saved, check_disjoint_slots, check_dropout_probability,
    check_labels, check_param, check_rows, check_same_shape, check_token_ids, check_top_k,
    cross_entropy_dims, embedding_dims, layernorm_backward_dims, linear_backward_dims, rows_cols,
};
use crate::backend::{
    AdamWStep, AttentionOut, Backend, CrossEntropyOut, DropoutKey, LayerNormOut, Param, TopK,
};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Tensor};

/// The CPU backend. Threads come from the global rayon pool.
#[derive(Debug, Default, Clone)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    match t.storage() {
        Storage::CpuF32(v) => Ok(v),
        _ => Err(cpu_storage_error(t, what, DType::F32)),
    }
}

fn f32s_mut<'a>(t: &'a mut Tensor, what: &str) -> Result<&'a mut [f32]> {
    let error = cpu_storage_error(t, what, DType::F32);
    match t.storage_mut() {
        Storage::CpuF32(v) => Ok(v),
        _ => Err(error),
    }
}

/// A tensor the CPU backend cannot read directly: another device's, or another element type.
fn cpu_storage_error(t: &Tensor, what: &str, expected: DType) -> Error {
    if t.device() != Device::Cpu {
        Error::Device {
            what: what.to_string(),
            expected: Device::Cpu,
            got: t.device(),
        }
    } else {
        t.dtype_error(what, expected)
    }
}

fn i32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [i32]> {
    match t.storage() {
        Storage::CpuI32(v) => Ok(v),
        _ => Err(cpu_storage_error(t, what, DType::I32)),
    }
}

/// `[rows, cols]` view of a tensor whose last axis has `cols` features.
fn param<'a>(params: &'a [f32], p: Param, expected: usize, what: &str) -> Result<&'a [f32]> {
    check_param(p, expected, params.len(), what)?;
    Ok(&params[p.offset..p.offset + p.len])
}

/// Disjoint mutable slices of the flat gradient buffer, one per parameter, in the order given.
fn params_mut<'a, const N: usize>(
    buf: &'a mut [f32],
    ps: [Param; N],
    what: &str,
) -> Result<[&'a mut [f32]; N]> {
    check_disjoint_slots(&ps, buf.len(), what)?;
    let mut order: Vec<usize> = (0..N).collect();
    order.sort_by_key(|&i| ps[i].offset);
    let mut slots: [Option<&'a mut [f32]>; N] = std::array::from_fn(|_| None);
    let mut rest = buf;
    let mut consumed = 0;
    for &i in &order {
        let p = ps[i];
        let (_, tail) = rest.split_at_mut(p.offset - consumed);
        let (slot, tail) = tail.split_at_mut(p.len);
        slots[i] = Some(slot);
        rest = tail;
        consumed = p.offset + p.len;
    }
    Ok(slots.map(|s| s.expect("every slot is filled above")))
}

fn output(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
    Tensor::from_f32(shape, data)
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn upload_f32(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Tensor::from_f32(shape, data.to_vec())
    }

    fn upload_i32(&self, shape: &[usize], data: &[i32]) -> Result<Tensor> {
        Tensor::from_i32(shape, data.to_vec())
    }

    fn zeros_f32(&self, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32(shape, vec![0.0; shape.iter().product()])
    }

    fn to_device(&self, t: &Tensor) -> Result<Tensor> {
        match t.dtype() {
            DType::F32 | DType::BF16 => Tensor::from_f32(t.shape(), t.to_vec_f32()?),
            DType::I32 => Tensor::from_i32(t.shape(), t.to_vec_i32()?),
        }
    }

    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        t.to_vec_f32()
    }

    fn download_i32(&self, t: &Tensor) -> Result<Vec<i32>> {
        t.to_vec_i32()
    }

    fn fill_zero(&self, t: &mut Tensor) -> Result<()> {
        f32s_mut(t, "fill_zero")?.fill(0.0);
        Ok(())
    }

    fn embedding_forward(
        &self,
        tokens: &Tensor,
        next_token_id: i32,
        params: &Tensor,
        token: Param,
        instruction: Param,
        argument: Param,
        hidden: usize,
    ) -> Result<Tensor> {
        let (batch, seq) = embedding_dims(tokens, instruction, argument, hidden)?;
        let ids = i32s(tokens, "embedding tokens")?;
        let p = f32s(params, "parameters")?;
        let vocab = token.len / hidden.max(1);
        let positions = instruction.len / hidden.max(1);
        check_token_ids(ids, seq, vocab)?;
        let tables = [
            param(p, token, vocab * hidden, "embedding token table")?,
            param(
                p,
                instruction,
                positions * hidden,
                "embedding instruction table",
            )?,
            param(p, argument, positions * hidden, "embedding argument table")?,
        ];
        let mut out = vec![0.0f32; batch * seq * hidden];
        embedding::forward(&mut out, ids, seq, next_token_id, tables, hidden);
        output(&[batch * seq, hidden], out)
    }

    fn embedding_backward(
        &self,
        dout: &Tensor,
        tokens: &Tensor,
        next_token_id: i32,
        grads: &mut Tensor,
        token: Param,
        instruction: Param,
        argument: Param,
    ) -> Result<()> {
        let (rows, hidden) = rows_cols(dout, "embedding dout")?;
        let (_, seq) = embedding_dims(tokens, instruction, argument, hidden)?;
        if rows != tokens.numel() {
            return Err(Error::shape(
                "embedding dout",
                format!("[{}, {hidden}]", tokens.numel()),
                dout.shape(),
            ));
        }
        let ids = i32s(tokens, "embedding tokens")?;
        // The ids index the gradient tables: check them here too, not only in forward.
        check_token_ids(ids, seq, token.len / hidden.max(1))?;
        let d = f32s(dout, "embedding dout")?;
        let g = f32s_mut(grads, "gradients")?;
        let tables = params_mut(g, [token, instruction, argument], "embedding")?;
        embedding::backward(d, ids, seq, next_token_id, tables, hidden);
        Ok(())
    }

    fn layernorm_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<LayerNormOut> {
        let (rows, c) = rows_cols(x, "layernorm input")?;
        let p = f32s(params, "parameters")?;
        let w = param(p, weight, c, "layernorm weight")?;
        let b = param(p, bias, c, "layernorm bias")?;
        let mut y = vec![0.0f32; rows * c];
        let mut mean = vec![0.0f32; rows];
        let mut rstd = vec![0.0f32; rows];
        layernorm::forward(
            &mut y,
            &mut mean,
            &mut rstd,
            f32s(x, "layernorm input")?,
            w,
            b,
            eps,
        );
        Ok(LayerNormOut {
            y: output(x.shape(), y)?,
            mean: output(&[rows], mean)?,
            rstd: output(&[rows], rstd)?,
        })
    }

    fn layernorm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor> {
        let (rows, c) = layernorm_backward_dims(dy, x, mean, rstd)?;
        let w = param(f32s(params, "parameters")?, weight, c, "layernorm weight")?;
        check_param(bias, c, grads.numel(), "layernorm bias")?;
        let [dw, db] = params_mut(f32s_mut(grads, "gradients")?, [weight, bias], "layernorm")?;
        let mut dx = vec![0.0f32; rows * c];
        layernorm::backward(
            &mut dx,
            dw,
            db,
            f32s(dy, "layernorm dy")?,
            f32s(x, "layernorm input")?,
            f32s(mean, "layernorm mean")?,
            f32s(rstd, "layernorm rstd")?,
            w,
        );
        output(x.shape(), dx)
    }

    fn linear_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Tensor> {
        let (rows, inp) = rows_cols(x, "linear input")?;
        let p = f32s(params, "parameters")?;
        let w = param(p, weight, out_features * inp, "linear weight")?;
        let b = param(p, bias, out_features, "linear bias")?;
        let mut y = vec![0.0f32; rows * out_features];
        linear::forward(&mut y, f32s(x, "linear input")?, w, b, inp);
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank checked by rows_cols") = out_features;
        output(&shape, y)
    }

    fn linear_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor> {
        let (rows, inp, out) = linear_backward_dims(dy, x)?;
        let w = param(
            f32s(params, "parameters")?,
            weight,
            out * inp,
            "linear weight",
        )?;
        check_param(bias, out, grads.numel(), "linear bias")?;
        let [dw, db] = params_mut(f32s_mut(grads, "gradients")?, [weight, bias], "linear")?;
        let mut dx = vec![0.0f32; rows * inp];
        linear::backward(
            &mut dx,
            dw,
            db,
            f32s(dy, "linear dy")?,
            f32s(x, "linear input")?,
            w,
        );
        output(x.shape(), dx)
    }

    fn gelu_forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = vec![0.0f32; x.numel()];
        gelu::forward(&mut y, f32s(x, "gelu input")?);
        output(x.shape(), y)
    }

    fn gelu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        check_same_shape(x, dy, "gelu dy")?;
        let mut dx = vec![0.0f32; x.numel()];
        gelu::backward(&mut dx, f32s(dy, "gelu dy")?, f32s(x, "gelu input")?);
        output(x.shape(), dx)
    }

    fn attention_forward(&self, qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<AttentionOut> {
        let dims = attention_dims(qkv, mask, heads)?;
        let (out, lse) =
            attention::forward(&dims, f32s(qkv, "qkv")?, i32s(mask, "attention mask")?);
        Ok(AttentionOut {
            out: output(&[dims.batch * dims.seq, heads * dims.head_dim], out)?,
            lse: output(&[dims.batch, heads, dims.seq], lse)?,
        })
    }

    fn attention_backward(
        &self,
        dout: &Tensor,
        qkv: &Tensor,
        mask: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        heads: usize,
    ) -> Result<Tensor> {
        let dims = attention_dims(qkv, mask, heads)?;
        check_attention_saved(&dims, dout, out, lse)?;
        let dqkv = attention::backward(
            &dims,
            f32s(dout, "attention dout")?,
            f32s(qkv, "qkv")?,
            i32s(mask, "attention mask")?,
            f32s(out, "attention output")?,
            f32s(lse, "attention lse")?,
        );
        output(qkv.shape(), dqkv)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        check_same_shape(acc, x, "add")?;
        let xs = f32s(x, "add")?;
        f32s_mut(acc, "add")?
            .iter_mut()
            .zip(xs)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn dropout_forward(&self, x: &Tensor, key: DropoutKey) -> Result<Tensor> {
        check_dropout_probability(key.p)?;
        let mut y = vec![0.0f32; x.numel()];
        dropout::apply(&mut y, f32s(x, "dropout input")?, key);
        output(x.shape(), y)
    }

    fn dropout_backward(&self, dy: &Tensor, key: DropoutKey) -> Result<Tensor> {
        self.dropout_forward(dy, key)
    }

    fn cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        want_grad: bool,
    ) -> Result<CrossEntropyOut> {
        let (rows, vocab) = cross_entropy_dims(logits, labels)?;
        let ls = i32s(labels, "cross-entropy labels")?;
        check_labels(ls, vocab)?;
        let x = f32s(logits, "cross-entropy logits")?;
        let mut dlogits = want_grad.then(|| vec![0.0f32; rows * vocab]);
        let (total, count) = cross_entropy::forward_backward(x, ls, vocab, dlogits.as_deref_mut());
        if count == 0 {
            return Err(Error::NoLabels);
        }
        Ok(CrossEntropyOut {
            loss: (total / count as f64) as f32,
            count,
            dlogits: dlogits.map(|d| output(logits.shape(), d)).transpose()?,
        })
    }

    fn gather_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let (n, width) = rows_cols(x, "gather input")?;
        let idx = i32s(rows, "gather rows")?;
        check_rows(idx, n)?;
        let mut out = vec![0.0f32; idx.len() * width];
        rows::gather(&mut out, f32s(x, "gather input")?, idx, width);
        output(&[idx.len(), width], out)
    }

    fn scatter_rows(&self, dy: &Tensor, rows: &Tensor, n: usize) -> Result<Tensor> {
        let (m, width) = rows_cols(dy, "scatter dy")?;
        let idx = i32s(rows, "scatter rows")?;
        if idx.len() != m {
            return Err(Error::shape("scatter rows", format!("[{m}]"), rows.shape()));
        }
        check_rows(idx, n)?;
        let mut out = vec![0.0f32; n * width];
        rows::scatter_add(&mut out, f32s(dy, "scatter dy")?, idx, width);
        output(&[n, width], out)
    }

    fn argmax_rows(&self, x: &Tensor) -> Result<Tensor> {
        let (n, width) = rows_cols(x, "argmax input")?;
        let mut out = vec![0i32; n];
        rows::argmax(&mut out, f32s(x, "argmax input")?, width);
        Tensor::from_i32(&[n], out)
    }

    fn softmax_top_k(&self, logits: &Tensor, k: usize) -> Result<TopK> {
        let (n, width) = rows_cols(logits, "top-k logits")?;
        check_top_k(k, width)?;
        let mut ids = vec![0i32; n * k];
        let mut probabilities = vec![0.0f32; n * k];
        rows::softmax_top_k(
            &mut ids,
            &mut probabilities,
            f32s(logits, "top-k logits")?,
            width,
            k,
        );
        Ok(TopK {
            ids: Tensor::from_i32(&[n, k], ids)?,
            probabilities: output(&[n, k], probabilities)?,
        })
    }

    fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: AdamWStep,
    ) -> Result<()> {
        check_same_shape(params, grads, "adamw gradients")?;
        check_same_shape(params, m, "adamw first moment")?;
        check_same_shape(params, v, "adamw second moment")?;
        adamw::step(
            f32s_mut(params, "adamw parameters")?,
            f32s(grads, "adamw gradients")?,
            f32s_mut(m, "adamw first moment")?,
            f32s_mut(v, "adamw second moment")?,
            step,
        );
        Ok(())
    }
}
