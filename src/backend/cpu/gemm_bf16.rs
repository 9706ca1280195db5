//! Matrix products with bf16 operands and f32 accumulation, over the same strided views as
//! [`super::gemm::matmul`].
//!
//! Two kernels compute the same thing:
//! - [`Bf16Gemm::Portable`] widens the operands to f32 (exact: every bf16 is an f32, and a product
//!   of two bf16 fits in f32's 24-bit significand) and runs the f32 GEMM. It runs everywhere and is
//!   the reference for the fast kernel.
//! - [`Bf16Gemm::Avx512Bf16`] packs the operands into bf16 panels and runs a register-blocked
//!   microkernel on `vdpbf16ps`, which multiplies two bf16 pairs per 32-bit lane and adds both
//!   products into an f32 lane: 32 multiply-adds (64 FLOP) per instruction, twice the f32 FMA rate,
//!   from half the operand bytes.

use half::bf16;

use super::gemm::{MatLayout, matmul};

/// Which bf16 GEMM kernel runs: chosen once by the backend (detect), or forced by tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Gemm {
    /// Packed panels and a `vdpbf16ps` microkernel (x86-64 with AVX512_BF16 and AVX512F).
    Avx512Bf16,
    /// Widen to f32 and run the f32 GEMM.
    Portable,
}

impl Bf16Gemm {
    /// The best kernel this CPU runs (Avx512Bf16 when the CPU has avx512bf16 + avx512f, else
    /// Portable).
    pub fn detect() -> Self {
        if Bf16Gemm::Avx512Bf16.available() {
            Bf16Gemm::Avx512Bf16
        } else {
            Bf16Gemm::Portable
        }
    }

