//! Rounds, variants and their interleaving.

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::allocations::{snapshot, Allocations};
use super::stats::{median_interval, percentile, Summary};
use crate::api::{Task, TaskState};
use crate::{do_task, resolve, CancelToken, Controller, Error, Executor};

/// The steps of a lifecycle, in the order they come, then the whole of it. A
/// step is named after the state it ends in: `accepted` is from `ASSIGNED` to
/// `ACCEPTED` (for an executor, `resolve`), and so on; `terminal` is from
/// `RUNNING` to the end (the program's run, for a real one); `removal` is
/// `remove` and `close`.
pub const STEPS: [&str; 8] = [
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
    "terminal",
    "removal",
    "lifecycle",
];

/// What one round measured: nanoseconds per row (the clock's own cost taken
/// off), and allocations per row when they are counted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Round {
    pub(crate) times: Vec<f64>,
    pub(crate) allocations: Option<Vec<Allocations>>,
}

type RunRound<'a> = dyn FnMut(usize, f64) -> Result<Round, Error> + 'a;

/// One thing to measure: a lifecycle of a controller, or an operation.
pub struct Variant<'a> {
    name: String,
    rows: Vec<String>,
    run: Box<RunRound<'a>>,
    /// Operations per round (a batch of a quick operation is timed at once).
    per_round: u64,
}

