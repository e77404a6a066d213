//! The roofline of `gradclip clip`'s write path, measured beside it in the same run.
//!
//! Not a test and not part of the binary: a measuring tool for notes/clip-write.md.
//!
//! ```text
//! clip_roofline read FILE [--piece BYTES]
//!     read FILE once in pieces (1 MiB by default) and drop the bytes
//! clip_roofline scale FILE OUT [--piece BYTES] [--fsync] [--copy]
//!     copy FILE's head (length and header) and then read its data in pieces, multiply each
//!     piece's f32 words by a constant (not with --copy), write the piece to a new temporary
//!     file in OUT's folder; with --fsync, fsync it, rename it to OUT and fsync the folder;
//!     without, rename it: what a careful, single-threaded program must do at the least
//! clip_roofline compare --file FILE --out OUT [--rounds N] [--fsync] [--copy] [--settle]
//!                       [--piece BYTES] [--cmd 'LABEL=SHELL COMMAND']...
//!     N rounds; each round runs, as whole processes, the plain read, the roofline
//!     (`scale`) and every command, in an order rotated from round to round, removing OUT
//!     before each run that writes and, with --settle, running `sync` before every run (neither
//!     is timed: on a disk, the previous run's data is not left to write back); prints each round's times
//!     and, per row, the median, min and max of `roofline time / row time` over the rounds
//! ```
//!
//! Ratios, not times: the machine is shared and its speed drifts, so only figures measured in
//! the same round mean something. A ratio of 1 means as fast as the roofline.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!(
        "usage: clip_roofline read FILE [--piece B] | scale FILE OUT [--piece B] [--fsync] [--copy]\n\
         \x20      | compare --file FILE --out OUT [--rounds N] [--fsync] [--copy] [--settle] [--piece B] [--cmd 'LABEL=CMD']..."
    );
    ExitCode::from(2)
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
fn fill(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_only(file: &Path, piece: usize) -> std::io::Result<u64> {
    let mut f = File::open(file)?;
    let mut buf = vec![0u8; piece];
    let mut total = 0u64;
    loop {
        let n = fill(&mut f, &mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn scale(file: &Path, out: &Path, piece: usize, fsync: bool, copy: bool) -> std::io::Result<()> {
    let mut f = File::open(file)?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".roofline-{}.tmp", std::process::id()));
    let mut w = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    // The head (the 8-byte length and the JSON header) as it is, as gradclip writes it, so the
    // data goes to the same offsets.
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let mut head = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut head)?;
    w.write_all(&len)?;
    w.write_all(&head)?;
    // f32 words, so the scaling loop vectorises; read into as bytes.
    let mut words = vec![0f32; piece / 4];
    let c = std::hint::black_box(0.5f32);
    loop {
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let n = fill(&mut f, buf)?;
        if n == 0 {
            break;
        }
        if !copy {
            words[..n / 4].iter_mut().for_each(|x| *x *= c);
        }
        w.write_all(&bytemuck::cast_slice::<f32, u8>(&words)[..n])?;
    }
    if fsync {
        w.sync_all()?;
    }
    drop(w);
    std::fs::rename(&tmp, out)?;
    if fsync {
        // The new name, durable too.
        File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn piece(args: &[String]) -> usize {
    value(args, "--piece")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20)
}

struct Row {
    label: String,
    /// What runs: argv of this program (the read and the roofline) or a shell command.
    run: Vec<String>,
    shell: bool,
    writes: bool,
    times: Vec<f64>,
}

fn timed(row: &Row) -> f64 {
    let mut c = if row.shell {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&row.run[0]);
        c
    } else {
        let mut c = Command::new(&row.run[0]);
        c.args(&row.run[1..]);
        c
    };
    c.stdout(std::process::Stdio::null());
    let t = Instant::now();
    let status = c.status().expect("cannot start a command");
    let s = t.elapsed().as_secs_f64();
    assert!(status.success(), "`{}` failed: {status}", row.label);
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn compare(args: &[String]) -> ExitCode {
    let (Some(file), Some(out)) = (value(args, "--file"), value(args, "--out")) else {
        return usage();
    };
    let rounds: usize = value(args, "--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let settle = flag(args, "--settle");
    let me = std::env::current_exe()
        .expect("own path")
        .display()
        .to_string();
    let piece = piece(args).to_string();
    let mut roof = vec![me.clone(), "scale".into(), file.into(), out.into()];
    roof.extend(["--piece".into(), piece.clone()]);
    for f in ["--fsync", "--copy"] {
        if flag(args, f) {
            roof.push(f.into());
        }
    }
    let mut rows = vec![
        Row {
            label: "roofline".into(),
            run: roof,
            shell: false,
            writes: true,
            times: vec![],
        },
        Row {
            label: "read".into(),
            run: vec![me, "read".into(), file.into(), "--piece".into(), piece],
            shell: false,
            writes: false,
            times: vec![],
        },
    ];
    for (i, a) in args.iter().enumerate() {
        if a == "--cmd" {
            let Some((label, cmd)) = args.get(i + 1).and_then(|c| c.split_once('=')) else {
                return usage();
            };
            rows.push(Row {
                label: label.into(),
                run: vec![cmd.into()],
                shell: true,
                writes: true,
                times: vec![],
            });
        }
    }
    let n = rows.len();
    println!(
        "# {} rounds, whole processes, order rotated per round; times in s",
        rounds
    );
    println!(
        "# round  {}",
        rows.iter()
            .map(|r| format!("{:>12}", r.label))
            .collect::<String>()
    );
    for round in 0..rounds {
        for k in 0..n {
            let row = &mut rows[(round + k) % n];
            if row.writes {
                let _ = std::fs::remove_file(out);
            }
            if settle {
                // Nothing of the previous run is left to write back when this one starts.
                let _ = Command::new("sync").status();
            }
            let t = timed(row);
            row.times.push(t);
        }
        println!(
            "  {round:5}  {}",
            rows.iter()
                .map(|r| format!("{:>12.3}", r.times[round]))
                .collect::<String>()
        );
    }
    let _ = std::fs::remove_file(out);
    println!("# row: median time; roofline time / row time over the rounds: median [min, max]");
    let roof_times = rows[0].times.clone();
    for r in &rows {
        let mut ratios: Vec<f64> = roof_times
            .iter()
            .zip(&r.times)
            .map(|(a, b)| a / b)
            .collect();
        let mut t = r.times.clone();
        let m = median(&mut t);
        let rm = median(&mut ratios);
        println!(
            "{:>14}: {:7.3} s  ratio {:5.2} [{:5.2}, {:5.2}]",
            r.label,
            m,
            rm,
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        return usage();
    };
    let r = match mode.as_str() {
        "read" => match args.get(1) {
            Some(f) => read_only(Path::new(f), piece(&args)).map(|_| ()),
            None => return usage(),
        },
        "scale" => match (args.get(1), args.get(2)) {
            (Some(f), Some(o)) => scale(
                Path::new(f),
                Path::new(o),
                piece(&args),
                flag(&args, "--fsync"),
                flag(&args, "--copy"),
            ),
            _ => return usage(),
        },
        "compare" => return compare(&args[1..]),
        _ => return usage(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "clip_roofline: {e}");
            ExitCode::from(1)
        }
    }
}
