//! `gradclip bench --json`: one object per line, the documented keys in the documented order.

mod common;

use common::wait_at_most;
use std::process::Command;

use serde_json::Value;

const KEYS: [&str; 8] = [
    "op",
    "dtype",
    "bytes",
    "threads",
    "gbps",
    "roofline_gbps",
    "ratio_to_roofline",
    "naive_gbps",
];

#[test]
fn bench_json_lines_follow_the_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradclip"))
        .args(["bench", "--json", "--size", "65536", "--samples", "1"])
        .args(["--threads", "1", "--no-cache-rows"])
        .args([
            "--op",
            "norm_l2",
            "--op",
            "scale",
            "--op",
            "clip_noop",
            "--op",
            "clip",
        ])
        .output()
        .expect("run gradclip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // 3 ops in the schema × 3 dtypes; the full clip row is table-only.
    assert_eq!(lines.len(), 9, "{text}");
    for line in lines {
        // Keys appear in the documented order, spaced like norm/clip output.
        let mut at = 0;
        for k in KEYS {
            let pos = line[at..]
                .find(&format!("\"{k}\": "))
                .unwrap_or_else(|| panic!("{k} missing or out of order in {line}"));
            at += pos;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), KEYS.len(), "{line}");
        assert!(["norm_l2", "scale", "clip_noop"].contains(&o["op"].as_str().unwrap()));
        assert!(["f32", "f16", "bf16"].contains(&o["dtype"].as_str().unwrap()));
        assert_eq!(o["bytes"].as_u64(), Some(65536));
        assert_eq!(o["threads"].as_u64(), Some(1));
        let (g, r) = (
            o["gbps"].as_f64().unwrap(),
            o["roofline_gbps"].as_f64().unwrap(),
        );
        assert!(g > 0.0 && r > 0.0 && o["naive_gbps"].as_f64().unwrap() > 0.0);
        let ratio = o["ratio_to_roofline"].as_f64().unwrap();
        assert!((ratio - g / r).abs() <= 1e-12 * ratio);
    }
}

#[test]
fn exact_rows_are_json_rows_of_their_own() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradclip"))
        .args(["bench", "--json", "--size", "65536", "--samples", "1"])
        .args(["--threads", "1", "--no-cache-rows"])
        .args(["--op", "norm_l2_exact", "--op", "norm_l2_exact_adversarial"])
        .output()
        .expect("run gradclip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut ops: Vec<String> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v.as_object().unwrap().len(), KEYS.len(), "{l}");
            assert!(v["gbps"].as_f64().unwrap() > 0.0);
            format!(
                "{} {}",
                v["op"].as_str().unwrap(),
                v["dtype"].as_str().unwrap()
            )
        })
        .collect();
    ops.sort();
    assert_eq!(
        ops,
        [
            "norm_l2_exact bf16",
            "norm_l2_exact f16",
            "norm_l2_exact f32",
            "norm_l2_exact_adversarial bf16",
            "norm_l2_exact_adversarial f16",
            "norm_l2_exact_adversarial f32",
        ]
    );
}

#[test]
fn bench_rejects_bad_arguments_in_one_line() {
    for args in [
        vec!["bench", "--size", "12"],
        vec!["bench", "--threads", "0"],
        vec!["bench", "--op", "nope"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gradclip"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn every_command_help_has_an_example() {
    for cmd in ["demo", "norm", "clip", "bench"] {
        let out = Command::new(env!("CARGO_BIN_EXE_gradclip"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}");
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("Example"), "{cmd} --help has no example");
        assert!(help.contains(&format!("gradclip {cmd}")), "{cmd}");
    }
}

/// Runs gradclip with `args`, its stdout a pipe already closed by the reader (as `| head`
/// leaves it): every write fails with EPIPE.
fn run_into_closed_pipe(args: &[&str]) -> std::process::Output {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradclip"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    wait_at_most(child, 120)
}

#[test]
fn bench_sizes_are_bounded() {
    for args in [
        vec!["bench", "--size", "18446744073709551615"],
        vec!["bench", "--size", "68719476737"],
        vec!["bench", "--samples", "1000000"],
        vec!["bench", "--threads", "1000000"],
        vec!["bench", "--samples", "0"],
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_gradclip"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_at_most(child, 60);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn bench_into_a_closed_pipe_ends_quietly() {
    for json in [false, true] {
        let mut args = vec!["bench", "--size", "65536", "--samples", "1"];
        args.extend(["--threads", "1", "--no-cache-rows", "--op", "norm_l2"]);
        if json {
            args.push("--json");
        }
        let out = run_into_closed_pipe(&args);
        assert_eq!(out.status.code(), Some(0), "json {json}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Without `--op`, `--json` prints the rows of its documented schema only; the exact and
/// compute-roofline rows come when `--op` asks for them, with the same keys.
#[test]
fn json_schema_ops_by_default_compute_rows_on_request() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gradclip"))
            .args(["bench", "--json", "--size", "65536", "--samples", "1"])
            .args(["--threads", "1", "--no-cache-rows"])
            .args(extra)
            .output()
            .expect("run gradclip");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert_eq!(v.as_object().unwrap().len(), KEYS.len(), "{l}");
                v
            })
            .collect::<Vec<Value>>()
    };
    let schema = [
        "norm_l2",
        "norm_l1",
        "norm_inf",
        "scale",
        "clip_noop",
        "many_small",
    ];
    let rows = run(&[]);
    assert!(!rows.is_empty());
    for v in &rows {
        assert!(schema.contains(&v["op"].as_str().unwrap()), "{v}");
    }
    let rows = run(&["--op", "compute_roofline", "--dtype", "f16"]);
    let isas = gradclip::Isa::available();
    assert_eq!(rows.len(), isas.len());
    for (v, isa) in rows.iter().zip(&isas) {
        assert_eq!(v["op"], format!("compute_roofline_{}", isa.name()));
        assert_eq!(v["dtype"], "f16");
        assert_eq!(v["bytes"], 256 << 10, "measured in cache");
        assert!(v["gbps"].as_f64().unwrap() > 0.0);
    }
}

/// The table compares every sum row with the sums' compute roofline (a number) and leaves the
/// other rows blank ("-").
#[test]
fn table_reports_rows_against_both_rooflines() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradclip"))
        .args([
            "bench",
            "--size",
            "65536",
            "--samples",
            "1",
            "--threads",
            "1",
        ])
        .args(["--no-cache-rows", "--dtype", "bf16"])
        .args([
            "--op",
            "norm_l2",
            "--op",
            "norm_inf",
            "--op",
            "norm_l2_exact",
        ])
        .output()
        .expect("run gradclip");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("compute"), "{text}");
    let col = |op: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(op))
            .unwrap_or_else(|| panic!("no {op} row in {text}"));
        // op, dtype, size (two words), threads, GB/s, roofline, ratio, compute
        line.split_whitespace().nth(8).unwrap().to_string()
    };
    assert!(col("norm_l2").parse::<f64>().unwrap() > 0.0);
    assert!(col("norm_l2_exact").parse::<f64>().unwrap() > 0.0);
    assert_eq!(col("norm_inf"), "-");
}
