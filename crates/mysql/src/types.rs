//! PostgreSQL → MySQL/MariaDB column types.
//!
//! Every mapping carries its fidelity, so nothing is altered without the operator knowing:
//! `Lossless` (every value round-trips), `Lossy` (the column converts, but some values or some
//! meaning cannot be kept: the reason says which; values outside the target's range must be
//! handled by a per-task policy when rows are loaded, never silently), `Unsupported` (no
//! sensible column type;
//! the reason says what to do). The choices start from AWS DMS's PostgreSQL type table and
//! prefer native MySQL types where they hold every value.
//!
//! Built-in types are recognised by `format_type` text (which carries the modifiers:
//! `numeric(10,2)`, `character varying(20)`); user-defined ones by their kind in the schema
//! model (enum, domain, composite, range, array).

use pgtide_core::schema::{Column, Schema, TypeKind};
use serde::Serialize;

/// How faithfully a column converts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fidelity", content = "reason", rename_all = "lowercase")]
pub enum Fidelity {
    /// Every value round-trips.
    Lossless,
    /// Converts, with this caveat.
    Lossy(String),
    /// No automatic conversion; what to do instead.
    Unsupported(String),
}

/// A column's MySQL type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping {
    /// MySQL column type, e.g. `DECIMAL(10,2)`.
    pub mysql: String,
    /// How faithful.
    pub fidelity: Fidelity,
}

fn m(mysql: impl Into<String>, fidelity: Fidelity) -> Mapping {
    Mapping {
        mysql: mysql.into(),
        fidelity,
    }
}

fn lossless(mysql: impl Into<String>) -> Mapping {
    m(mysql, Fidelity::Lossless)
}

fn lossy(mysql: impl Into<String>, why: &str) -> Mapping {
    m(mysql, Fidelity::Lossy(why.to_string()))
}

/// The modifiers in `name(a,b)`.
pub(crate) fn modifiers(t: &str) -> Vec<u32> {
    match (t.find('('), t.rfind(')')) {
        (Some(a), Some(b)) if b > a => t[a + 1..b]
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect(),
        _ => Vec::new(),
    }
}

const DATE_RANGE: &str = "BC dates, infinity and years after 9999 are outside MySQL's range (mysql.out_of_range decides)";

