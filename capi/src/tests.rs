//! The exported functions called from Rust, so that miri checks their unsafe bodies (the C
//! programs of `tests/c_abi.rs` cover the same surface from C, with the sanitizers). Also what C
//! cannot pass without undefined behaviour of its own: misaligned typed pointers.

use std::ffi::{c_int, c_void, CStr};
use std::ptr::{null, null_mut};

use gradclip_core::{
    bf16, exact_partial, f16, get_total_norm, get_total_norm_with, ClipOptions, ExactPartial, Grad,
    NormPartial, NormType, Summation,
};

use crate::*;

fn grad<T>(v: &[T], dtype: gradclip_dtype) -> gradclip_grad {
    gradclip_grad {
        data: v.as_ptr().cast(),
        len: v.len(),
        dtype: dtype as DTypeValue,
    }
}

fn grad_mut<T>(v: &mut [T], dtype: gradclip_dtype) -> gradclip_grad_mut {
    gradclip_grad_mut {
        data: v.as_mut_ptr().cast(),
        len: v.len(),
        dtype: dtype as DTypeValue,
    }
}

/// One buffer of each dtype.
struct Mixed {
    a: Vec<f32>,
    b: Vec<f16>,
    c: Vec<bf16>,
}

impl Mixed {
    fn new() -> Mixed {
        Mixed {
            a: (0..37).map(|i| i as f32 * 0.37 - 5.0).collect(),
            b: (0..11).map(|i| f16::from_f32(i as f32 * 0.5)).collect(),
            c: (0..5).map(|i| bf16::from_f32(-(i as f32))).collect(),
        }
    }
    fn descs(&self) -> [gradclip_grad; 3] {
        [
            grad(&self.a, gradclip_dtype::GRADCLIP_F32),
            grad(&self.b, gradclip_dtype::GRADCLIP_F16),
            grad(&self.c, gradclip_dtype::GRADCLIP_BF16),
        ]
    }
    fn views(&self) -> [Grad<'_>; 3] {
        [
            Grad::from(&self.a),
            Grad::from(&self.b),
            Grad::from(&self.c),
        ]
    }
}

/// C `norm_type` values and their Rust norm types.
const NORMS: [(f64, NormType); 4] = [
    (2.0, NormType::L2),
    (1.0, NormType::L1),
    (f64::INFINITY, NormType::Inf),
    (3.0, NormType::P(3.0)),
];

#[test]
fn norms_and_partials_are_the_rust_apis_bits() {
    let m = Mixed::new();
    let (descs, views) = (m.descs(), m.views());
    for (p, nt) in NORMS {
        let mut v = 0.0;
        // SAFETY: three valid descriptors; `v` is writable.
        let st = unsafe { gradclip_total_norm(descs.as_ptr(), 3, p, &mut v, null_mut()) };
        assert_eq!(st, GRADCLIP_OK);
        assert_eq!(v.to_bits(), get_total_norm(&views, nt).unwrap().to_bits());
        let mut part = gradclip_partial { bytes: [0xEE; 40] };
        // SAFETY: as above.
        let st = unsafe { gradclip_partial_compute(descs.as_ptr(), 3, p, &mut part) };
        assert_eq!(st, GRADCLIP_OK);
        let want = gradclip_core::total_norm_partial(&views, nt).unwrap();
        assert_eq!(&part.bytes[..], bytemuck::bytes_of(&want));
        let mut acc = gradclip_partial { bytes: [0; 40] };
        let mut fin = 0.0;
        // SAFETY: valid partials and a writable double.
        unsafe {
            assert_eq!(gradclip_partial_merge(&mut acc, &part), GRADCLIP_OK);
            assert_eq!(gradclip_partial_finish(&acc, &mut fin), GRADCLIP_OK);
        }
        assert_eq!(
            fin.to_bits(),
            NormPartial::EMPTY.merge(want).finish().to_bits()
        );
    }
}

