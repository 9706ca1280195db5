//! The run-time compilation path: a build without nvcc embeds the kernel sources, and the GPU
//! runtime compiles them with NVRTC. Every kernel file must compile that way, with exactly the
//! options the runtime uses, for every architecture it targets. Needs NVRTC (`libnvrtc.so` on the
//! library path) and the CUDA headers (`CUDA_HOME`); `scripts/install-nvrtc.sh` installs both from
//! PyPI. Without NVRTC the test says it skipped, unless `MASKEDLM_REQUIRE_NVRTC=1` (CI), when that
//! is a failure.

use std::path::Path;

use undertale_maskedlm::backend::cuda::cuda_runtime::{
    compile_kernel_with_nvrtc, nvrtc_include_paths,
};
use undertale_maskedlm::backend::cuda::ptx::KERNEL_SOURCES;

/// CUDA 13 keeps the CCCL headers (`nv/target`, which cuda_bf16.h includes) in `include/cccl`,
/// where nvcc looks by itself and NVRTC does not; the PyPI headers also have a copy directly in
/// `include`, so the compilation test below would not notice if the runtime forgot that path.
#[test]
fn nvrtc_looks_in_each_toolkits_cccl_headers() {
    let paths = nvrtc_include_paths(Path::new("kernels"));
    assert_eq!(paths[0], "kernels");
    for (i, path) in paths.iter().enumerate().skip(1).step_by(2) {
        assert!(path.ends_with("include"), "{paths:?}");
        assert_eq!(
            Path::new(&paths[i + 1]),
            Path::new(path).join("cccl"),
            "{paths:?}"
        );
    }
    assert!(
        paths.iter().any(|p| p == "/usr/local/cuda/include/cccl"),
        "{paths:?}"
    );
}

#[test]
fn every_kernel_file_compiles_with_nvrtc() {
    // SAFETY: probing for the shared library only tries to open it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        let required = std::env::var("MASKEDLM_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "MASKEDLM_REQUIRE_NVRTC=1 but NVRTC (libnvrtc.so) was not found: put the lib directory \
             of scripts/install-nvrtc.sh's output on LD_LIBRARY_PATH"
        );
        println!("skipped: NVRTC (libnvrtc.so) is not installed");
        return;
    }
    let files: Vec<&str> = KERNEL_SOURCES
        .iter()
        .filter_map(|(name, _)| name.strip_suffix(".cu"))
        .collect();
    assert!(!files.is_empty(), "no kernel sources are embedded");
    let mut failures = Vec::new();
    for arch in ["sm_80", "sm_90"] {
        for file in &files {
            match compile_kernel_with_nvrtc(file, arch) {
                Ok(ptx) => assert!(
                    ptx.to_src().contains(".entry"),
                    "{file}.cu for {arch}: NVRTC wrote PTX without a kernel"
                ),
                Err(error) => failures.push(error),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
