//! Builds the kernels two ways from the same `.cu` sources:
//!
//! - **Emulator** (always): every `kernels/*.cu` is compiled by the host C++ compiler against
//!   `kernels/emulator/`, together with the emulator runtime, into a static library linked into the
//!   crate. For each file a glue translation unit is generated that lists its `extern "C" __global__`
//!   kernels by name with a variadic trampoline, so launching by name needs no hand-written glue.
//!   The emulator's own self-test kernels (`tests/emulator_kernels/*.cu`, some deliberately broken)
//!   go into a second library that only test binaries link.
//! - **GPU** (when nvcc is found through `NVCC`, `CUDA_HOME` or `PATH`): every `kernels/*.cu` is
//!   compiled to one fatbin holding machine code (SASS) for sm_80 and sm_90 and PTX for
//!   compute_90, embedded (`$OUT_DIR/kernels_ptx.rs`). Loading SASS needs no JIT compilation at
//!   start-up and runs on a driver older than the PTX ISA this nvcc writes; the PTX serves GPUs
//!   newer than sm_90. The self-test kernels are embedded as PTX per architecture (the tests load
//!   them as text). Without nvcc the crate still builds and the runtime compiles the embedded
//!   sources with NVRTC; `MASKEDLM_REQUIRE_NVCC=1` makes a missing or failing nvcc a build error.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The GPU architectures machine code is generated for: Ampere (A100) and Hopper (H100/H200).
const ARCHITECTURES: [&str; 2] = ["sm_80", "sm_90"];

/// nvcc's `-gencode` options for a kernel fatbin: SASS for each of [`ARCHITECTURES`], and PTX for
/// the newest, which the driver compiles for a GPU none of the SASS fits.
const GENCODES: [&str; 2] = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=[sm_90,compute_90]",
];

/// The architecture whose ptxas figures are reported as build notes.
const REPORTED_ARCH: &str = "sm_90";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = root.join("kernels");
    let selftest_dir = root.join("tests").join("emulator_kernels");
    for path in [&kernel_dir, &selftest_dir] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for path in fs::read_dir(kernel_dir.join("emulator")).unwrap() {
        println!("cargo:rerun-if-changed={}", path.unwrap().path().display());
    }
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "MASKEDLM_REQUIRE_NVCC",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let kernels = cu_files(&kernel_dir);
    let selftests = cu_files(&selftest_dir);
    for file in kernels.iter().chain(&selftests) {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    // The emulator runtime and the product kernels.
    let mut library = emulator_build(&kernel_dir);
    for file in ["runtime.cpp", "context.cpp", "tensor_core.cpp"] {
        library.file(kernel_dir.join("emulator").join(file));
    }
    for file in glue_files(
        &out,
        &kernel_dir,
        "kernels",
        &kernels,
        "emu_library_kernels",
    ) {
        library.file(file);
    }
    library.compile("maskedlm_emulator");

    // The self-test kernels, linked into test binaries only.
    let mut selftest = emulator_build(&kernel_dir);
    for file in glue_files(
        &out,
        &kernel_dir,
        "selftest",
        &selftests,
        "emu_selftest_kernels",
    ) {
        selftest.file(file);
    }
    selftest
        .cargo_metadata(false)
        .compile("maskedlm_emulator_selftest");
    println!(
        "cargo:rustc-link-arg-tests={}",
        out.join("libmaskedlm_emulator_selftest.a").display()
    );

    compile_gpu(&root, &out, &kernel_dir, &kernels, &selftests);
}

/// The `.cu` files directly in `dir`, sorted.
fn cu_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "cu"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn emulator_build(kernel_dir: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .include(kernel_dir)
        .flag_if_supported("-fno-strict-aliasing")
        // Kernel code is written for nvcc and would trip host-only warnings (unused parameters of
        // launch-bound kernels, the deliberately broken self-tests); the runtime is kept clean.
        .warnings(false);
    build
}

