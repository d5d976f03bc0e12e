//! The bench module as a user's bench binary uses it: with its counting
//! allocator installed (this test binary's global allocator).

use std::hint::black_box;

use swarmexec::api::{Task, TaskState};
use swarmexec::bench::{
    clock_cost, regressions, table, to_json, Bench, CountingAllocator, Output, Report, Variant,
    STEPS,
};
use swarmexec::StubController;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn assigned() -> Task {
    let mut task = Task {
        id: "bench.1".into(),
        desired_state: TaskState::Running,
        ..Default::default()
    };
    task.status.state = TaskState::Assigned;
    task
}

/// Counts are of every thread: the exact ones are taken in a process of their
/// own, where no other test allocates meanwhile.
#[test]
fn allocations_are_counted_per_operation_when_the_allocator_is_installed() {
    let me = std::env::current_exe().unwrap();
    let out = std::process::Command::new(me)
        .args([
            "--exact",
            "exact_allocation_counts",
            "--ignored",
            "--test-threads",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}"
    );
}

#[test]
#[ignore = "run alone by allocations_are_counted_per_operation_when_the_allocator_is_installed"]
fn exact_allocation_counts() {
    let bench = Bench::new().warmup(2).rounds(50);
    let report = bench
        .run(Variant::op("box", || drop(black_box(Box::new([0u8; 64])))))
        .unwrap();
    let row = &report.rows[0];
    assert_eq!(row.allocations, Some(1.0));
    assert_eq!(row.bytes, Some(64.0));
    let none = bench.run(Variant::op("nothing", || black_box(()))).unwrap();
    assert_eq!(none.rows[0].allocations, Some(0.0), "counted, and none");
}

#[test]
fn the_clock_is_taken_off_every_sample() {
    let clock = clock_cost();
    assert!(clock > 0.0 && clock < 10_000.0, "{clock}");
    let report = Bench::new()
        .warmup(5)
        .rounds(2000)
        .run(Variant::each("nothing", || {}))
        .unwrap();
    let s = report.rows[0].latency;
    // The report says what it took off, and nothing is left costing about
    // nothing: within a few reads of a clock whose ticks are 10 to 20 ns here
    // (that it is taken off exactly, and never below zero, is unit-tested).
    assert!(report.clock_ns > 0.0 && report.clock_ns < 10_000.0);
    assert!(
        s.median <= 4.0 * clock.max(25.0),
        "{} against a clock of {clock}",
        s.median
    );
}

#[test]
fn a_controller_lifecycle_reports_every_step_with_allocations() {
    let report = Bench::new()
        .warmup(5)
        .rounds(100)
        .run(Variant::controller("stub", assigned(), |_| {
            StubController::new()
        }))
        .unwrap();
    let names: Vec<&str> = report.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, STEPS);
    let lifecycle = report.row("lifecycle").unwrap();
    assert!(lifecycle.allocations.unwrap() >= 1.0, "{lifecycle:?}");
    let text = table(std::slice::from_ref(&report), &[]);
    assert!(text.contains("| accepted | 100 |"), "{text}");
    assert!(!text.contains("not counted"), "{text}");
}

#[test]
fn json_is_bencher_metric_format_and_a_baseline_finds_regressions() {
    let bench = Bench::new().warmup(1).rounds(20);
    let (reports, ratios) = bench
        .compare(&mut [
            Variant::controller("a", assigned(), |_| StubController::new()),
            Variant::controller("b", assigned(), |_| StubController::new()),
        ])
        .unwrap();
    let json = to_json(&reports, &ratios);
    assert!(reports[0].to_json().contains("\"a/lifecycle\": {"));
    assert!(json.trim_start().starts_with('{') && json.trim_end().ends_with('}'));
    for key in [
        "\"a/accepted\": {",
        "\"latency\": {\"value\": ",
        "\"upper_value\": ",
        "\"allocations\": {\"value\": ",
        "\"b/vs/a\": {\"ratio\": {\"value\": ",
        "\"lower_value\": ",
    ] {
        assert!(json.contains(key), "{key} in {json}");
    }
    // Against itself nothing regressed; against a baseline twice as fast, it did.
    assert!(regressions(&reports, &ratios, &json, 0.1)
        .unwrap()
        .is_empty());
    let mut faster = reports.clone();
    for row in &mut faster[0].rows {
        row.latency.median /= 2.0;
    }
    let baseline = to_json(&faster, &[]);
    let found = regressions(&reports, &ratios, &baseline, 0.1).unwrap();
    assert!(
        found
            .iter()
            .any(|r| r.name == "a/lifecycle" && r.measure == "latency"),
        "{found:?}"
    );
    assert!(found.iter().all(|r| r.name.starts_with("a/")));
    assert!(regressions(&reports, &ratios, "not json", 0.1).is_err());
}

#[test]
fn output_saves_and_compares_as_its_flags_say() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("base.json");
    let args = ["--bench", "--json", "--save", saved.to_str().unwrap()];
    let output = Output::from_args(args.map(String::from)).unwrap();
    let report = Report::of_samples("row", vec![1.0, 2.0, 3.0]);
    output.emit(std::slice::from_ref(&report), &[]).unwrap();
    let slower = Report::of_samples("row", vec![10.0, 20.0, 30.0]);
    let against = Output::from_args(
        ["--baseline", saved.to_str().unwrap(), "--threshold", "50"].map(String::from),
    )
    .unwrap();
    let found = against.emit(&[slower], &[]).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].baseline, found[0].now), (2.0, 20.0));
    assert!(Output::from_args(["--threshold".to_owned()]).is_err());
}

#[test]
fn swarmexec_bench_prints_the_per_transition_table_of_a_program() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmexec"))
        .args(["bench", "--runs", "20", "--", "/bin/true"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in STEPS {
        assert!(text.contains(&format!("| {step} | 20 |")), "{step}: {text}");
    }
    let json = std::process::Command::new(env!("CARGO_BIN_EXE_swarmexec"))
        .args([
            "bench",
            "--runs",
            "5",
            "--no-cgroups",
            "--json",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(
        json.contains("(process group)/lifecycle\": {\"allocations\""),
        "{json}"
    );
}