    /// Whether this CPU can run `self` (Portable: always).
    pub fn available(self) -> bool {
        match self {
            Bf16Gemm::Portable => true,
            Bf16Gemm::Avx512Bf16 => avx512_available(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_available() -> bool {
    false
}

/// `dst = scale * a @ b`, or `dst += scale * a @ b` when `accumulate`; `a` and `b` bf16, products
/// and sums in f32.
///
/// Views, asserts and `parallel` as in [`matmul`]. `dst` is never read when `!accumulate`.
/// Asking for [`Bf16Gemm::Avx512Bf16`] on a CPU without it panics (an internal invariant: the
/// backend only passes a kernel that is [`Bf16Gemm::available`]), so the instructions never run
/// where they would fault, and a wrong kernel choice is loud rather than silently slow.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16(
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
    // Internal invariants, as in `matmul`: every caller derives layouts from checked shapes.
    assert_eq!(al.rows, dl.rows, "matmul_bf16: a rows vs dst rows");
    assert_eq!(bl.cols, dl.cols, "matmul_bf16: b cols vs dst cols");
    assert_eq!(al.cols, bl.rows, "matmul_bf16: inner dimensions");
    assert!(
        extent(&dl) <= dst.len(),
        "matmul_bf16: dst view out of bounds"
    );
    assert!(extent(&al) <= a.len(), "matmul_bf16: a view out of bounds");
    assert!(extent(&bl) <= b.len(), "matmul_bf16: b view out of bounds");
    match kernel {
        Bf16Gemm::Portable => portable(dst, dl, a, al, b, bl, scale, accumulate, parallel),
        Bf16Gemm::Avx512Bf16 => {
            assert!(
                kernel.available(),
                "matmul_bf16: the Avx512Bf16 kernel was asked for on a CPU without avx512bf16"
            );
            #[cfg(target_arch = "x86_64")]
            avx512::matmul(dst, dl, a, al, b, bl, scale, accumulate, parallel);
        }
    }
}

/// One past the largest element index a view touches (the same rule as `MatLayout::extent`).
fn extent(l: &MatLayout) -> usize {
    if l.rows == 0 || l.cols == 0 {
        0
    } else {
        (l.rows - 1) * l.rs + (l.cols - 1) * l.cs + 1
    }
}

/// Widens a view into a contiguous row-major f32 matrix.
fn widen(x: &[bf16], l: MatLayout) -> Vec<f32> {
    let mut out = Vec::with_capacity(l.rows * l.cols);
    for r in 0..l.rows {
        out.extend((0..l.cols).map(|c| x[r * l.rs + c * l.cs].to_f32()));
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn portable(
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
    let aw = widen(a, al);
    let bw = widen(b, bl);
    matmul(
        dst,
        dl,
        &aw,
        MatLayout::row_major(al.rows, al.cols),
        &bw,
        MatLayout::row_major(bl.rows, bl.cols),
        scale,
        accumulate,
        parallel,
    );
}

/// Rows of the microkernel's output tile.
pub const MR: usize = 12;
/// Columns of the microkernel's output tile (two zmm registers of f32).
pub const NR: usize = 32;
/// Depth of one packed block (even, so k pairs never straddle blocks).
pub const KC: usize = 256;
/// Most rows of A one task packs at a time.
pub const MC: usize = 384;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The packed-panel kernel.
    //!
    //! Blocking (BLIS order, loops from outside in):
    //! 1. B is packed once, whole, into `KC x NR` micro-panels of bf16 pairs (all tasks share it).
    //! 2. The output is split into tasks of `mc <= MC` rows (and, when there are fewer row blocks
    //!    than threads, into column ranges too); rayon runs the tasks.
    //! 3. Per task and per `KC` block of k, the task packs its `mc x KC` block of A into `MR`-row
    //!    micro-panels: 384 x 256 bf16 = 192 KiB, which stays in the 1 MiB L2 while
    //! 4. the task walks the B micro-panels of its columns (`KC x NR` = 256 x 32 bf16 = 16 KiB, half
    //!    the 32 KiB L1d) and, for each, every A micro-panel (`MR x KC` = 6 KiB, streamed from L2),
    //!    running the microkernel on one `MR x NR` tile.
    //!
    //! Register budget (32 zmm): the tile's 12 x 32 f32 sums are 24 accumulators; the two B
    //! vectors of a k pair take 2 more; the A pair is broadcast from memory into the instruction
    //! (or one scratch register), so ~27 registers are live and nothing spills.
    //!
    //! Memory traffic per k pair: 2 B loads (128 B from L1) and 12 4-byte A broadcasts (from L2,
    //! prefetched in order) feed 24 `vdpbf16ps` (768 multiply-adds), i.e. 14 loads for 24 compute
    //! instructions, under the two loads per cycle the core sustains. Per tile and `KC` block the
    //! f32 output tile is read (after the first block, or when accumulating) and written once:
    //! 2 x 1.5 KiB against 256/2 x 24 = 3072 instructions of compute. B streams from L3/memory
    //! once per row task: `mc` multiply-adds per B element loaded, A once per column range.

    use std::arch::x86_64::*;

    use half::bf16;
    use rayon::prelude::*;

    use super::{KC, MC, MR, MatLayout, NR};

    /// u32 words of one k block of a B micro-panel (and of an A micro-panel, per MR).
    const KP: usize = KC / 2;

    /// A 64-byte line of packed pairs, so the B micro-panel rows (NR pairs = 128 B) load aligned.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    struct Line([u32; 16]);

    /// A buffer of packed bf16 pairs, 64-byte aligned.
    struct Packed {
        lines: Vec<Line>,
        len: usize,
    }

    impl Packed {
        fn new(len: usize) -> Self {
            Packed {
                lines: vec![Line([0; 16]); len.div_ceil(16)],
                len,
            }
        }

        fn words(&mut self) -> &mut [u32] {
            // SAFETY: `Line` is `repr(C)` over 16 u32 with no padding, so the lines are
            // `16 * lines.len() >= len` contiguous initialised u32, borrowed mutably with `self`.
            unsafe {
                std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u32>(), self.len)
            }
        }

        fn as_words(&self) -> &[u32] {
            // SAFETY: as in `words`, borrowed shared with `self`.
            unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u32>(), self.len) }
        }
    }

    /// Packs one micro-panel of width `W` (MR rows of A, or NR columns of B) over `k_len` steps of
    /// k: word `p * W + w` holds element `(w, 2p)` in its low half and `(w, 2p + 1)` in its high
    /// half (the lane order `vdpbf16ps` multiplies in), element `(w, k)` being
    /// `src[base + w * s_w + k * s_k]`. Widths past `w_len` and the partner of an odd last k are
    /// zero, so padded lanes add nothing.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn pack_panel<const W: usize>(
        out: &mut [u32],
        src: &[u16],
        base: usize,
        w_len: usize,
        k_len: usize,
        s_w: usize,
        s_k: usize,
    ) {
        let pairs = k_len / 2;
        let kp = k_len.div_ceil(2);
        let out = &mut out[..kp * W];
        // Lanes past `w_len` are zeroed here; an odd last k is written below as a whole word
        // with a zero high half, so only the width needs clearing.
        if w_len < W {
            out.fill(0);
        }
        if s_w == 1 {
            // The panel's width is contiguous (B row-major, or A read through a transpose): each
            // pair of k rows interleaves two contiguous runs, which vectorises.
            for p in 0..pairs {
                let r0 = &src[base + 2 * p * s_k..][..w_len];
                let r1 = &src[base + (2 * p + 1) * s_k..][..w_len];
                let o = &mut out[p * W..][..w_len];
                for ((o, &x0), &x1) in o.iter_mut().zip(r0).zip(r1) {
                    *o = u32::from(x0) | (u32::from(x1) << 16);
                }
            }
            if k_len % 2 == 1 {
                let r0 = &src[base + (k_len - 1) * s_k..][..w_len];
                for (o, &x0) in out[pairs * W..][..w_len].iter_mut().zip(r0) {
                    *o = u32::from(x0);
                }
            }
        } else if s_k == 1 {
            // k contiguous (A row-major, or B = W^T read from a row-major W): each k pair is one
            // 4-byte word of the source, copied to its lane.
            for w in 0..w_len {
                let row = &src[base + w * s_w..][..k_len];
                for (p, pair) in row.chunks_exact(2).enumerate() {
                    out[p * W + w] = u32::from(pair[0]) | (u32::from(pair[1]) << 16);
                }
                if k_len % 2 == 1 {
                    out[pairs * W + w] = u32::from(row[k_len - 1]);
                }
            }
        } else {
            // Neither stride is 1: element by element.
            for w in 0..w_len {
                let row = base + w * s_w;
                for p in 0..pairs {
                    let k = 2 * p;
                    out[p * W + w] =
                        u32::from(src[row + k * s_k]) | (u32::from(src[row + (k + 1) * s_k]) << 16);
                }
                if k_len % 2 == 1 {
                    out[pairs * W + w] = u32::from(src[row + (k_len - 1) * s_k]);
                }
            }
        }
    }

