//! `gradclip demo` in its short mode (few steps): it runs, writes its figures and tables, and the
//! qualitative outcome holds — without clipping the σ = 1.5 run blows up (NaN/inf) after the
//! monitor fired; with clipping it stays finite and the loss falls.
#![cfg(all(feature = "cli", feature = "linalg"))]

use std::process::Command;

use gradclip::monitor::MonitorConfig;
use gradclip::rnn::{train, Defences, MarkerLayout, RecurrentInit, TrainConfig};

struct Row {
    key: String,
    final_mse: f64,
    nan_step: Option<usize>,
    first_alert: Option<usize>,
}

fn parse_runs(csv: &str) -> Vec<Row> {
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let opt = |s: &str| (!s.is_empty()).then(|| s.parse().unwrap());
            Row {
                key: f[0].to_string(),
                final_mse: f[3].parse().unwrap(),
                nan_step: opt(f[5]),
                first_alert: opt(f[8]),
            }
        })
        .collect()
}

#[test]
fn demo_short_mode_shows_the_effect() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gradclip"))
        .args(["demo", "--steps", "80", "--max-eigen-h", "64", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in [
        "1. Gradient flow",
        "2. Training runs",
        "3. Largest |eigenvalue|",
        "4. Advisor",
    ] {
        assert!(stdout.contains(section), "missing {section}");
    }
    for f in ["flow.svg", "norms.svg", "loss.svg", "runs.csv", "norms.csv"] {
        let meta = std::fs::metadata(dir.path().join(f)).unwrap();
        assert!(meta.len() > 100, "{f}");
    }
    let svg = std::fs::read_to_string(dir.path().join("norms.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let runs = parse_runs(&std::fs::read_to_string(dir.path().join("runs.csv")).unwrap());
    assert_eq!(runs.len(), 6);
    let a = &runs[0];
    assert_eq!(a.key, "a");
    let nan = a.nan_step.expect("(a) hits NaN/inf");
    assert!(a.first_alert.unwrap() < nan, "the monitor fires first");
    for r in &runs[1..] {
        assert_eq!(r.nan_step, None, "({}) stays finite", r.key);
        assert!(
            r.final_mse.is_finite() && r.final_mse < 0.5,
            "({}) {}",
            r.key,
            r.final_mse
        );
    }
}

#[test]
fn demo_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradclip"))
        .args([
            "demo",
            "--steps",
            "0",
            "--out",
            "/nonexistent-dir-never-used",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

fn config(defences: Defences, steps: usize) -> TrainConfig {
    TrainConfig {
        hidden: 32,
        seq_len: 30,
        batch: 16,
        steps,
        lr: 0.05,
        seed: 3,
        init: RecurrentInit::ScaledOrthogonal(1.5),
        defences,
        eval_batch: 64,
        momentum: 0.0,
        layout: MarkerLayout::Early,
        monitor: MonitorConfig::default(),
    }
}

#[test]
fn training_is_reproducible_and_clipping_bounds_the_update() {
    let clip = Defences {
        clip_max_norm: Some(1.0),
        ..Defences::default()
    };
    let x = train(&config(clip, 40)).unwrap();
    let y = train(&config(clip, 40)).unwrap();
    assert_eq!(x.records, y.records, "same seed, same numbers");
    assert_eq!(x.final_model, y.final_model);
    assert!(x.records.iter().all(|r| r.grad_norm.is_finite()));
    assert!(x.records.iter().any(|r| r.clipped));
    let e = x.eval.unwrap();
    assert!(e.loss < x.initial_eval.loss);
    // Truncated BPTT: no gradient reaches the markers (all ≥ 15 steps back, k = 10).
    let tbptt = Defences {
        bptt_horizon: Some(10),
        ..clip
    };
    let t = train(&config(tbptt, 10)).unwrap();
    assert!(t.records.iter().all(|r| r.marker_grad == 0.0));
    assert!(x.records.iter().all(|r| r.marker_grad > 0.0));
    let bad = TrainConfig {
        lr: -1.0,
        ..config(clip, 1)
    };
    assert!(train(&bad).is_err());
}

#[test]
fn training_does_not_depend_on_the_thread_count() {
    let spec = Defences {
        clip_max_norm: Some(1.0),
        spectral_norm: true,
        ..Defences::default()
    };
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| train(&config(spec, 15)).unwrap())
    };
    let one = run(1);
    let three = run(3);
    assert_eq!(one.records, three.records);
    assert_eq!(one.final_model, three.final_model);
}
