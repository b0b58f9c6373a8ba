//! A whole-database comparison of source and target after a full load.
//!
//! Per table: row count and order-independent checksum ([`pgtide_postgres::compare`]). Per
//! sequence: `last_value`. Per schema: the sets of indexes, constraints, not-null columns,
//! views, materialized views, functions and triggers, compared by name and definition. The
//! demo runs it after its load, and the end-to-end tests assert on it.

use pgtide_core::Result;
use pgtide_core::endpoint::ConnUrl;
use pgtide_core::ident::QualifiedName;
use pgtide_postgres::compare::{fingerprint, pin_output_settings};
use pgtide_postgres::connect::{Side, classify, connect};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use tokio_postgres::Client;

/// One compared table.
#[derive(Debug, Clone)]
pub struct TableCheck {
    /// Name.
    pub name: QualifiedName,
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target.
    pub target_rows: i64,
    /// Checksums equal (and counts equal).
    pub equal: bool,
}

/// The comparison result.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Tables with storage in the compared schemas.
    pub tables: Vec<TableCheck>,
    /// Sequences whose values differ: (name, source, target).
    pub sequence_mismatches: Vec<(String, Option<i64>, Option<i64>)>,
    /// Sequences compared.
    pub sequences: usize,
    /// Catalog objects present on one side only: (kind, description, side it is on).
    pub object_mismatches: Vec<(String, String, &'static str)>,
    /// Catalog objects compared, by kind.
    pub objects: Vec<(String, usize)>,
}

impl Verification {
    /// Everything equal.
    pub fn ok(&self) -> bool {
        self.tables.iter().all(|t| t.equal)
            && self.sequence_mismatches.is_empty()
            && self.object_mismatches.is_empty()
    }

    /// Human-readable summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let equal = self.tables.iter().filter(|t| t.equal).count();
        let _ = writeln!(
            out,
            "verification: {equal}/{} tables identical (row count and checksum)",
            self.tables.len()
        );
        for t in self.tables.iter().filter(|t| !t.equal) {
            let _ = writeln!(
                out,
                "  DIFFERENT {}: source {} rows, target {} rows",
                t.name, t.source_rows, t.target_rows
            );
        }
        let _ = writeln!(
            out,
            "  sequences: {}/{} equal",
            self.sequences - self.sequence_mismatches.len(),
            self.sequences
        );
        for (n, s, t) in &self.sequence_mismatches {
            let _ = writeln!(out, "  DIFFERENT sequence {n}: source {s:?}, target {t:?}");
        }
        let kinds: Vec<String> = self
            .objects
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let _ = writeln!(out, "  schema objects compared: {}", kinds.join(", "));
        for (k, d, side) in &self.object_mismatches {
            let _ = writeln!(out, "  ONLY ON {side}: {k} {d}");
        }
        let _ = writeln!(
            out,
            "verification {}",
            if self.ok() { "passed" } else { "FAILED" }
        );
        out
    }
}

const OBJECT_QUERIES: &[(&str, &str)] = &[
    (
        "tables",
        "SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND n.nspname = ANY($1)",
    ),
    (
        "views",
        "SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || pg_get_viewdef(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v','m') AND n.nspname = ANY($1)",
    ),
    (
        "indexes",
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1)",
    ),
    (
        "constraints",
        "SELECT n.nspname || '.' || c.relname || '.' || con.conname || ' ' || pg_get_constraintdef(con.oid) FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1) AND con.contype <> 'n'",
    ),
    // NOT NULL as a column property: PostgreSQL 18 also catalogs it as a constraint (`contype =
    // 'n'`, named `<table>_<column>_not_null`), older versions only as `attnotnull`, so
    // comparing the constraints would report every NOT NULL column between 18 and an older
    // version.
    (
        "not-null columns",
        "SELECT n.nspname || '.' || c.relname || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull AND c.relkind IN ('r','p') AND n.nspname = ANY($1)",
    ),
    (
        "functions",
        "SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY($1)",
    ),
    (
        "triggers",
        "SELECT n.nspname || '.' || c.relname || '.' || t.tgname || ':' || t.tgenabled::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND n.nspname = ANY($1)",
    ),
    (
        "types",
        "SELECT n.nspname || '.' || t.typname || ':' || t.typtype::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = ANY($1) AND t.typtype IN ('e','d','c','r') AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')",
    ),
    (
        "populated materialized views",
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'm' AND c.relispopulated AND n.nspname = ANY($1)",
    ),
];

async fn set_of(client: &Client, sql: &str, schemas: &[String]) -> Result<BTreeSet<String>> {
    let rows = client
        .query(sql, &[&schemas])
        .await
        .map_err(|e| classify(e, "reading the catalog for verification"))?;
    Ok(rows.into_iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Compare every table, sequence and schema object of `schemas`.
pub async fn verify(
    source: &ConnUrl,
    target: &ConnUrl,
    schemas: &[String],
) -> Result<Verification> {
    let src = connect(source, Side::Source).await?;
    let dst = connect(target, Side::Target).await?;
    for c in [&src, &dst] {
        pin_output_settings(c).await?;
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| classify(e, "starting the verification transaction"))?;
    }
    let mut v = Verification::default();
    let tables = src
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                    ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname = ANY($1) ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .map_err(|e| classify(e, "listing source tables"))?;
    for r in tables {
        let name = QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1));
        let cols: Vec<String> = r.get(2);
        let s = fingerprint(&src, &name, &cols).await?;
        let t = fingerprint(&dst, &name, &cols).await;
        let (target_rows, equal) = match t {
            Ok(t) => (t.rows, t == s),
            Err(_) => (-1, false),
        };
        v.tables.push(TableCheck {
            name,
            source_rows: s.rows,
            target_rows,
            equal,
        });
    }
    let seqs = src
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'S' AND n.nspname = ANY($1) ORDER BY 1",
            &[&schemas],
        )
        .await
        .map_err(|e| classify(e, "listing source sequences"))?;
    for r in seqs {
        let name: String = r.get(0);
        let sql = format!("SELECT CASE WHEN is_called THEN last_value END FROM {name}");
        let s: Option<i64> = src
            .query_one(&sql, &[])
            .await
            .map_err(|e| classify(e, "reading a sequence"))?
            .get(0);
        let t: Option<i64> = match dst.query_one(&sql, &[]).await {
            Ok(row) => row.get(0),
            Err(_) => Some(i64::MIN),
        };
        v.sequences += 1;
        if s != t {
            v.sequence_mismatches.push((name, s, t));
        }
    }
    for (kind, sql) in OBJECT_QUERIES {
        let a = set_of(&src, sql, schemas).await?;
        let b = set_of(&dst, sql, schemas).await?;
        v.objects.push((kind.to_string(), a.len()));
        for d in a.difference(&b) {
            v.object_mismatches
                .push((kind.to_string(), d.clone(), "source"));
        }
        for d in b.difference(&a) {
            v.object_mismatches
                .push((kind.to_string(), d.clone(), "target"));
        }
    }
    Ok(v)
}
