//! Values a MySQL/MariaDB column cannot hold, and the task's policy for them.
//!
//! PostgreSQL's ranges are wider than MySQL's for a few types. Found on MariaDB 10.11 in
//! strict mode (the session pgtide sets up):
//!
//! - `DATE`/`DATETIME` take years 0000–9999 (MySQL documents 1000–9999 as *supported*; both
//!   servers store earlier years), so BC dates, `-infinity`, `infinity` and years after 9999
//!   do not fit. A `DATETIME(p)` keeps `p` fractional digits: the latest value is
//!   `9999-12-31 23:59:59.` followed by `p` nines (more digits would round past the range on
//!   MySQL).
//! - `DECIMAL(p,s)` has no NaN or infinity, at most `p-s` integer digits, and *rounds* extra
//!   fractional digits with only a Note (1265) on INSERT — an alteration strict mode does not
//!   refuse, which is why pgtide checks digits itself.
//! - `FLOAT`/`DOUBLE` have no NaN or infinity; `FLOAT` refuses magnitudes above
//!   3.402823466e38, which excludes PostgreSQL's largest `real` values (`3.4028235e+38`).
//!
//! The check runs on the value's PostgreSQL text form (what `COPY ... TO STDOUT` writes in the
//! full load and what the replication stream carries, with the sessions' fixed `DateStyle`), so
//! the full load and change data capture decide alike: under `error` the value stops the task
//! naming the table and column, under `null` it becomes NULL, under `clamp` the nearest value
//! the column holds (NaN has none and becomes NULL). Every value changed is counted per column
//! and reported; none is changed silently. Messages never quote the value.

use crate::convert::ConvertedColumn;
use pgtide_core::task::OutOfRange;
use std::borrow::Cow;

/// The range of a MySQL column type narrower than its PostgreSQL source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `DATE` (`None`) or `DATETIME(p)` (`Some(p)`): years 1 to 9999 AD, finite.
    Date(Option<u8>),
    /// `DECIMAL(p,s)`: `int` = p − s integer digits, `frac` = s fractional digits.
    Decimal {
        /// Integer digits.
        int: u8,
        /// Fractional digits.
        frac: u8,
    },
    /// `FLOAT` (`single`) or `DOUBLE`: finite, below the type's largest magnitude.
    Float {
        /// `FLOAT` rather than `DOUBLE`.
        single: bool,
    },
}

/// How a value falls outside its column's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excess {
    /// Below the smallest value (`-infinity`, a BC date, a negative number too large).
    Low,
    /// Above the largest value.
    High,
    /// NaN.
    NotANumber,
    /// More fractional digits than the column keeps (MySQL would round).
    Digits,
}

/// A value the policy did not let through; never contains the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRangeError(pub String);

const FLOAT_MAX: &str = "3.402823466e38";
/// [`FLOAT_MAX`] as a number (checked against the text in a test).
const FLOAT_MAX_F64: f64 = 3.402823466e38;
const DOUBLE_MAX: &str = "1.7976931348623157e308";

fn modifiers(t: &str) -> Vec<u8> {
    crate::types::modifiers(t)
        .into_iter()
        .filter_map(|m| u8::try_from(m).ok())
        .collect()
}

/// How the policy writes a changed value, for reports and logs.
pub fn written_as(policy: OutOfRange) -> &'static str {
    match policy {
        OutOfRange::Null => "NULL",
        _ => "the nearest value the column holds (NaN as NULL)",
    }
}

/// The limit of a converted column, when its MySQL type is narrower than its source type.
pub fn limit(c: &ConvertedColumn) -> Option<Limit> {
    if c.type_name == "money" {
        // DECIMAL(19,2) holds every money value; and the stream's text form (`-$1,234.56`)
        // is only a number after `values::convert`.
        return None;
    }
    let m = c.mysql.as_str();
    let base = m.split('(').next().unwrap_or(m);
    match base {
        "DATE" => Some(Limit::Date(None)),
        "DATETIME" => Some(Limit::Date(Some(
            modifiers(m).first().copied().unwrap_or(0).min(6),
        ))),
        "DECIMAL" => match modifiers(m).as_slice() {
            [p, s] if p >= s => Some(Limit::Decimal {
                int: p - s,
                frac: *s,
            }),
            [p] => Some(Limit::Decimal { int: *p, frac: 0 }),
            _ => Some(Limit::Decimal { int: 10, frac: 0 }),
        },
        "FLOAT" => Some(Limit::Float { single: true }),
        "DOUBLE" => Some(Limit::Float { single: false }),
        _ => None,
    }
}

