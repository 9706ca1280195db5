//! The kernels as embedded in the binary: one fatbin per kernel file compiled by build.rs (when
//! nvcc was found; machine code for sm_80 and sm_90 plus PTX for newer GPUs) and the CUDA sources
//! (for NVRTC when it was not), with the file each kernel lives in.

include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));

/// The fatbin of one kernel file (its stem, e.g. `"attention"`), if this build compiled it.
pub fn kernel_fatbin(file: &str) -> Option<&'static [u8]> {
    KERNEL_FATBIN
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, fatbin)| *fatbin)
}
