//! [`GradientMonitor`]: per-step detection of the symptoms of exploding gradients.
//!
//! Fed once per step with an [`Observation`] (the total gradient norm and, optionally, the largest
//! per-buffer norm, the loss and the parameter norm), it returns a [`Verdict`]: a set of
//! [`Symptom`]s plus a spike score. The rules, with their defaults ([`MonitorConfig::default`]):
//!
//! | symptom | rule |
//! |---|---|
//! | [`Symptom::NonFinite`] | any observed value is NaN or ±inf |
//! | [`Symptom::Explosion`] | `‖g‖ > alert_threshold` (100) |
//! | [`Symptom::RapidGrowth`] | more than `growth_window` (10) norms seen and, over the last `growth_window` norms, `last / (first + 1e-8) > growth_factor` (100) |
//! | [`Symptom::LossSpike`] | after `warmup` losses: `z_loss > loss_spike_z` (4) and `loss > loss_spike_ratio · μ_loss` (2) |
//! | [`Symptom::ParameterDivergence`] | `‖θ‖ > param_divergence_factor · ‖θ‖_first` (10) |
//! | [`Symptom::OscillatingLoss`] | over the last `oscillation_window` (10) losses, at least all but one consecutive pair of differences change sign and the mean `|Δloss|` exceeds `oscillation_amplitude · mean(loss)` (0.5) |
//!
//! The growth rule is the reference detector's (`history[-1] / (history[-10] + 1e-8) > 100` once
//! more than 10 norms were seen).
//!
//! Spike score: the z-score of `ln ‖g‖` against exponential moving statistics of the previous
//! steps (`μ ← β μ + (1 − β) x`, `v ← β v + (1 − β)(x − μ)²`, β = `ema_beta` = 0.95),
//! `z = (ln ‖g‖ − μ) / (√v + 1e-6)`. Logarithms make the score scale-free (a 10× jump scores the
//! same at norm 0.1 and at norm 1000); zero norms are taken as `f64::MIN_POSITIVE`.
//!
//! Memory is O(`growth_window` + `oscillation_window`), allocated in [`GradientMonitor::new`];
//! [`GradientMonitor::observe`] allocates nothing.
//!
//! ```
//! use gradclip::monitor::{GradientMonitor, MonitorConfig, Observation, Symptom};
//! let mut m = GradientMonitor::new(MonitorConfig::default()).unwrap();
//! assert!(m.observe(Observation::norm(1.0)).is_healthy());
//! let v = m.observe(Observation::norm(250.0));
//! assert!(v.symptoms.contains(Symptom::Explosion));
//! assert!(m.observe(Observation::norm(f64::NAN)).symptoms.contains(Symptom::NonFinite));
//! ```

use super::ring::{EmaStats, Ring};
use crate::toolkit_error::ToolkitError;

/// One symptom of the reference text's table (plus the two norm rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Symptom {
    /// A NaN or ±inf in the norm, the loss or the parameter norm.
    NonFinite,
    /// The total norm is above the alert threshold.
    Explosion,
    /// The norm grew by more than `growth_factor` over the growth window.
    RapidGrowth,
    /// The loss jumped far above its recent average.
    LossSpike,
    /// The parameter norm grew far above its first value.
    ParameterDivergence,
    /// The loss alternates up and down with a large amplitude.
    OscillatingLoss,
}

impl Symptom {
    /// Every symptom, most severe first.
    pub const ALL: [Symptom; 6] = [
        Symptom::NonFinite,
        Symptom::Explosion,
        Symptom::RapidGrowth,
        Symptom::LossSpike,
        Symptom::ParameterDivergence,
        Symptom::OscillatingLoss,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// A short lowercase name (`"non-finite"`, `"explosion"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Symptom::NonFinite => "non-finite",
            Symptom::Explosion => "explosion",
            Symptom::RapidGrowth => "rapid growth",
            Symptom::LossSpike => "loss spike",
            Symptom::ParameterDivergence => "parameter divergence",
            Symptom::OscillatingLoss => "oscillating loss",
        }
    }
}

/// A set of [`Symptom`]s (a bit mask; `Copy`, no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Symptoms(u8);

impl Symptoms {
    /// The empty set.
    pub const NONE: Symptoms = Symptoms(0);

    /// Adds `s`.
    pub fn insert(&mut self, s: Symptom) {
        self.0 |= s.bit();
    }

    /// True when `s` is in the set.
    pub fn contains(self, s: Symptom) -> bool {
        self.0 & s.bit() != 0
    }

