//! PostgreSQL text values from the replication stream, in the forms MySQL stores.
//!
//! The full load converts on the source, in SQL (`load::transfer`); the stream delivers each
//! value in its type's text output instead, so the same conversions are done here. They rely on
//! the replication session's settings, which pgtide fixes in the startup packet for MySQL
//! targets: `DateStyle=ISO,YMD`, `TimeZone=UTC` (a `timestamptz` arrives as `... +00`, its UTC
//! wall-clock time with an offset to strip), `IntervalStyle=postgres`, `bytea_output=hex`,
//! `lc_monetary=C` and `extra_float_digits=3`.
//!
//! Values MySQL cannot hold (BC or infinite dates, NaN, too many digits) are judged before
//! conversion by the column's [`crate::range::Guard`] under the task's policy, exactly as in
//! the full load; messages name the column, never the value.

use crate::convert::ConvertedColumn;
use mysql_async::Value;

/// Why a value cannot be written; never contains the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

/// How a column's stream values become MySQL values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The text as is.
    Text,
    /// `t`/`f` → 1/0.
    Bool,
    /// `\x…` hex → bytes.
    Bytes,
    /// `0101` → an integer.
    Bits,
    /// A `timestamptz` in UTC: the offset is stripped.
    TimestampUtc,
    /// A `timetz`: the offset is stripped (as the full load's `::time`).
    TimeOfDay,
    /// `money` in the C locale: `-$1,234.56` → `-1234.56`.
    Money,
    /// An array literal → JSON, elements typed like `to_json` does.
    ArrayJson(ElementKind),
}

/// How `to_json` writes an array's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementKind {
    /// Numbers unquoted (NaN and infinities as strings).
    Number,
    /// `true`/`false`.
    Bool,
    /// JSON elements as they are.
    Json,
    /// Everything else as strings.
    String,
}

/// The shape of a converted column's values in the stream; `Err` for types whose stream form
/// pgtide cannot convert yet (composites, hstore), naming the way out.
pub fn shape(c: &ConvertedColumn) -> Result<Shape, ValueError> {
    let t = c.type_name.as_str();
    if c.mysql == "BOOLEAN" {
        return Ok(Shape::Bool);
    }
    if c.mysql == "LONGBLOB" || c.mysql.starts_with("VARBINARY") {
        return Ok(Shape::Bytes);
    }
    if c.mysql.starts_with("BIT(") {
        return Ok(Shape::Bits);
    }
    if t.starts_with("timestamp") && t.contains("with time zone") {
        return Ok(Shape::TimestampUtc);
    }
    if t.starts_with("time") && t.contains("with time zone") {
        return Ok(Shape::TimeOfDay);
    }
    if t == "money" {
        return Ok(Shape::Money);
    }
    if c.mysql == "JSON" && !(t == "json" || t == "jsonb") {
        if let Some(base) = t.strip_suffix("[]") {
            let base = base.trim_end_matches("[]");
            let kind = match base {
                "smallint" | "integer" | "bigint" | "real" | "double precision" => {
                    ElementKind::Number
                }
                _ if base.starts_with("numeric") => ElementKind::Number,
                "boolean" => ElementKind::Bool,
                "json" | "jsonb" => ElementKind::Json,
                _ => ElementKind::String,
            };
            return Ok(Shape::ArrayJson(kind));
        }
        return Err(ValueError(format!(
            "column {} ({t}) cannot be replicated into MySQL yet (its stream form is not converted)",
            c.source
        )));
    }
    Ok(Shape::Text)
}