impl std::fmt::Debug for Variant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variant")
            .field("name", &self.name)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl<'a> Variant<'a> {
    /// Lifecycles of controllers that `make` hands out, one a round (given the
    /// round's number), each driving `task` with [`do_task`] from `ASSIGNED` to a
    /// terminal state, then `remove` and `close`. The task's desired state must be
    /// one it ends in (`RUNNING` for a program that exits, or a terminal one).
    pub fn controller<C: Controller + 'a>(
        name: impl Into<String>,
        task: Task,
        mut make: impl FnMut(usize) -> C + 'a,
    ) -> Variant<'a> {
        let run = move |round: usize, clock: f64| {
            let controller = make(round);
            lifecycle(&task, &controller, None, clock)
        };
        Variant::lifecycle_rows(name.into(), Box::new(run))
    }

    /// Lifecycles of the tasks `task` makes, one a round, with controllers that
    /// `executor` resolves (the `accepted` step).
    pub fn executor<E: Executor + ?Sized>(
        name: impl Into<String>,
        executor: &'a E,
        mut task: impl FnMut(usize) -> Task + 'a,
    ) -> Variant<'a> {
        let run = move |round: usize, clock: f64| {
            let task = task(round);
            let cancel = CancelToken::new();
            let counted = snapshot();
            let start = Instant::now();
            let (status, controller) = resolve(&cancel, &task, executor);
            let resolved = (elapsed(start, clock), counted.zip(snapshot()));
            let controller = controller?;
            let task = Task { status, ..task };
            lifecycle(&task, &*controller, Some(resolved), clock)
        };
        Variant::lifecycle_rows(name.into(), Box::new(run))
    }

    /// Calls of `op`, timed in batches long enough for the clock to be read
    /// precisely: for operations of nanoseconds to microseconds. One row, named
    /// after the variant.
    pub fn op(name: impl Into<String>, mut op: impl FnMut() + 'a) -> Variant<'a> {
        let batch = batch_for(&mut op);
        Variant::batched(name.into(), op, batch)
    }

    /// One call of `op` a round, timed alone: for operations of a millisecond
    /// or more (a spawn). One row, named after the variant.
    pub fn each(name: impl Into<String>, op: impl FnMut() + 'a) -> Variant<'a> {
        Variant::batched(name.into(), op, 1)
    }

    /// `batch` calls of `op` a round, timed together; each row per call.
    fn batched(name: String, mut op: impl FnMut() + 'a, batch: u64) -> Variant<'a> {
        let run = move |_round: usize, clock: f64| {
            let counted = snapshot();
            let start = Instant::now();
            for _ in 0..batch {
                op();
            }
            let time = elapsed(start, clock) / batch as f64;
            let allocations = counted.zip(snapshot()).map(|(before, after)| {
                let total = after.since(before);
                vec![Allocations {
                    count: total.count / batch,
                    bytes: total.bytes / batch,
                }]
            });
            Ok(Round {
                times: vec![time],
                allocations,
            })
        };
        Variant {
            rows: vec![name.clone()],
            name,
            run: Box::new(run),
            per_round: batch,
        }
    }

    fn lifecycle_rows(name: String, run: Box<RunRound<'a>>) -> Variant<'a> {
        Variant {
            rows: STEPS.iter().map(|s| s.to_string()).collect(),
            name,
            run,
            per_round: 1,
        }
    }

    /// The variant's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How many calls of `op` make a batch of at least [`BATCH`] (it is warmed up
/// meanwhile).
/// How long a batch of a quick operation takes at least: long enough that the
/// clock reads precisely, and that interleaved variants each run warm.
const BATCH: Duration = Duration::from_micros(100);

fn batch_for(op: &mut dyn FnMut()) -> u64 {
    let mut batch = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..batch {
            op();
        }
        if start.elapsed() >= BATCH || batch >= 1 << 24 {
            return batch;
        }
        batch *= 2;
    }
}

fn elapsed(start: Instant, clock: f64) -> f64 {
    (start.elapsed().as_nanos() as f64 - clock).max(0.0)
}

/// One lifecycle of `task` (in `ASSIGNED`, or in `ACCEPTED` after `resolved`, the
/// time and allocations of the resolve) with `controller`.
fn lifecycle(
    task: &Task,
    controller: &dyn Controller,
    resolved: Option<(f64, Option<(Allocations, Allocations)>)>,
    clock: f64,
) -> Result<Round, Error> {
    let cancel = CancelToken::new();
    let steps = STEPS.len() - 1;
    let mut times = vec![0.0; steps];
    let mut counts = snapshot().map(|_| vec![Allocations::default(); steps]);
    let mut add = |step: usize, time: f64, counted: Option<(Allocations, Allocations)>| {
        times[step] += time;
        if let (Some(counts), Some((before, after))) = (counts.as_mut(), counted) {
            let more = after.since(before);
            counts[step].count += more.count;
            counts[step].bytes += more.bytes;
        }
    };
    if let Some((time, counted)) = resolved {
        add(0, time, counted);
    }
    let mut task = task.clone();
    while !task.status.state.is_terminal() {
        let counted = snapshot();
        let start = Instant::now();
        let (status, result) = do_task(&cancel, &task, controller);
        let time = elapsed(start, clock);
        let step = step_of(status.state);
        add(step, time, counted.zip(snapshot()));
        let moved = status.state != task.status.state;
        task.status = status;
        match result {
            Err(Error::TaskNoop) if !task.status.state.is_terminal() => {
                return Err(Error::other(format!(
                    "the lifecycle stopped in {} (desired {}): give the task a desired state it \
                     ends in",
                    task.status.state, task.desired_state
                )))
            }
            Err(Error::TaskRetry) if !moved => {}
            _ => {}
        }
    }
    let counted = snapshot();
    let start = Instant::now();
    let removed = controller.remove(&cancel).and(controller.close());
    add(
        STEPS.len() - 2,
        elapsed(start, clock),
        counted.zip(snapshot()),
    );
    removed?;
    let total = times.iter().sum();
    times.push(total);
    let allocations = counts.map(|mut counts| {
        let all = counts
            .iter()
            .fold(Allocations::default(), |sum, a| Allocations {
                count: sum.count + a.count,
                bytes: sum.bytes + a.bytes,
            });
        counts.push(all);
        counts
    });
    Ok(Round { times, allocations })
}

/// The row of a step that ended in `state`.
fn step_of(state: TaskState) -> usize {
    match state {
        TaskState::New | TaskState::Pending | TaskState::Assigned | TaskState::Accepted => 0,
        TaskState::Preparing => 1,
        TaskState::Ready => 2,
        TaskState::Starting => 3,
        TaskState::Running => 4,
        _ => 5,
    }
}

/// How a bench runs its variants: warm-up rounds first, then timed rounds, a
/// number of them or for a while. Variants compared run their rounds in turn (A,
/// B, A, B, ...), so that all of them see the same machine.
#[derive(Clone, Debug)]
#[must_use]
pub struct Bench {
    warmup: usize,
    rounds: usize,
    duration: Option<Duration>,
}

impl Default for Bench {
    /// 20 warm-up rounds, then 200 timed ones.
    fn default() -> Self {
        Bench {
            warmup: 20,
            rounds: 200,
            duration: None,
        }
    }
}

impl Bench {
    /// 20 warm-up rounds, then 200 timed ones.
    pub fn new() -> Bench {
        Bench::default()
    }

    /// Rounds run, and not counted, before the timed ones.
    pub fn warmup(mut self, rounds: usize) -> Self {
        self.warmup = rounds;
        self
    }

    /// How many timed rounds (at least one).
    pub fn rounds(mut self, rounds: usize) -> Self {
        self.rounds = rounds.max(1);
        self.duration = None;
        self
    }

    /// Timed rounds for about this long instead of a count (at least one round).
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = Some(duration);
        self
    }

    /// Runs `variant`; its report.
    pub fn run(&self, variant: Variant<'_>) -> Result<Report, Error> {
        let mut variants = [variant];
        let (mut reports, _) = self.compare(&mut variants)?;
        Ok(reports.remove(0))
    }

    /// Runs `variants` in turn, round by round; their reports, and the ratio of
    /// each to the first (for the first row of each: the lifecycle, or the
    /// operation), round by round.
    pub fn compare(
        &self,
        variants: &mut [Variant<'_>],
    ) -> Result<(Vec<Report>, Vec<Ratio>), Error> {
        let clock = clock_cost();
        for round in 0..self.warmup {
            for variant in variants.iter_mut() {
                (variant.run)(round, clock)?;
            }
        }
        let mut rounds: Vec<Vec<Round>> = variants.iter().map(|_| Vec::new()).collect();
        let started = Instant::now();
        let mut round = 0;
        loop {
            let done = match self.duration {
                Some(duration) => round > 0 && started.elapsed() >= duration,
                None => round >= self.rounds,
            };
            if done {
                break;
            }
            for (variant, taken) in variants.iter_mut().zip(&mut rounds) {
                taken.push((variant.run)(self.warmup + round, clock)?);
            }
            round += 1;
        }
        let reports: Vec<Report> = variants
            .iter()
            .zip(&rounds)
            .map(|(variant, taken)| Report::of(variant, taken, self.warmup, clock))
            .collect();
        let main = |round: &Round| *round.times.last().unwrap_or(&0.0);
        let ratios = rounds
            .iter()
            .zip(variants.iter())
            .skip(1)
            .map(|(taken, variant)| {
                let per_round: Vec<f64> = taken
                    .iter()
                    .zip(&rounds[0])
                    .map(|(b, a)| main(b) / main(a).max(f64::MIN_POSITIVE))
                    .collect();
                Ratio::of(variant.name(), variants[0].name(), &per_round)
            })
            .collect();
        Ok((reports, ratios))
    }
}

/// What reading the clock twice costs, in nanoseconds: taken off every sample.
pub fn clock_cost() -> f64 {
    let mut samples: Vec<f64> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            black_box(());
            start.elapsed().as_nanos() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    percentile(&samples, 0.5)
}

/// One row of a report.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The step (see [`STEPS`]), or the operation's name.
    pub name: String,
    /// Its latency, in nanoseconds.
    pub latency: Summary,
    /// Allocations per operation; `None` where they are not counted (the
    /// program did not install [`CountingAllocator`](super::CountingAllocator)).
    pub allocations: Option<f64>,
    /// Bytes allocated per operation; `None` where not counted.
    pub bytes: Option<f64>,
    /// The samples, in nanoseconds, in the order of the rounds (for figures of
    /// a bench's own, such as a difference between interleaved rows).
    pub samples: Vec<f64>,
}

/// What a bench measured of one variant.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The variant's name.
    pub name: String,
    /// Its rows: the steps and the lifecycle, or the operation.
    pub rows: Vec<Row>,
    /// Timed rounds.
    pub rounds: usize,
    /// Warm-up rounds.
    pub warmup: usize,
    /// What reading the clock cost, in nanoseconds, taken off every sample.
    pub clock_ns: f64,
    /// Operations per round (more than one for a batched operation).
    pub per_round: u64,
}

impl Report {
    fn of(variant: &Variant<'_>, rounds: &[Round], warmup: usize, clock: f64) -> Report {
        let rows = variant
            .rows
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let times: Vec<f64> = rounds.iter().map(|r| r.times[i]).collect();
                let counted: Option<Vec<Allocations>> = rounds
                    .iter()
                    .map(|r| r.allocations.as_ref().map(|a| a[i]))
                    .collect();
                let per_op = |field: fn(&Allocations) -> u64| {
                    counted
                        .as_ref()
                        .filter(|c| !c.is_empty())
                        .map(|c| c.iter().map(field).sum::<u64>() as f64 / c.len() as f64)
                };
                Row {
                    name: name.clone(),
                    latency: Summary::of(&times),
                    allocations: per_op(|a| a.count),
                    bytes: per_op(|a| a.bytes),
                    samples: times,
                }
            })
            .collect();
        Report {
            name: variant.name.clone(),
            rows,
            rounds: rounds.len(),
            warmup,
            clock_ns: clock,
            per_round: variant.per_round,
        }
    }

    /// A report of one row, of samples (nanoseconds) a bench took itself: to
    /// print and compare them as the harness's own.
    pub fn of_samples(name: impl Into<String>, samples: Vec<f64>) -> Report {
        let name = name.into();
        Report {
            rows: vec![Row {
                name: name.clone(),
                latency: Summary::of(&samples),
                allocations: None,
                bytes: None,
                samples,
            }],
            name,
            rounds: 0,
            warmup: 0,
            clock_ns: 0.0,
            per_round: 1,
        }
    }

    /// This report alone in Bencher's metric format (see
    /// [`to_json`](super::to_json) for several, with ratios).
    pub fn to_json(&self) -> String {
        super::to_json(std::slice::from_ref(self), &[])
    }

    /// The row named `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// The ratio of one variant to another, round by round (each round's
