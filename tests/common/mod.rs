//! Shared helpers for the integration tests.
#![allow(dead_code)]

use gradclip::{bf16, f16, Grad, GradMut};

/// Scales a size down under miri, where every element costs microseconds.
pub fn sized(n: usize) -> usize {
    if cfg!(miri) {
        (n / 64).max(1)
    } else {
        n
    }
}

/// Values that stress the kernels: zeros of both signs, subnormals, the extremes, ordinary values.
pub fn adversarial_f32() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        f32::from_bits(1), // 1.4e-45
        -f32::from_bits(1),
        f32::from_bits(0x007F_FFFF), // largest subnormal
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        1.0,
        -1.0,
        1e-20,
        3.0e19,
        -7.5,
        0.1,
        65504.0,
        6.0e-8,
    ]
}

/// A deterministic pseudo-random f32 (xorshift) spread over many binades.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1) times 2^k for k in [-20, 14] (inside the f16 range).
    pub fn f32(&mut self) -> f32 {
        let r = self.next_u64();
        let u = ((r >> 40) as f32) / (1u64 << 24) as f32 * 2.0 - 1.0;
        let k = ((r & 0x3F) % 35) as i32 - 20;
        u * 2f32.powi(k)
    }
    pub fn vec_f32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

pub fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}
pub fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// Owned buffer of any dtype, for building Grad/GradMut views in tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Buf {
    pub fn grad(&self) -> Grad<'_> {
        match self {
            Buf::F32(v) => Grad::from(v),
            Buf::F16(v) => Grad::from(v),
            Buf::BF16(v) => Grad::from(v),
        }
    }
    pub fn grad_mut(&mut self) -> GradMut<'_> {
        match self {
            Buf::F32(v) => GradMut::from(v),
            Buf::F16(v) => GradMut::from(v),
            Buf::BF16(v) => GradMut::from(v),
        }
    }
    /// The same values converted to each dtype.
    pub fn all_dtypes(v: &[f32]) -> [Buf; 3] {
        [
            Buf::F32(v.to_vec()),
            Buf::F16(to_f16(v)),
            Buf::BF16(to_bf16(v)),
        ]
    }
    /// Bit patterns, for exact comparison (NaN payloads included).
    pub fn bits(&self) -> Vec<u32> {
        match self {
            Buf::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            Buf::F16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
            Buf::BF16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
        }
    }
}

pub fn rel_err(got: f64, want: f64) -> f64 {
    if got == want {
        0.0
    } else {
        ((got - want) / want).abs()
    }
}
