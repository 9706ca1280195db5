//! Row selection: gather, its adjoint scatter, and argmax.

use rayon::prelude::*;

pub fn gather(out: &mut [f32], x: &[f32], rows: &[i32], width: usize) {
    out.par_chunks_mut(width)
        .zip(rows.par_iter())
        .for_each(|(o, &r)| o.copy_from_slice(&x[r as usize * width..][..width]));
}

/// `out` starts at zero; repeated rows accumulate, in index order.
pub fn scatter_add(out: &mut [f32], dy: &[f32], rows: &[i32], width: usize) {
    for (d, &r) in dy.chunks(width).zip(rows) {
        out[r as usize * width..][..width]
            .iter_mut()
            .zip(d)
            .for_each(|(o, v)| *o += v);
    }
}

/// First index of the maximum of each row.
pub fn argmax(out: &mut [i32], x: &[f32], width: usize) {
    out.par_iter_mut()
        .zip(x.par_chunks(width))
        .for_each(|(o, row)| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            *o = best as i32;
        });
}