const COMPENSATED: SummationValue = gradclip_summation::GRADCLIP_SUMMATION_COMPENSATED as u32;
const EXACT: SummationValue = gradclip_summation::GRADCLIP_SUMMATION_EXACT as u32;

#[test]
fn exact_partial_is_the_rust_types_96_bytes() {
    // The compile-time assertion in lib.rs, checked where a test can fail.
    assert_eq!(std::mem::size_of::<gradclip_exact_partial>(), 96);
    assert_eq!(std::mem::size_of::<ExactPartial>(), 96);
    assert_eq!(std::mem::align_of::<gradclip_exact_partial>(), 1);
    let a: Vec<f32> = (0..29).map(|i| (i as f32 - 9.5) * 0.25).collect();
    let part = exact_partial(&[Grad::from(&a)], NormType::L2).unwrap();
    let c = gradclip_exact_partial::from(part);
    assert_eq!(&c.bytes[..], bytemuck::bytes_of(&part));
    assert_eq!(ExactPartial::from(c), part);
    let empty = gradclip_exact_partial::from(ExactPartial::EMPTY);
    assert_eq!(empty.bytes, [0u8; 96]);
}

#[test]
fn exact_functions_are_the_rust_apis_bits() {
    let m = Mixed::new();
    let (descs, views) = (m.descs(), m.views());
    for (p, nt) in NORMS {
        for (s, summation) in [
            (COMPENSATED, Summation::Compensated),
            (EXACT, Summation::Exact),
        ] {
            let mut v = 0.0;
            // SAFETY: three valid descriptors; `v` is writable.
            let st =
                unsafe { gradclip_total_norm_with(descs.as_ptr(), 3, p, s, &mut v, null_mut()) };
            assert_eq!(st, GRADCLIP_OK);
            let want = get_total_norm_with(&views, nt, summation).unwrap();
            assert_eq!(v.to_bits(), want.to_bits(), "{nt:?} {summation:?}");
        }
        let mut part = gradclip_exact_partial { bytes: [0xEE; 96] };
        // SAFETY: as above.
        let st = unsafe { gradclip_exact_partial_compute(descs.as_ptr(), 3, p, &mut part) };
        let Ok(want) = exact_partial(&views, nt) else {
            // A P norm has no exact partial: an argument error, nothing written.
            assert_eq!(st, GRADCLIP_ERR_ARG);
            assert_eq!(part.bytes, [0xEE; 96]);
            continue;
        };
        assert_eq!(st, GRADCLIP_OK);
        assert_eq!(&part.bytes[..], bytemuck::bytes_of(&want));
        // The buffers' partials merged in reverse order: the same bytes as the whole.
        let mut acc = gradclip_exact_partial { bytes: [0; 96] };
        for d in descs.iter().rev() {
            let mut one = gradclip_exact_partial { bytes: [0xEE; 96] };
            let (mut fin, mut sum) = (0.0, 0.0);
            // SAFETY: one valid descriptor, valid partials and writable doubles.
            unsafe {
                assert_eq!(
                    gradclip_exact_partial_compute(d, 1, p, &mut one),
                    GRADCLIP_OK
                );
                assert_eq!(gradclip_exact_partial_merge(&mut acc, &one), GRADCLIP_OK);
                assert_eq!(gradclip_exact_partial_finish(&acc, &mut fin), GRADCLIP_OK);
                assert_eq!(gradclip_exact_partial_sum(&acc, &mut sum), GRADCLIP_OK);
            }
            let rust = ExactPartial::from(acc);
            assert_eq!(fin.to_bits(), rust.finish().to_bits());
            assert_eq!(sum.to_bits(), rust.sum().to_bits());
        }
        assert_eq!(acc.bytes, part.bytes, "{nt:?}");
        let mut fin = 0.0;
        // SAFETY: a valid partial and a writable double.
        unsafe { assert_eq!(gradclip_exact_partial_finish(&acc, &mut fin), GRADCLIP_OK) };
        let whole = get_total_norm_with(&views, nt, Summation::Exact).unwrap();
        assert_eq!(fin.to_bits(), whole.to_bits());
    }
}

