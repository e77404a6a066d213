//! The oracles behind gradclip's fuzz targets. Each target in `fuzz_targets/` is a one-line
//! wrapper around a function here, so a crash reproduces from a plain `#[test]` too.
//!
//! - [`kernels_differential`]: arbitrary bytes become buffers of each dtype at arbitrary element
//!   offsets; every available ISA's norm, per-buffer partials, non-finite location and scale are
//!   compared with the scalar reference (`gradclip::reference`) and with each other.
//! - [`safetensors_cli`]: arbitrary bytes as a safetensors file go through the library side of
//!   `gradclip norm` / `gradclip clip` (`gradclip::st`), which must either reject them with a
//!   one-line error or produce a result that is consistent in every way checked below; a file
//!   `st::parse` accepts must also pass the `safetensors` crate's own validation.
//!
//! Both take P norms besides L2, L1 and Inf: p = 3 and 0.5, p = 0.001, whose value exceeds
//! f64 for finite data from about three elements on, and p = 0.01, where a thousand or more
//! elements below 1 (subnormals: seeds `p_tiny_power_overflows`) make `total^(1/p)` exceed f64
//! while the norm itself does not. Beyond f64 the expected outcome is `Error::NormOverflow`
//! (`StError::Invalid` of it in the CLI path), accepted only when the scalar reference (which
//! computes the power through its logarithm, a formula of its own) is at or beyond the edge of
//! f64, for the file or for one tensor.

use gradclip::reference;
use gradclip::st::{self, StError};
use gradclip::{
    bf16, exact_partial_with_isa, f16, first_nonfinite, get_total_norm_exact_with_isa,
    get_total_norm_with_isa, per_buffer_partials, scale_with_isa_, Error, ExactPartial, Grad,
    GradMut, Isa, NonFinite, NormPartial, NormType, CHUNK_ELEMS,
};

/// Reads control bytes and payload from the fuzz input; past the end it yields zeros.
struct Input<'a> {
    d: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.d.split_first() {
            Some((&b, rest)) => {
                self.d = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        a.iter_mut().for_each(|b| *b = self.byte());
        u64::from_le_bytes(a)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.d.split_at(n.min(self.d.len()));
        self.d = b;
        a
    }
}

/// An owned buffer of one dtype plus the element offset its view starts at.
#[derive(Clone)]
enum Buf {
    F32(Vec<f32>, usize),
    F16(Vec<f16>, usize),
    BF16(Vec<bf16>, usize),
}

impl Buf {
    fn grad(&self) -> Grad<'_> {
        match self {
            Buf::F32(v, o) => Grad::F32(&v[*o..]),
            Buf::F16(v, o) => Grad::F16(&v[*o..]),
            Buf::BF16(v, o) => Grad::BF16(&v[*o..]),
        }
    }

    fn grad_mut(&mut self) -> GradMut<'_> {
        match self {
            Buf::F32(v, o) => GradMut::F32(&mut v[*o..]),
            Buf::F16(v, o) => GradMut::F16(&mut v[*o..]),
            Buf::BF16(v, o) => GradMut::BF16(&mut v[*o..]),
        }
    }
}

/// `n` elements of `size` bytes from `raw`, tiled when `raw` is shorter (zeros when empty).
fn elements<const N: usize, T>(raw: &[u8], n: usize, from: fn([u8; N]) -> T) -> Vec<T> {
    (0..n)
        .map(|i| {
            let mut a = [0u8; N];
            if !raw.is_empty() {
                for (k, b) in a.iter_mut().enumerate() {
                    *b = raw[(i * N + k) % raw.len()];
                }
            }
            from(a)
        })
        .collect()
}

