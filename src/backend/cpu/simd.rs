//! Runtime choice of vector instruction set for the elementwise kernels.
//!
//! One binary runs on any x86-64 CPU, so AVX2 and AVX-512 cannot be assumed at compile time. A
//! kernel is written once as a plain, branch-free loop; [`multiversion!`] compiles that loop three
//! times (for AVX-512, for AVX2 with FMA, and for the baseline) and picks a copy at run time. LLVM
//! vectorises each copy to the width its features allow. Rust never contracts `a * b + c` into a
//! fused multiply-add on its own, so the three copies round identically: the choice changes speed,
//! not results (the kernel tests check this bit for bit).

use std::sync::OnceLock;

/// An instruction set a kernel copy is compiled for, from the baseline up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// x86-64's SSE2 (or whatever the target guarantees).
    Generic,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 F, BW, DQ and VL.
    Avx512,
}

impl Level {
    /// The best level this CPU supports, detected once.
    pub fn best() -> Level {
        static BEST: OnceLock<Level> = OnceLock::new();
        *BEST.get_or_init(detect)
    }

    /// Every level this CPU can run, baseline first (tests run each kernel at each of them).
    #[cfg(test)]
    pub fn supported() -> Vec<Level> {
        [Level::Generic, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= Level::best())
            .collect()
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
    {
        Level::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Level::Avx2
    } else {
        Level::Generic
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Generic
}

/// `multiversion! { fn name(a: A, b: B) -> R { body } }` defines `fn name(level: Level, a: A, b:
/// B) -> R` that runs `body` compiled for `level`, or for the best level this CPU has when that is
/// lower (so asking for AVX-512 on an AVX2 machine is safe). Everything the body calls must be
/// `#[inline(always)]` to be compiled with the copy's features.
/// The sum of a kernel's lane-wise partial sums, added pairwise (lane l with lane l + n/2, halving
/// until one is left): a fixed order, so the total rounds the same in every copy of the kernel.
#[inline(always)]
pub fn fold_lanes<T: Copy + std::ops::AddAssign, const N: usize>(mut acc: [T; N]) -> T {
    let mut half = N;
    while half > 1 {
        half /= 2;
        for l in 0..half {
            let upper = acc[l + half];
            acc[l] += upper;
        }
    }
    acc[0]
}

macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name(level: $crate::backend::cpu::simd::Level, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            use $crate::backend::cpu::simd::Level;
            match level.min(Level::best()) {
                // SAFETY: `Level::best` detected these features on this CPU.
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}

pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_levels_start_at_the_baseline_and_end_at_the_best() {
        let levels = Level::supported();
        assert_eq!(levels.first(), Some(&Level::Generic));
        assert_eq!(levels.last(), Some(&Level::best()));
    }
}
