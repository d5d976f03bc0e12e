//! Durations from outside, and instants computed from them without overflow.

use std::time::{Duration, Instant};

use crate::Error;

/// The longest duration the crate takes (a timeout, an interval, a grace period,
/// a retry delay): 2^63 - 1 nanoseconds, about 292 years, the most Docker's and
/// SwarmKit's durations (an `int64` of nanoseconds) can say. Longer ones are
/// refused when a spec or options are checked.
pub const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// `now + d`, saturated: an instant so far ahead that it never comes, where the
/// sum would overflow.
pub(crate) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    let mut d = d.min(MAX_DURATION);
    loop {
        match now.checked_add(d) {
            Some(at) => return at,
            None => d /= 2,
        }
    }
}

/// Refuses `d` (what it is, for the message) when it is over [`MAX_DURATION`].
pub(crate) fn check(what: &str, d: Duration) -> Result<(), Error> {
    if d > MAX_DURATION {
        return Err(Error::InvalidSpec(format!(
            "{what} {d:?} is over the maximum of {MAX_DURATION:?} (2^63 - 1 ns, about 292 years)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_saturate_and_durations_are_checked() {
        let far = after(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        assert!(after(Duration::from_secs(1)) <= Instant::now() + Duration::from_secs(1));
        assert!(check("timeout", MAX_DURATION).is_ok());
        let refused = check("timeout", Duration::from_secs(10_000_000_000_000_000_000));
        assert!(refused.unwrap_err().to_string().contains("timeout"));
    }
}