/// The buffers of an input; `allow_long` permits one buffer just past [`CHUNK_ELEMS`] (slow
/// under the sanitizers, so the caller enables it for a fraction of the inputs only).
fn buffers(inp: &mut Input<'_>, allow_long: bool) -> Vec<Buf> {
    let count = 1 + inp.byte() as usize % 4;
    let mut long_left = allow_long;
    (0..count)
        .map(|_| {
            let c = inp.byte();
            let offset = (c as usize / 3) % 8;
            let (len, raw) = if long_left && c & 0xF0 == 0xF0 {
                long_left = false;
                // Long buffers around the chunk boundary, content tiled from the input.
                let len = CHUNK_ELEMS - 4 + inp.byte() as usize % 9;
                let n = inp.byte() as usize * 4;
                let raw = inp.take(n);
                (len, raw)
            } else {
                let len = inp.u16() as usize % 700;
                let size = if c.is_multiple_of(3) { 4 } else { 2 };
                let raw = inp.take(len * size);
                (raw.len() / size, raw)
            };
            let n = offset + len;
            match c % 3 {
                0 => Buf::F32(elements(raw, n, f32::from_le_bytes), offset),
                1 => Buf::F16(elements(raw, n, f16::from_le_bytes), offset),
                _ => Buf::BF16(elements(raw, n, bf16::from_le_bytes), offset),
            }
        })
        .collect()
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn same_nonfinite(a: &NonFinite, b: &NonFinite) -> bool {
    a.buffer == b.buffer && a.index == b.index && same(a.value, b.value)
}

/// Values this close to `f64::MAX` may round to either side of it: a P norm there may be
/// refused as an overflow or returned as a finite number.
fn near_f64_max(x: f64) -> bool {
    x.is_infinite() || x > f64::MAX * (1.0 - 1e-9)
}

fn check_value(got: f64, want: f64, norm_type: NormType, what: &str) {
    let tol = match norm_type {
        NormType::Inf => 0.0,
        // `s^(1/p)` multiplies the relative error of the sum `s` by 1/p.
        NormType::P(p) => 1e-12 * (1.0 / p).max(1.0),
        _ => 1e-13,
    };
    if want.is_infinite() && (got == want || near_f64_max(got)) {
        return;
    }
    if norm_type == NormType::Inf || want == 0.0 {
        assert!(
            got.to_bits() == want.to_bits(),
            "{what}: got {got:e}, reference {want:e}"
        );
    } else {
        let err = ((got - want) / want).abs();
        assert!(
            err <= tol,
            "{what}: got {got:e}, reference {want:e}, rel err {err:e}"
        );
    }
}

/// Differential oracle of the kernels against the scalar reference; see the crate docs.
pub fn kernels_differential(data: &[u8]) {
    let mut inp = Input { d: data };
    let factor_kind = inp.byte();
    let factor_bits = inp.u64();
    let bufs = buffers(&mut inp, factor_kind & 0x80 != 0);
    let grads: Vec<Grad<'_>> = bufs.iter().map(Buf::grad).collect();
    let first = first_nonfinite(&grads);
    let isas = Isa::available();
    let long = grads.iter().any(|g| g.len() > CHUNK_ELEMS / 2);
    let norm_types: &[NormType] = if long {
        &[NormType::L2, NormType::Inf]
    } else {
        // p = 0.001 makes `(Σ|x|^p)^(1/p)` exceed f64 from about three elements on.
        &[
            NormType::L2,
            NormType::L1,
            NormType::Inf,
            NormType::P(3.0),
            NormType::P(0.5),
            NormType::P(0.001),
            NormType::P(0.01),
        ]
    };

    for &norm_type in norm_types {
        let want = reference::norm(&grads, norm_type);
        // Finite data has a finite norm, except a P norm beyond f64 (small p).
        let p_overflow = matches!(norm_type, NormType::P(_)) && want.is_infinite();
        assert_eq!(
            want.is_finite() || (p_overflow && first.is_none()),
            first.is_none(),
            "reference vs first_nonfinite"
        );
        let mut results = Vec::new();
        for &isa in &isas {
            let got = get_total_norm_with_isa(&grads, norm_type, isa);
            match (&got, &first) {
                (Ok(x), None) => check_value(*x, want, norm_type, isa.name()),
                (Err(Error::NonFinite(nf)), Some(f)) => assert!(
                    same_nonfinite(nf, f),
                    "{}: reported {nf:?}, first is {f:?}",
                    isa.name()
                ),
                (Err(Error::NormOverflow { p }), None) => {
                    assert_eq!(p.to_bits(), norm_type.exponent().to_bits());
                    assert!(
                        near_f64_max(want),
                        "{}: overflow, reference {want:e}",
                        isa.name()
                    );
                }
                _ => panic!("{} {norm_type:?}: {got:?}, first {first:?}", isa.name()),
            }
            results.push(got);
        }
        for w in results.windows(2) {
            match (&w[0], &w[1]) {
                (Ok(a), Ok(b)) => assert_eq!(a.to_bits(), b.to_bits(), "ISAs differ"),
                (Err(Error::NonFinite(a)), Err(Error::NonFinite(b))) => {
                    assert!(same_nonfinite(a, b), "ISAs differ: {a:?} vs {b:?}")
                }
                (Err(a @ Error::NormOverflow { .. }), Err(b)) => assert_eq!(a, b, "ISAs differ"),
                _ => panic!("ISAs differ: {:?} vs {:?}", w[0], w[1]),
            }
        }

        // One pass of per-buffer partials: each buffer's norm and the same total bits.
        let mut out = vec![NormPartial::EMPTY; grads.len()];
        let total = per_buffer_partials(&grads, norm_type, &mut out).expect("valid norm type");
        match results.first() {
            Some(Ok(x)) => assert_eq!(total.finish().to_bits(), x.to_bits(), "per_buffer total"),
            Some(Err(Error::NormOverflow { .. })) => {
                assert!(
                    total.is_finite() && total.finish().is_infinite(),
                    "overflow total"
                )
            }
            _ => assert!(!total.is_finite()),
        }
        // Each buffer against the reference (skipped for long inputs: time, not coverage).
        for (i, (g, p)) in grads.iter().zip(&out).enumerate().filter(|_| !long) {
            let want_i = reference::norm(&[*g], norm_type);
            let got_i = p.finish();
            if want_i.is_finite() || (p.is_finite() && want_i.is_infinite()) {
                // A finite buffer whose norm overflows: +inf, or finite right at the edge.
                check_value(got_i, want_i, norm_type, &format!("buffer {i}"));
            } else {
                assert_eq!(got_i.is_nan(), want_i.is_nan(), "buffer {i} NaN vs inf");
                assert_eq!(got_i.is_infinite(), want_i.is_infinite());
            }
        }
    }

    check_exact(&grads, first, &isas, factor_bits);

    // Scaling: every ISA equal to round_to_dtype(f32(x) * f32(factor)), bit for bit. Scaling
    // is element-wise, so long buffers add nothing here but time.
    if long {
        return;
    }
    let factor = match factor_kind % 4 {
        0 => f64::from_bits(factor_bits),
        1 => 0.5,
        2 => 1.0,
        // A realistic clip coefficient.
        _ => (factor_bits % 1000) as f64 / 997.0 / (1.0 + 1e-6),
    };
    let c = factor as f32;
    let valid = factor.is_finite() && c.is_finite();
    for &isa in &isas {
        let mut scaled = bufs.clone();
        let mut views: Vec<GradMut<'_>> = scaled.iter_mut().map(Buf::grad_mut).collect();
        let r = scale_with_isa_(&mut views, factor, isa);
        drop(views);
        assert_eq!(
            r.is_ok(),
            valid,
            "{} scale by {factor:e}: {r:?}",
            isa.name()
        );
        for (before, after) in bufs.iter().zip(&scaled) {
            match (before.grad(), after.grad()) {
                (Grad::F32(b), Grad::F32(a)) => {
                    check_scaled(b, a, c, valid, isa, reference::scale_f32)
                }
                (Grad::F16(b), Grad::F16(a)) => {
                    check_scaled(b, a, c, valid, isa, reference::scale_f16)
                }
                (Grad::BF16(b), Grad::BF16(a)) => {
                    check_scaled(b, a, c, valid, isa, reference::scale_bf16)
                }
                _ => unreachable!("dtype changed"),
            }
        }
    }
}

/// Exact mode: on every ISA, the sum is the integer reference's exactly rounded value and the
/// partial has the same bytes; the first buffer cut at a fuzz-chosen element, and the per-buffer
/// partials merged in reverse order, give those bytes again.
fn check_exact(grads: &[Grad<'_>], first: Option<NonFinite>, isas: &[Isa], cut: u64) {
    for norm_type in [NormType::L2, NormType::L1, NormType::Inf] {
        let want = reference::exact_sum(grads, norm_type);
        // Equality of partials is equality of their bytes (every field is an integer).
        let mut bytes: Option<ExactPartial> = None;
        for &isa in isas {
            let p = exact_partial_with_isa(grads, norm_type, isa).expect("exact kind");
            assert!(
                same(p.sum(), want),
                "{} {norm_type:?}: exact sum {:e}, reference {want:e}",
                isa.name(),
                p.sum()
            );
            assert_eq!(p.is_finite(), first.is_none(), "{} flags", isa.name());
            match &bytes {
                None => bytes = Some(p),
                Some(w) => assert_eq!(&p, w, "{} {norm_type:?}: bytes differ", isa.name()),
            }
            match (get_total_norm_exact_with_isa(grads, norm_type, isa), &first) {
                (Ok(x), None) => assert!(same(x, p.finish()), "{} norm", isa.name()),
                (Err(Error::NonFinite(nf)), Some(f)) => assert!(same_nonfinite(&nf, f)),
                (got, _) => panic!("{} {norm_type:?}: {got:?}, first {first:?}", isa.name()),
            }
        }
        let whole = bytes.expect("the portable ISA is always available");
        let Some((g0, rest)) = grads.split_first() else {
            continue;
        };
        let at = (cut as usize) % (g0.len() + 1);
        let (a, b) = match *g0 {
            Grad::F32(s) => (Grad::F32(&s[..at]), Grad::F32(&s[at..])),
            Grad::F16(s) => (Grad::F16(&s[..at]), Grad::F16(&s[at..])),
            Grad::BF16(s) => (Grad::BF16(&s[..at]), Grad::BF16(&s[at..])),
        };
        let mut cut_set = vec![b, a];
        cut_set.extend_from_slice(rest);
        let isa = isas[(cut >> 32) as usize % isas.len()];
        let p = exact_partial_with_isa(&cut_set, norm_type, isa).expect("exact kind");
        assert_eq!(p, whole, "cut at {at} on {}", isa.name());
        let merged = cut_set.iter().rev().fold(ExactPartial::EMPTY, |m, g| {
            m.merge(exact_partial_with_isa(&[*g], norm_type, isa).expect("exact kind"))
        });
        assert_eq!(merged, whole, "merged on {}", isa.name());
    }
}

/// Every element of `after` is the reference `scale(before, c)` bit for bit (NaN payloads
/// included: the reference spells the NaN rule out), or `before` untouched when the factor was
/// refused or is 1 in f32.
fn check_scaled<T: gradclip::Element + std::fmt::Debug>(
    before: &[T],
    after: &[T],
    c: f32,
    valid: bool,
    isa: Isa,
    scale: fn(T, f32) -> T,
) {
    for (x, y) in before.iter().zip(after) {
        let want = if valid && c != 1.0 { scale(*x, c) } else { *x };
        assert!(
            y.abs_bits() == want.abs_bits()
                && y.to_f32().is_sign_negative() == want.to_f32().is_sign_negative(),
            "{} {:?} {x:?} * {c:e}: got {y:?}, want {want:?}",
            isa.name(),
            T::DTYPE
        );
    }
}

/// Whether the scalar reference puts a file's norm of one type, or one of its finite tensors'
/// norms, at or beyond the edge of f64: only then may `norms` refuse the type as an overflow.
fn overflow_possible(grads: &[Grad<'_>], norm_type: NormType) -> bool {
    let near = |gs: &[Grad<'_>]| {
        first_nonfinite(gs).is_none() && near_f64_max(reference::norm(gs, norm_type))
    };
    matches!(norm_type, NormType::P(_))
        && (near(grads) || grads.iter().any(|g| near(std::slice::from_ref(g))))
}

/// The library side of `gradclip norm` / `gradclip clip` on arbitrary bytes; see the crate docs.
pub fn safetensors_cli(data: &[u8]) {
    let layout = match st::parse(data) {
        Ok(l) => l,
        Err(e) => {
            // `Format` means the layout did not match the file it came from.
            assert!(!matches!(e, StError::Format(_)), "validation gap: {e}");
            let msg = e.to_string();
            assert!(
                !msg.is_empty() && !msg.contains(['\n', '\r']),
                "error not on one line: {msg:?}"
            );
            return;
        }
    };
    // The reference implementation of the format accepts whatever `parse` accepted.
    if let Err(e) = check_with_safetensors_crate(data) {
        panic!("validation gap: the safetensors crate rejects a file parse accepted: {e}");
    }

    // A layout that parsed is contiguous, in file order, and covers the data exactly.
    let mut pos = 0usize;
    for t in &layout.tensors {
        assert_eq!(t.start, pos, "gap or overlap accepted");
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(
            numel.and_then(|n| n.checked_mul(t.dtype.size_of())),
            Some(t.end - t.start)
        );
        pos = t.end;
    }
    assert_eq!(layout.data_start.checked_add(pos), Some(data.len()));

    let tensors: Vec<st::TensorData<'_>> = (0..layout.tensors.len())
        .map(|i| st::tensor_data(data, &layout, i).expect("tensor of a parsed layout"))
        .collect();
    let grads: Vec<Grad<'_>> = tensors.iter().map(st::TensorData::grad).collect();

    let norm_types = [
        NormType::L2,
        NormType::L1,
        NormType::Inf,
        NormType::P(3.0),
        NormType::P(0.5),
        NormType::P(0.001),
        NormType::P(0.01),
    ];
    let mut summaries = Vec::new();
    for norm_type in norm_types {
        let s = match st::norms(data, &layout, norm_type) {
            Ok(s) => s,
            Err(StError::Invalid(Error::NormOverflow { p })) => {
                assert_eq!(p.to_bits(), norm_type.exponent().to_bits());
                assert!(
                    overflow_possible(&grads, norm_type),
                    "{norm_type:?}: overflow refused, the reference is finite"
                );
                summaries.push((norm_type, None));
                continue;
            }
            Err(e) => panic!("{norm_type:?}: unexpected error on a valid file: {e}"),
        };
        assert_eq!(s.norms.len(), layout.tensors.len());
        // Every finite tensor's own norm against the reference (an overflow would have been
        // refused, so a reference beyond f64 must meet a value at the edge).
        for (i, g) in grads.iter().enumerate() {
            let one = std::slice::from_ref(g);
            if first_nonfinite(one).is_none() {
                let want = reference::norm(one, norm_type);
                check_value(s.norms[i], want, norm_type, &format!("tensor {i}"));
                assert!(s.norms[i].is_finite(), "tensor {i}: overflow not refused");
            }
        }
        match &s.nonfinite {
            None => {
                assert!(s.total_norm.is_finite() && s.total_norm >= 0.0);
                let want = reference::norm(&grads, norm_type);
                check_value(s.total_norm, want, norm_type, "file total");
                // The per-tensor partials merge to the library's one-call total, bit for bit.
                let lib = gradclip::get_total_norm(&grads, norm_type).expect("finite total");
                assert_eq!(
                    s.total_norm.to_bits(),
                    lib.to_bits(),
                    "{norm_type:?} total bits"
                );
                assert!(s.norms.iter().all(|n| n.is_finite() && *n >= 0.0));
            }
            Some(l) => {
                assert!(!s.total_norm.is_finite());
                let f = first_nonfinite(&grads).expect("a non-finite element");
                assert_eq!((f.buffer, f.index), (l.tensor, l.index));
                assert_eq!(layout.tensors[l.tensor].name, l.name);
                assert!(!s.norms[l.tensor].is_finite());
                assert!(!l.value.is_finite());
            }
        }
        summaries.push((norm_type, Some(s)));
    }

    let max_norm = [1e-3, 1.0, 1e30][data.len() % 3];
    let (norm_type, norm) = &summaries[[0, 0, 5, 6][data.len() / 3 % 4]];
    match st::clip(data, &layout, max_norm, *norm_type) {
        Ok(c) => {
            let norm = norm
                .as_ref()
                .expect("clip accepted a norm type norms refused");
            assert!(norm.nonfinite.is_none());
            assert_eq!(c.total_norm.to_bits(), norm.total_norm.to_bits());
            assert!(c.clip_coef > 0.0 && c.clip_coef <= 1.0);
            assert_eq!(c.clipped, c.clip_coef < 1.0);
            let mut out = Vec::new();
            c.write_to(data, &layout, &mut out).expect("write to a Vec");
            assert_eq!(out.len(), data.len());
            assert_eq!(out[..layout.data_start], data[..layout.data_start]);
            if !c.rewrites_data() {
                assert!(out == data, "f32(clip_coef) == 1 must copy bit for bit");
            }
            let again = st::parse(&out).expect("clipped output parses");
            assert_eq!(again, layout);
            let after = st::norms(&out, &again, NormType::L2).expect("norms of the output");
            assert!(
                after.nonfinite.is_none(),
                "clipping made a non-finite value"
            );
            check_changed_source(data, &layout, &c);
        }
        Err(StError::NonFinite(l)) => {
            let norm = norm
                .as_ref()
                .expect("clip found a NaN where norms refused the type");
            let first = norm
                .nonfinite
                .as_ref()
                .expect("clip saw a non-finite element, norm did not");
            assert_eq!((l.tensor, l.index), (first.tensor, first.index));
        }
        Err(StError::Invalid(Error::NormOverflow { .. })) => {
            assert!(norm.is_none(), "clip refused a norm type norms accepted");
        }
        Err(e) => panic!("unexpected clip error on a valid file: {e}"),
    }
}

/// A source that differs from what [`st::clip`] measured: the write pass must refuse it. A file
/// that lost its last byte gives `StError::Read`; a NaN written over the first element of the
/// first non-empty tensor gives `StError::Changed` naming that tensor (a NaN always changes the
/// tensor's partial).
fn check_changed_source(data: &[u8], layout: &st::Layout, c: &st::Clipped) {
    let Some(t) = layout.tensors.iter().find(|t| t.end > t.start) else {
        return;
    };
    let mut out = Vec::new();
    match c.write_to(&data[..data.len() - 1], layout, &mut out) {
        Err(StError::Read { .. }) => {}
        r => panic!("a truncated source: {r:?}"),
    }
    let mut changed = data.to_vec();
    let at = layout.data_start + t.start;
    let nan: &[u8] = match t.dtype {
        gradclip::DType::F32 => &[0x01, 0x00, 0xC0, 0x7F],
        gradclip::DType::F16 => &[0x01, 0x7E],
        gradclip::DType::BF16 => &[0xC1, 0x7F],
    };
    changed[at..at + nan.len()].copy_from_slice(nan);
    out.clear();
    match c.write_to(&changed, layout, &mut out) {
        Err(StError::Changed { name }) => assert_eq!(name, t.name),
        r => panic!("a NaN written over the data: {r:?}"),
    }
}

/// The `safetensors` crate's own validation of a file: every file `gradclip::st::parse` accepts
/// must pass it too.
fn check_with_safetensors_crate(bytes: &[u8]) -> Result<(), String> {
    safetensors::SafeTensors::read_metadata(bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
