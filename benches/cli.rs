//! `swarmexec run` against running the program directly: `cargo bench --bench cli`.
//!
//! - `cli_true`: `swarmexec run -q -- /bin/true`; `direct_true`: `/bin/true`.
//! - `cli_stream`: 200 MB of `yes` through the command into a pipe the bench reads
//!   and discards; `direct_stream`: the same program run directly.
//!
//! Rows alternate within one run, so that both see the same machine. Where
//! `taskset` can, the stream rows run their command on CPU 0 while the bench reads
//! on CPU 1: left to the scheduler, where `yes`, `head` and the reader land
//! (together or apart) alone moves a run between 0.1 and 0.2 s on two CPUs, which
//! drowns what swarmexec adds; placed, both rows do the same work the same way.
//! `-- --json` prints one JSON object per row.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_swarmexec");
const TRUE_ROUNDS: usize = 300;
const STREAM_ROUNDS: usize = 25;
const STREAM: &str = "yes | head -c 200000000";

/// Runs `program args` with stdout read and discarded; returns the nanoseconds.
fn timed(program: &str, args: &[&str]) -> f64 {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = vec![0; 1 << 16];
    let mut total = 0;
    while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(child.wait().expect("wait").success());
    let elapsed = start.elapsed().as_nanos() as f64;
    assert!(total == 0 || total == 200_000_000, "{total} bytes");
    elapsed
}

/// Moves this (single-threaded) bench to CPU 1; false where it cannot (one CPU,
/// no `taskset`), and then nothing is placed.
fn place_reader_on_cpu_1() -> bool {
    let pid = std::process::id().to_string();
    Command::new("taskset")
        .args(["-cp", "1", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let (mut cli_true, mut direct_true, mut cli_stream, mut direct_stream) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..10 {
        timed(BIN, &["run", "-q", "--", "/bin/true"]);
    }
    for _ in 0..TRUE_ROUNDS {
        cli_true.push(timed(BIN, &["run", "-q", "--", "/bin/true"]));
        direct_true.push(timed("/bin/true", &[]));
    }
    let on_cpu_0: &[&str] = if place_reader_on_cpu_1() {
        &["taskset", "-c", "0"]
    } else {
        &[]
    };
    let cli: Vec<&str> = [on_cpu_0, &[BIN, "run", "-q", "--", "sh", "-c", STREAM]].concat();
    let direct: Vec<&str> = [on_cpu_0, &["sh", "-c", STREAM]].concat();
    for _ in 0..STREAM_ROUNDS {
        cli_stream.push(timed(cli[0], &cli[1..]));
        direct_stream.push(timed(direct[0], &direct[1..]));
    }
    let rows = [
        ("cli_true", median(cli_true)),
        ("direct_true", median(direct_true)),
        ("cli_stream", median(cli_stream)),
        ("direct_stream", median(direct_stream)),
    ];
    if json {
        for (name, ns) in rows {
            println!("{{\"name\":\"{name}\",\"ns_per_op\":{ns:.0}}}");
        }
        return;
    }
    println!("| row | median |");
    println!("|---|---:|");
    for (name, ns) in rows {
        println!("| {name} | {:.3} ms |", ns / 1e6);
    }
    let over = (rows[0].1 - rows[1].1) / 1e6;
    let ratio = rows[2].1 / rows[3].1;
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!();
    println!(
        "cli_true - direct_true = {over:.3} ms (target <= 2 ms: {})",
        verdict(over <= 2.0)
    );
    println!(
        "cli_stream / direct_stream = {ratio:.3} (target <= 1.1: {})",
        verdict(ratio <= 1.1)
    );
}
