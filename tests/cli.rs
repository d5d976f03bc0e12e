//! The `swarmexec` command, run as a user would.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{swarmexec, text, BIN};

fn code(output: &Output) -> i32 {
    output
        .status
        .code()
        .expect("swarmexec exits, it is not killed")
}

#[test]
fn the_program_exit_code_is_passed_through() {
    let out = swarmexec(&["run", "--", "sh", "-c", "echo hello from a task; exit 3"]);
    assert_eq!(code(&out), 3);
    assert_eq!(text(&out.stdout), "hello from a task\n");
    let transitions = text(&out.stderr);
    for state in [
        "ACCEPTED",
        "PREPARING",
        "READY",
        "STARTING",
        "RUNNING",
        "FAILED",
    ] {
        assert!(transitions.contains(state), "{transitions}");
    }
    assert!(
        transitions.contains("exited with status 3"),
        "{transitions}"
    );
    assert_eq!(code(&swarmexec(&["run", "--quiet", "--", "true"])), 0);
}

#[test]
fn output_streams_go_to_their_own_streams() {
    let out = swarmexec(&["run", "--quiet", "--", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(code(&out), 0);
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n", "--quiet prints no transitions");
}

#[test]
fn a_program_killed_by_a_signal_exits_with_128_plus_the_signal() {
    let out = swarmexec(&["run", "--quiet", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(code(&out), 137);
}

#[test]
fn a_missing_program_exits_127_and_an_unexecutable_one_126() {
    let out = swarmexec(&["run", "--", "no-such-program-anywhere"]);
    assert_eq!(code(&out), 127);
    assert!(text(&out.stderr).contains("program not found: no-such-program-anywhere"));

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let out = swarmexec(&["run", "--", script.to_str().unwrap()]);
    assert_eq!(code(&out), 126);
}

#[test]
fn bad_command_lines_exit_125_with_one_clear_line_and_a_hint() {
    for (args, problem, hint) in [
        (
            &["run", "--bogus", "--", "true"][..],
            "invalid option '--bogus'",
            "swarmexec run --help",
        ),
        (&["run"][..], "no program given", "swarmexec run --help"),
        (
            &["run", "--env", "=x", "--", "true"][..],
            "--env expects NAME=VALUE or NAME",
            "swarmexec run --help",
        ),
        (
            &["run", "--secret", "x", "--", "true"][..],
            "--secret expects NAME=FILE",
            "swarmexec run --help",
        ),
        (
            &["run", "--memory", "lots", "--", "true"][..],
            "--memory expects a size",
            "swarmexec run --help",
        ),
        (
            &["run", "--stop-grace", "soon", "--", "true"][..],
            "--stop-grace expects a duration",
            "swarmexec run --help",
        ),
        (
            &["launch"][..],
            "unknown command \"launch\"",
            "swarmexec --help",
        ),
        (&[][..], "no command given", "swarmexec --help"),
    ] {
        let out = swarmexec(args);
        assert_eq!(code(&out), 125, "{args:?}");
        let stderr = text(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with("swarmexec: ") && lines[0].contains(problem),
            "{args:?}: {stderr}"
        );
        assert_eq!(lines[1], format!("Try '{hint}'."));
    }
}

#[test]
fn an_unusable_state_dir_exits_125() {
    let out = swarmexec(&["run", "--state-dir", "/proc/no-such/dir", "--", "true"]);
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("state directory /proc/no-such/dir"));
}

#[test]
fn help_and_version() {
    for args in [&["--help"][..], &["run", "--help"], &["describe", "--help"]] {
        let out = swarmexec(args);
        assert_eq!(code(&out), 0);
        assert!(text(&out.stdout).starts_with("Usage:") || text(&out.stdout).contains("Usage:"));
    }
    let out = swarmexec(&["--version"]);
    assert_eq!(
        text(&out.stdout),
        format!("swarmexec {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn describe_prints_the_node() {
    let out = swarmexec(&["describe"]);
    assert_eq!(code(&out), 0);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("os: linux"), "{stdout}");
    assert!(stdout.contains("cpus: "), "{stdout}");
}

#[test]
fn a_secret_file_is_visible_to_the_program_with_mode_0400_and_gone_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password.txt");
    fs::write(&secret, "s3cr3t").unwrap();
    let state = dir.path().join("state");
    let secret_arg = format!("db={}", secret.display());
    let out = swarmexec(&[
        "run",
        "--quiet",
        "--secret",
        &secret_arg,
        "--state-dir",
        state.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "stat -c %a \"$SWARMEXEC_SECRETS_DIR/db\"; cat \"$SWARMEXEC_SECRETS_DIR/db\"",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "400\ns3cr3t");
    common::assert_empty(&state, "the task's files are gone");
}

#[test]
fn runs_keep_their_files_in_the_default_state_dir_and_remove_them() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    fs::write(&secret, "t").unwrap();
    let secret_arg = format!("token={}", secret.display());
    let script = "echo \"$SWARMEXEC_TASK_ID\"; echo \"$SWARMEXEC_SECRETS_DIR\"";
    let out = swarmexec(&[
        "run",
        "--quiet",
        "--secret",
        &secret_arg,
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("run-"),
        "a task id of its own: {}",
        lines[0]
    );
    let secrets_dir = std::path::Path::new(lines[1]);
    let task_dir = secrets_dir.parent().unwrap();
    if unsafe_free_is_root() {
        // Memory-backed: /run where it is a tmpfs, else /dev/shm.
        let default = swarmexec::process::default_state_dir();
        assert!(task_dir.starts_with(&default), "{task_dir:?}");
        assert!(
            default == std::path::Path::new("/run/swarmexec")
                || default == std::path::Path::new("/dev/shm/swarmexec"),
            "{default:?}"
        );
    }
    assert!(!task_dir.exists(), "{task_dir:?} is left behind");
}

/// True when the tests run as root.
fn unsafe_free_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// Starts `swarmexec run` with `args`, and waits until the program printed `ready`.
fn start_until_ready(args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, stdout)
}

fn send(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_stops_a_program_that_traps_it_within_the_grace_period() {
    let (mut child, mut stdout) = start_until_ready(&[
        "run",
        "--stop-grace",
        "20s",
        "--",
        "sh",
        "-c",
        "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    let start = Instant::now();
    send(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "well within the grace period"
    );
    assert_eq!(status.code(), Some(0), "the program's own exit code");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "bye\n");
}

#[test]
fn a_program_ignoring_sigterm_is_killed_after_the_grace_period() {
    let (mut child, _stdout) = start_until_ready(&[
        "run",
        "--stop-grace",
        "500ms",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo ready; sleep 30",
    ]);
    let start = Instant::now();
    send(&child, "-TERM");
    let status = child.wait().unwrap();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(status.code(), Some(137));
}

#[test]
fn a_sigint_during_a_stop_kills_at_once() {
    let (mut child, _stdout) = start_until_ready(&[
        "run",
        "--stop-grace",
        "20s",
        "--",
        "sh",
        "-c",
        "trap '' INT TERM; echo ready; sleep 30",
    ]);
    let start = Instant::now();
    send(&child, "-TERM");
    std::thread::sleep(Duration::from_millis(100));
    send(&child, "-INT");
    let status = child.wait().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(137));
}

/// The `SigIgn` and `SigBlk` masks of the program a run starts from `sh`, with the
/// shell ignoring `ignored` as a background shell ignores SIGINT and SIGQUIT.
fn task_signal_masks(ignored: &str) -> String {
    let script = format!(
        "trap '' {ignored}; exec {BIN} run -q -- grep -E '^Sig(Ign|Blk)' /proc/self/status"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_task_starts_with_every_signal_at_its_default_whatever_its_host_ignores() {
    let masks = task_signal_masks("INT QUIT HUP USR1");
    for line in masks.lines() {
        let (_, mask) = line.split_once(':').unwrap();
        assert_eq!(u64::from_str_radix(mask.trim(), 16), Ok(0), "{masks}");
    }
    assert_eq!(masks.lines().count(), 2, "{masks}");
}

/// Runs `swarmexec run -q` with `args` in a shell pipeline, `stdout` piped
/// through `after` (say `| cmp - file`), and returns the shell's output.
fn pipeline(run_args: &str, after: &str) -> Output {
    let script = format!("{BIN} run -q {run_args} {after}");
    Command::new("bash")
        .args(["-o", "pipefail", "-c", &script])
        .output()
        .unwrap()
}

#[test]
fn a_million_lines_pass_through_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected");
    let direct = Command::new("seq").args(["1", "1000000"]).output().unwrap();
    fs::write(&expected, &direct.stdout).unwrap();
    let out = pipeline(
        "-- seq 1 1000000",
        &format!("| cmp - {}", expected.display()),
    );
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn two_hundred_megabytes_arrive_whole() {
    let out = pipeline("-- sh -c 'yes | head -c 200000000'", "| wc -c");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "200000000");
}

#[test]
fn a_closed_pipe_ends_the_program_as_in_a_shell() {
    let start = Instant::now();
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("{BIN} run -q -- yes | head -1; echo ${{PIPESTATUS[0]}}"),
        ])
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(text(&out.stdout), "y\n141\n");
}

#[test]
fn stdin_reaches_the_program_only_with_interactive() {
    let run = |flag: &[&str]| {
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("-q")
            .args(flag)
            .args(["--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
        text(&child.wait_with_output().unwrap().stdout)
    };
    assert_eq!(run(&["-i"]), "hello\n");
    assert_eq!(run(&[]), "", "stdin is /dev/null without -i");
}

#[test]
fn concurrent_runs_on_one_state_dir_each_see_their_own_secret() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let runs: Vec<_> = (0..2)
        .map(|i| {
            let secret = dir.path().join(format!("secret-{i}"));
            fs::write(&secret, format!("secret {i}")).unwrap();
            Command::new(BIN)
                .args(["run", "-q", "--state-dir"])
                .arg(&state)
                .arg("--secret")
                .arg(format!("s={}", secret.display()))
                .args([
                    "--",
                    "sh",
                    "-c",
                    "sleep 0.3; cat \"$SWARMEXEC_SECRETS_DIR/s\"",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().unwrap();
        assert_eq!(code(&out), 0);
        assert_eq!(text(&out.stdout), format!("secret {i}"));
    }
    common::assert_empty(&state, "each run removed its own files");
}

#[test]
fn exit_codes_and_messages_name_the_real_cause() {
    let dir = tempfile::tempdir().unwrap();
    let missing_interpreter = dir.path().join("script");
    fs::write(&missing_interpreter, "#!/no/such/interpreter\n").unwrap();
    fs::set_permissions(&missing_interpreter, fs::Permissions::from_mode(0o755)).unwrap();
    let not_executable = dir.path().join("data");
    fs::write(&not_executable, "not a program").unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();
    let bad_format = dir.path().join("garbage");
    fs::write(&bad_format, [0u8, 1, 2, 3]).unwrap();
    fs::set_permissions(&bad_format, fs::Permissions::from_mode(0o755)).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let mut cases = vec![
        (
            vec!["no-such-program-anywhere".to_owned()],
            127,
            "not found",
        ),
        (vec![path(&missing_interpreter)], 127, "interpreter"),
        (vec![path(&not_executable)], 126, "not executable"),
        (vec![path(&bad_format)], 126, "not executable"),
    ];
    if unsafe_free_is_root() {
        let private = dir.path().join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let dir_arg = format!("--dir={}", path(&private));
        cases.push((
            vec!["--user=nobody".into(), dir_arg, "--".into(), "pwd".into()],
            126,
            "working directory",
        ));
        let owned = dir.path().join("owned");
        fs::write(&owned, "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&owned, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        cases.push((
            vec!["--user=nobody".into(), "--".into(), path(&owned)],
            126,
            "not executable",
        ));
    }
    for (args, expected, says) in cases {
        let mut all = vec!["run".to_owned(), "-q".to_owned()];
        if !args.contains(&"--".to_owned()) {
            all.push("--".into());
        }
        all.extend(args.iter().cloned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = swarmexec(&all);
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), expected, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn sighup_stops_gracefully_and_sigusr1_reaches_the_program() {
    let (child, mut stdout) = start_until_ready(&[
        "run",
        "--",
        "sh",
        "-c",
        "trap 'echo usr1' USR1; trap 'echo bye; exit 7' HUP TERM; echo ready; \
         while :; do sleep 0.05; done",
    ]);
    send(&child, "-USR1");
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "usr1\n");
    send(&child, "-HUP");
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    assert_eq!(out.status.code(), Some(7), "the program's own status");
}

#[test]
fn the_final_line_shows_the_exit_code_even_after_a_forced_kill() {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--stop-grace",
            "20s",
            "--",
            "sh",
            "-c",
            "trap '' INT TERM; echo ready; sleep 30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    send(&child, "-TERM");
    std::thread::sleep(Duration::from_millis(100));
    send(&child, "-TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137));
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("SHUTDOWN")
            && last.contains("stopped on request: killed by signal 9 (SIGKILL)")
            && last.contains("(exit 137"),
        "{stderr}"
    );
}

#[test]
fn quiet_hides_transitions_but_not_errors() {
    let out = swarmexec(&["run", "-q", "--", "no-such-program-anywhere"]);
    assert_eq!(code(&out), 127);
    assert_eq!(
        text(&out.stderr).trim(),
        "swarmexec: program not found: no-such-program-anywhere"
    );
}

#[test]
fn the_program_is_found_on_the_callers_path_with_a_login_environment() {
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("my-tool");
    fs::write(&tool, "#!/bin/sh\nenv | sort\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = Command::new(BIN)
        .args([
            "run",
            "-q",
            "--env",
            "GREETING=hi",
            "--env",
            "PASSED",
            "--env",
            "UNSET_ANYWHERE",
            "--",
            "my-tool",
        ])
        .env("PATH", &path)
        .env("PASSED", "from the caller")
        .env("SECRET_OF_THE_CALLER", "x")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let env = text(&out.stdout);
    let keys: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for key in [
        "GREETING",
        "HOME",
        "LOGNAME",
        "PASSED",
        "PATH",
        "SWARMEXEC_TASK_ID",
        "USER",
    ] {
        assert!(keys.contains(&key), "{key} missing: {env}");
    }
    assert!(env.contains("PASSED=from the caller\n"));
    assert!(env.contains(&format!("PATH={path}\n")));
    assert!(!env.contains("SECRET_OF_THE_CALLER"), "{env}");
    assert!(!env.contains("UNSET_ANYWHERE"), "{env}");
}

#[test]
fn a_health_check_makes_running_mean_ready_and_an_unhealthy_task_end() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let probe = format!("test -f {}", ready.display());
    let script = format!("sleep 0.3; touch {}; sleep 0.5", ready.display());
    let out = swarmexec(&[
        "run",
        "--health-cmd",
        &probe,
        "--health-start-interval",
        "100ms",
        "--health-start-period",
        "10s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let healthy = stderr.find("HEALTHY").expect("a health line");
    let running = stderr.find("RUNNING").expect("a RUNNING line");
    assert!(healthy < running, "RUNNING once healthy: {stderr}");

    let out = swarmexec(&[
        "run",
        "--health-cmd",
        "echo sick; exit 1",
        "--health-interval",
        "50ms",
        "--health-start-interval",
        "50ms",
        "--",
        "sh",
        "-c",
        "trap 'exit 9' TERM; sleep 30 & wait",
    ]);
    assert_eq!(code(&out), 9, "the program's own status once stopped");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("UNHEALTHY"), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.contains("FAILED") && last.contains("unhealthy") && last.contains("sick"),
        "{last}"
    );

    let out = swarmexec(&["run", "--health-interval", "1s", "--", "true"]);
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("need --health-cmd"));
    let out = swarmexec(&[
        "run",
        "-q",
        "--health-cmd",
        "false",
        "--no-healthcheck",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "no health check at all");
}

#[test]
fn limits_out_of_range_are_refused_before_the_program_starts() {
    for (flags, named) in [
        (&["--memory", "1"][..], "minimum of 6291456 bytes"),
        (&["--memory", "4k"], "6 MiB"),
        (&["--memory", "8k"], "6 MiB"),
        (&["--pids-limit", "5000000"], "kernel's maximum, 4194304"),
        (&["--cpus", "100000"], "out of range"),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "sh", "-c", "echo ran"]);
        let out = swarmexec(&args);
        assert_eq!(code(&out), 125, "{flags:?}");
        assert!(
            text(&out.stderr).contains(named),
            "{flags:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "", "{flags:?}: the program never ran");
    }
}

#[test]
fn a_parent_that_ignores_sigchld_does_not_stop_the_command() {
    let out = Command::new("perl")
        .args(["-e", "$SIG{CHLD} = 'IGNORE'; exec @ARGV or die"])
        .args([BIN, "run", "-q", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 7, "{}", text(&out.stderr));
}