/// Whether `text` (a PostgreSQL text form) fits `limit`.
pub fn check(limit: Limit, text: &[u8]) -> Option<Excess> {
    match limit {
        Limit::Date(_) => {
            if text == b"infinity" {
                return Some(Excess::High);
            }
            if text == b"-infinity" || text.ends_with(b" BC") {
                return Some(Excess::Low);
            }
            let year_digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
            (year_digits > 4).then_some(Excess::High)
        }
        Limit::Decimal { int, frac } => {
            match text {
                b"NaN" => return Some(Excess::NotANumber),
                b"Infinity" => return Some(Excess::High),
                b"-Infinity" => return Some(Excess::Low),
                _ => {}
            }
            let negative = text.first() == Some(&b'-');
            let digits = text.strip_prefix(b"-").unwrap_or(text);
            let (whole, fraction) = match digits.iter().position(|b| *b == b'.') {
                Some(i) => (&digits[..i], &digits[i + 1..]),
                None => (digits, &b""[..]),
            };
            let significant = whole.iter().skip_while(|b| **b == b'0').count();
            if significant > usize::from(int) {
                return Some(if negative { Excess::Low } else { Excess::High });
            }
            let dropped = fraction.get(usize::from(frac)..).unwrap_or_default();
            dropped.iter().any(|b| *b != b'0').then_some(Excess::Digits)
        }
        Limit::Float { single } => match text {
            b"NaN" => Some(Excess::NotANumber),
            b"Infinity" => Some(Excess::High),
            b"-Infinity" => Some(Excess::Low),
            _ if single => {
                let v: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
                if v > FLOAT_MAX_F64 {
                    Some(Excess::High)
                } else if v < -FLOAT_MAX_F64 {
                    Some(Excess::Low)
                } else {
                    None
                }
            }
            _ => None,
        },
    }
}

/// What is wrong with such a value, for messages (never the value itself).
pub fn describe(limit: Limit, excess: Excess) -> String {
    match (limit, excess) {
        (Limit::Date(_), Excess::Low) => {
            "a BC date or -infinity, before anything MySQL's DATE/DATETIME holds".into()
        }
        (Limit::Date(_), _) => {
            "an infinite date or a year after 9999, beyond MySQL's DATE/DATETIME".into()
        }
        (_, Excess::NotANumber) => "NaN, which MySQL numbers cannot hold".into(),
        (Limit::Decimal { int, frac }, Excess::Digits) => format!(
            "a number with more than {frac} fractional digits, which MySQL's DECIMAL({},{frac}) would round",
            int + frac
        ),
        (Limit::Decimal { int, frac }, _) => format!(
            "a number (or ±Infinity) beyond the range of MySQL's DECIMAL({},{frac})",
            int + frac
        ),
        (Limit::Float { single }, _) => format!(
            "±Infinity or a magnitude beyond MySQL's {}",
            if single { "FLOAT" } else { "DOUBLE" }
        ),
    }
}

/// The nearest value `limit` holds to an out-of-range `text`; `None` for NULL (NaN has none).
pub fn clamp(limit: Limit, excess: Excess, text: &[u8]) -> Option<Cow<'static, [u8]>> {
    let signed = |negative: bool, v: String| -> Cow<'static, [u8]> {
        Cow::Owned(if negative { format!("-{v}") } else { v }.into_bytes())
    };
    match (limit, excess) {
        (_, Excess::NotANumber) => None,
        (Limit::Date(None), Excess::Low) => Some(Cow::Borrowed(b"0001-01-01")),
        (Limit::Date(Some(_)), Excess::Low) => Some(Cow::Borrowed(b"0001-01-01 00:00:00")),
        (Limit::Date(None), _) => Some(Cow::Borrowed(b"9999-12-31")),
        (Limit::Date(Some(p)), _) => {
            let mut v = String::from("9999-12-31 23:59:59");
            if p > 0 {
                v.push('.');
                v.extend(std::iter::repeat_n('9', usize::from(p)));
            }
            Some(Cow::Owned(v.into_bytes()))
        }
        (Limit::Decimal { int, frac }, Excess::Digits) => {
            match round_decimal(text, usize::from(frac)) {
                // Rounding up can carry into one integer digit too many.
                Some(rounded) if check(limit, rounded.as_bytes()).is_none() => {
                    Some(Cow::Owned(rounded.into_bytes()))
                }
                _ => Some(signed(text.starts_with(b"-"), decimal_max(int, frac))),
            }
        }
        (Limit::Decimal { int, frac }, e) => Some(signed(e == Excess::Low, decimal_max(int, frac))),
        (Limit::Float { single }, e) => Some(signed(
            e == Excess::Low,
            if single { FLOAT_MAX } else { DOUBLE_MAX }.to_string(),
        )),
    }
}

fn decimal_max(int: u8, frac: u8) -> String {
    let mut v = if int == 0 {
        "0".to_string()
    } else {
        "9".repeat(usize::from(int))
    };
    if frac > 0 {
        v.push('.');
        v.push_str(&"9".repeat(usize::from(frac)));
    }
    v
}