/// How the emulator spells `__global__` (kernels/emulator/emulator.h), which marks kernels in
/// preprocessed source.
const GLOBAL_MARKER: &str = "__attribute__((used))";

/// The `extern "C" __global__` kernels of a `.cu` file, in order, including those that macros
/// instantiate: read from the file as the host preprocessor expands it for the emulator.
fn kernel_names(file: &Path, kernel_dir: &Path, out: &Path) -> Vec<String> {
    let scan = out.join(format!(
        "scan_{}.cpp",
        file.file_stem().unwrap().to_string_lossy()
    ));
    write_if_changed(
        &scan,
        &format!("#include \"common.cuh\"\n#include \"{}\"\n", file.display()),
    );
    let expanded = emulator_build(kernel_dir)
        .file(&scan)
        .cargo_metadata(false)
        .try_expand()
        .unwrap_or_else(|e| panic!("preprocessing {} for the emulator: {e}", file.display()));
    let text = String::from_utf8_lossy(&expanded);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let marker = format!("extern \"C\" {GLOBAL_MARKER} void ");
    flat.match_indices(&marker)
        .filter_map(|(at, _)| {
            let rest = &flat[at + marker.len()..];
            let name = rest[..rest.find('(')?].trim();
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then(|| name.to_string())
        })
        .collect()
}

/// One glue translation unit per `.cu` file (the file itself plus a table of its kernels), and one
/// that lists the tables under `registry` (a C function returning a null-terminated array).
fn glue_files(
    out: &Path,
    kernel_dir: &Path,
    group: &str,
    files: &[PathBuf],
    registry: &str,
) -> Vec<PathBuf> {
    let dir = out.join(format!("emulator_{group}"));
    fs::create_dir_all(&dir).unwrap();
    let mut generated = Vec::new();
    let mut tables = Vec::new();
    for file in files {
        let stem = file
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace(['-', '.'], "_");
        let table = format!("emu_{group}_{stem}");
        let namespace = format!("emu_source_{group}_{stem}");
        let file_name = file.file_name().unwrap().to_string_lossy();
        let mut glue = format!(
            "// Generated by build.rs: the emulator's launch table for {file_name}.\n\
             // The file is compiled inside a namespace of its own: nvcc compiles each .cu as a separate\n\
             // module, so two files may each have a helper of the same name; linked into one library\n\
             // they would otherwise be merged silently (one definition rule).\n\
             #include \"common.cuh\"\n\
             namespace {namespace} {{\n#include \"{}\"\n}}\n\n\
             extern \"C\" const ::emu::KernelEntry {table}[] = {{\n",
            file.display()
        );
        for name in kernel_names(file, kernel_dir, out) {
            writeln!(
                glue,
                "    {{\"{name}\", [](void** args) {{ ::emu::invoke(&{namespace}::{name}, args); }}}},"
            )
            .unwrap();
        }
        glue.push_str("    {nullptr, nullptr},\n};\n");
        let path = dir.join(format!("{stem}.cpp"));
        write_if_changed(&path, &glue);
        generated.push(path);
        tables.push(table);
    }
    let mut registry_source =
        String::from("// Generated by build.rs.\n#include \"emulator/emulator.h\"\n\n");
    for table in &tables {
        writeln!(
            registry_source,
            "extern \"C\" const ::emu::KernelEntry {table}[];"
        )
        .unwrap();
    }
    registry_source.push_str("static const ::emu::KernelEntry* const tables[] = {");
    for table in &tables {
        write!(registry_source, "{table}, ").unwrap();
    }
    writeln!(
        registry_source,
        "nullptr}};\nextern \"C\" const ::emu::KernelEntry* const* {registry}() {{ return tables; }}"
    )
    .unwrap();
    let path = dir.join("registry.cpp");
    write_if_changed(&path, &registry_source);
    generated.push(path);
    generated
}

fn write_if_changed(path: &Path, contents: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(contents) {
        fs::write(path, contents).unwrap();
    }
}

