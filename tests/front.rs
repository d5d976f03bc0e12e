//! `swarmexec run` in front of any program, as tini, dumb-init and `docker run`
//! are: a real terminal (tmux), signals one by one, orphans in a pid namespace,
//! users and groups, bytes, descriptors, and `docker run`'s conveniences.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::process::{ChildStdout, Command, Stdio};

use common::{eventually, swarmexec, text, Reaped, BIN};
use std::time::{Duration, Instant};

/// A shell in a tmux session of its own (its own server, so that tests do not
/// meet), typed into and read from as a user would.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// `None` where tmux is missing: then the terminal tests have nothing to drive.
    fn start(name: &str) -> Option<Tmux> {
        let socket = format!("swarmexec-{name}-{}", std::process::id());
        let started = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "150", "-y", "40"])
            .args(["env", "PS1=$ ", "bash", "--norc", "--noprofile"])
            .status()
            .ok()?;
        assert!(started.success(), "tmux starts");
        let tmux = Tmux { socket };
        // The screen is read with trailing blanks trimmed.
        tmux.wait_for("$");
        Some(tmux)
    }

    fn keys(&self, keys: &[&str]) {
        let sent = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "0"])
            .args(keys)
            .status()
            .unwrap();
        assert!(sent.success());
    }

    fn type_line(&self, line: &str) {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "capture-pane",
                "-p",
                "-t",
                "0",
                "-S",
                "-200",
            ])
            .output()
            .unwrap();
        text(&out.stdout)
    }

    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.screen().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} on the screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The shell's last exit status.
    fn status(&self, tag: &str) -> String {
        self.type_line(&format!("echo {tag}=$?"));
        let prefix = format!("{tag}=");
        let mut found = None;
        eventually("the status line", Duration::from_secs(10), || {
            let screen = self.screen();
            found = screen
                .lines()
                .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()));
            found.is_some()
        });
        found.unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn in_a_terminal_the_program_reads_gets_ctrl_c_and_ctrl_z_stops_the_run() {
    let Some(tmux) = Tmux::start("terminal") else {
        return;
    };
    // Outputs are spelt apart in the commands typed, which the screen shows too.
    // Reads the terminal: typed input reaches it (it was not stopped by SIGTTIN).
    tmux.type_line(&format!(
        "{BIN} run -q -i -- sh -c 'read x; echo g\"\"ot:$x'"
    ));
    std::thread::sleep(Duration::from_millis(300));
    tmux.type_line("hello");
    tmux.wait_for("got:hello");
    assert_eq!(tmux.status("read"), "0");

    // Ctrl-C reaches the program from the terminal driver, which cleans up.
    tmux.type_line(&format!(
        "{BIN} run -q -t -- sh -c 'trap \"echo clean\"\"ed; exit 3\" INT; echo wait\"\"ing; sleep 30 & wait'"
    ));
    tmux.wait_for("waiting");
    tmux.keys(&["C-c"]);
    tmux.wait_for("cleaned");
    assert_eq!(tmux.status("int"), "3");

    // Ctrl-Z stops the run (the shell sees a stopped job); fg resumes both.
    tmux.type_line(&format!(
        "{BIN} run -q -it -- sh -c 'echo tick-o\"\"ne; sleep 0.5; echo tick-t\"\"wo'"
    ));
    tmux.wait_for("tick-one");
    tmux.keys(&["C-z"]);
    tmux.wait_for("Stopped");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !tmux.screen().contains("tick-two"),
        "the program stopped too"
    );
    tmux.type_line("fg");
    tmux.wait_for("tick-two");
    assert_eq!(tmux.status("fg"), "0");

    // The shell has its terminal back: a job of its own can read it.
    tmux.type_line("read y; echo shell-g\"\"ot:$y");
    std::thread::sleep(Duration::from_millis(200));
    tmux.type_line("back");
    tmux.wait_for("shell-got:back");

    // An interactive shell under the run has job control of its own.
    tmux.type_line(&format!("{BIN} run -q -it -- bash --norc -i"));
    std::thread::sleep(Duration::from_millis(500));
    tmux.type_line("sleep 30 &");
    tmux.type_line("jobs -l; kill %1; wait; echo inner-d\"\"one");
    tmux.wait_for("inner-done");
    tmux.type_line("exit 4");
    assert_eq!(tmux.status("bash"), "4");
    let screen = tmux.screen();
    assert!(!screen.contains("no job control"), "{screen}");
}

