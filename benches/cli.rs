//! `swarmexec run` against running the program directly: `cargo bench --bench cli`.
//!
//! - `cli_true`: `swarmexec run -q -- /bin/true`; `direct_true`: `/bin/true`.
//! - `cli_stream`: 200 MB of `yes` through the command into a pipe the bench reads
//!   and discards; `direct_stream`: the same program run directly.
//!
//! Rows run in turn, round by round (`swarmexec::bench`), so that both see the
//! same machine; the verdicts come from the per-round differences and ratios. Where
//! `taskset` can, the stream rows run their command on CPU 0 while the bench reads
//! on CPU 1: left to the scheduler, where `yes`, `head` and the reader land
//! (together or apart) alone moves a run between 0.1 and 0.2 s on two CPUs, which
//! drowns what swarmexec adds; placed, both rows do the same work the same way.
//! `-- --json` prints Bencher's metric format.

use std::io::Read;
use std::process::{Command, Stdio};

use swarmexec::bench::{median_with_interval, verdict, Bench, Output, Variant};

const BIN: &str = env!("CARGO_BIN_EXE_swarmexec");
const TRUE_ROUNDS: usize = 300;
const STREAM_ROUNDS: usize = 25;
const STREAM: &str = "yes | head -c 200000000";

/// Runs `program args` with stdout read and discarded (all of it, or none).
fn run_reading(program: &str, args: &[&str]) {
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
    assert!(total == 0 || total == 200_000_000, "{total} bytes");
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

fn main() -> Result<(), swarmexec::Error> {
    let output = Output::from_env()?;
    let run_true = || run_reading(BIN, &["run", "-q", "--", "/bin/true"]);
    let direct_true = || run_reading("/bin/true", &[]);
    let mut trues = [
        Variant::each("direct_true", direct_true),
        Variant::each("cli_true", run_true),
    ];
    let (mut reports, mut ratios) = Bench::new()
        .warmup(10)
        .rounds(TRUE_ROUNDS)
        .compare(&mut trues)?;
    drop(trues);
    let on_cpu_0: &[&str] = if place_reader_on_cpu_1() {
        &["taskset", "-c", "0"]
    } else {
        &[]
    };
    let cli: Vec<&str> = [on_cpu_0, &[BIN, "run", "-q", "--", "sh", "-c", STREAM]].concat();
    let direct: Vec<&str> = [on_cpu_0, &["sh", "-c", STREAM]].concat();
    let mut streams = [
        Variant::each("direct_stream", || run_reading(direct[0], &direct[1..])),
        Variant::each("cli_stream", || run_reading(cli[0], &cli[1..])),
    ];
    let (stream_reports, stream_ratios) = Bench::new()
        .warmup(2)
        .rounds(STREAM_ROUNDS)
        .compare(&mut streams)?;
    drop(streams);
    reports.extend(stream_reports);
    ratios.extend(stream_ratios);
    output.emit(&reports, &ratios)?;
    if output.json {
        return Ok(());
    }
    // What the command adds to a quick program, round by round.
    let over: Vec<f64> = reports[1].rows[0]
        .samples
        .iter()
        .zip(&reports[0].rows[0].samples)
        .map(|(cli, direct)| cli - direct)
        .collect();
    let (over, low, high) = median_with_interval(&over);
    println!();
    println!(
        "cli_true - direct_true = {:.3} ms, median's 95% range {:.3} to {:.3} (target <= 2 ms: {})",
        over / 1e6,
        low / 1e6,
        high / 1e6,
        verdict(low, high, 2e6)
    );
    let stream = &ratios[1];
    println!(
        "cli_stream / direct_stream = {:.3}, median's 95% range {:.3} to {:.3} (target <= 1.1: {})",
        stream.median,
        stream.low,
        stream.high,
        stream.at_most(1.1)
    );
    Ok(())
}
