//! Times on the command line: RFC 3339 (`2026-11-26T12:00:00Z`), relative
//! to now (`-15m`, `-2h30m`, `-1d`), `now`, or microseconds since the epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Microseconds since the epoch for `s`, relative to `now`.
pub fn parse_at(s: &str, now: SystemTime) -> anyhow::Result<u64> {
    let s = s.trim();
    if s == "now" {
        return Ok(micros(now));
    }
    if let Some(ago) = s.strip_prefix('-') {
        let d: Duration = humantime::parse_duration(ago)
            .with_context(|| format!("{s:?}: not a duration such as -15m or -2h"))?;
        return Ok(micros(now.checked_sub(d).unwrap_or(UNIX_EPOCH)));
    }
    if let Ok(us) = s.parse::<u64>() {
        return Ok(us);
    }
    humantime::parse_rfc3339_weak(s).map(micros).map_err(|_| {
        anyhow!("{s:?}: use RFC 3339 (2026-11-26T12:00:00Z), -15m, now, or microseconds")
    })
}

/// [`parse_at`] relative to the current time.
pub fn parse(s: &str) -> anyhow::Result<u64> {
    parse_at(s, SystemTime::now())
}

/// A timestamp in RFC 3339 (UTC, microseconds).
pub fn format(us: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// The local wall-clock time of `us` as `HH:MM:SS.mmm`.
#[allow(unsafe_code)]
pub fn local_clock(us: u64) -> String {
    let secs = (us / 1_000_000) as libc::time_t;
    // SAFETY: localtime_r fills the `tm` we own from a valid time_t; the
    // zeroed `tm` is a valid initial value.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return format(us).get(11..23).unwrap_or("").to_string();
        }
        tm
    };
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        us % 1_000_000 / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_relative_and_raw() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s| parse_at(s, now).unwrap();
        assert_eq!(at("now"), 1_800_000_000_000_000);
        assert_eq!(at("-15m"), 1_800_000_000_000_000 - 900_000_000);
        assert_eq!(at("-1h 30m"), 1_800_000_000_000_000 - 5_400_000_000);
        assert_eq!(at("1700000000000000"), 1_700_000_000_000_000);
        assert_eq!(at("2026-11-26T12:00:00Z"), 1_795_694_400_000_000);
        assert_eq!(at("2026-11-26T12:00:00.5Z"), 1_795_694_400_500_000);
        assert!(parse_at("yesterday-ish", now).is_err());
        assert_eq!(format(1_795_694_400_500_000), "2026-11-26T12:00:00.500000Z");
        // Local time keeps the minutes and below of UTC in whole-hour zones.
        assert!(local_clock(1_795_694_400_500_000).ends_with(":00:00.500"));
    }
}