#[test]
fn t_without_a_terminal_is_refused_as_docker_refuses_it() {
    let out = Command::new(BIN)
        .args(["run", "-t", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("not a TTY"),
        "{}",
        text(&out.stderr)
    );
}

/// A bash program that reports every signal it can trap, one line each.
const REPORTER: &str = "for s in $(seq 1 64); do trap \"echo got $s\" $s 2>/dev/null; done; \
                        echo ready; while :; do sleep 0.05 & wait $!; done";

/// `swarmexec run` with `flags`, then `program`; returns once the program has
/// printed its first line, `ready`.
fn start_until_ready(flags: &[&str], program: &[&str]) -> (Reaped, BufReader<ChildStdout>) {
    let mut child = Reaped(
        Command::new(BIN)
            .args(["run", "-q"])
            .args(flags)
            .arg("--")
            .args(program)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, stdout)
}

fn start_reporter(extra: &[&str]) -> (Reaped, BufReader<ChildStdout>) {
    let mut flags = vec!["--stop-grace", "1s"];
    flags.extend_from_slice(extra);
    start_until_ready(&flags, &["bash", "-c", REPORTER])
}

fn send(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn every_catchable_signal_reaches_the_program_as_received() {
    let (mut child, mut stdout) = start_reporter(&[]);
    let rtmax = 64;
    // SIGTERM stops; SIGCHLD, SIGPIPE, SIGURG and SIGWINCH (no terminal) are the
    // command's own; 32 and 33 belong to the C library.
    let own = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGTERM,
        libc::SIGCHLD,
        libc::SIGPIPE,
        libc::SIGURG,
        libc::SIGWINCH,
        32,
        33,
    ];
    for signal in (1..=rtmax).filter(|s| !own.contains(s)) {
        send(child.id(), signal);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "the run ended at {signal}"
            );
            if line.starts_with("got ") && line != "got 17\n" {
                break;
            }
        }
        assert_eq!(line, format!("got {signal}\n"));
    }
    send(child.id(), libc::SIGTERM);
    let status = child.wait().unwrap();
    // The trap caught the stop signal and went on: killed after the grace period.
    assert_eq!(status.code(), Some(137));
}

#[test]
fn a_sigint_is_passed_on_and_the_program_ends_as_it_chooses() {
    let (mut child, mut stdout) = start_reporter(&[]);
    send(child.id(), libc::SIGINT);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "got 2\n");
    // A program that exits cleanly on SIGINT ends the run with its own status.
    let script = "trap 'echo cleaned up; exit 0' INT; echo ready; sleep 30 & wait";
    let (mut clean, mut out) = start_until_ready(&[], &["sh", "-c", script]);
    send(clean.id(), libc::SIGINT);
    let mut rest = String::new();
    out.read_line(&mut rest).unwrap();
    assert_eq!(rest, "cleaned up\n");
    assert_eq!(clean.wait().unwrap().code(), Some(0));
    send(child.id(), libc::SIGKILL);
    child.wait().unwrap();
}

#[test]
fn signal_group_passes_signals_to_the_whole_group() {
    // The main process traps USR1 (and says nothing); its child says so.
    let script = "trap : USR1; sh -c 'trap \"echo child got USR1\" USR1; echo ready; \
                  while :; do sleep 0.05; done' & while :; do wait; done";
    for (flags, reaches_child) in [(&[][..], false), (&["--signal-group"][..], true)] {
        let mut all = vec!["--stop-grace", "1s"];
        all.extend_from_slice(flags);
        let (mut child, mut out) = start_until_ready(&all, &["sh", "-c", script]);
        send(child.id(), libc::SIGUSR1);
        std::thread::sleep(Duration::from_millis(300));
        send(child.id(), libc::SIGTERM);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        child.wait().unwrap();
        assert_eq!(
            rest.contains("child got USR1"),
            reaches_child,
            "{flags:?}: {rest}"
        );
    }
}

#[test]
fn as_pid_1_orphans_are_reaped() {
    let script = "for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 1; ps -eo stat=,comm=";
    let out = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            BIN,
            "run",
            "-q",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    if !out.status.success() && text(&out.stderr).contains("unshare") {
        return; // no pid namespaces here
    }
    let ps = text(&out.stdout);
    assert!(out.status.success(), "{ps}{}", text(&out.stderr));
    assert!(
        !ps.lines().any(|l| l.starts_with('Z')),
        "zombies left:\n{ps}"
    );
    assert!(ps.contains("swarmexec"), "{ps}");
}

#[test]
fn with_init_orphans_are_reaped_on_a_host_too() {
    let script = "for i in 1 2 3; do (sleep 0.1 &); done; sleep 1; \
                  ps -o stat= --ppid $(ps -o ppid= -p $$)";
    let out = swarmexec(&["run", "-q", "--init", "--", "sh", "-c", script]);
    let ps = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!ps.lines().any(|l| l.trim_start().starts_with('Z')), "{ps}");
}