/// lifecycle, or operation, of the one over the other's in the same round).
#[derive(Clone, Debug, PartialEq)]
pub struct Ratio {
    /// The variant measured.
    pub name: String,
    /// The variant it is measured against.
    pub against: String,
    /// The median of the per-round ratios.
    pub median: f64,
    /// Their interquartile range: the spread.
    pub p25: f64,
    /// See `p25`.
    pub p75: f64,
    /// A range that holds the median of per-round ratios with about 95%
    /// confidence, within this run.
    pub low: f64,
    /// See `low`.
    pub high: f64,
}

/// What a comparison says of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Met, beyond the noise.
    Met,
    /// Missed, beyond the noise.
    Missed,
    /// The target is within the noise of the measurement: run it again.
    WithinNoise,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::WithinNoise => "within noise: rerun",
        })
    }
}

impl Ratio {
    /// The ratio of `per_round` samples.
    pub fn of(name: &str, against: &str, per_round: &[f64]) -> Ratio {
        let mut sorted = per_round.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (low, high) = median_interval(&sorted);
        Ratio {
            name: name.to_owned(),
            against: against.to_owned(),
            median: percentile(&sorted, 0.5),
            p25: percentile(&sorted, 0.25),
            p75: percentile(&sorted, 0.75),
            low,
            high,
        }
    }

