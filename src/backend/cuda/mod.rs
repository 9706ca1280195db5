//! The GPU backend: every op of [`Backend`] as a hand-written CUDA kernel (`kernels/*.cu`), GEMMs
//! through cuBLASLt.
//!
//! The backend talks to a [`runtime::GpuRuntime`]: a real GPU through cudarc, or the
//! [`emulator`], which runs the same `.cu` sources compiled for the host so that every kernel is
//! tested on machines without a GPU. Each op's launch wrapper (in [`ops`], one file per kernel
//! file) computes grid, block, shared memory and the argument list; only the final launch call
//! differs between the two. The emulator is test equipment, never offered as a user device.
//!
//! Where the model chains memory-bound steps the backend runs them as one kernel: the residual add
//! into the LayerNorm after it, the bias and GELU after the feed-forward GEMM, dropout into the
//! residual add, and the loss gradient written over the logits (the fused `Backend` methods).

pub mod cuda_runtime;
pub mod emulated;
pub mod emulator;
pub mod launch;
pub mod ops;
pub mod ptx;
pub mod runtime;
pub mod storage;

use std::sync::{Arc, Mutex, Weak};

use runtime::GpuRuntime;

use crate::backend::{
    AdamWStep, AttentionOut, Backend, CrossEntropyOut, DropoutKey, LayerNormOut, MemoryUse, Param,
    TopK,
};
use crate::device::{Device, Precision};
use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Tensor};

/// The GPU backend over one runtime (one device), in one precision.
///
/// In bf16 mixed precision the embedding produces bf16 activations and every op after it keeps the
/// element type of its input: activations, their gradients and GEMM operands are bf16, while
/// accumulation, LayerNorm and softmax statistics, the loss, parameters, their gradients and the
/// optimiser state stay f32. GEMMs read the weights from a bf16 shadow of the flat parameter
/// buffer, which AdamW rewrites in the same pass as it updates the f32 master weights.
#[derive(Debug, Clone)]
pub struct GpuBackend {
    runtime: Arc<dyn GpuRuntime>,
    precision: Precision,
    shadow: Arc<Mutex<Option<ParamShadow>>>,
}

/// The bf16 copy of one flat parameter buffer, as of one of its writes.
#[derive(Debug)]
struct ParamShadow {
    /// The buffer it shadows: a weak reference, so that a new buffer at a reused address is never
    /// taken for it.
    source: Weak<storage::GpuBuffer>,
    version: u64,
    values: Tensor,
}

fn gpu_storage(t: &Tensor) -> Option<&storage::GpuStorage> {
    match t.storage() {
        Storage::Gpu(g) => Some(g),
        _ => None,
    }
}

/// Whether `shadow` was made from `params`'s buffer.
fn shadows(shadow: &ParamShadow, params: &Tensor) -> bool {
    gpu_storage(params).is_some_and(|g| Weak::ptr_eq(&shadow.source, &g.buffer_id()))
}

fn write_version(t: &Tensor) -> u64 {
    gpu_storage(t).map_or(0, storage::GpuStorage::write_version)
}

impl GpuBackend {
    /// An f32 backend over this runtime.
    pub fn new(runtime: Arc<dyn GpuRuntime>) -> Self {
        GpuBackend {
            runtime,
            precision: Precision::F32,
            shadow: Arc::default(),
        }
    }

