//! Disassembly into the reference's pre-tokenized format: hand-assembled instructions with known
//! output, and whole binaries of this machine (skipped with a message where absent).

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use undertale_maskedlm::Error;
use undertale_maskedlm::data::disassemble::{
    FileFunctions, Function, disassemble_bytes, disassemble_code, disassemble_file,
    has_symbol_table,
};

/// Bytes from a string of hex pairs, `"48 89 e5"`.
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// One instruction (or sequence) decoded at `address`.
fn dis(bytes: &str, address: u64) -> String {
    disassemble_code(&hex(bytes), address)
}

#[test]
fn prologue_and_epilogue() {
    // push rbp; mov rbp,rsp; mov [rbp-0x14],edi; xor eax,eax; pop rbp; ret
    assert_eq!(
        dis("55 48 89 e5 89 7d ec 31 c0 5d c3", 0x1000),
        "push rbp [NEXT] mov rbp rsp [NEXT] mov dword [ rbp - 20 ] edi [NEXT] xor eax eax \
         [NEXT] pop rbp [NEXT] ret"
    );
    assert_eq!(dis("c9", 0), "leave");
    assert_eq!(dis("f3 0f 1e fa", 0), "endbr64");
}

#[test]
fn memory_operands() {
    assert_eq!(dis("8b 45 ec", 0), "mov eax dword [ rbp - 20 ]");
    assert_eq!(dis("c7 45 fc 00 00 00 00", 0), "mov dword [ rbp - 4 ] 0");
    assert_eq!(dis("48 8d 44 cb 10", 0), "lea rax [ rbx + rcx * 8 + 16 ]");
    assert_eq!(dis("48 63 04 87", 0), "movsxd rax dword [ rdi + rax * 4 ]");
    // Scale 1 is not written.
    assert_eq!(dis("0f 1f 44 00 00", 0), "nop dword [ rax + rax ]");
    assert_eq!(dis("0f b6 07", 0), "movzx eax byte [ rdi ]");
    assert_eq!(dis("41 ff 24 c4", 0), "jmp qword [ r12 + rax * 8 ]");
    // Index without base, absolute displacement.
    assert_eq!(
        dis("ff 24 c5 00 10 00 00", 0),
        "jmp qword [ rax * 8 + 4096 ]"
    );
    assert_eq!(
        dis("8b 04 25 78 56 34 12", 0),
        "mov eax dword [ 305419896 ]"
    );
    // x87 ten-byte memory is `tword`, stack registers `st0`..`st7`.
    assert_eq!(dis("db 2c 24", 0), "fld st0 tword [ rsp ]");
    assert_eq!(dis("dd d9", 0), "fstp st1 st0");
    // No pseudo-ops: every operand is written.
    assert_eq!(dis("de c9", 0), "fmulp st1 st0");
    assert_eq!(dis("0f c2 c1 00", 0), "cmpps xmm0 xmm1 0");
}

#[test]
fn rip_relative() {
    // mov rax, [rip+0x2ff9] at 0x1010: the next instruction is at 0x1017, so 0x4010.
    assert_eq!(
        dis("48 8b 05 f9 2f 00 00", 0x1010),
        "mov rax qword [ rel 16400 ]"
    );
    // lea rdi, [rip-0x10] at 0x2000 (next ip 0x2007): 0x1ff7.
    assert_eq!(dis("48 8d 3d f0 ff ff ff", 0x2000), "lea rdi [ rel 8183 ]");
    // call [rip+0x10] at 0x1000: 0x1016.
    assert_eq!(dis("ff 15 10 00 00 00", 0x1000), "call qword [ rel 4118 ]");
    // movsd xmm0, [rip+0x100] at 0x1000: 0x1108.
    assert_eq!(
        dis("f2 0f 10 05 00 01 00 00", 0x1000),
        "movsd xmm0 qword [ rel 4360 ]"
    );
}

