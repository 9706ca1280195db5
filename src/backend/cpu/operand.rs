//! The element type of GEMM operands: f32, or bf16 in mixed precision. Products accumulate in f32
//! either way, so an op written over `T: GemmOperand` is the same code in both precisions; only
//! its GEMMs' inputs (and what it rounds before a GEMM) change.

use std::cell::RefCell;

use half::bf16;

use super::cast;
use super::gemm::{MatLayout, matmul};
use super::gemm_bf16::{Bf16Gemm, matmul_bf16};
use super::simd::Level;

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

    /// Runs `f` on f32 values as operands, on the calling thread: `values` themselves for f32, or
    /// rounded into a buffer this thread keeps for bf16 (no allocation once it has grown; a fresh
    /// one if a caller up the stack is using it).
    fn with_operands<R>(values: &[f32], f: impl FnOnce(&[Self]) -> R) -> R;

    /// The value as f32 (exact).
    fn to_f32(self) -> f32;

    /// `dst[i] = src[i]`, rounded to bf16 for bf16, on the calling thread.
    fn store_f32s(dst: &mut [Self], src: &[f32]);
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

    fn with_operands<R>(values: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
        f(values)
    }

    fn to_f32(self) -> f32 {
        self
    }

    fn store_f32s(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
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

    fn with_operands<R>(values: &[f32], f: impl FnOnce(&[bf16]) -> R) -> R {
        thread_local! {
            static OPERANDS: RefCell<Vec<bf16>> = const { RefCell::new(Vec::new()) };
        }
        let round = |buffer: &mut Vec<bf16>| {
            buffer.resize(values.len().max(buffer.len()), bf16::ZERO);
            let rounded = &mut buffer[..values.len()];
            cast::narrow_slice(Level::best(), rounded, values);
        };
        OPERANDS.with(|kept| match kept.try_borrow_mut() {
            Ok(mut buffer) => {
                round(&mut buffer);
                f(&buffer[..values.len()])
            }
            Err(_) => {
                let mut buffer = Vec::new();
                round(&mut buffer);
                f(&buffer)
            }
        })
    }

    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }

    fn store_f32s(dst: &mut [bf16], src: &[f32]) {
        cast::narrow_slice(Level::best(), dst, src);
    }
}
