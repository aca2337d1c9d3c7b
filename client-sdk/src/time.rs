//! Timestamps: milliseconds since the Unix epoch (UTC) everywhere on the
//! wire, RFC 3339 for people.

use ::time::OffsetDateTime;
use ::time::format_description::well_known::Rfc3339;

/// A source of the current time, passed in so that expiry, clock skew and
/// validity windows can be tested with a fixed clock.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that always says the same time (for tests and tools).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0
    }
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC (`2026-11-29T12:00:00.000Z`).
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The calendar year (UTC) of a timestamp; used to expand short personnummer.
pub fn year_of_ms(ms: i64) -> i32 {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(|t| t.year())
        .unwrap_or(2000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let ms = parse_rfc3339_ms("2026-11-29T12:00:00.250Z").unwrap();
        assert_eq!(ms, 1_795_953_600_250);
        assert_eq!(format_ms(ms), "2026-11-29T12:00:00.25Z");
        assert_eq!(
            parse_rfc3339_ms("2026-11-29T13:00:00+01:00"),
            Some(1_795_953_600_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(year_of_ms(ms), 2026);
    }
}
