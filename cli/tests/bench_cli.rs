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
