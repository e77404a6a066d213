//! The exported functions called from Rust, so that miri checks their unsafe bodies (the C
//! programs of `tests/c_abi.rs` cover the same surface from C, with the sanitizers). Also what C
//! cannot pass without undefined behaviour of its own: misaligned typed pointers.

use std::ffi::{c_int, c_void, CStr};
use std::ptr::{null, null_mut};

use gradclip_core::{bf16, f16, get_total_norm, Grad, NormPartial, NormType};

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

#[test]
fn norms_and_partials_are_the_rust_apis_bits() {
    let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 5.0).collect();
    let b: Vec<f16> = (0..11).map(|i| f16::from_f32(i as f32 * 0.5)).collect();
    let c: Vec<bf16> = (0..5).map(|i| bf16::from_f32(-(i as f32))).collect();
    let descs = [
        grad(&a, gradclip_dtype::GRADCLIP_F32),
        grad(&b, gradclip_dtype::GRADCLIP_F16),
        grad(&c, gradclip_dtype::GRADCLIP_BF16),
    ];
    let views = [Grad::from(&a), Grad::from(&b), Grad::from(&c)];
    for (p, nt) in [
        (2.0, NormType::L2),
        (1.0, NormType::L1),
        (f64::INFINITY, NormType::Inf),
        (3.0, NormType::P(3.0)),
    ] {
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