#[test]
fn branches_are_absolute_decimal() {
    // call 0x1130 from 0x1000.
    assert_eq!(dis("e8 2b 01 00 00", 0x1000), "call 4400");
    // jmp $ (short, to itself).
    assert_eq!(dis("eb fe", 0x1000), "jmp 4096");
    // jne +5 from 0x2000: 0x2007.
    assert_eq!(dis("75 05", 0x2000), "jne 8199");
    // je backwards (rel32 -0x100) from 0x3000: 0x3006 - 0x100 = 0x2f06.
    assert_eq!(dis("0f 84 00 ff ff ff", 0x3000), "je 12038");
    // call $+5 as the reference writes it.
    assert_eq!(dis("e8 00 00 00 00", 0x1000), "call rel 5");
    // Indirect branches and their prefixes.
    assert_eq!(dis("ff e0", 0), "jmp rax");
    assert_eq!(dis("3e ff e0", 0), "notrack jmp rax");
    assert_eq!(dis("f2 ff e0", 0), "bnd jmp rax");
}

#[test]
fn immediates() {
    assert_eq!(dis("48 83 ec 10", 0), "sub rsp 16");
    assert_eq!(dis("b8 2a 00 00 00", 0), "mov eax 42");
    // Negative immediates: the unsigned value at the operand size.
    assert_eq!(dis("b8 ff ff ff ff", 0), "mov eax 4294967295");
    assert_eq!(dis("48 83 c4 f8", 0), "add rsp 18446744073709551608");
    assert_eq!(
        dis("48 c7 c0 ff ff ff ff", 0),
        "mov rax 18446744073709551615"
    );
    assert_eq!(dis("3c ff", 0), "cmp al 255");
    assert_eq!(dis("6b c0 f8", 0), "imul eax eax 4294967288");
    assert_eq!(
        dis("48 b8 88 77 66 55 44 33 22 11", 0),
        "mov rax 1234605616436508552"
    );
    assert_eq!(dis("66 0f 3a 0f c1 08", 0), "palignr xmm0 xmm1 8");
}

#[test]
fn prefixes() {
    assert_eq!(dis("f3 a4", 0), "rep movsb byte [ rdi ] byte [ rsi ]");
    assert_eq!(dis("f3 48 ab", 0), "rep stosq qword [ rdi ]");
    assert_eq!(dis("f0 83 00 01", 0), "lock add dword [ rax ] 1");
    assert_eq!(
        dis("f0 0f b1 15 00 01 00 00", 0x1000),
        "lock cmpxchg dword [ rel 4360 ] edx"
    );
}

#[test]
fn segment_overrides() {
    // mov rax, fs:[0x28] (the stack canary).
    assert_eq!(
        dis("64 48 8b 04 25 28 00 00 00", 0),
        "mov rax qword [ fs + 40 ]"
    );
    assert_eq!(
        dis("64 48 89 04 25 00 00 00 00", 0),
        "mov qword [ fs + 0 ] rax"
    );
    assert_eq!(
        dis("65 48 8b 04 25 00 00 00 00", 0),
        "mov rax qword [ gs + 0 ]"
    );
    // A negative offset from the segment (a thread-local variable): `- N`, not a 64-bit address.
    assert_eq!(
        dis("64 80 3c 25 08 ff ff ff 00", 0),
        "cmp byte [ fs - 248 ] 0"
    );
    assert_eq!(
        dis("64 48 8b 04 25 f0 ff ff ff", 0),
        "mov rax qword [ fs - 16 ]"
    );
    // Segment override on a RIP-relative operand.
    assert_eq!(
        dis("64 48 8b 05 00 01 00 00", 0x1000),
        "mov rax qword [ rel fs + 4360 ]"
    );
    // A segment register as a plain operand.
    assert_eq!(dis("66 8c e0", 0), "mov ax fs");
    assert_eq!(dis("8e e0", 0), "mov fs ax");
}

