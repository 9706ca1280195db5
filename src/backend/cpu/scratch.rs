//! Scratch buffers that each thread keeps for as long as it lives.
//!
//! A fresh large `Vec` costs a page fault per 4 KiB on first touch (or a memset, when the
//! allocator hands back recycled memory), and a bf16 op that computed its whole output in f32
//! before rounding it would also stream that f32 copy through memory once more. The CPU kernels
//! instead compute a cache-sized block at a time into buffers of the thread running the block:
//! rayon's workers live as long as the pool, so after the first call every block reuses memory
//! that is already mapped and warm.

use std::cell::RefCell;

/// How many buffers one thread keeps (the most a kernel uses at once).
const SLOTS: usize = 3;

thread_local! {
    static BUFFERS: [RefCell<Vec<f32>>; SLOTS] = Default::default();
}

/// Runs `f` on `N` f32 blocks of the given lengths, with stale contents (the caller overwrites
/// them before reading). They are this thread's own buffers, grown as needed and kept; should a
/// slot already be in use further up this thread's stack (a kernel that nests), that block is a
/// fresh allocation instead, so nesting is slower but never wrong.
pub fn with_scratch<const N: usize, R>(
    lens: [usize; N],
    f: impl FnOnce([&mut [f32]; N]) -> R,
) -> R {
    const { assert!(N <= SLOTS, "with_scratch: more blocks than slots") };
    BUFFERS.with(|slots| {
        let mut borrowed: Vec<_> = slots
            .iter()
            .take(N)
            .map(|s| s.try_borrow_mut().ok())
            .collect();
        let mut fresh: Vec<Vec<f32>> = Vec::new();
        let mut blocks: Vec<&mut [f32]> = Vec::with_capacity(N);
        // Fresh buffers for slots in use, made first so that the borrows below stay put.
        for (slot, &len) in borrowed.iter().zip(&lens) {
            if slot.is_none() {
                fresh.push(vec![0.0; len]);
            }
        }
        let mut fresh = fresh.iter_mut();
        for (slot, &len) in borrowed.iter_mut().zip(&lens) {
            let buffer: &mut Vec<f32> = match slot {
                Some(kept) => kept,
                None => fresh.next().expect("one fresh buffer per slot in use"),
            };
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            blocks.push(&mut buffer[..len]);
        }
        let blocks: [&mut [f32]; N] = blocks.try_into().unwrap_or_else(|_| unreachable!());
        f(blocks)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_their_lengths_and_nesting_gets_fresh_ones() {
        with_scratch([5, 3], |[a, b]| {
            assert_eq!((a.len(), b.len()), (5, 3));
            a.fill(1.0);
            b.fill(2.0);
            // Slots 0 and 1 are in use: the nested call gets fresh blocks for them and slot 2's
            // kept buffer for the third.
            with_scratch([4, 4, 4], |[c, d, e]| {
                c.fill(3.0);
                d.fill(3.0);
                e.fill(3.0);
            });
            assert!(a.iter().all(|&x| x == 1.0) && b.iter().all(|&x| x == 2.0));
        });
        // The kept buffer comes back (grown, not shrunk).
        let first = with_scratch([8], |[a]| a.as_ptr());
        let again = with_scratch([2], |[a]| a.as_ptr());
        assert_eq!(first, again);
    }
}
