//! The command's help texts.

pub(crate) const TOP: &str = "\
swarmexec: run programs as supervised tasks

Usage:
  swarmexec run [OPTIONS] -- PROGRAM [ARGS...]
  swarmexec describe
  swarmexec bench [OPTIONS] -- PROGRAM [ARGS...]
  swarmexec node --join MANAGER[:2377] --token SWMTKN-... [OPTIONS]
  swarmexec help [COMMAND]
  swarmexec --help | --version

Commands:
  run       Run PROGRAM as a task and exit with its exit code
  describe  Print this node's description and what it can enforce
  bench     Time each step of PROGRAM's lifecycle as a supervised task
  node      Join a swarm as a worker whose tasks are supervised processes
  help      Print the help of a command

Run 'swarmexec help COMMAND' for a command's options.";

pub(crate) const RUN: &str = "\
Usage: swarmexec run [OPTIONS] -- PROGRAM [ARGS...]

Runs PROGRAM (never through a shell) as a supervised task, in a cgroup of its own
where the host allows, and exits with its exit code: 125 when swarmexec fails, 126
when PROGRAM cannot be executed, 127 when it (or its #! interpreter) is not found,
128+N when it was killed by signal N, 1 when it failed otherwise (its health check
never passed).

PROGRAM is looked up on your PATH, as a shell would (a name with a / is a path);
its arguments and environment are passed as bytes, untouched. Its stdout and
stderr are this command's own, byte for byte; its stdin is /dev/null, or this
command's stdin with -i. Its environment is PATH (yours), HOME, USER and LOGNAME
of the user it runs as, SWARMEXEC_TASK_ID, SWARMEXEC_SECRETS_DIR and
SWARMEXEC_CONFIGS_DIR (with --secret or --config), TERM (yours, with -t), and what
--env and --env-file add; nothing else of yours is passed on, and no descriptor
but stdin, stdout and stderr (and those --preserve-fds keeps). State transitions
go to stderr.

Signals this command receives are passed on to PROGRAM as received (to its
process group with --signal-group), but SIGTERM, which stops it (stop signal,
grace period, then SIGKILL to everything it started); a second SIGTERM, or a
SIGINT during the stop, kills it at once. With a terminal (-t, or -i when stdin
is one) PROGRAM gets the terminal's foreground, so that Ctrl-C, Ctrl-\\ and Ctrl-Z
reach it from the terminal, and a stopped PROGRAM stops the run (and `fg` resumes
both). As PID 1 (a container's command), or with --init, orphaned processes are
reaped. If swarmexec itself is killed, the program dies with it.

Options:
  -e, --env NAME=VALUE  Set an environment variable; --env NAME passes your value
                        (repeatable)
      --env-file FILE   Read variables from FILE, a NAME=VALUE or NAME a line, as
                        docker run reads it (repeatable)
  -i, --interactive     Give the program this command's stdin
  -t, --tty             Give the program this command's terminal: its stdin, the
                        foreground, and TERM (implies -i; stdin must be one)
  -w, --dir PATH        Working directory (default: yours)
  -u, --user USER[:GROUP]
                        Run as this user and group, names or numeric ids (a
                        numeric user needs no passwd entry); a named user gets
                        its groups from /etc/group (needs root)
      --group-add GROUP Add a supplementary group (repeatable)
      --name NAME       The task's id (default: run-PID)
      --secret NAME=FILE
                        Expose FILE's bytes as secret NAME (repeatable); the
                        program finds it in $SWARMEXEC_SECRETS_DIR/NAME (mode 0400)
      --config NAME=FILE
                        Likewise for a config, in $SWARMEXEC_CONFIGS_DIR (0444)
  -m, --memory SIZE     Memory limit, like 256m or 1g (at least 6m); over it the
                        program is killed (exit 137, out of memory)
      --cpus NUMBER     CPU limit, like 1.5
      --pids-limit N    Most processes (and threads) at once; -1 for no limit
      --ulimit NAME=SOFT[:HARD]
                        A resource limit (as, core, cpu, data, fsize, memlock,
                        nofile, nproc, stack; unlimited or -1 for none)
      --health-cmd CMD  Health check: a shell command line, run with sh -c as the
                        program's user, in its directory and cgroup; exit 0 is
                        healthy. RUNNING then means it passed once; retries
                        failures in a row stop the program (FAILED, unhealthy)
      --health-interval DURATION
                        Between checks once healthy (default 30s)
      --health-timeout DURATION
                        A check running longer fails, and is killed (default 30s)
      --health-start-period DURATION
                        Failures do not count for this long after the start
                        (default 0s)
      --health-start-interval DURATION
                        Between checks until one passes (default 5s)
      --health-retries N
                        Failures in a row that make it unhealthy (default 3)
      --no-healthcheck  No health check, whatever else was given
      --stop-signal SIG Signal asking the program to stop: a name (TERM,
                        SIGTERM), a number, or SIGRTMIN+N (default SIGTERM)
      --stop-grace DURATION
                        Time between the stop signal and SIGKILL, like 10s,
                        1m30s or 500ms (default 10s)
      --stop-timeout SECONDS
                        The same, in seconds (docker run's name)
      --signal-group    Pass signals (and the stop signal) to the program's
                        whole process group, not to the program alone
      --restart POLICY  no (default), on-failure[:N], always or unless-stopped:
                        start the program again when it ends (not after a stop),
                        waiting 100 ms, doubling, reset after 10 s of running
      --init            Reap orphaned processes (a subreaper), as tini -s; on
                        by itself as PID 1 (also --subreaper)
      --preserve-fds N  Pass descriptors 3 to 3+N-1 on to the program
      --pid-file FILE   Write the program's pid to FILE while it runs
      --json            Transitions and the final status as JSON lines on stderr
  -q, --quiet           Print no state transitions: only how a run ended when it
                        was not by itself (killed, out of memory, unhealthy,
                        stopped), and errors
      --state-dir PATH  Where task files go (default: memory-backed, so that
                        secrets stay off disk: /run/swarmexec for root, else
                        $XDG_RUNTIME_DIR/swarmexec, or /dev/shm where those are
                        on disk; what a killed run left is removed by the next)
  -h, --help            Print this help";

pub(crate) const DESCRIBE: &str = "\
Usage: swarmexec describe

Prints the node description the process executor reports (hostname, operating
system, architecture, CPUs, memory), what this host enforces (how a task's
processes are held together: cgroup v2, cgroup v1 freezer, or process group; and
which limits can be set) and where task files go.";

pub(crate) const BENCH: &str = "\
Usage: swarmexec bench [OPTIONS] -- PROGRAM [ARGS...]

Runs PROGRAM as a task of the process executor again and again (its output
discarded) and prints, for each step of its lifecycle (accepted: the executor
resolves a controller; preparing; ready: the spec checked; starting; running: the
spawn; terminal: the program's run and its reaping; removal; and the whole
lifecycle), the count, median, p90, p99, p99.9 and maximum latency: what
supervision costs PROGRAM on this host. The clock's own cost is taken off every
sample.

Options:
      --runs N          Timed lifecycles (default 200), after a tenth as many
                        (at most 20) to warm up
      --cgroups         Each run in a cgroup of its own, where the host has them
                        (the default)
      --no-cgroups      No cgroups: each run held by its process group only
      --json            The rows in Bencher's metric format, one JSON document
  -h, --help            Print this help";

pub(crate) const NODE: &str = "\
Usage: swarmexec node --join MANAGER[:2377] --token SWMTKN-... [OPTIONS]
       swarmexec node [OPTIONS]          (again, once joined)

Joins a Docker Swarm (SwarmKit) as a worker node and runs the tasks its managers
assign to it as supervised processes, without containers: a task's command is
its Command and Args (the image is never pulled or run), with its Env, Dir,
User, Groups, StopSignal, StopGracePeriod, Healthcheck, secrets and configs
(files in the task's own directory: SWARMEXEC_SECRETS_DIR and
SWARMEXEC_CONFIGS_DIR say where) and its CPU, memory and pids limits (cgroups).
A task asking for what a process cannot have (mounts, networks, published
ports, privileges, an init, a TTY, ...) is rejected, naming the field.

The node's engine labels include swarmexec.runtime=process: target such nodes
with --constraint engine.labels.swarmexec.runtime==process.

It keeps its identity (key, certificate, the swarm's root CA) in its state
directory, and runs until SIGTERM or SIGINT: it then stops its tasks gracefully
(a second signal kills them), reports them and exits 0. Started again on the
same state directory it rejoins as the same node, with no --join or --token.
Removed from the swarm by a manager (docker node rm), it stops its tasks,
forgets its identity and exits 1.

Options:
      --join MANAGER    The manager to join through (port 2377 unless given);
                        once joined, an extra manager to try first
      --token TOKEN     The swarm's worker join token (docker swarm join-token -q
                        worker)
      --state-dir DIR   Where the node's identity is kept (default:
                        /var/lib/swarmexec/node for root, else
                        $XDG_STATE_HOME/swarmexec/node)
      --hostname NAME   The hostname the node reports (default: this host's)
      --label KEY=VALUE An engine label for the node (repeatable)
      --default-user USER
                        Who runs a task that names no user (default: nobody)
      --allow-root      Let tasks run as root (refused otherwise)
  -h, --help            Print this help";
