//! A small seeded random number generator, so that every toolkit initializer and the demo are
//! reproducible bit for bit on every platform (same seed ⇒ same numbers).
//!
//! - State: xoshiro256** (Blackman & Vigna), 256 bits, period 2^256 − 1.
//! - Seeding: the four state words are the first outputs of SplitMix64 started at `seed`, so any
//!   `u64` (including 0) gives a valid, well-mixed state.
//! - Uniform f64 in [0, 1): the top 53 bits of a draw times 2^-53.
//! - Normal N(0, 1): the Box–Muller transform `sqrt(-2 ln u1) · cos(2π u2)` with
//!   `u1 ∈ (0, 1]`; the paired sine value is kept for the next call.
//!
//! Hand-rolled rather than taken from `rand` to keep the library's dependencies lean and the
//! streams fixed forever (a crate upgrade cannot change the demo's numbers).
//!
//! ```
//! use gradclip::rng::Rng;
//! let mut a = Rng::new(7);
//! let mut b = Rng::new(7);
//! assert_eq!(a.normal(), b.normal());
//! let u = a.uniform();
//! assert!((0.0..1.0).contains(&u));
//! ```

/// xoshiro256** seeded by SplitMix64, with uniform and Gaussian draws.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    spare_normal: Option<f64>,
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng {
            s,
            spare_normal: None,
        }
    }

    /// An independent-looking generator derived from this seed and a stream number (used to give
    /// each training run or each worker its own stream).
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng::new(splitmix64(&mut x))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..n` (returns 0 when `n == 0`). Uses Lemire's multiply-shift with
    /// rejection, so it is exactly uniform.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// Standard normal N(0, 1) by Box–Muller.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// Fills `out` with N(0, std²) values rounded to f32.
    pub fn fill_normal_f32(&mut self, out: &mut [f32], std: f64) {
        for x in out {
            *x = (self.normal() * std) as f32;
        }
    }

    /// Fills `out` with N(0, std²) values.
    pub fn fill_normal_f64(&mut self, out: &mut [f64], std: f64) {
        for x in out {
            *x = self.normal() * std;
        }
    }
}
