//! Rows of the full load, from PostgreSQL `COPY` text to what MySQL receives.
//!
//! The source sends each row as one line of `COPY ... TO STDOUT` text: fields separated by
//! tabs (a tab inside a value is written `\t`, so every raw tab is a separator), `\N` for NULL,
//! backslash escapes, a newline at the end. Two ways into MySQL:
//!
//! - `LOAD DATA LOCAL INFILE` reads almost the same format; the row goes as it is, but for
//!   the two escapes MySQL does not know ([`crate::load::pg_text_to_mysql`]).
//! - Multi-row `INSERT` (servers with `local_infile` off) takes parameters: every field is
//!   unescaped into its bytes, NULL stays NULL.
//!
//! In both, columns whose MySQL type is narrower than the source's ([`crate::range`]) are
//! checked first and the task's policy applied. Their PostgreSQL text forms (dates, numbers)
//! never contain escapes, so the raw field is the value's text. A value the policy refuses
//! ends the row stream with an error; its message (table, column, why, never the value) is
//! kept here for the load to report instead of the driver's I/O error.

use crate::convert::ConvertedTable;
use crate::range::{Guard, Verdict};
use bytes::Bytes;
use mysql_async::Value;
use pgtide_core::task::OutOfRange;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Shapes one table's rows and counts what the policy changed. Cheap to clone (shared counts).
#[derive(Clone)]
pub struct RowShaper {
    table: String,
    /// Column index, its name (source), its guard.
    guards: Arc<[(usize, String, Guard)]>,
    /// Values replaced, per guard.
    altered: Arc<[AtomicU64]>,
    failure: Arc<Mutex<Option<String>>>,
}

/// Values of one column the policy changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Altered {
    /// Source column name.
    pub column: String,
    /// How many values were replaced.
    pub values: u64,
}

/// A field's replacement: its index and the value written instead (`None`: NULL).
type Replacement<'a> = (usize, Option<std::borrow::Cow<'a, [u8]>>);

fn fields(row: &[u8]) -> impl Iterator<Item = &[u8]> {
    row.strip_suffix(b"\n")
        .unwrap_or(row)
        .split(|b| *b == b'\t')
}

/// A COPY text field's bytes: `None` for NULL, escapes resolved.
pub fn unescape(field: &[u8]) -> Option<Vec<u8>> {
    if field == b"\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 1 < field.len() {
            out.push(match field[i + 1] {
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 0x0b,
                other => other,
            });
            i += 2;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    Some(out)
}

