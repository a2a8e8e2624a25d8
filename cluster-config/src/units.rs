//! Human-friendly durations (`"30s"`, `"5m"`, `"1h30m"`, `"500ms"`) and byte sizes (`"2GiB"`,
//! `"25MiB"`, `"512KB"`), with parsers, formatters and serde support.
//!
//! Why our own: the config needs exactly these two small grammars, with error messages that name
//! the accepted units, and a formatter whose output parses back to the same value (the example
//! config and the serialized defaults rely on that round trip).
//!
//! Sizes: `KB`, `MB`, `GB`, `TB` are decimal (1000ⁿ); `KiB`, `MiB`, `GiB`, `TiB` are binary
//! (1024ⁿ); `B` or no unit means bytes. Units are case-insensitive, a space may separate number
//! and unit, and a decimal fraction is allowed (`"1.5GiB"`, truncated to whole bytes).
//!
//! Durations: one or more `<number><unit>` parts, summed (`"1h30m"`); units `ns`, `us`, `ms`,
//! `s`, `m`, `h`, `d` (and the long forms `sec`, `min`, `hour`, `day`, plural or not). A unit is
//! required: a bare `"30"` is refused because seconds-or-milliseconds is a classic mistake.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration or size string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` is not a number")]
    BadNumber(String),
    #[error("`{input}` needs a unit ({expected})")]
    MissingUnit {
        input: String,
        expected: &'static str,
    },
    #[error("unknown unit `{unit}` ({expected})")]
    UnknownUnit {
        unit: String,
        expected: &'static str,
    },
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl UnitError {
    /// Stable machine-readable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            UnitError::Empty => "config.unit.empty",
            UnitError::BadNumber(_) => "config.unit.bad_number",
            UnitError::MissingUnit { .. } => "config.unit.missing_unit",
            UnitError::UnknownUnit { .. } => "config.unit.unknown_unit",
            UnitError::Overflow(_) => "config.unit.overflow",
        }
    }

    /// Always false: a malformed value is the operator's input, retrying cannot fix it.
    pub fn retryable(&self) -> bool {
        false
    }
}

const DURATION_UNITS: &str = "expected one of ns, us, ms, s, m, h, d";
const SIZE_UNITS: &str = "expected one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB";

/// Most fraction digits kept; more cannot change a nanosecond or byte count in practice.
const MAX_FRACTION_DIGITS: u32 = 12;

/// A number split into its integer part and (digits, count) of its decimal fraction.
#[derive(Debug, Clone, Copy)]
struct Number {
    whole: u128,
    fraction: u128,
    fraction_digits: u32,
}

impl Number {
    /// `self * unit`, truncating whatever is below one unit of the result.
    fn times(self, unit: u128, input: &str) -> Result<u128, UnitError> {
        let overflow = || UnitError::Overflow(input.to_string());
        let whole = self.whole.checked_mul(unit).ok_or_else(overflow)?;
        let scale = 10u128.pow(self.fraction_digits);
        let fraction = self.fraction.checked_mul(unit).ok_or_else(overflow)? / scale;
        whole.checked_add(fraction).ok_or_else(overflow)
    }
}

/// Reads a leading `digits[.digits]` number from `s`; returns it and the rest of `s`.
fn leading_number<'a>(s: &'a str, input: &str) -> Result<(Number, &'a str), UnitError> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (text, rest) = s.split_at(end);
    let bad = || UnitError::BadNumber(input.to_string());
    let (whole_text, fraction_text) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole_text.is_empty() && fraction_text.is_empty() || fraction_text.contains('.') {
        return Err(bad());
    }
    let whole = if whole_text.is_empty() {
        0
    } else {
        whole_text
            .parse::<u128>()
            .map_err(|_| UnitError::Overflow(input.to_string()))?
    };
    let kept = &fraction_text[..fraction_text.len().min(MAX_FRACTION_DIGITS as usize)];
    let fraction = if kept.is_empty() {
        0
    } else {
        kept.parse::<u128>().map_err(|_| bad())?
    };
    let number = Number {
        whole,
        fraction,
        fraction_digits: kept.len() as u32,
    };
    Ok((number, rest))
}

/// Splits the unit (letters and `µ`) off the front of `s`.
fn leading_unit(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_alphabetic())).unwrap_or(s.len());
    s.split_at(end)
}