#[test]
fn exact_summation_is_not_the_compensated_one() {
    // A rounding tie broken by a term far below it (see tests/c_abi.rs, set `hard`): the exact
    // L2 and L1 sums round up, the compensated ones land on the tie and round to even.
    let hard = [1.5f32, 2f32.powi(-26), 2f32.powi(-53), f32::from_bits(1)];
    let d = grad(&hard, gradclip_dtype::GRADCLIP_F32);
    // L2: sqrt(2.25 + 2^-51) rounds to 1.5 + 2^-52; L1: 1.5 + 2^-26 + 2^-52.
    let l1 = 1.5 + 2f64.powi(-26) + f64::EPSILON;
    for (p, want) in [(2.0, 1.5 + f64::EPSILON), (1.0, l1)] {
        let (mut comp, mut exact, mut fin) = (0.0, 0.0, 0.0);
        let mut part = gradclip_exact_partial { bytes: [0; 96] };
        // SAFETY: one valid descriptor; writable outputs.
        unsafe {
            assert_eq!(
                gradclip_total_norm_with(&d, 1, p, COMPENSATED, &mut comp, null_mut()),
                GRADCLIP_OK
            );
            assert_eq!(
                gradclip_total_norm_with(&d, 1, p, EXACT, &mut exact, null_mut()),
                GRADCLIP_OK
            );
            assert_eq!(
                gradclip_exact_partial_compute(&d, 1, p, &mut part),
                GRADCLIP_OK
            );
            assert_eq!(gradclip_exact_partial_finish(&part, &mut fin), GRADCLIP_OK);
        }
        assert_eq!(exact.to_bits(), want.to_bits(), "p = {p}");
        assert_eq!(fin.to_bits(), want.to_bits(), "p = {p}");
        assert_ne!(comp.to_bits(), want.to_bits(), "p = {p}");
    }
}

#[test]
fn exact_partial_identity_nonfinite_and_mixed_kinds() {
    let a = [1.5f32, f32::NAN, 2.0];
    let d = grad(&a, gradclip_dtype::GRADCLIP_F32);
    let mut zero = gradclip_exact_partial { bytes: [0x55; 96] };
    let mut nan = gradclip_exact_partial { bytes: [0x55; 96] };
    let mut l1 = gradclip_exact_partial { bytes: [0x55; 96] };
    let (mut v, mut bad) = (
        -7.0,
        gradclip_nonfinite {
            buffer: 7,
            index: 7,
            value: 7.0,
        },
    );
    // SAFETY: valid descriptors (or none), partials and outputs.
    unsafe {
        // n == 0: the all-zero identity, after checking the norm type.
        assert_eq!(
            gradclip_exact_partial_compute(null(), 0, 2.0, &mut zero),
            GRADCLIP_OK
        );
        assert_eq!(zero.bytes, [0; 96]);
        for p in [3.0, 0.0, f64::NAN] {
            let mut q = gradclip_exact_partial { bytes: [0x55; 96] };
            assert_eq!(
                gradclip_exact_partial_compute(null(), 0, p, &mut q),
                GRADCLIP_ERR_ARG
            );
            assert_eq!(q.bytes, [0x55; 96]);
        }
        assert_eq!(gradclip_exact_partial_finish(&zero, &mut v), GRADCLIP_OK);
        assert_eq!(v.to_bits(), 0);
        // A NaN is recorded, not an error: every rank still sends its partial.
        assert_eq!(
            gradclip_exact_partial_compute(&d, 1, 2.0, &mut nan),
            GRADCLIP_OK
        );
        assert_eq!(gradclip_exact_partial_finish(&nan, &mut v), GRADCLIP_OK);
        assert!(v.is_nan());
        // ... while the norm functions report it.
        assert_eq!(
            gradclip_total_norm_with(&d, 1, 2.0, EXACT, &mut v, &mut bad),
            GRADCLIP_NONFINITE
        );
        assert_eq!((bad.buffer, bad.index), (0, 1));
        // Partials of two norm types merge into NaN, as the Rust type does.
        let ok = grad(&a[..1], gradclip_dtype::GRADCLIP_F32);
        let mut l2 = zero;
        assert_eq!(
            gradclip_exact_partial_compute(&ok, 1, 2.0, &mut l2),
            GRADCLIP_OK
        );
        assert_eq!(
            gradclip_exact_partial_compute(&ok, 1, 1.0, &mut l1),
            GRADCLIP_OK
        );
        let mut mixed = l2;
        assert_eq!(gradclip_exact_partial_merge(&mut mixed, &l1), GRADCLIP_OK);
        let want = ExactPartial::from(l2).merge(ExactPartial::from(l1));
        assert_eq!(&mixed.bytes[..], bytemuck::bytes_of(&want));
        assert_eq!(gradclip_exact_partial_finish(&mixed, &mut v), GRADCLIP_OK);
        assert!(v.is_nan());
        // `acc` and `other` may be the same pointer.
        let mut twice = l2;
        let p = &mut twice as *mut gradclip_exact_partial;
        assert_eq!(gradclip_exact_partial_merge(p, p), GRADCLIP_OK);
        assert_eq!(gradclip_exact_partial_sum(&twice, &mut v), GRADCLIP_OK);
        assert_eq!(v, 2.0 * 1.5 * 1.5);
    }
}