    /// Whether the ratio is at most `target` (see [`verdict`]).
    pub fn at_most(&self, target: f64) -> Verdict {
        verdict(self.low, self.high, target)
    }
}

/// How far beyond a target a run's confidence range must lie for a verdict:
/// runs of the same code on a shared machine differ from each other by more
/// than one run's own spread says (a few percent, measured here), and a verdict
/// must not flip between them.
pub const NOISE_MARGIN: f64 = 0.05;

/// The verdict on "at most `target`" for a median known to lie in `low..high`:
/// met when the whole range is below the target by [`NOISE_MARGIN`], missed when
/// all of it is above by as much, else within noise.
///
/// ```
/// use swarmexec::bench::{verdict, Verdict};
///
/// assert_eq!(verdict(0.80, 0.90, 1.0), Verdict::Met);
/// assert_eq!(verdict(0.97, 0.99, 1.0), Verdict::WithinNoise);
/// assert_eq!(verdict(1.10, 1.20, 1.0), Verdict::Missed);
/// ```
pub fn verdict(low: f64, high: f64, target: f64) -> Verdict {
    if high <= target * (1.0 - NOISE_MARGIN) {
        Verdict::Met
    } else if low > target * (1.0 + NOISE_MARGIN) {
        Verdict::Missed
    } else {
        Verdict::WithinNoise
    }
}

