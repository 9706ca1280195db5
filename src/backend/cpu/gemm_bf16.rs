//! Placeholder of the bf16 GEMM (portable path only) until the AVX512_BF16 kernel lands.

use super::gemm::{MatLayout, matmul};
use half::bf16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Gemm {
    Avx512Bf16,
    Portable,
}

impl Bf16Gemm {
    pub fn detect() -> Self {
        if Bf16Gemm::Avx512Bf16.available() {
            Bf16Gemm::Avx512Bf16
        } else {
            Bf16Gemm::Portable
        }
    }

    pub fn available(self) -> bool {
        match self {
            Bf16Gemm::Portable => true,
            Bf16Gemm::Avx512Bf16 => {
                #[cfg(target_arch = "x86_64")]
                {
                    is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512f")
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16(
    _kernel: Bf16Gemm,
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
    let a: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
    let b: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
    matmul(dst, dl, &a, al, &b, bl, scale, accumulate, parallel);
}
