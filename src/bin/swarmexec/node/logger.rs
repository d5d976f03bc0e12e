//! The node's log: the library's and its own records, one line each on stderr,
//! at the level `SWARMEXEC_LOG` names (`error`, `warn`, `info` (default),
//! `debug`, `trace`). Other crates' records (the network stack's) are left out
//! but at `trace`. At `debug` and `trace` each line says when, in seconds since
//! the node started.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    level: LevelFilter,
    /// When the log was installed: debug records say how long after.
    start: std::time::Instant,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
            && (self.level == LevelFilter::Trace || metadata.target().starts_with("swarmexec"))
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            if self.level >= LevelFilter::Debug {
                let at = self.start.elapsed().as_secs_f64();
                eprintln!("swarmexec node: [{at:.3}] {level}: {}", record.args());
            } else {
                eprintln!("swarmexec node: {level}: {}", record.args());
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the log; the level from `SWARMEXEC_LOG`.
pub(crate) fn install() {
    let level = std::env::var("SWARMEXEC_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LevelFilter::Info);
    let logger: &'static Stderr = Box::leak(Box::new(Stderr {
        level,
        start: std::time::Instant::now(),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
