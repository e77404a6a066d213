#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gradclip_fuzz::safetensors_cli(data));
