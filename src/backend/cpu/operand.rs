//! The element type of GEMM operands: f32, or bf16 in mixed precision. Products accumulate in f32
//! either way, so an op written over `T: GemmOperand` is the same code in both precisions; only
//! its GEMMs' inputs (and what it rounds before a GEMM) change.

use std::borrow::Cow;

use half::bf16;

use super::cast;
use super::gemm::{MatLayout, matmul};
use super::gemm_bf16::{Bf16Gemm, matmul_bf16};

pub trait GemmOperand: Copy + Send + Sync + 'static {
    /// `dst = scale * a @ b` (or `+=` when `accumulate`), f32 results; `kernel` picks the bf16
    /// GEMM (f32 operands ignore it).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        kernel: Bf16Gemm,
        dst: &mut [f32],
        dl: MatLayout,
        a: &[Self],
        al: MatLayout,
        b: &[Self],
        bl: MatLayout,
        scale: f32,
        accumulate: bool,
        parallel: bool,
    );

    /// f32 values as operands: as they are, or rounded to bf16.
    fn from_f32s(values: &[f32]) -> Cow<'_, [Self]>;

    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
}

impl GemmOperand for f32 {
    fn matmul(
        _kernel: Bf16Gemm,
        dst: &mut [f32],
        dl: MatLayout,
        a: &[f32],
        al: MatLayout,
        b: &[f32],
        bl: MatLayout,
        scale: f32,
        accumulate: bool,
        parallel: bool,
    ) {
        matmul(dst, dl, a, al, b, bl, scale, accumulate, parallel)
    }

    fn from_f32s(values: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(values)
    }

    fn to_f32(self) -> f32 {
        self
    }
}

impl GemmOperand for bf16 {
    fn matmul(
        kernel: Bf16Gemm,
        dst: &mut [f32],
        dl: MatLayout,
        a: &[bf16],
        al: MatLayout,
        b: &[bf16],
        bl: MatLayout,
        scale: f32,
        accumulate: bool,
        parallel: bool,
    ) {
        matmul_bf16(kernel, dst, dl, a, al, b, bl, scale, accumulate, parallel)
    }

    fn from_f32s(values: &[f32]) -> Cow<'_, [bf16]> {
        Cow::Owned(cast::narrowed(values))
    }

    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