/// ptxas's register and spill figures for every kernel compiled for `arch`, one line each (the
/// build notes that say whether a kernel spills to local memory), from the output of
/// `-Xptxas -v`, which reports each kernel once per architecture.
fn ptxas_figures(text: &str, arch: &str) -> Vec<String> {
    let mut figures = Vec::new();
    let mut kernel = None;
    let mut spills = String::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            // "... 'kernel' for 'sm_90'"
            let target = parts.nth(1).unwrap_or_default();
            kernel = (target == arch).then_some(name);
        } else if line.contains("spill stores") {
            spills = line.trim().to_string();
        } else if let (Some(name), Some(used)) = (&kernel, line.split("Used ").nth(1)) {
            let registers = used.split(',').next().unwrap_or_default();
            figures.push(format!("ptxas {arch} {name}: {registers}, {spills}"));
        }
    }
    figures
}

/// For loading kernels at run time: which file each kernel is in (`KERNEL_FILES`), and the sources
/// of `kernels/*.cu` and `kernels/*.cuh` (`KERNEL_SOURCES`), compiled by NVRTC when no PTX was built.
fn source_listing(listing: &mut String, kernel_dir: &Path, out: &Path, kernels: &[PathBuf]) {
    listing.push_str("pub const KERNEL_FILES: &[(&str, &str)] = &[\n");
    for file in kernels {
        let stem = file.file_stem().unwrap().to_string_lossy();
        for name in kernel_names(file, kernel_dir, out) {
            writeln!(listing, "    (\"{name}\", \"{stem}\"),").unwrap();
        }
    }
    listing.push_str("];\npub const KERNEL_SOURCES: &[(&str, &str)] = &[\n");
    let mut sources: Vec<PathBuf> = fs::read_dir(kernel_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh"))
        .collect();
    sources.sort();
    for path in sources {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        writeln!(
            listing,
            "    (\"{name}\", include_str!({:?})),",
            path.display()
        )
        .unwrap();
    }
    listing.push_str("];\n");
}

/// nvcc from `NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin` or `PATH`.
fn find_nvcc() -> Option<PathBuf> {
    if let Some(nvcc) = env::var_os("NVCC") {
        return Some(PathBuf::from(nvcc));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let candidate = PathBuf::from(home).join("bin").join("nvcc");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("nvcc"))
        .find(|candidate| candidate.is_file())
}

/// One nvcc run: a kernel file to a fatbin, or a self-test file to PTX for one architecture.
struct Job<'a> {
    file: &'a Path,
    /// `None` for a fatbin, else the PTX's architecture.
    arch: Option<&'static str>,
    output: PathBuf,
}