fn duration_unit_nanos(unit: &str) -> Option<u128> {
    const SEC: u128 = 1_000_000_000;
    let nanos = match unit.to_ascii_lowercase().as_str() {
        "ns" | "nsec" | "nanos" => 1,
        "us" | "µs" | "usec" | "micros" => 1_000,
        "ms" | "msec" | "millis" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => SEC,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * SEC,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600 * SEC,
        "d" | "day" | "days" => 86_400 * SEC,
        _ => return None,
    };
    Some(nanos)
}

/// Parses `"30s"`, `"1h30m"`, `"500ms"`, `"1.5h"` into a [`Duration`].
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(UnitError::Empty);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = leading_number(rest, input)?;
        let (unit, after) = leading_unit(after.trim_start());
        if unit.is_empty() {
            return Err(UnitError::MissingUnit {
                input: input.to_string(),
                expected: DURATION_UNITS,
            });
        }
        let per_unit = duration_unit_nanos(unit).ok_or_else(|| UnitError::UnknownUnit {
            unit: unit.to_string(),
            expected: DURATION_UNITS,
        })?;
        total = total
            .checked_add(number.times(per_unit, input)?)
            .ok_or_else(|| UnitError::Overflow(input.to_string()))?;
        rest = after.trim_start();
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| UnitError::Overflow(input.to_string()))?;
    // The remainder is below 10⁹, so it always fits.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration with the largest unit that represents it exactly (`"24h"`, `"90s"`,
/// `"1500ms"`); the output parses back to the same value.
pub fn format_duration(duration: Duration) -> String {
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    for (name, size) in UNITS {
        if nanos % size == 0 {
            return format!("{}{name}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

fn size_unit_bytes(unit: &str) -> Option<u128> {
    let bytes = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    Some(bytes)
}

/// Parses `"2GiB"`, `"25MiB"`, `"512KB"`, `"1.5 GB"` or a bare byte count `"4096"`.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(UnitError::Empty);
    }
    let (number, after) = leading_number(trimmed, input)?;
    let (unit, after) = leading_unit(after.trim_start());
    if !after.trim().is_empty() {
        return Err(UnitError::BadNumber(input.to_string()));
    }
    let per_unit = size_unit_bytes(unit).ok_or_else(|| UnitError::UnknownUnit {
        unit: unit.to_string(),
        expected: SIZE_UNITS,
    })?;
    u64::try_from(number.times(per_unit, input)?)
        .map_err(|_| UnitError::Overflow(input.to_string()))
}

/// Formats a byte count with the largest binary unit that represents it exactly
/// (`"2GiB"`, `"16KiB"`, `"1000B"`); the output parses back to the same value.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    if bytes != 0 {
        for (name, size) in UNITS {
            if bytes % size == 0 {
                return format!("{}{name}", bytes / size);
            }
        }
    }
    format!("{bytes}B")
}

/// A byte count written in the config as `"2GiB"`, `"512KB"` or a plain integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    /// `n` bytes.
    pub const fn bytes(n: u64) -> Size {
        Size(n)
    }
    /// `n` KiB (1024 bytes each).
    pub const fn kib(n: u64) -> Size {
        Size(n << 10)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Size {
        Size(n << 20)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Size {
        Size(n << 30)
    }
    /// The byte count.
    pub const fn get(self) -> u64 {
        self.0
    }
    /// The byte count as `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl std::str::FromStr for Size {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Size, UnitError> {
        parse_size(s).map(Size)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_size(self.0))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"2GiB\", \"512KB\" or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        parse_size(v).map(Size).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        Ok(Size(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        u64::try_from(v)
            .map(Size)
            .map_err(|_| E::custom("a size cannot be negative"))
    }
}

/// Serde adapter for `std::time::Duration` fields written as `"30s"`:
/// `#[serde(with = "ytcaption_config::units::serde_duration")]`.
pub mod serde_duration {
    use super::*;