#[test]
fn summation_values_outside_the_enum_are_arg_errors() {
    let mut a = [3.0f32, 4.0];
    // Both descriptors from one pointer (a shared view taken after the mutable one would be
    // invalidated by it under miri's aliasing model).
    let m = grad_mut(&mut a, gradclip_dtype::GRADCLIP_F32);
    let d = gradclip_grad {
        data: m.data.cast_const(),
        len: m.len,
        dtype: m.dtype,
    };
    let mut v = -7.0;
    let mut rep = gradclip_clip_report {
        total_norm: -7.0,
        clip_coef: -7.0,
        clipped: 7,
    };
    for bad in [2, 3, u32::MAX] {
        // SAFETY: valid descriptors and outputs; a bad value is refused before any write.
        unsafe {
            assert_eq!(
                gradclip_total_norm_with(&d, 1, 2.0, bad, &mut v, null_mut()),
                GRADCLIP_ERR_ARG
            );
            assert_eq!(
                gradclip_clip_grad_norm_with(&m, 1, 1.0, 2.0, 0, bad, &mut rep, null_mut()),
                GRADCLIP_ERR_ARG
            );
            // NULL is reported first, then the buffers, then the summation.
            assert_eq!(
                gradclip_total_norm_with(&d, 1, 2.0, bad, null_mut(), null_mut()),
                GRADCLIP_ERR_NULL
            );
            let odd = gradclip_grad {
                data: d.data.cast::<u8>().wrapping_add(1).cast(),
                len: 1,
                dtype: 0,
            };
            assert_eq!(
                gradclip_total_norm_with(&odd, 1, 2.0, bad, &mut v, null_mut()),
                GRADCLIP_ERR_ALIGN
            );
        }
    }
    assert_eq!((v, rep.total_norm, rep.clipped), (-7.0, -7.0, 7));
    assert_eq!(a, [3.0, 4.0]);
}