    /// [`pack_panel`] compiled with AVX-512, so the interleaving loop uses zmm registers, and
    /// with k contiguous (`s_k == 1`) the panel's first 16-pair runs transposed in registers
    /// ([`pack_k_contiguous`]).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn pack_panel_avx512<const W: usize>(
        out: &mut [u32],
        src: &[u16],
        base: usize,
        w_len: usize,
        k_len: usize,
        s_w: usize,
        s_k: usize,
    ) {
        if s_k == 1 && s_w != 1 && k_len >= 32 {
            let pairs = pack_k_contiguous::<W>(out, src, base, w_len, k_len, s_w);
            // The rest (fewer than 16 pairs, and an odd last k) the plain way, shifted to start
            // at the first pair not yet packed.
            let rest = &mut out[pairs * W..];
            pack_panel::<W>(
                rest,
                src,
                base + 2 * pairs,
                w_len,
                k_len - 2 * pairs,
                s_w,
                s_k,
            );
        } else {
            pack_panel::<W>(out, src, base, w_len, k_len, s_w, s_k);
        }
    }

    /// Packs the first `16 * floor(k_len / 32)` k pairs of a panel whose k is contiguous (A
    /// row-major, or B = W^T of a row-major weight) and returns how many pairs that is.
    ///
    /// Element pair p of panel row w is one u32 at `src[base + w * s_w + 2p..]`; the panel wants
    /// it at `out[p * W + w]`, so packing is a transpose of u32 words. Scalar code moves one word
    /// per load and store; here each group of 16 rows loads 16 words (64 bytes) per row and
    /// transposes the 16 x 16 block in registers (32-bit, then 64-bit unpacks inside 128-bit
    /// lanes, then two rounds of 128-bit lane shuffles: 64 shuffles for 256 words), storing each
    /// pair's 16 rows as one vector. Rows past `w_len` read as zero, as in [`pack_panel`].
    #[target_feature(enable = "avx512f,avx512bw")]
    fn pack_k_contiguous<const W: usize>(
        out: &mut [u32],
        src: &[u16],
        base: usize,
        w_len: usize,
        k_len: usize,
        s_w: usize,
    ) -> usize {
        let chunks = k_len / 32;
        assert!(
            out.len() >= chunks * 16 * W,
            "pack_k_contiguous: output too short"
        );
        if w_len > 0 {
            assert!(
                base + (w_len - 1) * s_w + chunks * 32 <= src.len(),
                "pack_k_contiguous: source too short"
            );
        }
        for chunk in 0..chunks {
            let p0 = chunk * 16;
            for w0 in (0..W).step_by(16) {
                let lanes = 16.min(W - w0);
                // Row i of the block: 16 pairs of panel row w0 + i, or zeros past the panel.
                let rows: [__m512i; 16] = std::array::from_fn(|i| {
                    let w = w0 + i;
                    if i < lanes && w < w_len {
                        // SAFETY: asserted above: the row's 32 u16 from pair p0 lie in `src`.
                        unsafe {
                            _mm512_loadu_si512(src.as_ptr().add(base + w * s_w + 2 * p0).cast())
                        }
                    } else {
                        _mm512_setzero_si512()
                    }
                });
                let cols = transpose_16x16(rows);
                let mask: __mmask16 = if lanes == 16 {
                    0xffff
                } else {
                    (1 << lanes) - 1
                };
                for (j, col) in cols.iter().enumerate() {
                    // SAFETY: (p0 + j) * W + w0 + lanes <= chunks * 16 * W <= out.len().
                    unsafe {
                        _mm512_mask_storeu_epi32(
                            out.as_mut_ptr().add((p0 + j) * W + w0).cast(),
                            mask,
                            *col,
                        )
                    };
                }
            }
        }
        chunks * 16
    }

    /// The transpose of a 16 x 16 matrix of u32 held as 16 row vectors: `out[j][i] = rows[i][j]`.
    #[inline(always)]
    pub(super) fn transpose_16x16(r: [__m512i; 16]) -> [__m512i; 16] {
        // SAFETY (every intrinsic below): register-only AVX-512F operations; the callers are
        // compiled with avx512f enabled.
        unsafe {
            // 1. Interleave 32-bit words of row pairs within each 128-bit lane L:
            //    a[2i] = [r2i[4L], r2i+1[4L], r2i[4L+1], r2i+1[4L+1]], a[2i+1] the same for 4L+2, 4L+3.
            let a: [__m512i; 16] = std::array::from_fn(|x| {
                let (i, hi) = (x / 2, x % 2 == 1);
                if hi {
                    _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1])
                } else {
                    _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1])
                }
            });
            // 2. Interleave 64-bit halves: b[4g + c], lane L = rows 4g..4g+3 at column 4L + c.
            let b: [__m512i; 16] = std::array::from_fn(|x| {
                let (g, c) = (x / 4, x % 4);
                let (lo, hi) = (a[4 * g + c / 2], a[4 * g + 2 + c / 2]);
                if c % 2 == 0 {
                    _mm512_unpacklo_epi64(lo, hi)
                } else {
                    _mm512_unpackhi_epi64(lo, hi)
                }
            });
            // 3. Column 4L + c gathers lane L of b[c], b[4 + c], b[8 + c], b[12 + c]: first pair
            //    up lanes (0, 1) and (2, 3) of b[c] with b[4 + c] (d) and of b[8 + c] with
            //    b[12 + c] (e), then pick lane L of each.
            let mut out = [_mm512_setzero_si512(); 16];
            for c in 0..4 {
                let d_lo = _mm512_shuffle_i32x4::<0x44>(b[c], b[4 + c]);
                let d_hi = _mm512_shuffle_i32x4::<0xee>(b[c], b[4 + c]);
                let e_lo = _mm512_shuffle_i32x4::<0x44>(b[8 + c], b[12 + c]);
                let e_hi = _mm512_shuffle_i32x4::<0xee>(b[8 + c], b[12 + c]);
                out[c] = _mm512_shuffle_i32x4::<0x88>(d_lo, e_lo);
                out[4 + c] = _mm512_shuffle_i32x4::<0xdd>(d_lo, e_lo);
                out[8 + c] = _mm512_shuffle_i32x4::<0x88>(d_hi, e_hi);
                out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(d_hi, e_hi);
            }
            out
        }
    }

    /// Where one tile's sums go: `rows x cols` of dst from `ptr`, scaled, added or stored.
    #[derive(Clone, Copy)]
    struct TileOut {
        ptr: *mut f32,
        rs: usize,
        cs: usize,
        rows: usize,
        cols: usize,
        scale: f32,
        add: bool,
    }

    /// The microkernel: sums `kp` k pairs of one packed A micro-panel (`a`, `kp * MR` words)
    /// against one packed B micro-panel (`b`, `kp * NR` words, 64-byte aligned) into an `MR x NR`
    /// tile in registers, then writes `out`.
    ///
    /// # Safety
    /// The CPU has avx512f and avx512bf16; `a` and `b` hold `kp * MR` and `kp * NR` words, `b`
    /// 64-byte aligned; every `out.ptr + r * rs + c * cs` for `r < rows <= MR`, `c < cols <= NR`
    /// is a valid f32 that nothing else reads or writes meanwhile.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile(kp: usize, a: *const u32, b: *const u32, out: TileOut) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kp {
            // SAFETY: p < kp, so both B loads and the MR A words lie inside the panels; `b` is
            // 64-byte aligned and each k pair's NR words are 128 bytes.
            let (b0, b1, ap) = unsafe {
                let bp = b.add(p * NR);
                (
                    m512bh(_mm512_load_si512(bp.cast())),
                    m512bh(_mm512_load_si512(bp.add(16).cast())),
                    a.add(p * MR),
                )
            };
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i < MR words from `ap`, inside the A panel.
                let ai = m512bh(_mm512_set1_epi32(unsafe { *ap.add(i) } as i32));
                // The broadcast goes second: that operand of `vdpbf16ps` may be a memory
                // broadcast (`{1to16}`), so the A word feeds the instruction without a register.
                acc[0] = _mm512_dpbf16_ps(acc[0], b0, ai);
                acc[1] = _mm512_dpbf16_ps(acc[1], b1, ai);
            }
        }
        let s = _mm512_set1_ps(out.scale);
        if out.cs == 1 {
            // Contiguous rows: masked vector stores cover the edge columns without touching the
            // elements past `cols` (masked-off lanes neither load nor fault).
            let full = |n: usize| -> u16 {
                if n >= 16 {
                    u16::MAX
                } else {
                    ((1u32 << n) - 1) as u16
                }
            };
            let masks = [full(out.cols), full(out.cols.saturating_sub(16))];
            for (i, acc) in acc.iter().enumerate().take(out.rows) {
                let row = out.ptr.wrapping_add(i * out.rs);
                for h in 0..2 {
                    let p = row.wrapping_add(16 * h);
                    let v = if out.add {
                        // SAFETY: the mask selects only columns < cols of a row < rows.
                        let old = unsafe { _mm512_maskz_loadu_ps(masks[h], p) };
                        _mm512_fmadd_ps(acc[h], s, old)
                    } else {
                        _mm512_mul_ps(acc[h], s)
                    };
                    // SAFETY: as above.
                    unsafe { _mm512_mask_storeu_ps(p, masks[h], v) };
                }
            }
        } else {
            for (i, acc) in acc.iter().enumerate().take(out.rows) {
                let mut sums = [0f32; NR];
                // SAFETY: `sums` holds NR = 2 x 16 f32.
                unsafe {
                    _mm512_storeu_ps(sums.as_mut_ptr(), acc[0]);
                    _mm512_storeu_ps(sums.as_mut_ptr().add(16), acc[1]);
                }
                for (c, &v) in sums.iter().enumerate().take(out.cols) {
                    // SAFETY: r < rows, c < cols: inside the tile the caller vouches for.
                    unsafe {
                        let d = out.ptr.add(i * out.rs + c * out.cs);
                        *d = if out.add {
                            *d + out.scale * v
                        } else {
                            out.scale * v
                        };
                    }
                }
            }
        }
    }

    /// Reads 32 bf16 held in an integer vector as the bf16 vector type.
    #[inline(always)]
    fn m512bh(x: __m512i) -> __m512bh {
        // SAFETY: both are 64-byte plain SIMD values; every bit pattern is a valid bf16 vector.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
    }

    /// dst shared by the tasks: each writes a disjoint set of elements.
    #[derive(Clone, Copy)]
    struct DstPtr(*mut f32);
    // SAFETY: tasks write disjoint rows (or columns) of an injective view; see `matmul`.
    unsafe impl Send for DstPtr {}
    // SAFETY: as above.
    unsafe impl Sync for DstPtr {}

    impl DstPtr {
        /// The pointer, read through a method so closures capture the whole (Sync) wrapper.
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    /// Whether no two elements of the view share an address, so tasks owning disjoint rows or
    /// columns never write the same float.
    fn injective(l: &MatLayout) -> bool {
        if l.rows <= 1 || l.cols <= 1 {
            (l.rows <= 1 || l.rs >= 1) && (l.cols <= 1 || l.cs >= 1)
        } else {
            (l.cs >= 1 && l.rs >= l.cols * l.cs) || (l.rs >= 1 && l.cs >= l.rows * l.rs)
        }
    }

    /// The packed kernel; the caller has checked the views against the slices and the CPU.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul(
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
        let (m, n, k) = (dl.rows, dl.cols, al.cols);
        if m == 0 || n == 0 {
            return;
        }
        assert!(
            injective(&dl),
            "matmul_bf16: dst view maps two elements to one address"
        );
        if k == 0 {
            if !accumulate {
                for r in 0..m {
                    for c in 0..n {
                        dst[r * dl.rs + c * dl.cs] = 0.0;
                    }
                }
            }
            return;
        }
        let a: &[u16] = bytemuck::cast_slice(a);
        let b: &[u16] = bytemuck::cast_slice(b);
        let kblocks = k.div_ceil(KC);
        let npanels = n.div_ceil(NR);
        // Words of one packed B k block: all but the last are KC deep.
        let kb_words = KP * NR * npanels;
        let kb_len = |kb: usize| KC.min(k - kb * KC);

        // 1. Pack B whole: block kb, panel jp at kb * kb_words + jp * kp(kb) * NR.
        let mut bpack = Packed::new((k.div_ceil(2) + kblocks) * NR * npanels);
        {
            let words = bpack.words();
            let words = &mut words
                [..(kblocks - 1) * kb_words + kb_len(kblocks - 1).div_ceil(2) * NR * npanels];
            let pack_block = |kb: usize, block: &mut [u32]| {
                let kl = kb_len(kb);
                let kp = kl.div_ceil(2);
                let pack = |(jp, panel): (usize, &mut [u32])| {
                    let c0 = jp * NR;
                    // SAFETY: the caller checked the CPU has avx512f/avx512bw (it has avx512bf16).
                    unsafe {
                        pack_panel_avx512::<NR>(
                            panel,
                            b,
                            kb * KC * bl.rs + c0 * bl.cs,
                            NR.min(n - c0),
                            kl,
                            bl.cs,
                            bl.rs,
                        )
                    };
                };
                // Panels in parallel too: with k <= KC there is a single block, and a wide B
                // (the 5000-column head) would otherwise pack on one thread while the rest wait.
                if parallel {
                    block.par_chunks_mut(kp * NR).enumerate().for_each(pack);
                } else {
                    block.chunks_mut(kp * NR).enumerate().for_each(pack);
                }
            };
            if parallel {
                words
                    .par_chunks_mut(kb_words)
                    .enumerate()
                    .for_each(|(kb, block)| pack_block(kb, block));
            } else {
                words
                    .chunks_mut(kb_words)
                    .enumerate()
                    .for_each(|(kb, block)| pack_block(kb, block));
            }
        }
        let bpack = bpack.as_words();

        // 2. Tasks: row blocks of at most MC rows (a multiple of MR); with fewer row blocks than
        //    threads, split the columns too, so small-m products still use the pool.
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        let mpanels = m.div_ceil(MR);
        let mut mblocks = m.div_ceil(MC);
        if mblocks < mpanels {
            // Round up to a multiple of the pool so the last wave of tasks is full.
            mblocks = mblocks.div_ceil(threads) * threads;
            mblocks = mblocks.min(mpanels);
        }
        let mc = m.div_ceil(mblocks).div_ceil(MR) * MR;
        let mblocks = m.div_ceil(mc);
        let nblocks = if mblocks < threads {
            threads.div_ceil(mblocks).min(npanels)
        } else {
            1
        };
        let np_per = npanels.div_ceil(nblocks);
        let nblocks = npanels.div_ceil(np_per);
        let out = DstPtr(dst.as_mut_ptr());

        let task = |t: usize| {
            let (mb, nb) = (t / nblocks, t % nblocks);
            let r0 = mb * mc;
            let rows = mc.min(m - r0);
            let ip_count = rows.div_ceil(MR);
            let (jp0, jp1) = (nb * np_per, ((nb + 1) * np_per).min(npanels));
            let mut apack = Packed::new(ip_count * KP * MR);
            for kb in 0..kblocks {
                let kl = kb_len(kb);
                let kp = kl.div_ceil(2);
                // 3. Pack this task's rows of A for this k block.
                let awords = apack.words();
                for ip in 0..ip_count {
                    let rr = r0 + ip * MR;
                    // SAFETY: the caller checked the CPU has avx512f/avx512bw.
                    unsafe {
                        pack_panel_avx512::<MR>(
                            &mut awords[ip * kp * MR..],
                            a,
                            rr * al.rs + kb * KC * al.cs,
                            MR.min(m - rr),
                            kl,
                            al.rs,
                            al.cs,
                        )
                    };
                }
                let awords = apack.as_words();
                let add = accumulate || kb > 0;
                // 4. B micro-panel outer (it stays in L1), A micro-panels inner (from L2).
                for jp in jp0..jp1 {
                    let c0 = jp * NR;
                    let bp = &bpack[kb * kb_words + jp * kp * NR..][..kp * NR];
                    for ip in 0..ip_count {
                        let rr = r0 + ip * MR;
                        let ap = &awords[ip * kp * MR..][..kp * MR];
                        let tile_out = TileOut {
                            ptr: out.get().wrapping_add(rr * dl.rs + c0 * dl.cs),
                            rs: dl.rs,
                            cs: dl.cs,
                            rows: MR.min(m - rr),
                            cols: NR.min(n - c0),
                            scale,
                            add,
                        };
                        // SAFETY: the caller checked the CPU. The panels hold kp * MR and kp * NR
                        // words (sliced above), and B panels start at multiples of kp * NR words
                        // = 128 B from the 64-byte-aligned buffer. The tile's elements lie inside
                        // dst (the view fits in dst, checked by the caller), and this task alone
                        // writes rows r0..r0 + rows, columns of panels jp0..jp1, of an injective
                        // view (asserted above), so no other task touches them.
                        unsafe { tile(kp, ap.as_ptr(), bp.as_ptr(), tile_out) };
                    }
                }
            }
        };
        let tasks = mblocks * nblocks;
        if parallel && tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The ways a test lays out one operand in memory.
    #[derive(Debug, Clone, Copy)]
    enum View {
        RowMajor,
        Transposed,
        /// Rows 3 elements further apart than the width: gaps the product must not touch.
        Strided,
        /// A transposed view of a strided block: neither stride is 1.
        StridedTransposed,
    }

    const VIEWS: [View; 4] = [
        View::RowMajor,
        View::Transposed,
        View::Strided,
        View::StridedTransposed,
    ];

    /// A `rows x cols` view of this kind and the length of the buffer it needs.
    fn layout(view: View, rows: usize, cols: usize) -> (MatLayout, usize) {
        let l = match view {
            View::RowMajor => MatLayout::row_major(rows, cols),
            View::Transposed => MatLayout::row_major(cols, rows).t(),
            View::Strided => MatLayout::strided(rows, cols, cols + 3),
            View::StridedTransposed => MatLayout::strided(cols, rows, rows + 5).t(),
        };
        (l, extent(&l))
    }

    fn random_bf16(rng: &mut ChaCha8Rng, len: usize) -> Vec<bf16> {
        (0..len)
            .map(|_| bf16::from_f32(rng.random_range(-1.0..1.0)))
            .collect()
    }

    /// Runs one product and checks every dst element against an f64 sum of the same bf16
    /// products, and that the elements outside the dst view are untouched.
    ///
    /// Tolerance: each exact product passes through at most k - 1 f32 additions, one scale
    /// multiply and one add into dst per k block; with u = 2^-24 and blocks at least 2 deep
    /// (so at most k/2 + 1 of them), the rounding error is bounded by
    /// 2 (k + 4) u (|scale| sum_k |a b| + |old dst|) (Higham's gamma bound, first order).
    #[allow(clippy::too_many_arguments)]
    fn check(
        kernel: Bf16Gemm,
        rng: &mut ChaCha8Rng,
        (m, n, k): (usize, usize, usize),
        (av, bv, dv): (View, View, View),
        accumulate: bool,
        parallel: bool,
    ) {
        let (al, alen) = layout(av, m, k);
        let (bl, blen) = layout(bv, k, n);
        let (dl, dlen) = layout(dv, m, n);
        let a = random_bf16(rng, alen);
        let b = random_bf16(rng, blen);
        let scale: f32 = rng.random_range(0.25..2.0) * if rng.random() { -1.0 } else { 1.0 };
        // Not accumulating, dst starts as NaN: any element read before written shows up.
        let before: Vec<f32> = if accumulate {
            (0..dlen).map(|_| rng.random_range(-4.0..4.0)).collect()
        } else {
            vec![f32::NAN; dlen]
        };
        let mut dst = before.clone();
        matmul_bf16(
            kernel, &mut dst, dl, &a, al, &b, bl, scale, accumulate, parallel,
        );

        let u = f64::from(f32::EPSILON) / 2.0;
        let gamma = 2.0 * (k as f64 + 4.0) * u;
        let mut in_view = vec![false; dlen];
        for r in 0..m {
            for c in 0..n {
                let (mut sum, mut mag) = (0.0f64, 0.0f64);
                for i in 0..k {
                    let p = f64::from(a[r * al.rs + i * al.cs].to_f32())
                        * f64::from(b[i * bl.rs + c * bl.cs].to_f32());
                    sum += p;
                    mag += p.abs();
                }
                let at = r * dl.rs + c * dl.cs;
                in_view[at] = true;
                let old = if accumulate {
                    f64::from(before[at])
                } else {
                    0.0
                };
                let want = old + f64::from(scale) * sum;
                let tol = gamma * (f64::from(scale.abs()) * mag + old.abs());
                let got = f64::from(dst[at]);
                assert!(
                    (got - want).abs() <= tol,
                    "{kernel:?} {m}x{n}x{k} {av:?}/{bv:?}/{dv:?} acc={accumulate} \
                     par={parallel}: dst[{r},{c}] = {got}, want {want} (tol {tol})"
                );
            }
        }
        for (i, (x, y)) in dst.iter().zip(&before).enumerate() {
            if !in_view[i] {
                assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "{kernel:?} {m}x{n}x{k}: wrote outside the dst view at {i}"
                );
            }
        }
    }

    /// Shapes with every edge case: m and n not multiples of MR and NR, odd k, k exactly KC, k
    /// over several KC blocks and odd, a single row (columns split across threads), empty k.
    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (7, 5, 9),
        (33, 17, 65),
        (130, 257, 70),
        (13, 33, 2 * KC + 19),
        (25, 40, KC),
        (37, 70, KC + 1),
        (1, 100, 3),
        (3, 4, 0),
    ];

    fn check_all(kernel: Bf16Gemm) {
        let mut rng = ChaCha8Rng::seed_from_u64(0xbf16);
        let mut combo = 0usize;
        for shape in SHAPES {
            for av in VIEWS {
                for bv in VIEWS {
                    for dv in VIEWS {
                        // Vary accumulate and parallel across the view combinations so every
                        // shape meets both settings of each.
                        let accumulate = combo.is_multiple_of(2);
                        let parallel = !combo.is_multiple_of(3);
                        check(kernel, &mut rng, shape, (av, bv, dv), accumulate, parallel);
                        combo += 1;
                    }
                }
            }
        }
    }

    #[test]
    fn avx512_kernel_matches_an_f64_reference_over_odd_shapes_and_views() {
        if !Bf16Gemm::Avx512Bf16.available() {
            println!("skipped: this CPU lacks avx512bf16");
            return;
        }
        check_all(Bf16Gemm::Avx512Bf16);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_register_transpose_transposes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("skipped: this CPU lacks avx512f");
            return;
        }
        use std::arch::x86_64::*;
        let m: Vec<u32> = (0..256u32).map(|x| x.wrapping_mul(2_654_435_761)).collect();
        #[target_feature(enable = "avx512f")]
        fn run(m: &[u32]) -> Vec<u32> {
            // SAFETY: 16 rows of 16 u32 inside `m`; the CPU has avx512f (checked by the caller).
            let rows: [__m512i; 16] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_si512(m[16 * i..].as_ptr().cast()) });
            let cols = avx512::transpose_16x16(rows);
            let mut out = vec![0u32; 256];
            for (j, c) in cols.iter().enumerate() {
                // SAFETY: 16 u32 inside `out`.
                unsafe { _mm512_storeu_si512(out[16 * j..].as_mut_ptr().cast(), *c) };
            }
            out
        }
        // SAFETY: avx512f was detected above.
        let t = unsafe { run(&m) };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(t[16 * j + i], m[16 * i + j], "element ({i}, {j})");
            }
        }
    }

    #[test]
    fn portable_kernel_matches_an_f64_reference_over_odd_shapes_and_views() {
        check_all(Bf16Gemm::Portable);
    }

    #[test]
    fn detect_picks_the_avx512_kernel_exactly_when_it_is_available() {
        assert!(Bf16Gemm::Portable.available());
        let detected = Bf16Gemm::detect();
        assert!(detected.available());
        assert_eq!(
            detected == Bf16Gemm::Avx512Bf16,
            Bf16Gemm::Avx512Bf16.available()
        );
    }
}
