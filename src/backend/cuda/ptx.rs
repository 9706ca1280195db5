//! The kernels as embedded in the binary: PTX compiled by build.rs (when nvcc was found) and the
//! CUDA sources (for NVRTC when it was not), with the file each kernel lives in.

include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));

/// The PTX of one kernel file for one architecture (`"sm_80"`, `"sm_90"`), if it was compiled.
pub fn kernel_ptx(file: &str, arch: &str) -> Option<&'static str> {
    KERNEL_PTX
        .iter()
        .find(|(f, a, _)| *f == file && *a == arch)
        .map(|(_, _, ptx)| *ptx)
}
