//! The binary's commands: argument parsing, I/O and formatting. No kernel logic lives here: every
//! number comes from the library.

pub mod bench;
pub mod clip;
pub mod demo;
pub mod norm;
pub mod safetensors_io;
