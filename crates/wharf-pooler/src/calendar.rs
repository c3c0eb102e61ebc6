//! Calendar arithmetic for the times the pooler prints (PgBouncer's
//! `2024-05-01 10:20:30 UTC`), without a date-time dependency.

/// Formats µs since the epoch as PgBouncer prints times
/// (`2024-05-01 10:20:30 UTC`).
pub fn format_time(us: u64) -> String {
    let secs = us / 1_000_000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Turns days since 1970-01-01 into a proleptic Gregorian `(year, month,
/// day)`.
///
/// Howard Hinnant's algorithm: it counts 400-year eras from 0000-03-01, so
/// that leap days fall at the end of a year.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn times_format_like_pgbouncer() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            format_time(1_714_558_830 * 1_000_000),
            "2024-05-01 10:20:30 UTC"
        );
        assert_eq!(
            format_time(951_782_400 * 1_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }
}
