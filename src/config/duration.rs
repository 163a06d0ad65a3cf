//! Durations written as `500ms`, `10s`, `2m`, `1h` or combined (`1m30s`).

use std::time::Duration;

/// Parses a duration string; the error says what is wrong in words an operator understands.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration (expected e.g. \"500ms\", \"10s\", \"2m\")".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number before the unit (e.g. \"10s\")"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let too_large = || format!("invalid duration {text:?}: too large");
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(too_large)?),
            "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(too_large)?),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (one of ms, s, m, h)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (one of ms, s, m, h)"
                ))
            }
        };
        // Refused rather than saturated: a saturated value would silently mean "for ever".
        total = total.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(total)
}

/// Formats a duration the way the config writes it, for the admin API and logs.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Serde for a typed duration written as text (`"30s"`), for records the API shows and the
/// state file keeps: reading refuses what [`parse`] refuses, so a bad stored value is an
/// error naming its field instead of a silent default.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "10",
            "s",
            "5x",
            "1.5s",
            "-1s",
            "10 s",
            "99999999999999999999s",
            "18446744073709551615h",
            "18446744073709551615s18446744073709551615s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["500ms", "10s", "2m", "1h", "0s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