#[test]
fn vector_instructions() {
    assert_eq!(dis("66 0f ef c0", 0), "pxor xmm0 xmm0");
    assert_eq!(dis("0f 29 44 24 10", 0), "movaps xmmword [ rsp + 16 ] xmm0");
    assert_eq!(dis("f3 0f 6f 06", 0), "movdqu xmm0 xmmword [ rsi ]");
    assert_eq!(dis("c5 fd 6f 06", 0), "vmovdqa ymm0 ymmword [ rsi ]");
    // AVX-512: opmask and zeroing decorators, broadcast, rounding.
    assert_eq!(
        dis("62 e1 fe c9 6f 06", 0),
        "vmovdqu64 zmm16 k1 z zmmword [ rsi ]"
    );
    assert_eq!(
        dis("62 f1 7c 58 58 00", 0),
        "vaddps zmm0 zmm0 dword [ rax ] 1to16"
    );
    assert_eq!(dis("62 f1 7c 38 58 c1", 0), "vaddps zmm0 rd_sae zmm0 zmm1");
}

#[test]
fn invalid_bytes_stop_the_sequence() {
    assert_eq!(dis("", 0), "");
    // 0x06 (push es) does not exist in 64-bit mode.
    assert_eq!(dis("06", 0), "");
    assert_eq!(dis("31 c0 06 c3", 0), "xor eax eax");
    // An instruction cut off by the end of the bytes.
    assert_eq!(dis("c3 48 8b", 0), "ret");
}

/// Every token is a known word or a non-negative decimal integer.
fn check_tokens(functions: &[Function], known: &HashSet<String>) {
    let mut unknown = HashSet::new();
    for function in functions {
        for token in function.disassembly.split(' ') {
            let integer = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
            if !integer && !known.contains(token) {
                unknown.insert(format!("{token:?} in {}", function.name));
            }
        }
    }
    assert!(unknown.is_empty(), "unexpected tokens: {unknown:?}");
}

/// The words allowed in a disassembly: punctuation, size words, `rel`, `[NEXT]`, prefixes,
/// decorators, and every mnemonic and register iced knows, as written by this module.
fn known_words() -> HashSet<String> {
    use iced_x86::{Formatter, IntelFormatter, Mnemonic, Register};
    let mut known: HashSet<String> = [
        "[NEXT]",
        "[",
        "]",
        "+",
        "-",
        "*",
        "rel",
        "byte",
        "word",
        "dword",
        "qword",
        "tword",
        "fword",
        "xmmword",
        "ymmword",
        "zmmword",
        "rep",
        "repe",
        "repne",
        "lock",
        "notrack",
        "bnd",
        "xacquire",
        "xrelease",
        "hint_taken",
        "hint_not_taken",
        "z",
        "sae",
        "rn_sae",
        "rd_sae",
        "ru_sae",
        "rz_sae",
        "1to2",
        "1to4",
        "1to8",
        "1to16",
        "1to32",
        "far",
        "st0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for mnemonic in Mnemonic::values() {
        known.insert(format!("{mnemonic:?}").to_lowercase());
    }
    let mut formatter = IntelFormatter::new();
    for register in Register::values() {
        let name: String = formatter
            .format_register(register)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        known.insert(name);
    }
    known
}

fn strictly_sorted(functions: &[Function]) -> bool {
    functions.windows(2).all(|w| w[0].address < w[1].address)
}

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const LS: &str = "/bin/ls";

#[test]
fn libc_functions() {
    let path = Path::new(LIBC);
    if !path.exists() {
        eprintln!("skipping: {LIBC} is absent");
        return;
    }
    let start = Instant::now();
    let result = disassemble_file(path).expect("libc disassembles");
    let elapsed = start.elapsed();
    let FileFunctions::Elf(functions) = result else {
        panic!("libc is an ELF x86-64 file");
    };
    let tokens: usize = functions
        .iter()
        .map(|f| f.disassembly.split(' ').count())
        .sum();
    eprintln!(
        "{LIBC}: {} functions, {tokens} tokens in {elapsed:?}",
        functions.len()
    );
    assert!(functions.len() > 500, "only {} functions", functions.len());
    assert!(functions.iter().all(|f| !f.name.is_empty()));
    assert!(functions.iter().all(|f| !f.disassembly.is_empty()));
    assert!(
        functions
            .iter()
            .all(|f| f.disassembly.split(' ').all(|t| !t.is_empty()))
    );
    assert!(
        strictly_sorted(&functions),
        "sorted, one function per address"
    );
    // libc is stripped: these come from the dynamic symbol table.
    let names: HashSet<&str> = functions.iter().map(|f| f.name.as_str()).collect();
    for name in ["abort", "qsort", "fopen"] {
        assert!(names.contains(name), "{name} missing");
    }
    check_tokens(&functions, &known_words());
    // The functions decode the same way on their own.
    let again = disassemble_file(path).expect("libc disassembles twice");
    assert_eq!(again, FileFunctions::Elf(functions));
}

