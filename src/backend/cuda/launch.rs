//! What a kernel launch needs, independent of where it runs: grid, block, dynamic shared memory and
//! the argument list, in the form `cuLaunchKernel` takes (one pointer per parameter).

use std::ffi::c_void;

use crate::error::Result;

/// A device address as kernels receive it (`CUdeviceptr`). In the emulator device memory is host
/// memory, so this is a host address there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The null pointer, for an optional argument a kernel checks before reading.
    pub const NULL: DevicePtr = DevicePtr(0);

    /// The address of host memory, for the emulator, where kernels read and write host buffers.
    pub fn host<T>(slice: &[T]) -> Self {
        DevicePtr(slice.as_ptr() as u64)
    }

    /// The address of host memory the kernel writes.
    pub fn host_mut<T>(slice: &mut [T]) -> Self {
        DevicePtr(slice.as_mut_ptr() as u64)
    }
}

/// Grid and block dimensions and bytes of dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A one-dimensional launch.
    pub fn linear(blocks: u32, threads: u32, shared_bytes: u32) -> Self {
        LaunchConfig {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            shared_bytes,
        }
    }

    /// Enough blocks of `threads` threads to give every one of `n` elements its own thread.
    pub fn for_elements(n: usize, threads: u32) -> Self {
        let blocks = n.div_ceil(threads as usize).max(1);
        Self::linear(u32::try_from(blocks).unwrap_or(u32::MAX), threads, 0)
    }
}

/// A kernel's arguments in order. Each is stored in its own 8-byte slot, so the pointers handed to
/// the launch stay valid for as long as this value lives.
#[derive(Debug, Default, Clone)]
pub struct KernelArgs {
    slots: Vec<u64>,
}

impl KernelArgs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pointer parameter (`float*`, `const int*`, ...).
    pub fn ptr(mut self, pointer: DevicePtr) -> Self {
        self.slots.push(pointer.0);
        self
    }

    /// An `int` parameter.
    pub fn i32(mut self, value: i32) -> Self {
        self.slots.push(u64::from(value as u32));
        self
    }

    /// An `unsigned` parameter.
    pub fn u32(mut self, value: u32) -> Self {
        self.slots.push(u64::from(value));
        self
    }

    /// A `float` parameter.
    pub fn f32(mut self, value: f32) -> Self {
        self.slots.push(u64::from(value.to_bits()));
        self
    }

    /// A 64-bit integer parameter (`long long`, `unsigned long long`).
    pub fn u64(mut self, value: u64) -> Self {
        self.slots.push(value);
        self
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// One pointer per argument, as `cuLaunchKernel`'s `kernelParams`. Each 8-byte slot holds its
    /// value in the low bytes, which on a little-endian machine is where a 4-byte parameter is read.
    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|slot| slot as *mut u64 as *mut c_void)
            .collect()
    }
}

/// The last step of every launch: a GPU context or the emulator.
pub trait KernelLauncher {
    /// Launches `kernel` (its `extern "C"` name) and waits for it; a failure names the kernel.
    fn launch(&self, kernel: &str, config: &LaunchConfig, args: &mut KernelArgs) -> Result<()>;
}
