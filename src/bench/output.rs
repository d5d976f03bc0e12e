//! What a bench prints: a table, or Bencher's metric format, and what regressed
//! against a saved baseline.

use std::fmt::Write;
use std::path::PathBuf;

use super::harness::{Ratio, Report};
use super::json;
use crate::Error;

/// A measure that got worse than the baseline by more than the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Regression {
    /// The benchmark (`variant/step`, or a ratio's name).
    pub name: String,
    /// The measure (`latency`, `allocations`, `ratio`, ...).
    pub measure: String,
    /// The baseline's value.
    pub baseline: f64,
    /// This run's value.
    pub now: f64,
}

/// The reports as one JSON document in Bencher's metric format: per row
/// `latency` (the median, with the p99 as its upper value, in nanoseconds),
/// `p90`, `p99`, `p99_9`, `max`, and `allocations` and `bytes` per operation where
/// they are counted; per ratio `ratio` (the median, from the 25th to the 75th
/// percentile of per-round ratios).
pub fn to_json(reports: &[Report], ratios: &[Ratio]) -> String {
    json::write(&json::metrics(reports, ratios))
}

/// The measures of `reports` and `ratios` that are more than `threshold` (0.1
/// for 10%) worse than in `baseline`, a document [`to_json`] wrote: latencies,
/// allocations, bytes and ratios that grew (the others are left out, as are
/// benchmarks the baseline does not have).
pub fn regressions(
    reports: &[Report],
    ratios: &[Ratio],
    baseline: &str,
    threshold: f64,
) -> Result<Vec<Regression>, Error> {
    let baseline = json::read(baseline)
        .map_err(|e| Error::other(format!("the baseline is not metric JSON: {e}")))?;
    let now = json::metrics(reports, ratios);
    let mut found = Vec::new();
    for (name, measures) in &now {
        let Some(before) = baseline.get(name) else {
            continue;
        };
        for measure in ["latency", "allocations", "bytes", "ratio"] {
            let (Some(then), Some(current)) = (before.get(measure), measures.get(measure)) else {
                continue;
            };
            if current.value > then.value * (1.0 + threshold) && current.value > then.value {
                found.push(Regression {
                    name: name.clone(),
                    measure: measure.to_owned(),
                    baseline: then.value,
                    now: current.value,
                });
            }
        }
    }
    Ok(found)
}

/// The reports as a plain table, and the ratios under it.
pub fn table(reports: &[Report], ratios: &[Ratio]) -> String {
    let mut out = String::new();
    for report in reports {
        let batch = if report.per_round > 1 {
            format!(", {} calls a round", report.per_round)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{}: {} rounds after {} warm-up{batch}; the clock's {:.0} ns taken off every sample",
            report.name, report.rounds, report.warmup, report.clock_ns
        );
        let _ = writeln!(
            out,
            "| step | count | median | p90 | p99 | p99.9 | max | allocs/op | bytes/op |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in &report.rows {
            let s = row.latency;
            let counted =
                |v: Option<f64>| v.map_or("not counted".to_owned(), |v| format!("{v:.1}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.name,
                s.count,
                time(s.median),
                time(s.p90),
                time(s.p99),
                time(s.p999),
                time(s.max),
                counted(row.allocations),
                counted(row.bytes)
            );
        }
        out.push('\n');
    }
    if !ratios.is_empty() {
        let _ = writeln!(out, "| ratio | median | p25 to p75 | median's 95% range |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for r in ratios {
            let _ = writeln!(
                out,
                "| {} / {} | {:.3}x | {:.3} to {:.3} | {:.3} to {:.3} |",
                r.name, r.against, r.median, r.p25, r.p75, r.low, r.high
            );
        }
    }
    out
}

/// Nanoseconds as a reader wants them.
pub fn time(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.0} ns"),
        ns if ns < 1e6 => format!("{:.1} us", ns / 1e3),
        ns if ns < 1e9 => format!("{:.2} ms", ns / 1e6),
        ns => format!("{:.2} s", ns / 1e9),
    }
}

/// What a bench binary was asked for on its command line: `--json` (the metric
/// format, not the table), `--save FILE` (write it there too), `--baseline FILE`
/// (say what regressed against it) and `--threshold PERCENT` (how much worse
/// counts, 10 by default). Whatever else is given (`cargo bench` adds `--bench`)
/// is left alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Print the metric format instead of the table.
    pub json: bool,
    /// Where to save the metric format too.
    pub save: Option<PathBuf>,
    /// A saved run to compare against.
    pub baseline: Option<PathBuf>,
    /// How much worse is a regression: 0.1 for 10%.
    pub threshold: f64,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            json: false,
            save: None,
            baseline: None,
            threshold: 0.1,
        }
    }
}

impl Output {
    /// From this program's arguments.
    pub fn from_env() -> Result<Output, Error> {
        Output::from_args(std::env::args().skip(1))
    }

    /// From `args`.
    ///
    /// ```
    /// use swarmexec::bench::Output;
    ///
    /// let out = Output::from_args(["--bench", "--json", "--threshold", "5"].map(String::from))?;
    /// assert!(out.json);
    /// assert_eq!(out.threshold, 0.05);
    /// # Ok::<(), swarmexec::Error>(())
    /// ```
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Output, Error> {
        let mut out = Output::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| {
                args.next()
                    .ok_or_else(|| Error::InvalidSpec(format!("{flag} needs a value")))
            };
            match arg.as_str() {
                "--json" => out.json = true,
                "--save" => out.save = Some(value("--save")?.into()),
                "--baseline" => out.baseline = Some(value("--baseline")?.into()),
                "--threshold" => {
                    let text = value("--threshold")?;
                    let percent: f64 =
                        text.parse()
                            .ok()
                            .filter(|p: &f64| *p >= 0.0)
                            .ok_or_else(|| {
                                Error::InvalidSpec(format!(
                                    "--threshold expects a percentage, got {text:?}"
                                ))
                            })?;
                    out.threshold = percent / 100.0;
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Prints the reports (the table, or the metric format), saves them if
    /// asked, and returns what regressed against the baseline, if one was given
    /// (also said on stderr). A caller that must fail on a regression exits
    /// non-zero when the list is not empty.
    pub fn emit(&self, reports: &[Report], ratios: &[Ratio]) -> Result<Vec<Regression>, Error> {
        let document = to_json(reports, ratios);
        if self.json {
            print!("{document}");
        } else {
            print!("{}", table(reports, ratios));
        }
        if let Some(path) = &self.save {
            std::fs::write(path, &document)
                .map_err(|e| Error::other(format!("cannot save {}: {e}", path.display())))?;
        }
        let Some(path) = &self.baseline else {
            return Ok(Vec::new());
        };
        let baseline = std::fs::read_to_string(path).map_err(|e| {
            Error::other(format!("cannot read the baseline {}: {e}", path.display()))
        })?;
        let found = regressions(reports, ratios, &baseline, self.threshold)?;
        for r in &found {
            eprintln!(
                "regressed: {} {}: {:.1} against {:.1} ({:+.1}%, threshold {:.0}%)",
                r.name,
                r.measure,
                r.now,
                r.baseline,
                (r.now / r.baseline - 1.0) * 100.0,
                self.threshold * 100.0
            );
        }
        Ok(found)
    }
}
