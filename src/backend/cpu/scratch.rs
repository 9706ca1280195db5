//! Scratch buffers that a rayon worker keeps across its tasks.
//!
//! A fresh large `Vec` costs a page fault per 4 KiB on first touch (or a memset, when the
//! allocator hands back recycled memory), and a bf16 op that computed its whole output in f32
//! before rounding it would also stream that f32 copy through memory once more. The CPU kernels
//! instead compute a cache-sized block at a time into a buffer the worker reuses
//! (`par_iter().for_each_init(Vec::new, ..)` gives each worker its own).

/// The first `len` elements of `buffer`, grown if needed. The contents are stale: the caller
/// overwrites them (a GEMM without accumulation, a fill) before reading.
pub fn scratch(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}
