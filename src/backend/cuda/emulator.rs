//! The emulated CUDA device: kernels compiled for the host by build.rs (`kernels/emulator/`), run
//! block by block with every thread a fiber. It stands in for the GPU in tests, on machines without
//! one: the same launch wrappers, the same `.cu` sources, host memory as device memory.
//!
//! Errors that would hang or silently corrupt a GPU run come back as [`Error::Kernel`] naming the
//! kernel, the block and the thread: a barrier some threads never reach, a warp primitive waiting for
//! a lane that has left, shared memory accessed outside its declaration, a fiber stack overflow.
//! Shared memory starts every block filled with NaN bytes, so reading what nobody wrote shows up in
//! the results; and running a test in several [`ScheduleOrder`]s exposes reads of values another
//! thread had not yet written (a missing barrier). `kernels/emulator/README.md` lists what is not
//! modelled.

use std::ffi::{CStr, CString, c_char, c_void};

use super::launch::{KernelArgs, KernelLauncher, LaunchConfig};
use crate::error::{Error, Result};

/// The order in which the runnable threads of a block run between two barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleOrder {
    /// Thread 0 first, as a naive reading of the code assumes.
    Forward,
    /// The last thread first: a thread reading its left neighbour's value without a barrier sees
    /// poison.
    Reverse,
    /// A fresh shuffle, from this seed, every round.
    Random(u64),
}

impl ScheduleOrder {
    /// The orders kernel tests run in: a kernel must give the same result in all of them.
    pub const TEST_ORDERS: [ScheduleOrder; 3] = [
        ScheduleOrder::Forward,
        ScheduleOrder::Reverse,
        ScheduleOrder::Random(0x5eed),
    ];

    fn code_and_seed(self) -> (i32, u64) {
        match self {
            ScheduleOrder::Forward => (0, 0),
            ScheduleOrder::Reverse => (1, 0),
            ScheduleOrder::Random(seed) => (2, seed),
        }
    }
}

/// One launchable kernel (mirrors `emu::KernelEntry`).
#[repr(C)]
pub struct KernelEntry {
    name: *const c_char,
    entry: Option<unsafe extern "C" fn(*mut *mut c_void)>,
}

/// A null-terminated list of kernel tables, as build.rs generates them.
pub type KernelTables = *const *const KernelEntry;

/// Mirrors `emu::LaunchParams` (kernels/emulator/launch.h).
#[repr(C)]
struct LaunchParams {
    kernel: *const KernelEntry,
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_shared_bytes: u32,
    order: i32,
    seed: u64,
    workers: u32,
    args: *mut *mut c_void,
}

unsafe extern "C" {
    fn emu_launch(params: *const LaunchParams, error: *mut c_char, error_capacity: usize) -> i32;
    fn emu_find_kernel(tables: KernelTables, name: *const c_char) -> *const KernelEntry;
    fn emu_library_kernels() -> KernelTables;
}

/// The product kernels (`kernels/*.cu`) as compiled for the emulator.
pub fn library_kernels() -> KernelTables {
    // SAFETY: a generated function returning a pointer to a static, null-terminated array.
    unsafe { emu_library_kernels() }
}

/// An emulated GPU: launches kernels from a set of kernel tables.
#[derive(Debug, Clone)]
pub struct EmulatedDevice {
    tables: KernelTables,
    order: ScheduleOrder,
    workers: u32,
}

// SAFETY: the tables are immutable static data generated at build time.
unsafe impl Send for EmulatedDevice {}
unsafe impl Sync for EmulatedDevice {}

impl EmulatedDevice {
    /// The product kernels, run in forward order on the calling thread.
    pub fn new() -> Self {
        Self::with_tables(library_kernels())
    }

    /// Kernels from other tables (the emulator's self-tests have their own).
    pub fn with_tables(tables: KernelTables) -> Self {
        EmulatedDevice {
            tables,
            order: ScheduleOrder::Forward,
            workers: 1,
        }
    }

    pub fn with_order(mut self, order: ScheduleOrder) -> Self {
        self.order = order;
        self
    }

    /// Runs blocks on up to `workers` OS threads at once (each block still on one thread).
    pub fn with_workers(mut self, workers: u32) -> Self {
        self.workers = workers.max(1);
        self
    }

    pub fn order(&self) -> ScheduleOrder {
        self.order
    }

    /// Whether a kernel of this name is known.
    pub fn has_kernel(&self, kernel: &str) -> bool {
        self.find(kernel).is_some()
    }

    fn find(&self, kernel: &str) -> Option<*const KernelEntry> {
        let name = CString::new(kernel).ok()?;
        // SAFETY: the tables are valid and null-terminated; `name` is a valid C string.
        let entry = unsafe { emu_find_kernel(self.tables, name.as_ptr()) };
        (!entry.is_null()).then_some(entry)
    }
}

impl Default for EmulatedDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelLauncher for EmulatedDevice {
    fn launch(&self, kernel: &str, config: &LaunchConfig, args: &mut KernelArgs) -> Result<()> {
        let entry = self.find(kernel).ok_or_else(|| Error::Kernel {
            kernel: kernel.to_string(),
            reason: "no kernel of this name was compiled for the emulator".into(),
        })?;
        let mut pointers = args.pointers();
        let (order, seed) = self.order.code_and_seed();
        let params = LaunchParams {
            kernel: entry,
            grid: config.grid,
            block: config.block,
            dynamic_shared_bytes: config.shared_bytes,
            order,
            seed,
            workers: self.workers,
            args: pointers.as_mut_ptr(),
        };
        let mut message = vec![0 as c_char; 2048];
        // SAFETY: `params` points at a live kernel entry and one argument pointer per slot of `args`;
        // the kernel's pointer arguments are the caller's responsibility, as for a GPU launch.
        let status = unsafe { emu_launch(&params, message.as_mut_ptr(), message.len()) };
        if status == 0 {
            return Ok(());
        }
        // SAFETY: emu_launch wrote a null-terminated message into the buffer.
        let reason = unsafe { CStr::from_ptr(message.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Err(Error::Kernel {
            kernel: kernel.to_string(),
            reason,
        })
    }
}