    /// True when the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, most severe first.
    pub fn iter(self) -> impl Iterator<Item = Symptom> {
        Symptom::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

/// Thresholds of [`GradientMonitor`]; see the module docs for the rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorConfig {
    /// Total norm above which [`Symptom::Explosion`] fires (default 100).
    pub alert_threshold: f64,
    /// Number of norms compared by the growth rule (default 10, at least 2).
    pub growth_window: usize,
    /// Growth factor over the window above which [`Symptom::RapidGrowth`] fires (default 100).
    pub growth_factor: f64,
    /// Decay of the moving statistics of the spike score and the loss (default 0.95).
    pub ema_beta: f64,
    /// Losses seen before the loss-spike rule may fire, and norms seen before the spike score is
    /// reported (default 10).
    pub warmup: u64,
    /// z-score of the loss above which a spike may fire (default 4).
    pub loss_spike_z: f64,
    /// Ratio of the loss to its moving mean above which a spike may fire (default 2).
    pub loss_spike_ratio: f64,
    /// Ratio of the parameter norm to its first value that counts as divergence (default 10).
    pub param_divergence_factor: f64,
    /// Number of losses looked at by the oscillation rule (default 10, at least 4).
    pub oscillation_window: usize,
    /// Mean |Δloss| relative to the mean loss needed for oscillation (default 0.5).
    pub oscillation_amplitude: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            alert_threshold: 100.0,
            growth_window: 10,
            growth_factor: 100.0,
            ema_beta: 0.95,
            warmup: 10,
            loss_spike_z: 4.0,
            loss_spike_ratio: 2.0,
            param_divergence_factor: 10.0,
            oscillation_window: 10,
            oscillation_amplitude: 0.5,
        }
    }
}

impl MonitorConfig {
    fn validate(&self) -> Result<(), ToolkitError> {
        let positive = |name, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ToolkitError::param(name, v, "a finite number > 0"))
            }
        };
        positive("alert_threshold", self.alert_threshold)?;
        positive("growth_factor", self.growth_factor)?;
        positive("loss_spike_z", self.loss_spike_z)?;
        positive("loss_spike_ratio", self.loss_spike_ratio)?;
        positive("param_divergence_factor", self.param_divergence_factor)?;
        positive("oscillation_amplitude", self.oscillation_amplitude)?;
        if !(0.0..1.0).contains(&self.ema_beta) {
            return Err(ToolkitError::param("ema_beta", self.ema_beta, "in [0, 1)"));
        }
        if self.growth_window < 2 {
            return Err(ToolkitError::param(
                "growth_window",
                self.growth_window as f64,
                "at least 2",
            ));
        }
        if self.oscillation_window < 4 {
            return Err(ToolkitError::param(
                "oscillation_window",
                self.oscillation_window as f64,
                "at least 4",
            ));
        }
        Ok(())
    }
}

/// What one training step measured. Build with [`Observation::norm`] and the `with_*` methods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// The total gradient norm (before clipping).
    pub total_norm: f64,
    /// The largest single-buffer gradient norm, if known (reported back, checked for NaN).
    pub max_buffer_norm: Option<f64>,
    /// The training loss, if known.
    pub loss: Option<f64>,
    /// The norm of all parameters, if known.
    pub param_norm: Option<f64>,
}

impl Observation {
    /// An observation of the total norm only.
    pub fn norm(total_norm: f64) -> Self {
        Observation {
            total_norm,
            max_buffer_norm: None,
            loss: None,
            param_norm: None,
        }
    }

    /// Adds the largest per-buffer norm.
    pub fn with_max_buffer_norm(mut self, v: f64) -> Self {
        self.max_buffer_norm = Some(v);
        self
    }

    /// Adds the loss.
    pub fn with_loss(mut self, v: f64) -> Self {
        self.loss = Some(v);
        self
    }

    /// Adds the parameter norm.
    pub fn with_param_norm(mut self, v: f64) -> Self {
        self.param_norm = Some(v);
        self
    }
}

/// The monitor's judgement of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// 0-based index of the step (number of observations before this one).
    pub step: u64,
    /// What fired; empty when healthy.
    pub symptoms: Symptoms,
    /// The observed total norm.
    pub total_norm: f64,
    /// The observed largest per-buffer norm.
    pub max_buffer_norm: Option<f64>,
    /// `last / (first + 1e-8)` over the growth window, once the window is full.
    pub growth: Option<f64>,
    /// z-score of `ln ‖g‖` against the moving statistics of the previous steps (0 during the
    /// first `warmup` finite norms).
    pub spike_score: f64,
    /// z-score of the loss against its moving statistics, when a loss was given.
    pub loss_z: Option<f64>,
}

impl Verdict {
    /// True when no symptom fired.
    pub fn is_healthy(&self) -> bool {
        self.symptoms.is_empty()
    }

    /// The most severe symptom, if any.
    pub fn worst(&self) -> Option<Symptom> {
        self.symptoms.iter().next()
    }
}

/// Detector of exploding gradients; see the module docs.
#[derive(Debug, Clone)]
pub struct GradientMonitor {
    config: MonitorConfig,
    steps: u64,
    norms_seen: u64,
    norms: Ring,
    losses: Ring,
    log_norm_stats: EmaStats,
    loss_stats: EmaStats,
    first_param_norm: Option<f64>,
    alerts: u64,
    first_alert: Option<u64>,
}