#[test]
fn clip_with_exact_summation_writes_what_the_rust_api_writes() {
    // The same numbers as one buffer and as three: the exact norm, hence the clipped bits,
    // agree; each is the Rust API's.
    let whole: Vec<f32> = (0..41).map(|i| (i as f32 * 0.77).sin() * 3.0).collect();
    let mut one = whole.clone();
    let mut pieces = [
        whole[..7].to_vec(),
        whole[7..30].to_vec(),
        whole[30..].to_vec(),
    ];
    let mut rust = whole.clone();
    let options = ClipOptions {
        summation: Summation::Exact,
        ..ClipOptions::default()
    };
    let want = gradclip_core::clip_grad_norm_(&mut [(&mut rust).into()], 1.0, options).unwrap();
    let mut rep = gradclip_clip_report {
        total_norm: 0.0,
        clip_coef: 0.0,
        clipped: 0,
    };
    let d = grad_mut(&mut one, gradclip_dtype::GRADCLIP_F32);
    // SAFETY: one writable buffer; `rep` is writable.
    let st =
        unsafe { gradclip_clip_grad_norm_with(&d, 1, 1.0, 2.0, 0, EXACT, &mut rep, null_mut()) };
    assert_eq!(st, GRADCLIP_OK);
    assert_eq!(rep.total_norm.to_bits(), want.total_norm.to_bits());
    assert_eq!(rep.clip_coef.to_bits(), want.clip_coef.to_bits());
    assert_eq!(one, rust);
    let [p0, p1, p2] = &mut pieces;
    let descs = [
        grad_mut(p0, gradclip_dtype::GRADCLIP_F32),
        grad_mut(p1, gradclip_dtype::GRADCLIP_F32),
        grad_mut(p2, gradclip_dtype::GRADCLIP_F32),
    ];
    let mut rep3 = rep;
    // SAFETY: three disjoint writable buffers; `rep3` is writable.
    let st = unsafe {
        gradclip_clip_grad_norm_with(descs.as_ptr(), 3, 1.0, 2.0, 0, EXACT, &mut rep3, null_mut())
    };
    assert_eq!(st, GRADCLIP_OK);
    assert_eq!(rep3.total_norm.to_bits(), rep.total_norm.to_bits());
    assert_eq!(pieces.concat(), one);
}

#[test]
fn clip_writes_what_the_rust_api_writes() {
    let mut a: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 5.0).collect();
    let mut b: Vec<bf16> = (0..9).map(|i| bf16::from_f32(i as f32)).collect();
    let (mut ra, mut rb) = (a.clone(), b.clone());
    let want = gradclip_core::clip_grad_norm_(
        &mut [(&mut ra).into(), (&mut rb).into()],
        1.0,
        gradclip_core::ClipOptions::default(),
    )
    .unwrap();
    let descs = [
        grad_mut(&mut a, gradclip_dtype::GRADCLIP_F32),
        grad_mut(&mut b, gradclip_dtype::GRADCLIP_BF16),
    ];
    let mut rep = gradclip_clip_report {
        total_norm: 0.0,
        clip_coef: 0.0,
        clipped: 0,
    };
    // SAFETY: two disjoint writable buffers; `rep` is writable; `out_bad` may be NULL.
    let st =
        unsafe { gradclip_clip_grad_norm(descs.as_ptr(), 2, 1.0, 2.0, 0, &mut rep, null_mut()) };
    assert_eq!(st, GRADCLIP_OK);
    assert_eq!(rep.total_norm.to_bits(), want.total_norm.to_bits());
    assert_eq!(rep.clip_coef.to_bits(), want.clip_coef.to_bits());
    assert_eq!(rep.clipped, 1);
    assert_eq!((a, b), (ra, rb));
}

