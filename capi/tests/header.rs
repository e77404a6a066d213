//! The checked-in `include/gradclip.h` is exactly what cbindgen generates from the sources
//! with `cbindgen.toml`. To regenerate it after changing the C surface:
//!
//! ```sh
//! GRADCLIP_BLESS_HEADER=1 cargo test --release -p gradclip-capi --test header
//! ```

use std::path::Path;

fn generate() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen failed");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("utf-8 header")
}

#[test]
fn checked_in_header_matches_cbindgen() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/gradclip.h");
    let fresh = generate();
    if std::env::var_os("GRADCLIP_BLESS_HEADER").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "include/gradclip.h differs from cbindgen's output; regenerate it with\n  \
         GRADCLIP_BLESS_HEADER=1 cargo test --release -p gradclip-capi --test header\n\
         --- fresh header ---\n{fresh}"
    );
}

#[test]
fn header_spells_the_contract() {
    let h = generate();
    for needle in [
        "GRADCLIP_F32 = 0,",
        "GRADCLIP_F16 = 1,",
        "GRADCLIP_BF16 = 2,",
        "} gradclip_dtype;",
        "GRADCLIP_ON_NONFINITE_ERROR = 0,",
        "GRADCLIP_ON_NONFINITE_SKIP = 1,",
        "GRADCLIP_ON_NONFINITE_PROPAGATE = 2,",
        "} gradclip_on_nonfinite;",
        "const void *data;",
        "void *data;",
        "size_t len;",
        "gradclip_dtype dtype;",
        "uint8_t bytes[40];",
        "uint8_t bytes[96];",
        "} gradclip_exact_partial;",
        "GRADCLIP_SUMMATION_COMPENSATED = 0,",
        "GRADCLIP_SUMMATION_EXACT = 1,",
        "} gradclip_summation;",
        "gradclip_summation summation,",
        "int gradclip_total_norm_with(",
        "int gradclip_clip_grad_norm_with(",
        "int gradclip_exact_partial_compute(const gradclip_grad *grads,",
        "int gradclip_exact_partial_merge(gradclip_exact_partial *acc, \
         const gradclip_exact_partial *other);",
        "int gradclip_exact_partial_finish(const gradclip_exact_partial *p, double *out_norm);",
        "int gradclip_exact_partial_sum(const gradclip_exact_partial *p, double *out_sum);",
        "#define GRADCLIP_OK 0",
        "#define GRADCLIP_NONFINITE 1",
        "#define GRADCLIP_ERR_NULL -1",
        "#define GRADCLIP_ERR_ARG -2",
        "#define GRADCLIP_ERR_OVERLAP -3",
        "#define GRADCLIP_ERR_ALIGN -4",
        "#define GRADCLIP_ERR_OVERFLOW -5",
        "#define GRADCLIP_ERR_INTERNAL -99",
        "gradclip_on_nonfinite policy,",
        "const char *gradclip_status_str(int status);",
        "const char *gradclip_version(void);",
        "const char *gradclip_isa(void);",
        "int gradclip_set_num_threads(size_t n);",
    ] {
        assert!(h.contains(needle), "header lacks `{needle}`:\n{h}");
    }
    assert!(
        !h.contains("DTypeValue") && !h.contains("PolicyValue") && !h.contains("SummationValue"),
        "{h}"
    );
}