impl GradientMonitor {
    /// A monitor with the given thresholds (rejects non-positive thresholds and tiny windows).
    pub fn new(config: MonitorConfig) -> Result<Self, ToolkitError> {
        config.validate()?;
        Ok(GradientMonitor {
            config,
            steps: 0,
            norms_seen: 0,
            norms: Ring::new(config.growth_window),
            losses: Ring::new(config.oscillation_window),
            log_norm_stats: EmaStats::new(config.ema_beta),
            loss_stats: EmaStats::new(config.ema_beta),
            first_param_norm: None,
            alerts: 0,
            first_alert: None,
        })
    }

    /// The thresholds in use.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Number of steps observed.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Number of unhealthy verdicts so far.
    pub fn alerts(&self) -> u64 {
        self.alerts
    }

    /// The step of the first unhealthy verdict.
    pub fn first_alert(&self) -> Option<u64> {
        self.first_alert
    }

    /// Judges one step and folds it into the history. O(1), no allocation.
    pub fn observe(&mut self, obs: Observation) -> Verdict {
        let cfg = self.config;
        let step = self.steps;
        self.steps += 1;
        let mut symptoms = Symptoms::NONE;
        let mut growth = None;
        let mut spike_score = 0.0;
        let mut loss_z = None;

        let any_nonfinite = !obs.total_norm.is_finite()
            || obs.max_buffer_norm.is_some_and(|v| !v.is_finite())
            || obs.loss.is_some_and(|v| !v.is_finite())
            || obs.param_norm.is_some_and(|v| !v.is_finite());
        if any_nonfinite {
            symptoms.insert(Symptom::NonFinite);
        }

        let g = obs.total_norm;
        if g.is_finite() {
            if g > cfg.alert_threshold {
                symptoms.insert(Symptom::Explosion);
            }
            let lg = g.max(f64::MIN_POSITIVE).ln();
            if self.log_norm_stats.count() >= cfg.warmup {
                spike_score = self.log_norm_stats.z(lg, 1e-6);
            }
            self.log_norm_stats.update(lg);
            self.norms.push(g);
            self.norms_seen += 1;
            if self.norms.is_full() {
                let (first, last) = (self.norms.first(), self.norms.last());
                if let (Some(first), Some(last)) = (first, last) {
                    let rate = last / (first + 1e-8);
                    growth = Some(rate);
                    if self.norms_seen > cfg.growth_window as u64 && rate > cfg.growth_factor {
                        symptoms.insert(Symptom::RapidGrowth);
                    }
                }
            }
        }

        if let Some(loss) = obs.loss.filter(|l| l.is_finite()) {
            let z = self.loss_stats.z(loss, 1e-12);
            loss_z = Some(z);
            if self.loss_stats.count() >= cfg.warmup
                && z > cfg.loss_spike_z
                && loss > cfg.loss_spike_ratio * self.loss_stats.mean()
            {
                symptoms.insert(Symptom::LossSpike);
            }
            self.loss_stats.update(loss);
            self.losses.push(loss);
            if self.losses.is_full() && self.oscillating() {
                symptoms.insert(Symptom::OscillatingLoss);
            }
        }

        if let Some(p) = obs.param_norm.filter(|p| p.is_finite()) {
            match self.first_param_norm {
                None => self.first_param_norm = Some(p),
                Some(p0) if p0 > 0.0 && p > cfg.param_divergence_factor * p0 => {
                    symptoms.insert(Symptom::ParameterDivergence);
                }
                Some(_) => {}
            }
        }

        if !symptoms.is_empty() {
            self.alerts += 1;
            self.first_alert.get_or_insert(step);
        }
        Verdict {
            step,
            symptoms,
            total_norm: g,
            max_buffer_norm: obs.max_buffer_norm,
            growth,
            spike_score,
            loss_z,
        }
    }

    fn oscillating(&self) -> bool {
        let n = self.losses.len();
        let mut flips = 0usize;
        let mut abs_diff = 0.0;
        let mut mean = 0.0;
        let mut prev_diff: Option<f64> = None;
        for i in 0..n {
            let x = self.losses.get(i).unwrap_or(0.0);
            mean += x.abs();
            if i > 0 {
                let d = x - self.losses.get(i - 1).unwrap_or(0.0);
                abs_diff += d.abs();
                if let Some(p) = prev_diff {
                    if p * d < 0.0 {
                        flips += 1;
                    }
                }
                prev_diff = Some(d);
            }
        }
        mean /= n as f64;
        let mean_abs_diff = abs_diff / (n - 1) as f64;
        // n - 1 differences give n - 2 consecutive pairs; allow one pair without a flip.
        flips + 1 >= n - 2 && mean_abs_diff > self.config.oscillation_amplitude * mean
    }

    /// Forgets the history (keeps the configuration and the allocation).
    pub fn reset(&mut self) {
        let cfg = self.config;
        self.steps = 0;
        self.norms_seen = 0;
        self.norms.clear();
        self.losses.clear();
        self.log_norm_stats = EmaStats::new(cfg.ema_beta);
        self.loss_stats = EmaStats::new(cfg.ema_beta);
        self.first_param_norm = None;
        self.alerts = 0;
        self.first_alert = None;
    }
}