/// `text` (a plain decimal, optionally negative) rounded half away from zero to `frac`
/// fractional digits, as PostgreSQL's `round()` and MySQL's DECIMAL do.
pub fn round_decimal(text: &[u8], frac: usize) -> Option<String> {
    let s = std::str::from_utf8(text).ok()?;
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let kept = &fraction[..frac.min(fraction.len())];
    let mut all: Vec<u8> = whole.bytes().chain(kept.bytes()).collect();
    if fraction.as_bytes().get(frac).is_some_and(|d| *d >= b'5') {
        let mut i = all.len();
        loop {
            if i == 0 {
                all.insert(0, b'1');
                break;
            }
            i -= 1;
            if all[i] == b'9' {
                all[i] = b'0';
            } else {
                all[i] += 1;
                break;
            }
        }
    }
    let split = all.len() - kept.len();
    let mut out = String::with_capacity(all.len() + 2);
    if negative && all.iter().any(|d| *d != b'0') {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&all[..split]).ok()?);
    if !kept.is_empty() {
        out.push('.');
        out.push_str(std::str::from_utf8(&all[split..]).ok()?);
    }
    Some(out)
}

/// The policy's answer for one value of one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The value fits: write it as it is.
    Fits,
    /// Write this instead (`None`: NULL); the value was outside the range.
    Replace(Option<Cow<'a, [u8]>>),
}

/// A column's range and the task's policy, applied to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// The column's limit.
    pub limit: Limit,
    /// The task's policy.
    pub policy: OutOfRange,
    /// The column is NOT NULL (so `null` cannot apply).
    pub not_null: bool,
}

impl Guard {
    /// The guard of a converted column, when its type is narrower than the source's.
    pub fn of(c: &ConvertedColumn, policy: OutOfRange) -> Option<Guard> {
        limit(c).map(|limit| Guard {
            limit,
            policy,
            not_null: c.not_null,
        })
    }

    /// Decide for one value (a PostgreSQL text form). `Err` says why the value cannot be
    /// written under the policy, without quoting it.
    pub fn judge<'a>(&self, text: &'a [u8]) -> Result<Verdict<'a>, OutOfRangeError> {
        let Some(excess) = check(self.limit, text) else {
            return Ok(Verdict::Fits);
        };
        let what = describe(self.limit, excess);
        let replacement = match self.policy {
            OutOfRange::Error => {
                return Err(OutOfRangeError(format!(
                    "a value outside MySQL's range: {what} (mysql.out_of_range: error)"
                )));
            }
            OutOfRange::Null => None,
            OutOfRange::Clamp => clamp(self.limit, excess, text),
        };
        if replacement.is_none() && self.not_null {
            return Err(OutOfRangeError(format!(
                "a value outside MySQL's range: {what}; the column is NOT NULL, so mysql.out_of_range: {} cannot write NULL",
                self.policy.as_str()
            )));
        }
        Ok(Verdict::Replace(replacement))
    }
}

/// The hint for an out-of-range value that stopped the task.
pub const HINT: &str = "set mysql.out_of_range: clamp (nearest value the column holds) or null in the task file; pgtide counts and reports every value it changes. Or fix the value on the source, or exclude the table";

#[cfg(test)]
mod tests {
    use super::*;

    fn col(mysql: &str, not_null: bool) -> ConvertedColumn {
        ConvertedColumn {
            source: "c".into(),
            target: "c".into(),
            mysql: mysql.into(),
            type_oid: 0,
            type_name: String::new(),
            not_null,
        }
    }

    fn clamped(mysql: &str, text: &str) -> Option<String> {
        let g = Guard::of(&col(mysql, false), OutOfRange::Clamp).unwrap();
        match g.judge(text.as_bytes()).unwrap() {
            Verdict::Fits => Some(format!("fits:{text}")),
            Verdict::Replace(v) => v.map(|v| String::from_utf8(v.into_owned()).unwrap()),
        }
    }

    #[test]
    fn dates_outside_years_1_to_9999_do_not_fit() {
        assert_eq!(
            clamped("DATE", "2020-02-29"),
            Some("fits:2020-02-29".into())
        );
        assert_eq!(
            clamped("DATE", "0001-01-01"),
            Some("fits:0001-01-01".into())
        );
        assert_eq!(clamped("DATE", "0044-03-15 BC"), Some("0001-01-01".into()));
        assert_eq!(clamped("DATE", "-infinity"), Some("0001-01-01".into()));
        assert_eq!(clamped("DATE", "infinity"), Some("9999-12-31".into()));
        assert_eq!(clamped("DATE", "10000-01-01"), Some("9999-12-31".into()));
        assert_eq!(
            clamped("DATETIME(3)", "294276-12-31 23:59:59.999999"),
            Some("9999-12-31 23:59:59.999".into())
        );
        assert_eq!(
            clamped("DATETIME(0)", "infinity"),
            Some("9999-12-31 23:59:59".into())
        );
        assert_eq!(
            clamped("DATETIME(6)", "0001-01-01 00:00:00+00 BC"),
            Some("0001-01-01 00:00:00".into())
        );
        assert_eq!(
            clamped("DATETIME(6)", "2022-02-15 09:57:20.5+00"),
            Some("fits:2022-02-15 09:57:20.5+00".into())
        );
    }

