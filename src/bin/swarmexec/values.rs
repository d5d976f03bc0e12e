//! The syntaxes of the command's flag values, as `docker run` reads them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::Duration;

use swarmexec::api::{Rlimit, RlimitResource};

/// A duration as `docker run` takes them (Go's): `0`, or numbers each with a unit
/// of `ns`, `us` (or `µs`), `ms`, `s`, `m` or `h`: `10s`, `1m30s`, `1.5s`, `500ms`.
pub(crate) fn duration(text: &str) -> Option<Duration> {
    match text {
        "0" => return Some(Duration::ZERO),
        "" => return None,
        _ => {}
    }
    let mut rest = text;
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let unit_end = rest[number_end..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .map_or(rest.len(), |at| number_end + at);
        let number: f64 = rest[..number_end].parse().ok()?;
        let scale = match &rest[number_end..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += number * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// A size as `docker run --memory` takes them: a number of bytes, or with a
/// binary unit `b`, `k`, `m`, `g` (also `kb`, `mb`, `gb`), any case.
pub(crate) fn size(text: &str) -> Option<i64> {
    let lower = text.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "" | "b" => 1.0,
        "k" | "kb" => 1024.0,
        "m" | "mb" => 1024.0 * 1024.0,
        "g" | "gb" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    (1.0..9e18).contains(&bytes).then_some(bytes as i64)
}

/// `--cpus`: a positive number of CPUs, in billionths.
pub(crate) fn cpus(text: &str) -> Option<i64> {
    let cpus = text.parse::<f64>().ok()?;
    (cpus > 0.0 && cpus < 1e9).then(|| (cpus * 1e9).round() as i64)
}

/// `--pids-limit`: a positive count, or -1 (or 0) for none.
pub(crate) fn pids(text: &str) -> Option<i64> {
    match text.parse::<i64>().ok()? {
        -1 | 0 => Some(0),
        n if n > 0 => Some(n),
        _ => None,
    }
}

/// `--ulimit NAME=SOFT[:HARD]`, with `docker run`'s names; `unlimited` or -1
/// for no limit; HARD is SOFT when left out.
pub(crate) fn ulimit(text: &str) -> Result<Rlimit, String> {
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| format!("--ulimit expects NAME=SOFT[:HARD], got {text:?}"))?;
    let resource = match name {
        "as" => RlimitResource::AddressSpace,
        "core" => RlimitResource::Core,
        "cpu" => RlimitResource::Cpu,
        "data" => RlimitResource::Data,
        "fsize" => RlimitResource::FileSize,
        "memlock" => RlimitResource::MemLock,
        "nofile" => RlimitResource::NoFile,
        "nproc" => RlimitResource::NProc,
        "stack" => RlimitResource::Stack,
        _ => {
            return Err(format!(
                "--ulimit: unknown limit {name:?} (as, core, cpu, data, fsize, memlock, \
                 nofile, nproc or stack)"
            ))
        }
    };
    let value = |v: &str| match v {
        "unlimited" | "-1" => Ok(u64::MAX),
        v => v
            .parse::<u64>()
            .map_err(|_| format!("--ulimit {name}: {v:?} is not a number or \"unlimited\"")),
    };
    let (soft, hard) = match values.split_once(':') {
        Some((soft, hard)) => (value(soft)?, value(hard)?),
        None => (value(values)?, value(values)?),
    };
    if soft > hard {
        return Err(format!(
            "--ulimit {name}: the soft limit {soft} is above the hard limit {hard}"
        ));
    }
    Ok(Rlimit {
        resource,
        soft,
        hard,
    })
}

/// What `--restart` asks for after the program ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    /// Never (the default).
    #[default]
    No,
    /// When it fails, at most this many times (no limit when `None`).
    OnFailure(Option<u32>),
    /// Whatever the exit status.
    Always,
    /// As `Always`; what tells them apart for Docker (a daemon restart) a run
    /// does not have.
    UnlessStopped,
}

/// `--restart no|on-failure[:N]|always|unless-stopped`.
pub(crate) fn restart(text: &str) -> Option<RestartPolicy> {
    Some(match text {
        "no" => RestartPolicy::No,
        "on-failure" => RestartPolicy::OnFailure(None),
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        _ => RestartPolicy::OnFailure(Some(text.strip_prefix("on-failure:")?.parse().ok()?)),
    })
}

/// `NAME=VALUE` as given, bytes untouched; `NAME` alone takes `inherited`'s value
/// for it, or sets nothing when there is none (as `docker run -e NAME` does).
pub(crate) fn env_entry(
    entry: &OsStr,
    inherited: impl Fn(&OsStr) -> Option<OsString>,
) -> Result<Option<(OsString, OsString)>, String> {
    let bytes = entry.as_bytes();
    match bytes.iter().position(|b| *b == b'=') {
        Some(0) => Err(format!("expects NAME=VALUE or NAME, got {entry:?}")),
        Some(at) => Ok(Some((
            OsString::from_vec(bytes[..at].to_vec()),
            OsString::from_vec(bytes[at + 1..].to_vec()),
        ))),
        None if bytes.is_empty() => Err("expects NAME=VALUE or NAME, got \"\"".to_owned()),
        None => Ok(inherited(entry).map(|value| (entry.to_owned(), value))),
    }
}

/// The entries of an env file in `docker run --env-file`'s format: a `NAME=VALUE`
/// or `NAME` a line (leading whitespace dropped, the value taken as it is,
/// quotes and all), blank lines and lines starting with `#` skipped. A name with
/// whitespace in it is refused, naming its line.
pub(crate) fn env_file(
    content: &[u8],
    inherited: impl Fn(&OsStr) -> Option<OsString>,
) -> Result<Vec<(OsString, OsString)>, String> {
    let mut entries = Vec::new();
    for (number, line) in content.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let start = line.iter().position(|b| !b.is_ascii_whitespace());
        let Some(line) = start.map(|at| &line[at..]) else {
            continue;
        };
        if line.starts_with(b"#") {
            continue;
        }
        let name_end = line.iter().position(|b| *b == b'=').unwrap_or(line.len());
        if line[..name_end].iter().any(u8::is_ascii_whitespace) {
            return Err(format!(
                "line {}: the variable name {:?} has whitespace in it",
                number + 1,
                String::from_utf8_lossy(&line[..name_end])
            ));
        }
        let entry = env_entry(OsStr::from_bytes(line), &inherited)
            .map_err(|e| format!("line {}: {e}", number + 1))?;
        entries.extend(entry);
    }
    Ok(entries)
}

