//! Helpers shared by the adapter's tests: seeded data, gradient stores, bit views.
#![allow(dead_code)]

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use gradclip::{bf16, f16, GradMut};

/// A small xorshift generator: the tests' data is the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A value of either sign over a wide dynamic range (2^-12 .. 2^12).
    pub fn wide(&mut self) -> f32 {
        let e = (self.next_u64() % 25) as i32 - 12;
        self.uniform() * 2f32.powi(e)
    }

    pub fn normal(&mut self) -> f32 {
        // Sum of uniforms: close enough to a normal for initialisation and data.
        (0..6).map(|_| self.uniform()).sum::<f32>() / 6f32.sqrt() * 3f32.sqrt()
    }
}

/// A CPU tensor of `dtype` with `n` values from `rng.wide()`, shaped `shape`.
pub fn wide_tensor(rng: &mut Rng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.wide()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// Vars of the given shapes and dtypes (their values do not matter to clipping).
pub fn vars(specs: &[(&[usize], DType)]) -> Result<Vec<Var>> {
    specs
        .iter()
        .map(|(shape, dtype)| Var::zeros(*shape, *dtype, &Device::Cpu))
        .collect()
}

/// A store holding `grads[i]` for `vars[i]` (a `None` leaves the var without a gradient).
pub fn store(vars: &[Var], grads: &[Option<Tensor>]) -> GradStore {
    let mut s = GradStore::default();
    for (v, g) in vars.iter().zip(grads) {
        if let Some(g) = g {
            s.insert(v, g.clone());
        }
    }
    s
}

/// The elements of `t` in row-major order as raw bits (f32: 32 bits, f16/bf16: 16 bits).
pub fn bits(t: &Tensor) -> Result<Vec<u32>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.iter().map(|x| x.to_bits()).collect(),
        DType::F16 => flat
            .to_vec1::<f16>()?
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
        DType::BF16 => flat
            .to_vec1::<bf16>()?
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
        // Other dtypes only need "unchanged" checks: through f64 (exact for the values used).
        _ => flat
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .map(|x| (x.to_bits() >> 32) as u32 ^ x.to_bits() as u32)
            .collect(),
    })
}

/// The gradient of `v`, as bits.
pub fn grad_bits(grads: &GradStore, v: &Var) -> Result<Vec<u32>> {
    bits(grads.get(v).expect("a gradient"))
}

/// A gradient copied out of candle into a plain vector, to run the Rust API on the same data.
pub enum Owned {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Owned {
    pub fn of(t: &Tensor) -> Result<Owned> {
        let flat = t.flatten_all()?;
        Ok(match t.dtype() {
            DType::F32 => Owned::F32(flat.to_vec1()?),
            DType::F16 => Owned::F16(flat.to_vec1()?),
            DType::BF16 => Owned::BF16(flat.to_vec1()?),
            other => panic!("owned {other:?}"),
        })
    }

    pub fn grad_mut(&mut self) -> GradMut<'_> {
        match self {
            Owned::F32(v) => GradMut::from(v),
            Owned::F16(v) => GradMut::from(v),
            Owned::BF16(v) => GradMut::from(v),
        }
    }

    pub fn bits(&self) -> Vec<u32> {
        match self {
            Owned::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            Owned::F16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
            Owned::BF16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
        }
    }
}

/// The exact-enough reference norm of candle's own ops: `sqrt(Σ to_dtype(F64).sqr().sum_all())`.
pub fn candle_l2_f64(ts: &[&Tensor]) -> Result<f64> {
    let mut sum = 0.0;
    for t in ts {
        sum += t
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// `g * f32(coef)` with candle's ops, rounded once into `g`'s dtype: f32 multiplies directly
/// (`broadcast_mul` by an f32 scalar tensor); f16/bf16 widen to f32, multiply, and narrow.
pub fn candle_scaled(g: &Tensor, coef: f64) -> Result<Tensor> {
    let c = Tensor::new(coef as f32, &Device::Cpu)?;
    match g.dtype() {
        DType::F32 => g.broadcast_mul(&c),
        dt => g.to_dtype(DType::F32)?.broadcast_mul(&c)?.to_dtype(dt),
    }
}

/// Asserts equal bit vectors, printing only the first difference.
#[track_caller]
pub fn assert_same_bits(got: &[u32], expected: &[u32], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!(
            "{what}: first difference at {i}: {:#x} vs {:#x}",
            got[i], expected[i]
        );
    }
}