/// Compiles the kernel files to fatbins and the self-test files to PTX per architecture, in
/// parallel, and writes `$OUT_DIR/kernels_ptx.rs`: `KERNEL_FATBIN` (file stem, fatbin bytes) and
/// `SELFTEST_PTX` (file stem, architecture, PTX text).
fn compile_gpu(
    root: &Path,
    out: &Path,
    kernel_dir: &Path,
    kernels: &[PathBuf],
    selftests: &[PathBuf],
) {
    let required = env::var("MASKEDLM_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let nvcc = find_nvcc();
    let gpu_dir = out.join("gpu");
    fs::create_dir_all(&gpu_dir).unwrap();
    let mut listing = String::from("// Generated by build.rs.\n");
    source_listing(&mut listing, kernel_dir, out, kernels);
    let Some(nvcc) = nvcc else {
        if required {
            panic!(
                "MASKEDLM_REQUIRE_NVCC=1 but nvcc was not found (set NVCC or CUDA_HOME, or put nvcc on PATH)"
            );
        }
        println!(
            "cargo:warning=nvcc not found: kernels are not compiled for the GPU in this build"
        );
        listing.push_str("pub const NVCC_USED: bool = false;\n");
        listing.push_str("pub const KERNEL_FATBIN: &[(&str, &[u8])] = &[];\n");
        listing.push_str("pub const SELFTEST_PTX: &[(&str, &str, &str)] = &[];\n");
        write_if_changed(&out.join("kernels_ptx.rs"), &listing);
        return;
    };
    // nvcc installed from PyPI keeps the CCCL headers (`nv/target`, used by cuda_bf16.h) apart.
    let cccl = nvcc
        .parent()
        .and_then(|bin| bin.parent())
        .map(|top| top.join("include").join("cccl"));

    let stem = |file: &Path| file.file_stem().unwrap().to_string_lossy().to_string();
    let mut jobs: Vec<Job> = kernels
        .iter()
        .map(|file| Job {
            file,
            arch: None,
            output: gpu_dir.join(format!("{}.fatbin", stem(file))),
        })
        .collect();
    for file in selftests {
        for arch in ARCHITECTURES {
            jobs.push(Job {
                file,
                arch: Some(arch),
                output: gpu_dir.join(format!("selftest_{}.{arch}.ptx", stem(file))),
            });
        }
    }
    let results: Vec<std::result::Result<Vec<String>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                let nvcc = &nvcc;
                let cccl = &cccl;
                scope.spawn(move || {
                    let _ = fs::remove_file(&job.output);
                    let mut command = Command::new(nvcc);
                    match job.arch {
                        None => {
                            command.arg("-fatbin").args(GENCODES).arg("-Xptxas=-v");
                        }
                        Some(arch) => {
                            command.arg("-ptx").arg(format!("-arch={arch}"));
                        }
                    }
                    command
                        .arg("-std=c++17")
                        .arg("-O3")
                        .arg("-I")
                        .arg(kernel_dir)
                        .arg("-o")
                        .arg(&job.output)
                        .arg(job.file)
                        .current_dir(root);
                    if let Some(cccl) = cccl.as_ref().filter(|c| c.is_dir()) {
                        command.arg("-I").arg(cccl);
                    }
                    let what = job.arch.unwrap_or("a fatbin");
                    match command.output() {
                        Ok(output) if output.status.success() => {
                            // ptxas writes its figures to standard error.
                            let text = String::from_utf8_lossy(&output.stderr);
                            Ok(ptxas_figures(&text, REPORTED_ARCH))
                        }
                        Ok(output) => Err(format!(
                            "nvcc failed on {} for {what}:\n{}",
                            job.file.display(),
                            String::from_utf8_lossy(&output.stderr)
                                .lines()
                                .filter(|line| !line.starts_with("ptxas info"))
                                .collect::<Vec<_>>()
                                .join("\n")
                        )),
                        Err(error) => Err(format!("cannot run {}: {error}", nvcc.display())),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(figures) => {
                for line in figures {
                    println!("cargo:warning={line}");
                }
            }
            Err(failure) => failures.push(failure),
        }
    }
    if !failures.is_empty() {
        if required {
            panic!("{}", failures.join("\n"));
        }
        for failure in &failures {
            for line in failure.lines().take(20) {
                println!("cargo:warning={line}");
            }
        }
    }
    listing.push_str("pub const NVCC_USED: bool = true;\n");
    listing.push_str("pub const KERNEL_FATBIN: &[(&str, &[u8])] = &[\n");
    for job in jobs.iter().filter(|job| job.arch.is_none()) {
        if job.output.is_file() {
            writeln!(
                listing,
                "    (\"{}\", include_bytes!({:?})),",
                stem(job.file),
                job.output.display()
            )
            .unwrap();
        }
    }
    listing.push_str("];\npub const SELFTEST_PTX: &[(&str, &str, &str)] = &[\n");
    for job in &jobs {
        if let (Some(arch), true) = (job.arch, job.output.is_file()) {
            writeln!(
                listing,
                "    (\"{}\", \"{arch}\", include_str!({:?})),",
                stem(job.file),
                job.output.display()
            )
            .unwrap();
        }
    }
    listing.push_str("];\n");
    write_if_changed(&out.join("kernels_ptx.rs"), &listing);
}