#[test]
fn users_and_groups_are_taken_as_docker_takes_them() {
    if !common::is_root() {
        return;
    }
    let id = |args: &[&str]| {
        let mut all = vec!["run", "-q"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "id"]);
        let out = swarmexec(&all);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(id(&["-u", "12345"]), "uid=12345 gid=0(root) groups=0(root)");
    assert!(id(&["-u", "12345:4321"]).starts_with("uid=12345 gid=4321 groups=4321"));
    assert!(id(&["-u", "nobody", "--group-add", "100"]).contains(",100(users)"));
    // A named user's supplementary groups come from /etc/group.
    let group = fs::read_to_string("/etc/group").unwrap();
    let member = group.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let user = fields.get(3)?.split(',').next().filter(|u| !u.is_empty())?;
        Some((user.to_owned(), fields[0].to_owned()))
    });
    if let Some((user, group)) = member {
        assert!(
            id(&["-u", &user]).contains(&format!("({group})")),
            "{user} in {group}"
        );
    }
}

#[test]
fn bytes_reach_the_program_untouched() {
    let out = Command::new(BIN)
        .args(["run", "-q", "--", "printf", "%s\\n"])
        .arg(OsStr::from_bytes(b"\xff\xfe"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"\xff\xfe\n");

    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    fs::write(&env_file, b"# a comment\nFROM_FILE=\xfe\xff\nPASSED\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "-q", "-e", "W", "--env-file"])
        .arg(&env_file)
        .args([
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$W\" \"$FROM_FILE\" \"$PASSED\"",
        ])
        .env("W", OsStr::from_bytes(b"\xff"))
        .env("PASSED", "from the caller")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"\xff|\xfe\xff|from the caller");
}

#[test]
fn a_real_time_stop_signal_is_taken_and_sent() {
    let (mut child, mut stdout) = start_reporter(&["--stop-signal", "SIGRTMIN+3"]);
    send(child.id(), libc::SIGTERM);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // glibc's SIGRTMIN is 34.
    assert_eq!(line, "got 37\n");
    assert_eq!(child.wait().unwrap().code(), Some(137));
    let refused = swarmexec(&["run", "--stop-signal", "SIGNOPE", "--", "true"]);
    assert_eq!(refused.status.code(), Some(125));
    assert!(text(&refused.stderr).contains("unknown signal \"SIGNOPE\""));
}

#[test]
fn only_stdio_and_preserved_descriptors_reach_the_program() {
    let script =
        format!("exec 7</etc/hostname 8</etc/hosts; exec {BIN} run -q -- ls /proc/self/fd");
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let fds: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    // 0, 1, 2, and the one ls lists with.
    assert_eq!(fds, ["0", "1", "2", "3"], "{}", text(&out.stderr));

    let script = format!(
        "exec 3</etc/hostname 4</etc/hosts 7</etc/passwd; \
         exec {BIN} run -q --preserve-fds 2 -- sh -c 'readlink /proc/self/fd/3 /proc/self/fd/4; ls /proc/self/fd'"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let printed = text(&out.stdout);
    assert!(
        printed.starts_with("/etc/hostname\n/etc/hosts\n"),
        "{printed}"
    );
    assert!(!printed.lines().any(|l| l == "7"), "{printed}");
    let refused = swarmexec(&["run", "--preserve-fds", "40", "--", "true"]);
    assert_eq!(refused.status.code(), Some(125));
    assert!(text(&refused.stderr).contains("not open"));
}

#[test]
fn restart_on_failure_backs_off_and_counts_its_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let script = format!("echo x >> {}; exit 3", count.display());
    let out = swarmexec(&[
        "run",
        "--restart",
        "on-failure:2",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(fs::read_to_string(&count).unwrap().lines().count(), 3);
    let stderr = text(&out.stderr);
    let restarts: Vec<&str> = stderr.lines().filter(|l| l.contains("RESTART")).collect();
    assert_eq!(restarts.len(), 2, "{stderr}");
    assert!(
        restarts[0].contains("in 100 ms") && restarts[1].contains("in 200 ms"),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap();
    assert!(
        last.contains("exited with status 3") && last.contains("restarted 2 times"),
        "{last}"
    );

    // A program that succeeds is not started again on-failure; always is until stopped.
    let once = swarmexec(&["run", "-q", "--restart", "on-failure", "--", "true"]);
    assert_eq!(once.status.code(), Some(0));
    let mut always = Reaped(
        Command::new(BIN)
            .args(["run", "--restart", "always", "--", "sh", "-c", "sleep 0.05"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(700));
    send(always.id(), libc::SIGTERM);
    let mut stderr = String::new();
    std::io::Read::read_to_string(always.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    always.wait().unwrap();
    assert!(stderr.matches("RESTART").count() >= 2, "{stderr}");
}

#[test]
fn name_pid_file_stop_timeout_ulimit_and_the_working_directories() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let mut child = Reaped(
        Command::new(BIN)
            .args([
                "run",
                "-q",
                "--name",
                "my-task",
                "--stop-timeout",
                "1",
                "--ulimit",
                "nofile=100:200",
            ])
            .arg("--pid-file")
            .arg(&pid_file)
            .args([
                "--",
                "sh",
                "-c",
                "echo $SWARMEXEC_TASK_ID $(ulimit -n) $(ulimit -Hn) $PWD; trap '' TERM; sleep 30",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, format!("my-task 100 200 {}\n", dir.path().display()));
    eventually("the pid file", Duration::from_secs(5), || pid_file.exists());
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(common::alive(pid));
    // The command itself holds no directory.
    let cwd = fs::read_link(format!("/proc/{}/cwd", child.id())).unwrap();
    assert_eq!(cwd, std::path::Path::new("/"));
    let began = Instant::now();
    send(child.id(), libc::SIGTERM);
    let status = child.wait().unwrap();
    let took = began.elapsed();
    assert_eq!(status.code(), Some(137));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!pid_file.exists(), "the pid file goes with the program");
}

#[test]
fn json_lines_tell_the_transitions_and_the_end() {
    let out = swarmexec(&["run", "--json", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("{\"time\":") && l.ends_with('}')),
        "{stderr}"
    );
    assert!(
        lines[0].contains("\"event\":\"transition\",\"state\":\"ACCEPTED\""),
        "{stderr}"
    );
    let last = lines.last().unwrap();
    for part in [
        "\"event\":\"exit\"",
        "\"state\":\"FAILED\"",
        "\"exit_code\":3",
        "\"reason\":\"exited\"",
        "\"oom_killed\":false",
        "\"unhealthy\":false",
        "\"restarts\":0",
    ] {
        assert!(last.contains(part), "{part} in {last}");
    }
}

#[test]
fn final_lines_say_what_happened_and_quiet_still_says_it_when_it_was_not_ordinary() {
    let out = swarmexec(&["run", "--", "sh", "-c", "exit 3"]);
    let last = text(&out.stderr).lines().last().unwrap().to_owned();
    assert!(last.contains("FAILED    exited with status 3"), "{last}");
    let out = swarmexec(&["run", "-q", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(137));
    assert!(text(&out.stderr).contains("killed by signal 9 (SIGKILL)"));
    let out = swarmexec(&["run", "-q", "--", "sh", "-c", "exit 3"]);
    assert_eq!(
        text(&out.stderr),
        "",
        "an ordinary end says nothing with -q"
    );
    let out = swarmexec(&["run", "-q", "--", ""]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    // A program that ends before its health check passed fails the run.
    let out = swarmexec(&[
        "run",
        "-q",
        "--health-cmd",
        "sleep 1",
        "--health-timeout",
        "5s",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("before its health check passed"));
}

#[test]
fn quiet_runs_say_when_they_ran_out_of_memory() {
    let probe = swarmexec(&["describe"]);
    if !text(&probe.stdout).contains("memory") || !text(&probe.stdout).contains("limits: ") {
        return;
    }
    if text(&probe.stdout).contains("limits: none") {
        return;
    }
    let out = swarmexec(&[
        "run",
        "-q",
        "--memory",
        "16m",
        "--",
        "sh",
        "-c",
        "x=$(head -c 64m /dev/zero | tr '\\0' x); echo $x",
    ]);
    assert_eq!(out.status.code(), Some(137));
    assert!(
        text(&out.stderr).contains("killed: out of memory"),
        "{}",
        text(&out.stderr)
    );
}

/// The state letter of `pid` in procfs (`T` when stopped).
fn state_of(pid: u32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after.split_whitespace().next().unwrap_or("").to_owned()
}

#[test]
fn a_stop_signal_sent_to_the_run_stops_the_program_and_the_run_and_sigcont_resumes_both() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let mut run = Reaped(
        Command::new(BIN)
            .args(["run", "-q", "--pid-file"])
            .arg(&pid_file)
            .args(["--", "sh", "-c", "echo ready; sleep 0.6; echo done"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(run.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    eventually("the pid file", Duration::from_secs(5), || pid_file.exists());
    let program: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    send(run.id(), libc::SIGTSTP);
    eventually("the program to stop", Duration::from_secs(5), || {
        state_of(program) == "T"
    });
    eventually("the run to stop", Duration::from_secs(5), || {
        state_of(run.id()) == "T"
    });
    std::thread::sleep(Duration::from_millis(800));
    send(run.id(), libc::SIGCONT);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "done\n");
    assert_eq!(run.wait().unwrap().code(), Some(0));
}