    #[test]
    fn decimals_keep_their_digits_or_round_or_clamp() {
        assert_eq!(
            clamped("DECIMAL(5,2)", "-999.99"),
            Some("fits:-999.99".into())
        );
        assert_eq!(clamped("DECIMAL(5,2)", "NaN"), None);
        assert_eq!(clamped("DECIMAL(5,2)", "Infinity"), Some("999.99".into()));
        assert_eq!(clamped("DECIMAL(5,2)", "-Infinity"), Some("-999.99".into()));
        assert_eq!(clamped("DECIMAL(5,5)", "Infinity"), Some("0.99999".into()));
        assert_eq!(clamped("DECIMAL(5,0)", "-123456"), Some("-99999".into()));
        assert_eq!(clamped("DECIMAL(5,2)", "001.5"), Some("fits:001.5".into()));
        // Trailing zeros beyond the scale lose nothing.
        assert_eq!(
            clamped("DECIMAL(5,2)", "1.5000"),
            Some("fits:1.5000".into())
        );
        assert_eq!(clamped("DECIMAL(5,2)", "1.005"), Some("1.01".into()));
        assert_eq!(clamped("DECIMAL(5,2)", "-1.004"), Some("-1.00".into()));
        assert_eq!(clamped("DECIMAL(5,2)", "-0.004"), Some("0.00".into()));
        assert_eq!(clamped("DECIMAL(5,2)", "999.996"), Some("999.99".into()));
        assert_eq!(clamped("DECIMAL(5,2)", "-999.996"), Some("-999.99".into()));
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_decimal(b"2.5", 0).unwrap(), "3");
        assert_eq!(round_decimal(b"-2.5", 0).unwrap(), "-3");
        assert_eq!(round_decimal(b"9.96", 1).unwrap(), "10.0");
        assert_eq!(round_decimal(b"0.123", 5).unwrap(), "0.123");
        assert_eq!(round_decimal(b"12", 2).unwrap(), "12");
        assert!(round_decimal(b"x.1", 0).is_none());
    }

    #[test]
    fn floats_have_no_nan_or_infinity() {
        assert_eq!(clamped("DOUBLE", "NaN"), None);
        assert_eq!(
            clamped("DOUBLE", "-Infinity"),
            Some("-1.7976931348623157e308".into())
        );
        assert_eq!(clamped("DOUBLE", "1e+308"), Some("fits:1e+308".into()));
        assert_eq!(
            clamped("FLOAT", "3.4028235e+38"),
            Some("3.402823466e38".into())
        );
        assert_eq!(
            clamped("FLOAT", "-3.4028235e+38"),
            Some("-3.402823466e38".into())
        );
        assert_eq!(
            clamped("FLOAT", "3.4028e+38"),
            Some("fits:3.4028e+38".into())
        );
        assert_eq!(FLOAT_MAX.parse::<f64>().unwrap(), FLOAT_MAX_F64);
        assert!(limit(&col("INT", false)).is_none());
        let mut money = col("DECIMAL(19,2)", false);
        money.type_name = "money".into();
        assert!(limit(&money).is_none(), "every money value fits");
        assert!(limit(&col("LONGTEXT", false)).is_none());
    }

    #[test]
    fn policies_error_null_and_not_null() {
        let c = col("DATE", false);
        let e = Guard::of(&c, OutOfRange::Error).unwrap();
        let err = e.judge(b"infinity").unwrap_err();
        assert!(err.0.contains("year after 9999"), "{}", err.0);
        assert_eq!(e.judge(b"2020-01-01").unwrap(), Verdict::Fits);
        let n = Guard::of(&c, OutOfRange::Null).unwrap();
        assert_eq!(n.judge(b"infinity").unwrap(), Verdict::Replace(None));
        let strict = Guard::of(&col("DATE", true), OutOfRange::Null).unwrap();
        assert!(
            strict
                .judge(b"infinity")
                .unwrap_err()
                .0
                .contains("NOT NULL")
        );
        let nan = Guard::of(&col("DOUBLE", true), OutOfRange::Clamp).unwrap();
        assert!(nan.judge(b"NaN").unwrap_err().0.contains("NOT NULL"));
    }
}