/// The median of `samples` and the range that holds the true median with about
/// 95% confidence (see [`Ratio`]): for a bench's own figures, such as a
/// difference between interleaved rows.
pub fn median_with_interval(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (low, high) = median_interval(&sorted);
    (percentile(&sorted, 0.5), low, high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StubController;

    fn assigned() -> Task {
        let mut task = Task {
            id: "bench".into(),
            desired_state: TaskState::Running,
            ..Default::default()
        };
        task.status.state = TaskState::Assigned;
        task
    }

    #[test]
    fn a_lifecycle_has_a_row_per_step_and_their_sum() {
        let bench = Bench::new().warmup(2).rounds(20);
        let report = bench
            .run(Variant::controller("stub", assigned(), |_| {
                StubController::new()
            }))
            .unwrap();
        assert_eq!(report.rows.len(), STEPS.len());
        assert!(report.rows.iter().all(|r| r.latency.count == 20));
        let steps: f64 = report.rows[..7].iter().map(|r| r.latency.median).sum();
        assert!(steps > 0.0);
        // Without the counting allocator (unit tests have the system's).
        assert!(report
            .rows
            .iter()
            .all(|r| r.allocations.is_none() && r.bytes.is_none()));
    }

    #[test]
    fn a_lifecycle_that_cannot_end_is_an_error() {
        let mut paused = assigned();
        paused.desired_state = TaskState::Ready;
        let bench = Bench::new().warmup(0).rounds(1);
        let result = bench.run(Variant::controller("paused", paused, |_| {
            StubController::new()
        }));
        assert!(result.unwrap_err().to_string().contains("stopped in READY"));
    }

    #[test]
    fn the_clock_is_taken_off_and_never_below_zero() {
        let start = Instant::now();
        let raw = start.elapsed().as_nanos() as f64;
        assert_eq!(elapsed(start, f64::MAX), 0.0);
        assert!(elapsed(start, 0.0) >= raw);
    }

    #[test]
    fn ratios_and_verdicts_follow_the_spread() {
        let ratio = Ratio::of("b", "a", &[2.0; 50]);
        assert_eq!((ratio.median, ratio.p25, ratio.p75), (2.0, 2.0, 2.0));
        assert_eq!(ratio.at_most(2.5), Verdict::Met);
        assert_eq!(ratio.at_most(1.5), Verdict::Missed);
        let spread: Vec<f64> = (0..100).map(|i| 1.0 + f64::from(i) / 100.0).collect();
        let ratio = Ratio::of("b", "a", &spread);
        assert_eq!(ratio.at_most(1.5), Verdict::WithinNoise);
        assert_eq!(ratio.at_most(1.9), Verdict::Met);
        assert_eq!(ratio.at_most(1.1), Verdict::Missed);
        assert_eq!(
            Ratio::of("b", "a", &[0.97; 50]).at_most(1.0),
            Verdict::WithinNoise
        );
    }

    #[test]
    fn interleaved_variants_give_the_ratio_of_the_slower() {
        let bench = Bench::new().warmup(1).rounds(30);
        let spin = |n: u32| {
            move || {
                let mut x = 0u64;
                for i in 0..n {
                    x = black_box(x.wrapping_add(u64::from(i)));
                }
            }
        };
        let mut variants = [
            Variant::each("short", spin(20_000)),
            Variant::each("long", spin(60_000)),
        ];
        let (reports, ratios) = bench.compare(&mut variants).unwrap();
        assert_eq!(reports.len(), 2);
        assert!(ratios[0].median > 1.5, "{:?}", ratios[0]);
        assert_eq!(ratios[0].name, "long");
    }
}