/// `NAME=FILE`, for `--secret` and `--config`.
pub(crate) fn named_file(entry: &str) -> Option<(String, std::path::PathBuf)> {
    match entry.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Some((name.to_owned(), file.into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_docker_reads_them() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("0", ms(0)),
            ("10s", ms(10_000)),
            ("1m30s", ms(90_000)),
            ("1.5s", ms(1500)),
            ("500ms", ms(500)),
            ("1h", ms(3_600_000)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(duration(text), Some(expected), "{text}");
        }
        for bad in ["", "10", "s", "1x", "-1s", "1.2.3s", "ms10"] {
            assert_eq!(duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_cpus_and_pids_read_as_docker_reads_them() {
        assert_eq!(size("256m"), Some(256 << 20));
        assert_eq!(size("1G"), Some(1 << 30));
        assert_eq!(size("1024"), Some(1024));
        assert_eq!(size("64kb"), Some(64 << 10));
        for bad in ["", "m", "12x", "-1m", "0"] {
            assert!(size(bad).is_none(), "{bad}");
        }
        assert_eq!(cpus("1.5"), Some(1_500_000_000));
        assert!(cpus("0").is_none() && cpus("x").is_none());
        assert_eq!(pids("-1"), Some(0));
        assert_eq!(pids("100"), Some(100));
        assert!(pids("-2").is_none());
    }

    #[test]
    fn ulimits_and_restart_policies() {
        let nofile = ulimit("nofile=1024:4096").unwrap();
        assert_eq!(
            (nofile.resource, nofile.soft, nofile.hard),
            (RlimitResource::NoFile, 1024, 4096)
        );
        assert_eq!(ulimit("core=unlimited").unwrap().hard, u64::MAX);
        for bad in ["nofile", "bogus=1", "nofile=x", "nofile=10:5"] {
            assert!(ulimit(bad).is_err(), "{bad}");
        }
        assert_eq!(
            restart("on-failure:3"),
            Some(RestartPolicy::OnFailure(Some(3)))
        );
        assert_eq!(restart("always"), Some(RestartPolicy::Always));
        assert_eq!(restart("sometimes"), None);
        assert_eq!(restart("on-failure:x"), None);
    }

    #[test]
    fn env_files_read_as_docker_reads_them() {
        let inherited = |name: &OsStr| (name == "HOME").then(|| OsString::from("/root"));
        let file = b"# comment\n\n  A=1\nB=\"quoted\" \nHOME\nMISSING\nC=x=y\r\nD=\xff\n";
        let entries = env_file(file, inherited).unwrap();
        let pairs: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(
            pairs,
            [
                (&b"A"[..], &b"1"[..]),
                (b"B", b"\"quoted\" "),
                (b"HOME", b"/root"),
                (b"C", b"x=y"),
                (b"D", b"\xff"),
            ]
        );
        let refused = env_file(b"OK=1\nBAD NAME=2\n", |_| None).unwrap_err();
        assert!(refused.contains("line 2"), "{refused}");
    }
}
