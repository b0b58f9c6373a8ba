//! Byte sizes in the task file (`256MB`, `1GiB`, `1048576`) and human-readable output.
//!
//! Units follow PostgreSQL's configuration files: `kB`, `MB`, `GB`, `TB` are powers of 1024
//! (as in `shared_buffers = 128MB`); the IEC spellings `KiB`, `MiB`, `GiB`, `TiB` mean the same.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parse `"256MB"`, `"1 GiB"`, `"4096"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: u64 = num
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{text:?} is not a size; write e.g. 256MB, 1GB or 1048576"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" | "KiB" | "k" | "K" => 1 << 10,
            "MB" | "MiB" | "M" => 1 << 20,
            "GB" | "GiB" | "G" => 1 << 30,
            "TB" | "TiB" | "T" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {text:?}; use B, kB, MB, GB or TB"
                ));
            }
        };
        num.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 256MB, 1GB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human_bytes(self.0))
    }
}

/// `1536` → `1.5 KiB`; used in progress lines and reports.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_style_units() {
        assert_eq!(ByteSize::parse("256MB").unwrap().0, 256 << 20);
        assert_eq!(ByteSize::parse("1 GiB").unwrap().0, 1 << 30);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert_eq!(ByteSize::parse("8kB").unwrap().0, 8192);
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("MB").is_err());
    }

    #[test]
    fn human_output() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