    /// The same device in another precision.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The element type of activations: what the embedding produces.
    pub fn activation_dtype(&self) -> DType {
        match self.precision {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// A copy of `t` as f32 or bf16 (the same tensor if it already is).
    pub fn cast(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        ops::convert::cast(self, t, dtype)
    }

    /// The bf16 shadow of the flat f32 parameter buffer `params` (element for element), converted
    /// again only when the buffer has been written since.
    pub fn bf16_parameters(&self, params: &Tensor) -> Result<Tensor> {
        self.ptr(params, DType::F32, "parameters")?;
        let version = write_version(params);
        let mut shadow = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shadow
            .as_ref()
            .filter(|s| shadows(s, params) && s.version == version)
        {
            return Ok(s.values.clone());
        }
        let values = self.cast(params, DType::BF16)?;
        let source = gpu_storage(params)
            .map(storage::GpuStorage::buffer_id)
            .unwrap_or_default();
        *shadow = Some(ParamShadow {
            source,
            version,
            values: values.clone(),
        });
        Ok(values)
    }

    /// For AdamW: the shadow of `params` to rewrite in the same pass, if there is one (it becomes
    /// current once the update has run: call [`Self::shadow_updated`]).
    pub(crate) fn shadow_for_update(&self, params: &Tensor) -> Option<launch::DevicePtr> {
        let shadow = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        let s = shadow.as_ref().filter(|s| shadows(s, params))?;
        self.ptr(&s.values, DType::BF16, "parameter shadow").ok()
    }

    /// Marks the shadow of `params` as matching its current contents.
    pub(crate) fn shadow_updated(&self, params: &Tensor) {
        let mut shadow = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shadow.as_mut().filter(|s| shadows(s, params)) {
            s.version = write_version(params);
        }
    }

    /// The f32 backend of CUDA device `ordinal` (see [`with_precision`](Self::with_precision)).
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Ok(GpuBackend::new(cuda_runtime::CudaRuntime::shared(ordinal)?))
    }

    pub fn runtime(&self) -> &Arc<dyn GpuRuntime> {
        &self.runtime
    }

    /// A new, uninitialised device tensor (poisoned in the emulator).
    pub(crate) fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::gpu_empty(&self.runtime, shape, dtype)
    }

    /// The device address of a tensor on this device, of this element type.
    pub(crate) fn ptr(&self, t: &Tensor, dtype: DType, what: &str) -> Result<launch::DevicePtr> {
        ops::ptr(t, self.device(), dtype, what)
    }

    /// The device address of a tensor a kernel writes (copied first if a clone shares it).
    pub(crate) fn ptr_mut(
        &self,
        t: &mut Tensor,
        dtype: DType,
        what: &str,
    ) -> Result<launch::DevicePtr> {
        ops::ptr_mut(t, self.device(), dtype, what)
    }

    fn upload(&self, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Tensor> {
        let t = self.empty(shape, dtype)?;
        self.runtime.upload(self.ptr(&t, dtype, "upload")?, bytes)?;
        Ok(t)
    }
}

impl Backend for GpuBackend {
    fn device(&self) -> Device {
        self.runtime.device()
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn upload_f32(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        self.upload(shape, DType::F32, bytemuck::cast_slice(data))
    }

    fn upload_i32(&self, shape: &[usize], data: &[i32]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        self.upload(shape, DType::I32, bytemuck::cast_slice(data))
    }

    fn zeros_f32(&self, shape: &[usize]) -> Result<Tensor> {
        let mut t = self.empty(shape, DType::F32)?;
        self.fill_zero(&mut t)?;
        Ok(t)
    }

    fn to_device(&self, t: &Tensor) -> Result<Tensor> {
        match t.dtype() {
            DType::F32 | DType::BF16 => self.upload_f32(t.shape(), &t.to_vec_f32()?),
            DType::I32 => self.upload_i32(t.shape(), &t.to_vec_i32()?),
        }
    }

    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.ptr(t, DType::F32, "download")?;
        t.to_vec_f32()
    }

    fn download_i32(&self, t: &Tensor) -> Result<Vec<i32>> {
        self.ptr(t, DType::I32, "download")?;
        t.to_vec_i32()
    }

    fn fill_zero(&self, t: &mut Tensor) -> Result<()> {
        // f32 or bf16: zero is all-zero bytes in both.
        let (dst, dtype) = ops::activation_mut(self, t, "fill_zero")?;
        self.runtime
            .memset_zero(dst, t.numel() * storage::dtype_bytes(dtype))
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
        ops::embedding::forward(
            self,
            tokens,
            next_token_id,
            params,
            [token, instruction, argument],
            hidden,
        )
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
        ops::embedding::backward(
            self,
            dout,
            tokens,
            next_token_id,
            grads,
            [token, instruction, argument],
        )
    }