/// Strip a trailing `+HH[:MM[:SS]]` / `-HH...` offset from a time or timestamp text.
fn strip_offset(text: &str) -> &str {
    // The offset starts at the last '+' or '-' after the time part (dates use '-' too, so
    // only look after the last ':' minus the seconds field).
    let time_start = text.find(':').map(|i| i.saturating_sub(2)).unwrap_or(0);
    match text[time_start..].rfind(['+', '-']) {
        Some(i) => &text[..time_start + i],
        None => text,
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Convert one text value of the given shape.
pub fn convert(shape: Shape, text: &[u8]) -> Result<Value, ValueError> {
    let as_str =
        || std::str::from_utf8(text).map_err(|_| ValueError("a value is not valid UTF-8".into()));
    Ok(match shape {
        Shape::Text => Value::Bytes(text.to_vec()),
        Shape::Bool => match text {
            b"t" => Value::Int(1),
            b"f" => Value::Int(0),
            _ => return Err(ValueError("a boolean in an unknown text form".into())),
        },
        Shape::Bytes => {
            let hex = text
                .strip_prefix(b"\\x")
                .ok_or_else(|| ValueError("bytea not in hex form (bytea_output)".into()))?;
            if hex.len() % 2 != 0 {
                return Err(ValueError("bytea hex of odd length".into()));
            }
            let mut out = Vec::with_capacity(hex.len() / 2);
            for pair in hex.chunks(2) {
                match (hex_value(pair[0]), hex_value(pair[1])) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(ValueError("bytea hex with a non-hex digit".into())),
                }
            }
            Value::Bytes(out)
        }
        Shape::Bits => {
            if text.len() > 64 || text.iter().any(|b| *b != b'0' && *b != b'1') {
                return Err(ValueError(
                    "a bit string MySQL's BIT(64) cannot hold".into(),
                ));
            }
            let mut v: u64 = 0;
            for b in text {
                v = v << 1 | u64::from(*b == b'1');
            }
            Value::UInt(v)
        }
        Shape::TimestampUtc => Value::Bytes(strip_offset(as_str()?).as_bytes().to_vec()),
        Shape::TimeOfDay => Value::Bytes(strip_offset(as_str()?).as_bytes().to_vec()),
        Shape::Money => {
            let s = as_str()?;
            let negative = s.starts_with('-') || s.starts_with('(');
            let digits: String = s
                .chars()
                .filter(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            Value::Bytes(format!("{}{digits}", if negative { "-" } else { "" }).into_bytes())
        }
        Shape::ArrayJson(kind) => Value::Bytes(array_to_json(as_str()?, kind)?.into_bytes()),
    })
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_element(out: &mut String, raw: &str, quoted: bool, kind: ElementKind) {
    if !quoted && raw == "NULL" {
        out.push_str("null");
        return;
    }
    match kind {
        ElementKind::Number
            if !matches!(raw, "NaN" | "Infinity" | "-Infinity") && !raw.is_empty() =>
        {
            out.push_str(raw)
        }
        ElementKind::Bool => out.push_str(if raw == "t" { "true" } else { "false" }),
        ElementKind::Json => out.push_str(raw),
        _ => json_string(out, raw),
    }
}

/// A PostgreSQL array literal (`{a,"b c",NULL,{1,2}}`) as JSON, like `to_json` writes it.
pub fn array_to_json(text: &str, kind: ElementKind) -> Result<String, ValueError> {
    let bad = || ValueError("an array literal pgtide cannot read".into());
    if text.starts_with('[') {
        // Explicit lower bounds ("[0:2]={...}"): to_json drops them; so does pgtide.
        let eq = text.find('=').ok_or_else(bad)?;
        return array_to_json(&text[eq + 1..], kind);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    let mut depth = 0usize;
    let mut expect_value = true;
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                out.push('[');
                depth += 1;
                expect_value = true;
            }
            '}' => {
                out.push(']');
                depth = depth.checked_sub(1).ok_or_else(bad)?;
                expect_value = false;
            }
            ',' => {
                out.push(',');
                expect_value = true;
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next().ok_or_else(bad)? {
                        '\\' => s.push(chars.next().ok_or_else(bad)?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                json_element(&mut out, &s, true, kind);
                expect_value = false;
            }
            _ if expect_value => {
                let mut s = String::new();
                s.push(c);
                while let Some(&n) = chars.peek() {
                    if n == ',' || n == '}' {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                json_element(&mut out, s.trim(), false, kind);
                expect_value = false;
            }
            _ => return Err(bad()),
        }
    }
    if depth != 0 {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(mysql: &str, type_name: &str) -> ConvertedColumn {
        ConvertedColumn {
            source: "c".into(),
            target: "c".into(),
            mysql: mysql.into(),
            type_oid: 0,
            type_name: type_name.into(),
            not_null: false,
        }
    }

    fn text(v: Value) -> String {
        match v {
            Value::Bytes(b) => String::from_utf8(b).unwrap(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn arrays_become_json_like_to_json() {
        assert_eq!(
            array_to_json(
                r#"{"Deleted Scenes","Behind the \"Scenes\"",NULL,x}"#,
                ElementKind::String
            )
            .unwrap(),
            r#"["Deleted Scenes","Behind the \"Scenes\"",null,"x"]"#
        );
        assert_eq!(
            array_to_json("{{1,2},{3,NULL}}", ElementKind::Number).unwrap(),
            "[[1,2],[3,null]]"
        );
        assert_eq!(array_to_json("{}", ElementKind::Number).unwrap(), "[]");
        assert_eq!(
            array_to_json("{t,f}", ElementKind::Bool).unwrap(),
            "[true,false]"
        );
        assert_eq!(
            array_to_json("{NaN,1.5}", ElementKind::Number).unwrap(),
            r#"["NaN",1.5]"#
        );
        assert_eq!(
            array_to_json("[0:1]={1,2}", ElementKind::Number).unwrap(),
            "[1,2]"
        );
        assert!(array_to_json("{1,2", ElementKind::Number).is_err());
    }

    #[test]
    fn values_take_mysql_forms() {
        let ts = shape(&col("DATETIME(6)", "timestamp with time zone")).unwrap();
        assert_eq!(
            text(convert(ts, b"2022-02-15 09:57:20.5+00").unwrap()),
            "2022-02-15 09:57:20.5"
        );
        let tz = shape(&col("TIME(6)", "time with time zone")).unwrap();
        assert_eq!(text(convert(tz, b"10:00:00-05:30").unwrap()), "10:00:00");
        let b = shape(&col("LONGBLOB", "bytea")).unwrap();
        assert_eq!(
            convert(b, b"\\x00ff10").unwrap(),
            Value::Bytes(vec![0, 255, 16])
        );
        assert!(convert(b, b"\\x0").is_err());
        let bits = shape(&col("BIT(4)", "bit(4)")).unwrap();
        assert_eq!(convert(bits, b"1010").unwrap(), Value::UInt(10));
        let bool_ = shape(&col("BOOLEAN", "boolean")).unwrap();
        assert_eq!(convert(bool_, b"t").unwrap(), Value::Int(1));
        let money = shape(&col("DECIMAL(19,2)", "money")).unwrap();
        assert_eq!(text(convert(money, b"-$1,234.56").unwrap()), "-1234.56");
        let d = shape(&col("DATE", "date")).unwrap();
        assert_eq!(text(convert(d, b"2020-01-02").unwrap()), "2020-01-02");
        // The guard judges the stream's text form; a clamped value converts like any other.
        let g = crate::range::Guard::of(
            &col("DATETIME(6)", "timestamp with time zone"),
            pgtide_core::task::OutOfRange::Clamp,
        )
        .unwrap();
        let crate::range::Verdict::Replace(Some(v)) =
            g.judge(b"0044-03-15 00:00:00+00 BC").unwrap()
        else {
            panic!("a BC timestamp must be replaced");
        };
        assert_eq!(text(convert(ts, &v).unwrap()), "0001-01-01 00:00:00");
        assert!(shape(&col("JSON", "hstore")).is_err());
        assert!(shape(&col("JSON", "my_composite")).is_err());
        assert_eq!(
            shape(&col("JSON", "text[]")).unwrap(),
            Shape::ArrayJson(ElementKind::String)
        );
    }
}