/// Map a built-in type by its `format_type` text (or internal name for element/base types).
pub fn map_builtin(type_name: &str) -> Mapping {
    let t = type_name.trim();
    if t.ends_with("[]") {
        return lossy(
            "JSON",
            "arrays become JSON arrays: element type and dimensions are not enforced",
        );
    }
    let base = t.split('(').next().unwrap_or(t).trim();
    let mods = modifiers(t);
    let base = base.strip_prefix("pg_catalog.").unwrap_or(base);
    match base {
        "smallint" | "int2" => lossless("SMALLINT"),
        "integer" | "int4" | "int" => lossless("INT"),
        "bigint" | "int8" => lossless("BIGINT"),
        "numeric" | "decimal" => match mods.as_slice() {
            [p, s] if *p <= 65 && *s <= 30 => lossless(format!("DECIMAL({p},{s})")),
            [p] if *p <= 65 => lossless(format!("DECIMAL({p},0)")),
            [_, _] | [_] => lossy(
                "VARCHAR(1000)",
                "precision above MySQL's DECIMAL(65,30): stored as text, no arithmetic on the target",
            ),
            _ => lossy(
                "DECIMAL(65,30)",
                "unconstrained numeric: values with more than 35 integer or 30 fractional digits, NaN and infinity do not fit (mysql.out_of_range decides)",
            ),
        },
        "real" | "float4" => lossy(
            "FLOAT",
            "NaN, infinity and magnitudes above 3.402823466e38 are not representable (mysql.out_of_range decides)",
        ),
        "double precision" | "float8" => lossy(
            "DOUBLE",
            "NaN and infinity are not representable (mysql.out_of_range decides)",
        ),
        "money" => lossy(
            "DECIMAL(19,2)",
            "stored as a number: the currency symbol and lc_monetary formatting are not kept",
        ),
        "character" | "bpchar" | "char" => {
            let n = mods.first().copied().unwrap_or(1);
            if n <= 255 {
                lossless(format!("CHAR({n})"))
            } else {
                lossy(
                    format!("VARCHAR({n})"),
                    "blank padding beyond 255 characters is not preserved",
                )
            }
        }
        "character varying" | "varchar" => match mods.first() {
            Some(n) if *n <= 16383 => lossless(format!("VARCHAR({n})")),
            _ => lossless("LONGTEXT"),
        },
        "text" => lossless("LONGTEXT"),
        "citext" => lossy(
            "LONGTEXT",
            "citext becomes text: compare with a case-insensitive collation on the target",
        ),
        "\"char\"" => lossless("CHAR(1)"),
        "name" => lossless("VARCHAR(64)"),
        "bytea" => lossless("LONGBLOB"),
        "boolean" | "bool" => lossless("BOOLEAN"),
        "date" => lossy("DATE", DATE_RANGE),
        "timestamp without time zone" | "timestamp" => lossy(
            format!("DATETIME({})", mods.first().copied().unwrap_or(6).min(6)),
            DATE_RANGE,
        ),
        "timestamp with time zone" | "timestamptz" => lossy(
            format!("DATETIME({})", mods.first().copied().unwrap_or(6).min(6)),
            "stored in UTC without the offset; BC dates, infinity and years after 9999 are outside the range (mysql.out_of_range decides)",
        ),
        "time without time zone" | "time" => lossless(format!(
            "TIME({})",
            mods.first().copied().unwrap_or(6).min(6)
        )),
        "time with time zone" | "timetz" => lossy(
            format!("TIME({})", mods.first().copied().unwrap_or(6).min(6)),
            "the time zone offset is dropped",
        ),
        "interval" => lossy(
            "VARCHAR(255)",
            "stored as text (PostgreSQL's interval format): no interval arithmetic on the target",
        ),
        "uuid" => lossless("CHAR(36)"),
        "json" => lossless("JSON"),
        "jsonb" => lossless("JSON"),
        "xml" => lossy("LONGTEXT", "stored as text: not validated as XML"),
        "inet" | "cidr" => lossy(
            "VARCHAR(43)",
            "stored as text: no network operators on the target",
        ),
        "macaddr" => lossy("VARCHAR(17)", "stored as text"),
        "macaddr8" => lossy("VARCHAR(23)", "stored as text"),
        "bit" => match mods.first() {
            Some(n) if *n <= 64 => lossless(format!("BIT({n})")),
            Some(n) => lossy(format!("VARCHAR({n})"), "stored as a string of 0 and 1"),
            None => lossless("BIT(1)"),
        },
        "bit varying" | "varbit" => lossy(
            format!("VARCHAR({})", mods.first().copied().unwrap_or(1000)),
            "stored as a string of 0 and 1",
        ),
        "tsvector" | "tsquery" => lossy(
            "LONGTEXT",
            "stored as text: full-text search semantics are lost (use a FULLTEXT index on the source text)",
        ),
        "point" | "lseg" | "box" | "circle" | "line" => lossy(
            "VARCHAR(255)",
            "stored as text: no geometric operators (consider MySQL spatial types by hand)",
        ),
        "path" | "polygon" => lossy(
            "LONGTEXT",
            "stored as text: no geometric operators (consider MySQL spatial types by hand)",
        ),
        "oid" | "xid" | "cid" | "regclass" | "regproc" | "regtype" => lossy(
            "BIGINT",
            "a PostgreSQL object reference: meaningless on the target",
        ),
        "pg_lsn" => lossy("VARCHAR(17)", "stored as text"),
        "hstore" => lossy("JSON", "stored as a JSON object of strings"),
        "int4range" | "int8range" | "numrange" | "daterange" | "tsrange" | "tstzrange" => lossy(
            "VARCHAR(255)",
            "stored as text in range syntax: no range operators",
        ),
        "int4multirange" | "int8multirange" | "nummultirange" | "datemultirange"
        | "tsmultirange" | "tstzmultirange" => lossy(
            "LONGTEXT",
            "stored as text in multirange syntax: no range operators",
        ),
        _ => m(
            "LONGTEXT",
            Fidelity::Unsupported(format!(
                "no MySQL equivalent for PostgreSQL type {t}: exclude the column, or change its type on the source"
            )),
        ),
    }
}

/// Escape a string for a single-quoted MySQL literal in DDL (`ENUM` labels). The labels are
/// catalog data, not row values.
pub fn mysql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Map a column of `schema`.
pub fn map_column(schema: &Schema, col: &Column) -> Mapping {
    map_oid(schema, col.type_oid, &col.type_name, 0)
}

fn map_oid(schema: &Schema, oid: u32, type_name: &str, depth: u32) -> Mapping {
    let Some(ty) = schema.types.get(&oid) else {
        return map_builtin(type_name);
    };
    if depth > 8 {
        return map_builtin(type_name);
    }
    match &ty.kind {
        TypeKind::Enum(labels) => {
            let list: Vec<String> = labels.iter().map(|l| mysql_literal(l)).collect();
            lossless(format!("ENUM({})", list.join(",")))
        }
        TypeKind::Domain { base } => {
            let base_name = schema
                .types
                .get(base)
                .map(|b| b.name.name.clone())
                .unwrap_or_default();
            let inner = map_oid(schema, *base, &base_name, depth + 1);
            let why = format!(
                "domain {} becomes its base type: the domain's constraints are not enforced on the target",
                ty.name
            );
            match inner.fidelity {
                Fidelity::Unsupported(_) => inner,
                Fidelity::Lossless => lossy(inner.mysql, &why),
                Fidelity::Lossy(r) => lossy(inner.mysql, &format!("{why}; {r}")),
            }
        }
        TypeKind::Composite(_) => lossy(
            "JSON",
            &format!(
                "composite type {} becomes a JSON object: attribute types are not enforced",
                ty.name
            ),
        ),
        TypeKind::Array { .. } => lossy(
            "JSON",
            "arrays become JSON arrays: element type and dimensions are not enforced",
        ),
        TypeKind::Range { .. } => lossy(
            "VARCHAR(255)",
            "stored as text in range syntax: no range operators",
        ),
        TypeKind::Multirange { .. } => lossy(
            "LONGTEXT",
            "stored as text in multirange syntax: no range operators",
        ),
        _ if ty.is_user_defined() => {
            // An extension's base type (citext, hstore, ...) or a user's: by its own name.
            let mut mapped = map_builtin(&ty.name.name);
            if ty.name.name == "citext" {
                mapped = lossy(
                    "LONGTEXT",
                    "citext becomes text: compare with a case-insensitive collation on the target",
                );
            }
            mapped
        }
        _ => map_builtin(type_name),
    }
}

