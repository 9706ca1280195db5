//! The kernels compiled to PTX by build.rs (when nvcc was found), embedded in the binary.

include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));

/// The PTX of one kernel file for one architecture (`"sm_80"`, `"sm_90"`), if it was compiled.
pub fn kernel_ptx(file: &str, arch: &str) -> Option<&'static str> {
    KERNEL_PTX
        .iter()
        .find(|(f, a, _)| *f == file && *a == arch)
        .map(|(_, _, ptx)| *ptx)
}
