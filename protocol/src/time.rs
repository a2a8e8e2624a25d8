//! RFC 3339 timestamps (UTC, millisecond precision) from the job model's epoch milliseconds,
//! without a calendar dependency: the proleptic Gregorian conversion is a few lines.

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// `2024-03-01T12:34:56.789Z` for `ms` milliseconds since the Unix epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `2024-03-01T12:34:56Z`: [`rfc3339_ms`] without the milliseconds (webhook bodies, emails).
pub fn rfc3339_utc(ms: u64) -> String {
    let mut text = rfc3339_ms(ms - ms % 1000);
    text.truncate(text.len() - 5);
    text.push('Z');
    text
}

/// Year, month (1..=12) and day (1..=31) of the `days`-th day after 1970-01-01, by the
/// era-based method (an era is 400 years, 146 097 days, which repeat exactly).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951782400` = 2000-02-29 00:00:00 (a leap day of a century leap year).
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        // 2024-12-31T23:59:59.999Z: the last millisecond of a leap year.
        assert_eq!(rfc3339_ms(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(1_709_296_496_789), "2024-03-01T12:34:56.789Z");
        // 2100 is not a leap year: the day after 2100-02-28 is 2100-03-01.
        assert_eq!(rfc3339_ms(4_107_456_000_000), "2100-02-28T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn second_precision() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(999), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(1_709_251_199_000), "2024-02-29T23:59:59Z");
        let _ = rfc3339_utc(u64::MAX);
    }

    #[test]
    fn consecutive_days_never_repeat_or_skip() {
        let mut previous = civil_from_days(0);
        for day in 1..200_000 {
            let current = civil_from_days(day);
            assert!(
                current > previous,
                "day {day}: {current:?} after {previous:?}"
            );
            let (_, month, d) = current;
            assert!((1..=12).contains(&month) && (1..=31).contains(&d));
            previous = current;
        }
    }
}