#[test]
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn own_test_binary_has_symbol_table_functions() {
    // This test executable is not stripped: its symbol table names functions the dynamic symbol
    // table does not export, such as this crate's `disassemble_code`.
    let exe = std::env::current_exe().expect("current exe");
    let FileFunctions::Elf(functions) = disassemble_file(&exe).expect("own binary") else {
        panic!("this test binary is an ELF x86-64 file");
    };
    assert!(functions.len() > 100, "only {} functions", functions.len());
    assert!(strictly_sorted(&functions));
    let found = functions
        .iter()
        .any(|f| f.name.contains("disassemble_code") && !f.disassembly.is_empty());
    assert!(found, "disassemble_code not among the functions");
    check_tokens(&functions, &known_words());
}

#[test]
fn bin_ls() {
    let path = Path::new(LS);
    if !path.exists() {
        eprintln!("skipping: {LS} is absent");
        return;
    }
    let FileFunctions::Elf(functions) = disassemble_file(path).expect("ls disassembles") else {
        panic!("{LS} is an ELF x86-64 file");
    };
    // A stripped executable: only its (few) exported functions.
    eprintln!("{LS}: {} functions", functions.len());
    assert!(strictly_sorted(&functions));
    check_tokens(&functions, &known_words());
}

#[test]
fn not_elf() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    assert_eq!(disassemble_file(&manifest).unwrap(), FileFunctions::NotElf);
    let here = Path::new("in-memory");
    assert_eq!(disassemble_bytes(here, b"").unwrap(), FileFunctions::NotElf);
    assert_eq!(
        disassemble_bytes(here, b"\x7fEL").unwrap(),
        FileFunctions::NotElf
    );
    assert_eq!(
        disassemble_bytes(here, b"\x7fELF").unwrap(),
        FileFunctions::NotElf
    );
}

#[test]
fn missing_file_is_an_io_error() {
    let result = disassemble_file(Path::new("/nonexistent/surely/not/here"));
    assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
}

#[test]
fn other_class_or_architecture_is_not_elf() {
    let path = Path::new(LS);
    let Ok(data) = std::fs::read(path) else {
        eprintln!("skipping: {LS} is absent");
        return;
    };
    // ELFCLASS32.
    let mut class32 = data.clone();
    class32[4] = 1;
    assert_eq!(
        disassemble_bytes(path, &class32).unwrap(),
        FileFunctions::NotElf
    );
    // EM_AARCH64.
    let mut aarch64 = data.clone();
    aarch64[18] = 183;
    aarch64[19] = 0;
    assert_eq!(
        disassemble_bytes(path, &aarch64).unwrap(),
        FileFunctions::NotElf
    );
}

#[test]
fn truncated_elf_is_an_error_not_a_panic() {
    let Ok(data) = std::fs::read(LS) else {
        eprintln!("skipping: {LS} is absent");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &data[..100]).expect("write");
    match disassemble_file(&truncated) {
        Err(Error::Disassembly { path, reason }) => {
            assert_eq!(path, truncated);
            assert!(!reason.is_empty());
        }
        Ok(FileFunctions::NotElf) => {}
        other => panic!("truncated ELF: {other:?}"),
    }
    // Other cut points: whatever comes back, nothing panics.
    for len in [
        0,
        16,
        63,
        64,
        65,
        1000,
        4096,
        data.len() / 2,
        data.len() - 1,
    ] {
        let _ = disassemble_bytes(&truncated, &data[..len]);
    }
}

