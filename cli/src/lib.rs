//! The `gradclip` command line as a library: argument parsing, I/O and formatting of the
//! commands (`norm`, `clip`, `bench`, `demo`), and the small tanh RNN the demo trains. No kernel
//! logic lives here: every number comes from the `gradclip` library.

pub mod bench;
pub mod clip;
pub mod demo;
pub mod norm;
pub mod out;
pub mod rnn;
pub mod safetensors_io;
