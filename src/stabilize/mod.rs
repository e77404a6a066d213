//! Stabilisation against exploding gradients: spectral norm by power iteration and spectral
//! normalization, seeded initialisers (orthogonal, Xavier, zeros), and the spectral radius of
//! square matrices. Pure computation: nothing prints.

mod init;
mod spectral;
mod spectrum;

#[cfg(feature = "linalg")]
pub use init::orthogonal_;
pub use init::{normal_, xavier_uniform_, zeros_};
pub use spectral::{
    set_spectral_norm_, spectral_normalize_, MatElem, SpectralNorm, SpectralNormApi,
    PARALLEL_MIN_ELEMS, SPECTRAL_EPS,
};
#[cfg(feature = "linalg")]
pub use spectrum::spectral_radius_exact;
pub use spectrum::spectral_radius_power;
