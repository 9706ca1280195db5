//! Every GPU kernel, run by the emulator in several scheduling orders, against the CPU backend on
//! random data with odd sizes (not multiples of any tile), padding and all-padding rows. Device
//! outputs start poisoned (NaN bytes), so an element a kernel never writes fails the comparison.

mod harness;

mod adamw;
mod attention;
mod cross_entropy;
mod dropout;
mod elementwise;
mod embedding;
mod layernorm;
mod linear;
mod rows;
