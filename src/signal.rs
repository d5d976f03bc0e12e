//! [`Signal`]: a signal by number, parsed once from what people write.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A signal, by number.
///
/// Parsed from a name with or without `SIG` (`"SIGTERM"`, `"term"`), a number
/// (`"15"`), or a real-time signal relative to its range (`"SIGRTMIN+3"`,
/// `"RTMAX-1"`), as `kill` and Docker take them; shown by name where it has one.
///
/// ```
/// use swarmexec::api::Signal;
///
/// let term: Signal = "term".parse()?;
/// assert_eq!(term, Signal::TERM);
/// assert_eq!(term.to_string(), "SIGTERM");
/// let rt: Signal = "SIGRTMIN+3".parse()?;
/// assert_eq!(rt.number(), Signal::rtmin() + 3);
/// assert_eq!(rt.to_string(), "SIGRTMIN+3");
/// assert!("SIGNOPE".parse::<Signal>().is_err());
/// # Ok::<(), swarmexec::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(i32);

impl Signal {
    /// SIGHUP.
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// SIGINT.
    pub const INT: Signal = Signal(libc::SIGINT);
    /// SIGQUIT.
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// SIGKILL.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// SIGUSR1.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// SIGUSR2.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// SIGTERM.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// SIGCONT.
    pub const CONT: Signal = Signal(libc::SIGCONT);
    /// SIGSTOP.
    pub const STOP: Signal = Signal(libc::SIGSTOP);
    /// SIGTSTP.
    pub const TSTP: Signal = Signal(libc::SIGTSTP);
    /// SIGWINCH.
    pub const WINCH: Signal = Signal(libc::SIGWINCH);

    /// The signal numbered `number`, if there is one (1 to SIGRTMAX).
    pub fn from_number(number: i32) -> Option<Signal> {
        (1..=libc::SIGRTMAX())
            .contains(&number)
            .then_some(Signal(number))
    }

    /// Its number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// The first real-time signal this C library leaves to programs.
    pub fn rtmin() -> i32 {
        libc::SIGRTMIN()
    }

    /// The last real-time signal.
    pub fn rtmax() -> i32 {
        libc::SIGRTMAX()
    }

    /// Its name, such as `"SIGKILL"`, for one of the standard signals.
    pub fn standard_name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(_, number)| *number == self.0)
            .map(|(name, _)| *name)
    }
}

impl fmt::Display for Signal {
    /// `SIGTERM`, `SIGRTMIN+3`, or the number for one with no name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.standard_name() {
            return f.write_str(name);
        }
        let (min, max) = (Signal::rtmin(), Signal::rtmax());
        match self.0 {
            n if n == min => f.write_str("SIGRTMIN"),
            n if n > min && n <= (min + max) / 2 => write!(f, "SIGRTMIN+{}", n - min),
            n if n == max => f.write_str("SIGRTMAX"),
            n if n > min && n < max => write!(f, "SIGRTMAX-{}", max - n),
            n => write!(f, "{n}"),
        }
    }
}

impl FromStr for Signal {
    type Err = Error;

    fn from_str(text: &str) -> Result<Signal, Error> {
        parse(text).ok_or_else(|| {
            Error::InvalidSpec(format!(
                "unknown signal {text:?}: give a name (TERM, SIGTERM), a number from 1 to \
                 {}, or SIGRTMIN+n / SIGRTMAX-n",
                Signal::rtmax()
            ))
        })
    }
}

fn parse(text: &str) -> Option<Signal> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::from_number(number);
    }
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |base: i32, rest: &str, sign: i32| -> Option<Signal> {
        let offset: i32 = match rest {
            "" => 0,
            _ => rest.parse().ok()?,
        };
        let number = base.checked_add(sign.checked_mul(offset)?)?;
        (Signal::rtmin()..=Signal::rtmax())
            .contains(&number)
            .then_some(Signal(number))
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            Some(offset) if !offset.is_empty() => realtime(Signal::rtmin(), offset, 1),
            None if rest.is_empty() => realtime(Signal::rtmin(), "", 1),
            _ => None,
        };
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            Some(offset) if !offset.is_empty() => realtime(Signal::rtmax(), offset, -1),
            None if rest.is_empty() => realtime(Signal::rtmax(), "", -1),
            _ => None,
        };
    }
    NAMES
        .iter()
        .find(|(name, _)| name.strip_prefix("SIG") == Some(bare))
        .map(|(_, number)| Signal(*number))
}

/// The standard signals' names; also `IOT` (ABRT), `CLD` (CHLD) and `POLL` (IO),
/// which `kill` takes, are found by parsing but never shown.
const NAMES: &[(&str, i32)] = &[
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGILL", libc::SIGILL),
    ("SIGTRAP", libc::SIGTRAP),
    ("SIGABRT", libc::SIGABRT),
    ("SIGBUS", libc::SIGBUS),
    ("SIGFPE", libc::SIGFPE),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGALRM", libc::SIGALRM),
    ("SIGTERM", libc::SIGTERM),
    ("SIGSTKFLT", libc::SIGSTKFLT),
    ("SIGCHLD", libc::SIGCHLD),
    ("SIGCONT", libc::SIGCONT),
    ("SIGSTOP", libc::SIGSTOP),
    ("SIGTSTP", libc::SIGTSTP),
    ("SIGTTIN", libc::SIGTTIN),
    ("SIGTTOU", libc::SIGTTOU),
    ("SIGURG", libc::SIGURG),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGPROF", libc::SIGPROF),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGIO", libc::SIGIO),
    ("SIGPWR", libc::SIGPWR),
    ("SIGSYS", libc::SIGSYS),
    ("SIGIOT", libc::SIGABRT),
    ("SIGCLD", libc::SIGCHLD),
    ("SIGPOLL", libc::SIGIO),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_short_name_number_and_real_time_offset() {
        for name in ["SIGTERM", "TERM", "term", "15", "SigTerm"] {
            assert_eq!(name.parse::<Signal>().unwrap(), Signal::TERM, "{name}");
        }
        assert_eq!("KILL".parse::<Signal>().unwrap(), Signal::KILL);
        assert_eq!("IOT".parse::<Signal>().unwrap().to_string(), "SIGABRT");
        let (min, max) = (Signal::rtmin(), Signal::rtmax());
        assert_eq!("SIGRTMIN".parse::<Signal>().unwrap().number(), min);
        assert_eq!("rtmin+2".parse::<Signal>().unwrap().number(), min + 2);
        assert_eq!("SIGRTMAX-1".parse::<Signal>().unwrap().number(), max - 1);
        assert_eq!("RTMAX".parse::<Signal>().unwrap().number(), max);
        for bad in [
            "",
            "SIG",
            "TERMINATE",
            "0",
            "-1",
            "99",
            "SIGFOO",
            "RTMIN+",
            "RTMIN-1",
            "RTMAX+1",
            "RTMIN+99",
            "RTMIN+x",
        ] {
            assert!(bad.parse::<Signal>().is_err(), "{bad}");
        }
        for n in 1..=max {
            let signal = Signal::from_number(n).unwrap();
            assert_eq!(signal.to_string().parse::<Signal>().unwrap(), signal, "{n}");
        }
        assert_eq!(Signal(min + 3).to_string(), "SIGRTMIN+3");
        assert_eq!(Signal(max - 2).to_string(), "SIGRTMAX-2");
    }
}
