//! The CUDA side: kernels written in CUDA C++ (`kernels/*.cu`), launched by name.
//!
//! Every kernel has one Rust launch wrapper that computes its grid, block and shared-memory size and
//! builds its argument list ([`launch`]); the last step, the launch itself, goes through a
//! [`KernelLauncher`](launch::KernelLauncher): cudarc on a GPU, or the [`emulator`] on a machine
//! without one. The emulator is test equipment: it runs the same `.cu` sources compiled for the host
//! so that kernel tests run everywhere, and it is never offered as a user device.

pub mod emulator;
pub mod launch;
pub mod ptx;
