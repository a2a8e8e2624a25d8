//! Telling clients their job is done: signed webhooks and plain-text email.
//!
//! # Layout
//! - [`webhook`]: the webhook body, its HMAC signature (`Ytcaption-Signature`), the stable
//!   delivery id, and the delivery policy: what a response means ([`webhook::classify`]) and when
//!   to retry or give up ([`webhook::RetryPolicy`]). Pure functions; the HTTP request itself is
//!   made by the outbound transport.
//! - [`email`]: the SMTP [`email::Mailer`] (built once, pooled connections) and the job
//!   notification message ([`email::job_email`]).
//!
//! Both paths are at-least-once: a retried notification carries the same delivery id (webhooks)
//! or Message-ID (email) so the receiving end can recognise a repeat.

pub mod email;
pub mod webhook;

/// Formats unix milliseconds as an RFC 3339 UTC timestamp with second precision,
/// e.g. `2023-11-14T22:13:20Z`: the form webhook bodies and emails carry.
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = secs / 86_400;
    let second_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// The proleptic Gregorian date `days` days after 1970-01-01.
///
/// Counts in 400-year eras (146 097 days each) whose years start on 1 March, so the leap day
/// falls at the end of a year and month lengths follow a fixed pattern.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01, the start of an era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 = March … 11 = February.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(999), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000_000), "2023-11-14T22:13:20Z");
        // Leap days, century rules and year ends.
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_164_800_000), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_251_199_000), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(4_107_542_400_000), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_735_689_599_000), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(1_735_689_600_000), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn huge_values_do_not_panic() {
        let _ = rfc3339_utc(u64::MAX);
    }
}