#[test]
fn misaligned_pointers_are_refused_before_use() {
    let a = [1.0f32; 8];
    let descs = [grad(&a, gradclip_dtype::GRADCLIP_F32); 2];
    let mut out = [0.0f64; 2];
    // A misaligned `double *` and a misaligned descriptor array: never dereferenced.
    let odd_out = out.as_mut_ptr().cast::<u8>().wrapping_add(1).cast::<f64>();
    let odd_descs = descs
        .as_ptr()
        .cast::<u8>()
        .wrapping_add(4)
        .cast::<gradclip_grad>();
    let mut bad = gradclip_nonfinite {
        buffer: 7,
        index: 7,
        value: 7.0,
    };
    let odd_bad = (&mut bad as *mut gradclip_nonfinite)
        .cast::<u8>()
        .wrapping_add(2)
        .cast::<gradclip_nonfinite>();
    // SAFETY: every call fails its alignment check before reading or writing anything.
    unsafe {
        assert_eq!(
            gradclip_total_norm(descs.as_ptr(), 2, 2.0, odd_out, null_mut()),
            GRADCLIP_ERR_ALIGN
        );
        assert_eq!(
            gradclip_total_norm(odd_descs, 1, 2.0, out.as_mut_ptr(), null_mut()),
            GRADCLIP_ERR_ALIGN
        );
        assert_eq!(
            gradclip_total_norm(descs.as_ptr(), 2, 2.0, out.as_mut_ptr(), odd_bad),
            GRADCLIP_ERR_ALIGN
        );
        assert_eq!(
            gradclip_first_nonfinite(descs.as_ptr(), 2, odd_bad),
            GRADCLIP_ERR_ALIGN
        );
        let p = gradclip_partial { bytes: [0; 40] };
        assert_eq!(gradclip_partial_finish(&p, odd_out), GRADCLIP_ERR_ALIGN);
        let e = gradclip_exact_partial { bytes: [0; 96] };
        assert_eq!(
            gradclip_exact_partial_finish(&e, odd_out),
            GRADCLIP_ERR_ALIGN
        );
        assert_eq!(gradclip_exact_partial_sum(&e, odd_out), GRADCLIP_ERR_ALIGN);
        assert_eq!(
            gradclip_total_norm_with(descs.as_ptr(), 2, 2.0, 1, odd_out, null_mut()),
            GRADCLIP_ERR_ALIGN
        );
    }
    assert_eq!(out, [0.0; 2]);
    assert_eq!(bad.buffer, 7);
}

#[test]
fn nulls_and_strings() {
    let mut v = 0.0;
    // SAFETY: NULL is checked before any use; n == 0 reads nothing.
    unsafe {
        assert_eq!(
            gradclip_total_norm(null(), 1, 2.0, &mut v, null_mut()),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_total_norm(null(), 0, 2.0, &mut v, null_mut()),
            GRADCLIP_OK
        );
        assert_eq!(gradclip_scale(null(), 3, 2.0), GRADCLIP_ERR_NULL);
        let mut e = gradclip_exact_partial { bytes: [0; 96] };
        assert_eq!(
            gradclip_exact_partial_compute(null(), 1, 2.0, &mut e),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_exact_partial_compute(null(), 0, 2.0, null_mut()),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_exact_partial_merge(null_mut(), &e),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_exact_partial_merge(&mut e, null()),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_exact_partial_finish(null(), &mut v),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_exact_partial_finish(&e, null_mut()),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_exact_partial_sum(null(), &mut v),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_exact_partial_sum(&e, null_mut()),
            GRADCLIP_ERR_NULL
        );
        assert_eq!(
            gradclip_clip_grad_norm_with(null(), 1, 1.0, 2.0, 0, 1, null_mut(), null_mut()),
            GRADCLIP_ERR_NULL
        );
        let nul = gradclip_grad {
            data: null::<c_void>(),
            len: 1,
            dtype: 0,
        };
        assert_eq!(
            gradclip_total_norm(&nul, 1, 2.0, &mut v, null_mut()),
            GRADCLIP_ERR_NULL
        );
    }
    assert_eq!(v, 0.0);
    let codes: [c_int; 8] = [0, 1, -1, -2, -3, -4, -5, -99];
    for c in codes {
        // SAFETY: the status strings are static and NUL-terminated.
        let s = unsafe { CStr::from_ptr(gradclip_status_str(c)) };
        assert_ne!(s, c"unknown status", "{c}");
    }
    // SAFETY: as above.
    unsafe {
        assert_eq!(CStr::from_ptr(gradclip_status_str(2)), c"unknown status");
        assert_eq!(
            CStr::from_ptr(gradclip_version()).to_str().unwrap(),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            CStr::from_ptr(gradclip_isa()).to_str().unwrap(),
            gradclip_core::Isa::selected().name()
        );
    }
}

#[test]
fn the_version_is_the_librarys() {
    let root = include_str!("../../Cargo.toml");
    let line = root.lines().find(|l| l.starts_with("version = ")).unwrap();
    assert_eq!(line, format!("version = \"{}\"", env!("CARGO_PKG_VERSION")));
}
