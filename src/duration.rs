//! Durations written the way the OTel Collector writes them: `30s`, `250ms`, `1m30s`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A config duration. Parsed from Go-style strings (`ns`, `us`, `ms`, `s`, `m`, `h`
/// units, combinable as in `1m30s`) so an OTel `decision_wait: 10s` reads unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// Builds from milliseconds (for defaults).
    pub const fn from_millis(ms: u64) -> Self {
        ConfigDuration(Duration::from_millis(ms))
    }
}

impl From<ConfigDuration> for Duration {
    fn from(d: ConfigDuration) -> Duration {
        d.0
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Parses `30s`, `250ms`, `1m30s`, `1.5s`; `0` alone is zero.
pub fn parse_duration(s: &str) -> Option<Duration> {
    parse_duration_explained(s).ok()
}

/// The longest duration accepted (about 31 years).
const MAX_SECONDS: f64 = 1e9;

/// [`parse_duration`], saying why a text is refused.
fn parse_duration_explained(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let malformed = || format!("{s:?} is not a duration such as `30s`, `250ms` or `1m30s`");
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(malformed());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().map_err(|_| malformed())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "{s:?} has a number without a unit (ns, us, ms, s, m, h)"
                ))
            }
            other => {
                return Err(format!(
                    "unsupported unit {other:?} in {s:?}: use ns, us, ms, s, m or h"
                ))
            }
        };
        rest = &rest[unit_end..];
        total += num * scale;
    }
    if !total.is_finite() || total > MAX_SECONDS {
        return Err(format!("{s} is too long (at most {MAX_SECONDS:e} s)"));
    }
    Ok(Duration::from_secs_f64(total))
}

impl serde::Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `30s`, `250ms` or `1m30s`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
                parse_duration_explained(v)
                    .map(ConfigDuration)
                    .map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigDuration, E> {
                if v == 0 {
                    Ok(ConfigDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "{v} is a number without a unit: write e.g. `{v}s` or `{v}ms`"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration(""), None);
    }
}