#[test]
fn corrupted_elf_never_panics() {
    let path = [LIBC, LS].into_iter().map(Path::new).find(|p| p.exists());
    let Some(path) = path else {
        eprintln!("skipping: neither {LIBC} nor {LS} is present");
        return;
    };
    let data = std::fs::read(path).expect("read");
    // Overwrite bytes of the header, and of the section header table at the end of the file, with
    // pseudo-random values.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..40 {
        let mut bytes = data.clone();
        for _ in 0..8 {
            let position = if round % 2 == 0 {
                (next() % 64) as usize
            } else {
                bytes.len() - 1 - (next() % 4096) as usize
            };
            bytes[position] = next() as u8;
        }
        let _ = disassemble_bytes(path, &bytes);
    }
}

/// Timing and vocabulary over the files named in `DISASSEMBLE_FILES` (colon-separated), e.g.
/// `DISASSEMBLE_FILES=/usr/bin/node cargo test --release --test disassemble -- --ignored
/// --nocapture`.
#[test]
#[ignore = "needs DISASSEMBLE_FILES"]
fn files_from_environment() {
    let files = std::env::var("DISASSEMBLE_FILES").unwrap_or_default();
    let known = known_words();
    for file in files.split(':').filter(|f| !f.is_empty()) {
        let start = Instant::now();
        let result = disassemble_file(Path::new(file)).expect("disassembles");
        let elapsed = start.elapsed();
        let FileFunctions::Elf(functions) = result else {
            eprintln!("{file}: not ELF x86-64");
            continue;
        };
        let tokens: usize = functions
            .iter()
            .map(|f| f.disassembly.split(' ').count())
            .sum();
        let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "{file}: {bytes} bytes, {} functions, {tokens} tokens in {elapsed:?}",
            functions.len()
        );
        assert!(strictly_sorted(&functions));
        check_tokens(&functions, &known);
        // `DISASSEMBLE_SHOW=word`: print the instructions containing that token, a few of them.
        if let Ok(word) = std::env::var("DISASSEMBLE_SHOW") {
            let shown = functions
                .iter()
                .flat_map(|f| f.disassembly.split(" [NEXT] "))
                .filter(|i| i.split(' ').any(|t| t == word))
                .take(8);
            for instruction in shown {
                eprintln!("  {instruction}");
            }
        }
    }
}

/// The C library this process runs with (from `/proc/self/maps`), or `None` with a note where
/// there is none to find (a static or non-Linux build).
fn loaded_libc() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let found = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .map(std::path::PathBuf::from);
    if found.is_none() {
        eprintln!("skipping: no C library is mapped into this process");
    }
    found
}

/// `data` with every section of the given types (`SHT_SYMTAB`, `SHT_DYNSYM`) turned into
/// `SHT_NULL`, so that readers no longer find those symbol tables: what `strip` does to `.symtab`.
fn without_sections(data: &[u8], types: &[u32]) -> Vec<u8> {
    use object::read::elf::{ElfFile64, FileHeader, SectionHeader};
    let file = ElfFile64::<object::Endianness>::parse(data).expect("an ELF file");
    let endian = file.endian();
    let header = file.elf_header();
    let table = header.e_shoff(endian) as usize;
    let entry = usize::from(header.e_shentsize(endian));
    let mut out = data.to_vec();
    for (index, section) in file.elf_section_table().iter().enumerate() {
        if types.contains(&section.sh_type(endian)) {
            // `sh_type` is the second 32-bit word of a section header.
            let at = table + index * entry + 4;
            out[at..at + 4].copy_from_slice(&object::elf::SHT_NULL.to_le_bytes());
        }
    }
    out
}

fn elf_functions(path: &Path, data: &[u8]) -> Vec<Function> {
    match disassemble_bytes(path, data).expect("disassembles") {
        FileFunctions::Elf(functions) => functions,
        FileFunctions::NotElf => panic!("{} is an ELF x86-64 file", path.display()),
    }
}

