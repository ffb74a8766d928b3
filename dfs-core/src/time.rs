//! Timestamps as they are stored: signed nanoseconds since the Unix epoch.
//!
//! `i64` nanoseconds cover 1677..2262, which is every timestamp a POSIX file
//! system meets in practice, in one fixed-width protobuf field; times before
//! 1970 (which `utimensat` allows) are negative. Conversions saturate rather
//! than fail, because a clamped timestamp is better than a failed `stat`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the epoch (saturating).
pub fn now_ns() -> i64 {
    system_time_to_ns(SystemTime::now())
}

/// Converts stored nanoseconds to a `SystemTime`; negative values are
/// before the epoch.
pub fn ns_to_system_time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

/// Converts a `SystemTime` to nanoseconds since the epoch, saturating at
/// the ends of the `i64` range.
pub fn system_time_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos())
            .map(|n| -n)
            .unwrap_or(i64::MIN),
    }
}

/// Seconds and nanoseconds parts (as `struct timespec` has them) of stored
/// nanoseconds; the nanosecond part is always in `0..1e9`.
pub fn ns_to_timespec(ns: i64) -> (i64, u32) {
    const NS: i64 = 1_000_000_000;
    // rem_euclid is in 0..NS, so the cast cannot truncate.
    (ns.div_euclid(NS), ns.rem_euclid(NS) as u32)
}

/// Stored nanoseconds from seconds and nanoseconds, saturating.
pub fn timespec_to_ns(secs: i64, nanos: u32) -> i64 {
    // In i128 so that e.g. (-9223372037, 145224192) = i64::MIN + 1 works
    // even though secs * 1e9 alone is below i64::MIN.
    let ns = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn now_is_recent() {
        let n = now_ns();
        // After 2020-01-01 and before 2200.
        assert!(n > 1_577_836_800 * 1_000_000_000);
        assert!(n < 7_258_118_400 * 1_000_000_000);
    }

    #[test]
    fn round_trips() {
        for ns in [
            0i64,
            1,
            -1,
            1_700_000_000_123_456_789,
            -1_000_000_000_000_000_001,
            i64::MAX,
            i64::MIN + 1,
        ] {
            assert_eq!(system_time_to_ns(ns_to_system_time(ns)), ns, "{ns}");
            let (s, n) = ns_to_timespec(ns);
            assert!(n < 1_000_000_000);
            assert_eq!(timespec_to_ns(s, n), ns);
        }
        assert_eq!(
            ns_to_system_time(-1_500_000_000),
            UNIX_EPOCH - Duration::from_millis(1500)
        );
        assert_eq!(ns_to_timespec(-1), (-1, 999_999_999));
    }

    #[test]
    fn saturates() {
        let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400);
        assert_eq!(system_time_to_ns(far), i64::MAX);
        let before = UNIX_EPOCH - Duration::from_secs(400 * 365 * 86_400);
        assert_eq!(system_time_to_ns(before), i64::MIN);
        assert_eq!(timespec_to_ns(i64::MAX, 5), i64::MAX);
        assert_eq!(timespec_to_ns(i64::MIN, 5), i64::MIN);
        // i64::MIN's magnitude does not fit in i64 but does in u64.
        assert!(ns_to_system_time(i64::MIN) < UNIX_EPOCH);
    }
}
