#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gradclip_fuzz::kernels_differential(data));
