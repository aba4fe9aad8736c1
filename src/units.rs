//! Human units in the config: sizes ("20GiB"), rates ("4MiB/s") and durations ("30s").
//!
//! Operators write these by hand on a device, so the parser is forgiving about case and
//! spaces but strict about meaning: an unknown unit or a number that overflows is an error
//! that says what was expected, never a silent zero. Decimal (kB, MB, GB: powers of 1000)
//! and binary (KiB, MiB, GiB: powers of 1024) units are both accepted and never confused.
//! A bare integer is bytes (or seconds, for durations), so a value written by a program
//! round-trips.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A rate in bytes per second. Zero means "unlimited" where the key's docs say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rate(pub u64);

/// A duration written as "500ms", "30s", "5m", "2h" or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// Why a unit string was rejected; the config layer adds the file and key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {got:?}")]
pub struct UnitError {
    pub expected: &'static str,
    pub got: String,
}

const SIZE_EXPECTED: &str = "a size like \"20GiB\"";
const RATE_EXPECTED: &str = "a rate like \"4MiB/s\"";
const DURATION_EXPECTED: &str = "a duration like \"30s\"";

fn split_number(s: &str) -> Option<(f64, &str, bool)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return None;
    }
    let integral = !num.contains('.');
    let num: f64 = num.replace('_', "").parse().ok()?;
    Some((num, unit.trim(), integral))
}

fn size_multiplier(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000_u64.pow(2),
        "g" | "gb" => 1000_u64.pow(3),
        "t" | "tb" => 1000_u64.pow(4),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return None,
    })
}

fn parse_bytes(s: &str, expected: &'static str) -> Result<u64, UnitError> {
    let err = || UnitError {
        expected,
        got: s.to_string(),
    };
    let (num, unit, integral) = split_number(s).ok_or_else(err)?;
    let mult = size_multiplier(unit).ok_or_else(err)?;
    if integral && num < 2f64.powi(53) {
        // Exact integer path, so "1099511627776" or "3GiB" is never rounded.
        let n = num as u64;
        return n.checked_mul(mult).ok_or_else(err);
    }
    let v = num * mult as f64;
    if !v.is_finite()
        || v >= u64::MAX as f64
        || (unit.is_empty() || unit == "B") && v.fract() != 0.0
    {
        return Err(err());
    }
    Ok(v.round() as u64)
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        parse_bytes(s, SIZE_EXPECTED).map(ByteSize)
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let body = if let Some(b) = lower.strip_suffix("/s") {
            &t[..b.len()]
        } else if lower.ends_with("ps") && lower.len() > 2 && lower != "ps" {
            // "MBps" style; bits per second ("Mbit/s") is deliberately not accepted so a
            // factor-of-eight mistake cannot slip through.
            &t[..t.len() - 2]
        } else {
            t
        };
        parse_bytes(body, RATE_EXPECTED)
            .map(Rate)
            .map_err(|_| UnitError {
                expected: RATE_EXPECTED,
                got: s.to_string(),
            })
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError {
            expected: DURATION_EXPECTED,
            got: s.to_string(),
        };
        let (num, unit, _) = split_number(s).ok_or_else(err)?;
        let secs = match unit.to_ascii_lowercase().as_str() {
            "ms" => num / 1000.0,
            "" | "s" | "sec" | "secs" => num,
            "m" | "min" | "mins" => num * 60.0,
            "h" | "hour" | "hours" => num * 3600.0,
            "d" | "day" | "days" => num * 86400.0,
            _ => return Err(err()),
        };
        Duration::try_from_secs_f64(secs)
            .map(HumanDuration)
            .map_err(|_| err())
    }
}

/// Formats with the largest binary unit that divides the value exactly, so that the
/// output parses back to the same number ("1GiB", "1536KiB", "1000B").
fn format_bytes(v: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, m) in UNITS {
        if v >= m && v.is_multiple_of(m) {
            return write!(f, "{}{}", v / m, name);
        }
    }
    write!(f, "{v}B")
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_bytes(self.0, f)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_bytes(self.0, f)?;
        f.write_str("/s")
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else {
            write!(f, "{}ms", d.as_millis())
        }
    }
}

/// Accepts a string with a unit or a bare non-negative integer.
struct UnitVisitor<T>(std::marker::PhantomData<T>, &'static str);

impl<T> de::Visitor<'_> for UnitVisitor<T>
where
    T: FromStr<Err = UnitError>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|e: UnitError| E::custom(e))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if v < 0 {
            return Err(E::custom(UnitError {
                expected: self.1,
                got: v.to_string(),
            }));
        }
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

macro_rules! serde_unit {
    ($t:ty, $expected:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(UnitVisitor(std::marker::PhantomData, $expected))
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serde_unit!(ByteSize, SIZE_EXPECTED);
serde_unit!(Rate, RATE_EXPECTED);
serde_unit!(HumanDuration, DURATION_EXPECTED);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("20GiB", 20 << 30),
            ("20 GiB", 20 << 30),
            ("1.5MiB", 3 << 19),
            ("1kB", 1000),
            ("4mb", 4_000_000),
            ("512", 512),
            ("1_000B", 1000),
            ("2TiB", 2 << 40),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<ByteSize>().unwrap().0, want, "{s}");
        }
        for bad in [
            "twenty",
            "",
            "GiB",
            "-1GiB",
            "1.5",
            "3 parsecs",
            "99999999999TiB",
            ".",
        ] {
            let e = bad.parse::<ByteSize>().unwrap_err();
            assert_eq!(e.expected, SIZE_EXPECTED, "{bad}");
            assert_eq!(e.got, bad);
        }
    }

    #[test]
    fn rates() {
        assert_eq!("4MiB/s".parse::<Rate>().unwrap().0, 4 << 20);
        assert_eq!("4 MiB/s".parse::<Rate>().unwrap().0, 4 << 20);
        assert_eq!("10MBps".parse::<Rate>().unwrap().0, 10_000_000);
        assert_eq!("0".parse::<Rate>().unwrap().0, 0);
        let e = "fast".parse::<Rate>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected a rate like \"4MiB/s\", got \"fast\""
        );
        assert!("4Mbit/s".parse::<Rate>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            "2m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(120)
        );
        assert_eq!(
            "5".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(5)
        );
        assert!("soon".parse::<HumanDuration>().is_err());
        assert!("5 fortnights".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for v in [0u64, 1, 1000, 1024, 1536 * 1024, 20 << 30, (1 << 40) + 1] {
            let s = ByteSize(v).to_string();
            assert_eq!(s.parse::<ByteSize>().unwrap().0, v, "{s}");
            let r = Rate(v).to_string();
            assert_eq!(r.parse::<Rate>().unwrap().0, v, "{r}");
        }
        assert_eq!(ByteSize(20 << 30).to_string(), "20GiB");
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }
}
