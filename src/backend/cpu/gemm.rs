//! Matrix products through the `gemm` crate, with explicit strides so transposes cost nothing.

use gemm::Parallelism;

/// A strided view of a row-major-or-not matrix: element `(r, c)` is at `r * rs + c * cs`.
#[derive(Debug, Clone, Copy)]
pub struct MatLayout {
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl MatLayout {
    /// A contiguous row-major `rows x cols` matrix.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        MatLayout {
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// A `rows x cols` block of a row-major matrix whose rows are `stride` apart.
    pub fn strided(rows: usize, cols: usize, stride: usize) -> Self {
        MatLayout {
            rows,
            cols,
            rs: stride,
            cs: 1,
        }
    }

    /// The same memory read as the transpose.
    pub fn t(self) -> Self {
        MatLayout {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// One past the largest element index this view touches.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// `dst = scale * a @ b`, or `dst += scale * a @ b` when `accumulate`.
///
/// `parallel` lets the GEMM split across the rayon pool; callers that already run one product per
/// thread pass `false`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
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
    // These are internal invariants (every caller derives layouts from checked shapes), so a
    // violation is a bug in this crate, not bad user input.
    assert_eq!(al.rows, dl.rows, "matmul: a rows vs dst rows");
    assert_eq!(bl.cols, dl.cols, "matmul: b cols vs dst cols");
    assert_eq!(al.cols, bl.rows, "matmul: inner dimensions");
    assert!(dl.extent() <= dst.len(), "matmul: dst view out of bounds");
    assert!(al.extent() <= a.len(), "matmul: a view out of bounds");
    assert!(bl.extent() <= b.len(), "matmul: b view out of bounds");
    if dl.rows == 0 || dl.cols == 0 {
        return;
    }
    if al.cols == 0 {
        if !accumulate {
            for r in 0..dl.rows {
                for c in 0..dl.cols {
                    dst[r * dl.rs + c * dl.cs] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every index the GEMM touches inside the three slices, and
    // `dst` is borrowed mutably so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            dl.rows,
            dl.cols,
            al.cols,
            dst.as_mut_ptr(),
            dl.cs as isize,
            dl.rs as isize,
            accumulate,
            a.as_ptr(),
            al.cs as isize,
            al.rs as isize,
            b.as_ptr(),
            bl.cs as isize,
            bl.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], al: MatLayout, b: &[f32], bl: MatLayout) -> Vec<f32> {
        let mut out = vec![0.0; al.rows * bl.cols];
        for r in 0..al.rows {
            for c in 0..bl.cols {
                let mut s = 0.0f64;
                for k in 0..al.cols {
                    s += a[r * al.rs + k * al.cs] as f64 * b[k * bl.rs + c * bl.cs] as f64;
                }
                out[r * bl.cols + c] = s as f32;
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_products_match_a_naive_loop() {
        let a: Vec<f32> = (0..7 * 5)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let b: Vec<f32> = (0..5 * 9)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0)
            .collect();
        let al = MatLayout::row_major(7, 5);
        let bl = MatLayout::row_major(5, 9);
        let mut dst = vec![f32::NAN; 7 * 9];
        matmul(
            &mut dst,
            MatLayout::row_major(7, 9),
            &a,
            al,
            &b,
            bl,
            1.0,
            false,
            true,
        );
        let expect = naive(&a, al, &b, bl);
        for (x, y) in dst.iter().zip(&expect) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        // (b^T a^T)^T == a b, computed through transposed views.
        let mut dst_t = vec![f32::NAN; 9 * 7];
        matmul(
            &mut dst_t,
            MatLayout::row_major(9, 7),
            &b,
            bl.t(),
            &a,
            al.t(),
            1.0,
            false,
            false,
        );
        for r in 0..7 {
            for c in 0..9 {
                assert!((dst_t[c * 7 + r] - expect[r * 9 + c]).abs() < 1e-4);
            }
        }
    }
}