#[test]
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn has_symbol_table_tells_a_stripped_binary() {
    use object::elf::SHT_SYMTAB;
    let exe = std::env::current_exe().unwrap();
    let data = std::fs::read(&exe).unwrap();
    assert!(has_symbol_table(&data), "this test binary is not stripped");
    let stripped = without_sections(&data, &[SHT_SYMTAB]);
    assert!(!has_symbol_table(&stripped));
    // Stripped, it yields only its exported functions, a subset of what it yielded before.
    let all: HashSet<u64> = elf_functions(&exe, &data)
        .iter()
        .map(|f| f.address)
        .collect();
    let exported = elf_functions(&exe, &stripped);
    assert!(exported.len() < all.len());
    assert!(exported.iter().all(|f| all.contains(&f.address)));
    assert!(!has_symbol_table(b"not an ELF file at all"));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    assert!(!has_symbol_table(&std::fs::read(manifest).unwrap()));
}

fn maskedlm(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_maskedlm"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the binary runs")
}

/// A folder of links to one library is one file: `disassemble` reads it once, says how many paths
/// it skipped, and warns that the library is stripped.
#[test]
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn disassemble_reads_a_linked_file_once_and_names_a_stripped_one() {
    use undertale_maskedlm::data::parquet::read_corpus;
    use undertale_maskedlm::pipeline::corpus::{distinct_files, expand_inputs};
    let Some(libc) = loaded_libc() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("libs");
    std::fs::create_dir(&d).unwrap();
    let stripped = without_sections(&std::fs::read(&libc).unwrap(), &[object::elf::SHT_SYMTAB]);
    let expected = elf_functions(&libc, &stripped).len();
    assert!(expected > 0, "{} exports no functions", libc.display());
    // Sorted, `b.so` comes first, so it is the path kept.
    std::fs::write(d.join("c.so"), &stripped).unwrap();
    std::os::unix::fs::symlink("c.so", d.join("d.so")).unwrap();
    std::os::unix::fs::symlink(d.join("d.so"), d.join("e.so")).unwrap();
    std::fs::hard_link(d.join("c.so"), d.join("b.so")).unwrap();
    std::fs::write(d.join("a.txt"), "not a binary").unwrap();

    let (kept, dropped) = distinct_files(["e.so", "b.so", "d.so", "c.so"].map(|n| d.join(n)));
    assert_eq!((kept, dropped), (vec![d.join("e.so")], 3));
    let inputs = [d.clone(), d.join("c.so")];
    let (files, dropped) = expand_inputs(&inputs).unwrap();
    assert_eq!((files, dropped), (vec![d.join("a.txt"), d.join("b.so")], 4));

    let corpus = dir.path().join("corpus.parquet");
    let out = maskedlm(&[
        "disassemble".as_ref(),
        d.as_os_str(),
        d.join("c.so").as_os_str(),
        "-o".as_ref(),
        corpus.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "{expected} functions from 1 ELF files (4 duplicate paths skipped)"
        )),
        "{stdout}"
    );
    let warning = format!(
        "warning: {} is stripped (it has no symbol table), so only its {expected} exported \
         functions were found",
        d.join("b.so").display()
    );
    assert!(stderr.contains(&warning), "{stderr}");
    let rows = read_corpus(&corpus).unwrap();
    assert_eq!(rows.len(), expected);
    let prefix = format!("{}:", d.join("b.so").display());
    assert!(rows.iter().all(|r| r.id.starts_with(&prefix)));
}

/// No function in any input is an error that says why, and writes nothing.
#[test]
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn disassemble_without_functions_fails_and_says_why() {
    use object::elf::{SHT_DYNSYM, SHT_SYMTAB};
    let Some(libc) = loaded_libc() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.so");
    let data = without_sections(&std::fs::read(&libc).unwrap(), &[SHT_SYMTAB, SHT_DYNSYM]);
    std::fs::write(&bare, data).unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let corpus = dir.path().join("corpus.parquet");
    let out = maskedlm(&[
        "disassemble".as_ref(),
        bare.as_os_str(),
        manifest.as_os_str(),
        "-o".as_ref(),
        corpus.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for part in [
        "no functions found in 2 input files",
        "1 not ELF x86-64",
        "1 stripped (no symbol table) and exporting no functions",
        bare.to_str().unwrap(),
    ] {
        assert!(stderr.contains(part), "{stderr:?} lacks {part:?}");
    }
    assert!(!corpus.exists());
}