    /// Writes the duration as its exact short form (`"24h"`).
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*duration))
    }

    /// Reads `"30s"`, `"5m"`, `"1h30m"`; a bare number is refused (which unit would it be?).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"30s\", \"5m\" or \"500ms\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: write \"{v}s\" or \"{v}ms\", not {v}"
            )))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: write \"{v}s\" or \"{v}ms\", not {v}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("24h", Duration::from_secs(86_400)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("500ms", Duration::from_millis(500)),
            ("250us", Duration::from_micros(250)),
            ("10ns", Duration::from_nanos(10)),
            ("1h30m", Duration::from_secs(5_400)),
            ("1h 30m 15s", Duration::from_secs(5_415)),
            ("1.5h", Duration::from_secs(5_400)),
            ("0.25s", Duration::from_millis(250)),
            (".5s", Duration::from_millis(500)),
            ("2 min", Duration::from_secs(120)),
            ("3 hours", Duration::from_secs(10_800)),
            ("  45S ", Duration::from_secs(45)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_refuse_bad_input_with_specific_errors() {
        assert_eq!(parse_duration(""), Err(UnitError::Empty));
        assert_eq!(parse_duration("   "), Err(UnitError::Empty));
        assert!(matches!(
            parse_duration("30"),
            Err(UnitError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("5 fortnights"),
            Err(UnitError::UnknownUnit { ref unit, .. }) if unit == "fortnights"
        ));
        assert!(matches!(parse_duration("s"), Err(UnitError::BadNumber(_))));
        assert!(matches!(
            parse_duration("1..5s"),
            Err(UnitError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("-5s"),
            Err(UnitError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999999999999999999999d"),
            Err(UnitError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("999999999999999999999d"),
            Err(UnitError::Overflow(_))
        ));
        let message = parse_duration("5x").unwrap_err().to_string();
        assert!(message.contains("ms, s, m, h"), "{message}");
    }

    #[test]
    fn durations_format_exactly_and_round_trip() {
        let cases = [
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(604_800), "168h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_millis(1_500), "1500ms"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_nanos(1_001), "1001ns"),
            (Duration::ZERO, "0s"),
        ];
        for (value, text) in cases {
            assert_eq!(format_duration(value), text);
            assert_eq!(parse_duration(text), Ok(value));
        }
        for nanos in [1u64, 999, 1_000_000_007, 3_600_000_000_001, u64::MAX] {
            let value = Duration::from_nanos(nanos);
            assert_eq!(parse_duration(&format_duration(value)), Ok(value));
        }
    }

    #[test]
    fn sizes_parse_decimal_and_binary_units() {
        let cases = [
            ("2GB", 2_000_000_000),
            ("2GiB", 2 << 30),
            ("25MiB", 25 << 20),
            ("512KB", 512_000),
            ("512kib", 512 << 10),
            ("1 TB", 1_000_000_000_000),
            ("1TiB", 1 << 40),
            ("1.5GiB", 3 << 29),
            ("4096", 4096),
            ("4096B", 4096),
            ("0", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn sizes_refuse_bad_input_with_specific_errors() {
        assert_eq!(parse_size(""), Err(UnitError::Empty));
        assert!(matches!(
            parse_size("12 parsecs"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(parse_size("GiB"), Err(UnitError::BadNumber(_))));
        assert!(matches!(
            parse_size("2GiB extra"),
            Err(UnitError::BadNumber(_))
        ));
        assert!(matches!(parse_size("-1"), Err(UnitError::BadNumber(_))));
        assert!(matches!(
            parse_size("20000000TiB"),
            Err(UnitError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999999999999999999999999"),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn sizes_format_exactly_and_round_trip() {
        assert_eq!(format_size(2 << 30), "2GiB");
        assert_eq!(format_size(16 << 10), "16KiB");
        assert_eq!(format_size(1_000), "1000B");
        assert_eq!(format_size(0), "0B");
        for bytes in [0u64, 1, 1023, 1024, 1_000_000_000, 3 << 29, u64::MAX] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Probe {
        size: Size,
        #[serde(with = "serde_duration")]
        wait: Duration,
    }

    #[test]
    fn serde_reads_strings_and_byte_counts_and_writes_short_forms() {
        let probe: Probe = toml::from_str("size = \"25MiB\"\nwait = \"1m\"").unwrap();
        assert_eq!(
            probe,
            Probe {
                size: Size::mib(25),
                wait: Duration::from_secs(60)
            }
        );
        let probe: Probe = toml::from_str("size = 1024\nwait = \"10s\"").unwrap();
        assert_eq!(probe.size, Size::kib(1));
        let text = toml::to_string(&probe).unwrap();
        assert!(text.contains("size = \"1KiB\""), "{text}");
        assert!(text.contains("wait = \"10s\""), "{text}");
    }

    #[test]
    fn serde_errors_explain_the_expected_form() {
        let err = toml::from_str::<Probe>("size = -1\nwait = \"1s\"").unwrap_err();
        assert!(err.message().contains("negative"), "{err}");
        let err = toml::from_str::<Probe>("size = 1\nwait = 30").unwrap_err();
        assert!(err.message().contains("\"30s\""), "{err}");
        let err = toml::from_str::<Probe>("size = 1\nwait = \"30 parsecs\"").unwrap_err();
        assert!(err.message().contains("unknown unit `parsecs`"), "{err}");
    }
}