impl RowShaper {
    /// The shaper for `table`'s rows under `policy`.
    pub fn new(table: &ConvertedTable, policy: OutOfRange) -> Self {
        let guards: Vec<(usize, String, Guard)> = table
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Guard::of(c, policy).map(|g| (i, c.source.clone(), g)))
            .collect();
        let altered = guards.iter().map(|_| AtomicU64::new(0)).collect();
        RowShaper {
            table: table.source.to_string(),
            guards: guards.into(),
            altered,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// Judge the guarded fields of a row: the replacements (`(field index, value)`), or the
    /// error that stops the stream (kept for [`RowShaper::failure`]). Walks the row once
    /// without collecting its fields; allocates only when a value is replaced.
    fn judge<'a>(&self, row: &'a [u8]) -> std::io::Result<Vec<Replacement<'a>>> {
        let mut replaced = Vec::new();
        // Guards are in column order.
        let mut guards = self.guards.iter().enumerate().peekable();
        for (i, field) in fields(row).enumerate() {
            let Some((g, (_, column, guard))) = guards.next_if(|(_, (gi, _, _))| *gi == i) else {
                if guards.peek().is_none() {
                    break;
                }
                continue;
            };
            if field == b"\\N" {
                continue;
            }
            match guard.judge(field) {
                Ok(Verdict::Fits) => {}
                Ok(Verdict::Replace(v)) => {
                    self.altered[g].fetch_add(1, Ordering::Relaxed);
                    replaced.push((i, v));
                }
                Err(e) => {
                    let msg = format!("{}.{column}: {}", self.table, e.0);
                    if let Ok(mut f) = self.failure.lock() {
                        f.get_or_insert(msg.clone());
                    }
                    return Err(std::io::Error::other(msg));
                }
            }
        }
        Ok(replaced)
    }

    /// The row as `LOAD DATA` text.
    pub fn load_data(&self, row: &[u8]) -> std::io::Result<Bytes> {
        let replaced = self.judge(row)?;
        if replaced.is_empty() {
            return Ok(crate::load::pg_text_to_mysql(row));
        }
        let mut out = Vec::with_capacity(row.len() + 16);
        for (i, f) in fields(row).enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match replaced.iter().find(|(j, _)| *j == i) {
                // Replacements are dates and numbers: nothing to escape.
                Some((_, Some(v))) => out.extend_from_slice(v),
                Some((_, None)) => out.extend_from_slice(b"\\N"),
                None => out.extend_from_slice(f),
            }
        }
        out.push(b'\n');
        Ok(crate::load::pg_text_to_mysql(&out))
    }

    /// The row as INSERT parameters.
    pub fn insert_values(&self, row: &[u8]) -> std::io::Result<Vec<Value>> {
        let replaced = self.judge(row)?;
        Ok(fields(row)
            .enumerate()
            .map(|(i, f)| {
                let v = match replaced.iter().find(|(j, _)| *j == i) {
                    Some((_, v)) => v.as_ref().map(|v| v.to_vec()),
                    None => unescape(f),
                };
                v.map_or(Value::NULL, Value::Bytes)
            })
            .collect())
    }

    /// Why the row stream stopped, when a value was refused.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// The columns whose values the policy changed, with counts.
    pub fn altered(&self) -> Vec<Altered> {
        self.guards
            .iter()
            .zip(self.altered.iter())
            .filter_map(|((_, column, _), n)| {
                let values = n.load(Ordering::Relaxed);
                (values > 0).then(|| Altered {
                    column: column.clone(),
                    values,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::ConvertedColumn;

    fn table() -> ConvertedTable {
        let col = |name: &str, mysql: &str, not_null: bool| ConvertedColumn {
            source: name.into(),
            target: name.into(),
            mysql: mysql.into(),
            type_oid: 0,
            type_name: String::new(),
            not_null,
        };
        ConvertedTable {
            oid: 1,
            source: pgtide_core::ident::QualifiedName::new("public", "t"),
            partitioned: false,
            target: "t".into(),
            columns: vec![
                col("id", "INT", true),
                col("note", "LONGTEXT", false),
                col("d", "DATE", false),
                col("x", "DOUBLE", false),
            ],
            create: String::new(),
        }
    }

    #[test]
    fn copy_text_fields_unescape() {
        assert_eq!(unescape(b"\\N"), None);
        assert_eq!(
            unescape(b"a\\tb\\\\c\\nd\\fe\\vf\\bg\\rh").unwrap(),
            b"a\tb\\c\nd\x0ce\x0bf\x08g\rh"
        );
        assert_eq!(unescape(b"").unwrap(), b"");
    }

    #[test]
    fn clamp_rewrites_only_the_guarded_fields_and_counts_them() {
        let s = RowShaper::new(&table(), OutOfRange::Clamp);
        let row = b"1\ta\\tb\\f\tinfinity\tNaN\n";
        assert_eq!(
            &s.load_data(row).unwrap()[..],
            b"1\ta\\tb\x0c\t9999-12-31\t\\N\n"
        );
        assert_eq!(
            s.insert_values(row).unwrap(),
            vec![
                Value::Bytes(b"1".to_vec()),
                Value::Bytes(b"a\tb\x0c".to_vec()),
                Value::Bytes(b"9999-12-31".to_vec()),
                Value::NULL,
            ]
        );
        let fine = b"2\t\\N\t2020-01-01\t1.5\n";
        assert_eq!(&s.load_data(fine).unwrap()[..], fine);
        assert_eq!(
            s.altered(),
            vec![
                Altered {
                    column: "d".into(),
                    values: 2
                },
                Altered {
                    column: "x".into(),
                    values: 2
                }
            ]
        );
        assert_eq!(s.failure(), None);
    }

    #[test]
    fn error_policy_stops_the_stream_naming_the_column_not_the_value() {
        let s = RowShaper::new(&table(), OutOfRange::Error);
        assert!(s.load_data(b"1\tx\t2020-01-01\t1\n").is_ok());
        assert!(s.load_data(b"1\tx\t0044-03-15 BC\t1\n").is_err());
        let why = s.failure().unwrap();
        assert!(why.starts_with("public.t.d: "), "{why}");
        assert!(!why.contains("0044"), "{why}");
        assert!(s.altered().is_empty());
    }
}
