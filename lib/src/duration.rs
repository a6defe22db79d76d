//! Human durations as used in flags and env vars: `500ms`, `5s`, `2m`, `26h`, `7d`,
//! combinations such as `1h30m`, and a bare number meaning seconds (`10`), the way
//! Docker, tini and most shell scripts write them.

use std::fmt;
use std::time::Duration;

/// Why a duration did not parse; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    input: String,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: use a number with a unit, e.g. 500ms, 5s, 2m, 26h, 7d, 1h30m",
            self.input
        )
    }
}

impl std::error::Error for DurationError {}

/// The longest duration accepted: about 31,700 years, far below what would overflow
/// when added to a clock reading.
const MAX_SECS: u64 = 1_000_000_000_000;

/// Parses a duration. Units: `ms`, `s`, `m`, `h`, `d`; a bare number is seconds.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        // Bounded like the unit forms: a duration is added to `Instant::now()` later,
        // and 18446744073709551615 seconds would overflow there.
        return s
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= MAX_SECS)
            .map(Duration::from_secs)
            .ok_or_else(err);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if digits == 0 {
            return Err(err());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit_secs = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let secs = number * unit_secs;
        if !secs.is_finite() || secs > MAX_SECS as f64 {
            return Err(err());
        }
        total += Duration::from_secs_f64(secs);
        if total.as_secs() > MAX_SECS {
            return Err(err());
        }
    }
    Ok(total)
}

/// Formats a duration compactly for messages (`250ms`, `5s`, `1m30s`, `26h`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms % 1000 != 0 && ms < 60_000 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("26h").unwrap(), Duration::from_secs(26 * 3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "s",
            "5x",
            "abc",
            "5 s",
            "-1s",
            "1e400s",
            "h5",
            "18446744073709551615",
            "1000000000001",
            "999999999999d",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("e.g. 500ms"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_secs(5)), "5s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(26 * 3600)), "1d2h");
    }
}