    fn layernorm_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<LayerNormOut> {
        ops::layernorm::forward(self, x, params, weight, bias, eps)
    }

    fn add_layernorm_forward(
        &self,
        a: &Tensor,
        b: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<(Tensor, LayerNormOut)> {
        ops::layernorm::add_forward(self, a, b, params, weight, bias, eps)
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
        ops::layernorm::backward(self, dy, x, mean, rstd, params, grads, weight, bias)
    }

    fn linear_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Tensor> {
        ops::linear::forward(self, x, params, weight, bias, out_features)
    }

    fn linear_gelu_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<(Tensor, Tensor)> {
        ops::linear::gelu_forward(self, x, params, weight, bias, out_features)
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
        ops::linear::backward(self, dy, x, params, grads, weight, bias)
    }

    fn linear_gelu_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        z: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor> {
        ops::linear::gelu_backward(self, dy, x, z, params, grads, weight, bias)
    }

    fn gelu_forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::elementwise::gelu_forward(self, x)
    }

    fn gelu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        ops::elementwise::gelu_backward(self, dy, x)
    }

    fn attention_forward(&self, qkv: &Tensor, mask: &Tensor, heads: usize) -> Result<AttentionOut> {
        ops::attention::forward(self, qkv, mask, heads)
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
        ops::attention::backward(self, dout, qkv, mask, out, lse, heads)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::elementwise::add(self, a, b)
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        ops::elementwise::add_assign(self, acc, x)
    }

    fn dropout_forward(&self, x: &Tensor, key: DropoutKey) -> Result<Tensor> {
        ops::dropout::apply(self, x, key)
    }

    fn dropout_backward(&self, dy: &Tensor, key: DropoutKey) -> Result<Tensor> {
        // Inverted dropout is its own adjoint: the same mask, the same scale.
        ops::dropout::apply(self, dy, key)
    }

    fn dropout_add_forward(
        &self,
        residual: &Tensor,
        x: &Tensor,
        key: DropoutKey,
    ) -> Result<Tensor> {
        ops::dropout::apply_and_add(self, residual, x, key)
    }

    fn cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        want_grad: bool,
    ) -> Result<CrossEntropyOut> {
        ops::cross_entropy::forward_backward(self, logits, labels, want_grad)
    }

    fn cross_entropy_in_place(&self, logits: Tensor, labels: &Tensor) -> Result<CrossEntropyOut> {
        ops::cross_entropy::forward_backward_in_place(self, logits, labels)
    }

    fn gather_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
        ops::rows::gather(self, x, rows)
    }

    fn scatter_rows(&self, dy: &Tensor, rows: &Tensor, n: usize) -> Result<Tensor> {
        ops::rows::scatter(self, dy, rows, n)
    }

    fn synchronize(&self) -> Result<()> {
        self.runtime.synchronize()
    }

    fn memory_use(&self) -> Option<MemoryUse> {
        let meter = self.runtime.memory();
        Some(MemoryUse {
            live: meter.live(),
            peak: meter.peak(),
        })
    }

    fn reset_peak_memory(&self) {
        self.runtime.memory().reset_peak();
    }

    fn argmax_rows(&self, x: &Tensor) -> Result<Tensor> {
        ops::rows::argmax(self, x)
    }

    fn softmax_top_k(&self, logits: &Tensor, k: usize) -> Result<TopK> {
        ops::rows::softmax_top_k(self, logits, k)
    }

    fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: AdamWStep,
    ) -> Result<()> {
        ops::adamw::step(self, params, grads, m, v, step)
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel != len {
        return Err(Error::shape(
            "upload",
            format!("{numel} elements for shape {shape:?}"),
            &[len],
        ));
    }
    Ok(())
}
