//! Functions of ELF x86-64 binaries, disassembled into the reference's pre-tokenized format.
