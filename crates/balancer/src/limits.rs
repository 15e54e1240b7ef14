//! Bounds on what users may ask for: timeouts and intervals.
//!
//! Durations come from the command line (`--wait-timeout 10s`), where
//! nothing stops a user from writing `18446744073709551615s`; added to an
//! [`Instant`] such a value overflows. Options are therefore checked against
//! [`MAX_TIMEOUT`] when a [`Balancer`](crate::Balancer) (or a
//! client over it) is built, and deadlines are computed with
//! [`deadline_after`], which cannot overflow whatever it is given.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// The longest wait timeout, per-try timeout, retry backoff or loop interval
/// the balancer and its clients accept: 24 h. Anything longer is surely a typo, and refusing
/// it keeps every deadline computable.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Roughly 30 years: what [`deadline_after`] falls back to, as Tokio's own
/// timers do, when `now + duration` cannot be represented.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Checks that `value` is at most [`MAX_TIMEOUT`], for the builders of
/// clients over the balancer that take durations of their own.
///
/// # Errors
/// [`Error::InvalidOptions`] naming `what` and the value.
pub fn check_timeout(what: &str, value: Duration) -> Result<()> {
    if value > MAX_TIMEOUT {
        return Err(Error::InvalidOptions(format!(
            // MAX_TIMEOUT, written as users write it (humantime says "1day").
            "{what} must be at most 24h, got {}",
            humantime::format_duration(value)
        )));
    }
    Ok(())
}

/// The instant `duration` from now, or a far-future instant (about 30
/// years away) if that cannot be represented: never panics, so a user's
/// duration can be added to the clock safely.
pub fn deadline_after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// Parses a timeout or interval as users write it (`500ms`, `10s`, `2m`,
/// see [`humantime::parse_duration`]), refusing anything over
/// [`MAX_TIMEOUT`]: the value parser of the binaries' duration flags.
///
/// # Errors
/// [`Error::InvalidOptions`] naming the text, for something that is not a
/// duration or is longer than [`MAX_TIMEOUT`].
pub fn parse_timeout(text: &str) -> Result<Duration> {
    let value = humantime::parse_duration(text.trim()).map_err(|error| {
        Error::InvalidOptions(format!(
            "{text:?} is not a duration ({error}); write it like 500ms, 10s or 2m"
        ))
    })?;
    check_timeout("the duration", value)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_up_to_a_day_are_accepted() {
        assert_eq!(parse_timeout("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_timeout(" 24h ").ok(), Some(MAX_TIMEOUT));
        assert!(check_timeout("x", MAX_TIMEOUT).is_ok());
        assert!(check_timeout("x", Duration::ZERO).is_ok());
    }

    #[test]
    fn absurd_timeouts_are_refused_clearly() {
        let error = parse_timeout("18446744073709551615s").expect_err("too long");
        assert!(matches!(error, Error::InvalidOptions(_)), "{error:?}");
        assert!(error.to_string().contains("must be at most 24h"), "{error}");
        let error = check_timeout("the wait timeout", Duration::MAX).expect_err("too long");
        assert!(
            error.to_string().starts_with(
                "invalid balancer options: the wait timeout must be at most 24h, got "
            ),
            "{error}"
        );
        let error = parse_timeout("soon").expect_err("not a duration");
        assert!(
            error.to_string().contains("\"soon\" is not a duration"),
            "{error}"
        );
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert!(deadline_after(Duration::MAX) > now);
        assert!(deadline_after(Duration::from_secs(u64::MAX)) > now);
        let soon = deadline_after(Duration::from_secs(1));
        assert!(soon > now && soon <= Instant::now() + Duration::from_secs(1));
    }
}