/// A type that MySQL cannot index without a prefix length (TEXT, BLOB, JSON).
pub fn needs_key_substitute(mysql: &str) -> Option<(&'static str, &'static str)> {
    match mysql {
        "LONGTEXT" => Some((
            "VARCHAR(768)",
            "indexed text becomes VARCHAR(768) (InnoDB's 3072-byte key limit in utf8mb4): longer values do not fit",
        )),
        "LONGBLOB" => Some((
            "VARBINARY(3072)",
            "indexed bytea becomes VARBINARY(3072) (InnoDB's key limit): longer values do not fit",
        )),
        _ => None,
    }
}

/// The PostgreSQL types documented in `docs/mysql-types.md`, in its order.
pub const DOCUMENTED: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "numeric(10,2)",
    "numeric(70,10)",
    "numeric",
    "real",
    "double precision",
    "money",
    "character(10)",
    "character varying(100)",
    "character varying",
    "text",
    "\"char\"",
    "name",
    "bytea",
    "boolean",
    "date",
    "timestamp without time zone",
    "timestamp with time zone",
    "time without time zone",
    "time with time zone",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "xml",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "bit(8)",
    "bit varying(16)",
    "tsvector",
    "tsquery",
    "point",
    "line",
    "lseg",
    "box",
    "path",
    "polygon",
    "circle",
    "oid",
    "pg_lsn",
    "hstore",
    "citext",
    "int4range",
    "tstzrange",
    "int4multirange",
    "integer[]",
    "text[]",
];

/// The Markdown table of `docs/mysql-types.md`, generated from the mapping itself.
pub fn documentation_table() -> String {
    let mut out =
        String::from("| PostgreSQL | MySQL / MariaDB | fidelity | note |\n|---|---|---|---|\n");
    for t in DOCUMENTED {
        let m = map_builtin(t);
        let (f, note) = match &m.fidelity {
            Fidelity::Lossless => ("lossless", String::new()),
            Fidelity::Lossy(r) => ("lossy", r.clone()),
            Fidelity::Unsupported(r) => ("unsupported", r.clone()),
        };
        out.push_str(&format!("| `{t}` | `{}` | {f} | {note} |\n", m.mysql));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_table_matches_the_code() {
        let doc = include_str!("../../../docs/mysql-types.md");
        assert!(
            doc.contains(&documentation_table()),
            "docs/mysql-types.md is out of date: regenerate its table with \
             `cargo test -p pgtide-mysql -- --ignored print_documentation_table --nocapture`"
        );
    }

    #[test]
    #[ignore]
    fn print_documentation_table() {
        print!("{}", documentation_table());
    }

    #[test]
    fn numeric_precision_decides_decimal_or_text() {
        assert_eq!(map_builtin("numeric(10,2)"), lossless("DECIMAL(10,2)"));
        assert_eq!(map_builtin("numeric(65,30)").mysql, "DECIMAL(65,30)");
        assert_eq!(map_builtin("numeric(66,2)").mysql, "VARCHAR(1000)");
        assert!(matches!(
            map_builtin("numeric").fidelity,
            Fidelity::Lossy(_)
        ));
    }

    #[test]
    fn common_types() {
        assert_eq!(
            map_builtin("character varying(20)"),
            lossless("VARCHAR(20)")
        );
        assert_eq!(map_builtin("character varying").mysql, "LONGTEXT");
        assert_eq!(map_builtin("uuid"), lossless("CHAR(36)"));
        assert_eq!(map_builtin("bytea"), lossless("LONGBLOB"));
        assert_eq!(map_builtin("jsonb"), lossless("JSON"));
        assert_eq!(map_builtin("text[]").mysql, "JSON");
        assert_eq!(
            map_builtin("timestamp(3) with time zone").mysql,
            "DATETIME(3)"
        );
        assert_eq!(
            map_builtin("timestamp without time zone").mysql,
            "DATETIME(6)"
        );
        assert_eq!(map_builtin("bit(8)"), lossless("BIT(8)"));
        assert!(matches!(
            map_builtin("some_odd_type").fidelity,
            Fidelity::Unsupported(_)
        ));
    }

    #[test]
    fn enum_labels_are_quoted() {
        assert_eq!(mysql_literal("it's"), "'it''s'");
        assert_eq!(mysql_literal("a\\b"), "'a\\\\b'");
    }
}
