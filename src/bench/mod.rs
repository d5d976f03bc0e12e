//! Benchmark your own controller: transition latency without criterion.
//!
//! A [`Bench`] drives [`Variant`]s round by round: a lifecycle of a
//! [`Controller`](crate::Controller) through [`do_task`](crate::do_task) from
//! `ASSIGNED` to a terminal state (then `remove` and `close`), of a task an
//! [`Executor`](crate::Executor) resolves, or a plain operation. For each step of
//! a lifecycle ([`STEPS`]: accepted, preparing, ready, starting, running, the
//! terminal step, removal, and the whole lifecycle) a [`Report`] gives the
//! count, median, p90, p99, p99.9 and maximum latency, the cost of reading the
//! clock taken off every sample, and allocations and bytes per operation where
//! the program installed [`CountingAllocator`] (else "not counted", never 0).
//!
//! Variants compared run their rounds in turn (A, B, A, B, ...), so that a
//! comparison is made in one run on the same machine; each [`Ratio`] is the
//! median of per-round ratios with its spread, and [`Ratio::at_most`] says
//! "met", "missed" or "within noise: rerun" from the confidence range of that
//! median and a margin for what differs between runs ([`NOISE_MARGIN`]). [`Output`] prints a table or Bencher's metric format (`--json`),
//! saves it (`--save FILE`) and says what regressed against a saved baseline
//! (`--baseline FILE`, `--threshold PERCENT`).
//!
//! A complete bench binary (`benches/my_controller.rs`, with `harness = false`
//! in its `[[bench]]` section):
//!
//! ```
//! use swarmexec::api::{Task, TaskState};
//! use swarmexec::bench::{Bench, CountingAllocator, Output, Variant};
//! use swarmexec::StubController;
//!
//! #[global_allocator]
//! static ALLOCATOR: CountingAllocator = CountingAllocator;
//!
//! fn main() -> Result<(), swarmexec::Error> {
//!     let output = Output::from_env()?;
//!     let mut task = Task { id: "bench.1".into(), desired_state: TaskState::Running, ..Default::default() };
//!     task.status.state = TaskState::Assigned;
//!     // Your controller here: made anew for every round.
//!     let mut variants = [
//!         Variant::controller("stub", task.clone(), |_round| StubController::new()),
//!         Variant::controller("mine", task, |_round| StubController::new()),
//!     ];
//!     let (reports, ratios) = Bench::new().rounds(300).compare(&mut variants)?;
//!     println!("mine against stub: {}", ratios[0].at_most(2.0));
//!     let regressed = output.emit(&reports, &ratios)?;
//!     if !regressed.is_empty() {
//!         std::process::exit(1);
//!     }
//!     Ok(())
//! }
//! # main().unwrap();
//! ```

mod allocations;
mod harness;
mod json;
mod output;
mod stats;
mod sys;

pub use allocations::CountingAllocator;
pub use harness::{
    clock_cost, median_with_interval, verdict, Bench, Ratio, Report, Row, Variant, Verdict,
    NOISE_MARGIN, STEPS,
};
pub use output::{regressions, table, time, to_json, Output, Regression};
pub use stats::{percentile, Summary};
