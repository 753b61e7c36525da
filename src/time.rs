//! Wall-clock helpers: the protocol's RFC 3339 UTC timestamps with milliseconds.
//!
//! Pure functions, usable from any thread. Formatting is hand-written (days → civil date)
//! so the publish path needs no date crate and no allocation beyond the output.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by the system clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, by the system clock.
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// Writes `2026-03-26T08:14:22.123Z` for `ms` since the epoch into `out`.
pub fn write_rfc3339_ms(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let milli = ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem / 60) % 60, rem % 60);
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z"
    );
}

/// The RFC 3339 string for `ms` since the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let mut v = Vec::with_capacity(24);
    write_rfc3339_ms(&mut v, ms);
    String::from_utf8(v).unwrap_or_default()
}

/// Howard Hinnant's days-from-civil inverse: proleptic Gregorian (y, m, d) for days since
/// 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2026-03-26T08:14:22.123Z, the protocol's example.
        assert_eq!(rfc3339_ms(1_774_512_862_123), "2026-03-26T08:14:22.123Z");
        // A leap day.
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
