//! Deterministic parallel reductions over rows.
//!
//! rayon's `fold`/`sum` split work adaptively, so the order in which partial sums are combined
//! (and therefore the f32 rounding) changes from run to run. Training must be bit-reproducible
//! (a resumed run equals an uninterrupted one), so reductions here split rows into fixed blocks,
//! reduce each block in parallel, and combine the block results in order.

use rayon::prelude::*;

/// Rows per block: large enough to amortise the per-block vector, small enough to balance load.
pub const ROWS_PER_BLOCK: usize = 64;

/// Sums, over blocks of `ROWS_PER_BLOCK` rows, the `width`-long partials that `block` writes, in
/// block order. `block(first_row, rows, partial)` adds its rows' contributions into `partial`.
pub fn sum_over_row_blocks<F>(rows: usize, width: usize, block: F) -> Vec<f32>
where
    F: Fn(usize, usize, &mut [f32]) + Sync,
{
    let blocks = rows.div_ceil(ROWS_PER_BLOCK);
    let partials: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let first = b * ROWS_PER_BLOCK;
            let mut partial = vec![0.0f32; width];
            block(first, ROWS_PER_BLOCK.min(rows - first), &mut partial);
            partial
        })
        .collect();
    let mut total = vec![0.0f32; width];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(t, x)| *t += x);
    }
    total
}
