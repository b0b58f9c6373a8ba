//! The task's rules checked against the source before anything moves, and turned into what
//! change data capture needs: publication column lists and row filters, and the routes that
//! rename tables and columns in front of the applier.
//!
//! # Row conditions
//!
//! A condition is SQL, so the source's own parser is its judge. Each one is compiled into a
//! temporary view (`SELECT 1 FROM ONLY t WHERE (cond)`) in a transaction that is rolled back:
//! a syntax error, a missing column or a non-boolean expression fails there, and the view's
//! dependencies in `pg_depend` tell exactly which columns the condition reads. In CDC modes it
//! is also compiled as a publication row filter (PostgreSQL 15+), which refuses what a row
//! filter may not use (user-defined or volatile functions, subqueries, system columns).
//!
//! # Why the replica identity matters
//!
//! PostgreSQL evaluates a row filter on the *old* row for UPDATE and DELETE, and the old row
//! holds only the replica identity's columns. A filter that reads another column makes
//! PostgreSQL **refuse the source application's UPDATE and DELETE** on that table. The same
//! goes for a publication column list that leaves out an identity column. pgtide refuses to
//! start in those cases and names the fix, rather than breaking the source.
//!
//! With the filter in place, PostgreSQL gives the row-filter semantics the task needs: an
//! update that makes a row match arrives as an INSERT, one that makes it stop matching as a
//! DELETE, so the target holds exactly the matching rows, as after the full load's filtered
//! COPY.

use crate::plan::LoadPlan;
use pgtide_core::ident::{QualifiedName, display_ident};
use pgtide_core::schema::Schema;
use pgtide_core::task::{Mode, TablesWithoutKey, Task};
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::changes::{Route, Routes};
use pgtide_postgres::connect::classify;
use pgtide_postgres::slot::PublishedTable;
use std::collections::HashMap;
use tokio_postgres::Client;

/// What a table's publication entry looks like.
#[derive(Debug, Clone, Default)]
pub struct CdcShape {
    /// Publication column list (None: every column).
    pub columns: Option<Vec<String>>,
    /// Publication row filter.
    pub filter: Option<String>,
}

async fn rollback(source: &Client) {
    let _ = source.batch_execute("ROLLBACK").await;
}

/// Check every rule that needs the source's judgement; returns the CDC shape per table OID
/// (empty for full-load tasks) and warnings.
pub async fn check(
    source: &Client,
    task: &Task,
    schema: &Schema,
    plan: &LoadPlan,
) -> Result<(HashMap<u32, CdcShape>, Vec<String>)> {
    let cdc = task.mode != Mode::FullLoad;
    let mut shapes = HashMap::new();
    let mut warnings = Vec::new();
    for t in &plan.tables {
        let Some(m) = plan.mappings.get(&t.oid) else {
            continue;
        };
        let Some(src) = schema.table(t.oid) else {
            continue;
        };
        if m.condition.is_none() && m.removed.is_empty() && m.row_identifier_key.is_none() {
            continue;
        }
        let mut shape = CdcShape::default();
        let mut used_columns: Vec<String> = Vec::new();
        if let Some((cond, origin)) = &m.condition {
            let at = |e: Error| {
                let msg = format!(
                    "{origin}: the condition for {} is not accepted by the source: {}",
                    t.source,
                    e.message()
                );
                Error::config(msg).with_hint(
                    "write an SQL boolean expression over the table's own columns (as in WHERE); in CDC tasks it may use only built-in immutable functions and operators",
                )
            };
            source
                .batch_execute("BEGIN")
                .await
                .map_err(|e| classify(e, "checking row conditions on the source"))?;
            let view = format!(
                "CREATE TEMP VIEW pgtide_condition_check AS SELECT 1 FROM ONLY {} WHERE ({cond})",
                t.source.quoted()
            );
            // One statement through the extended protocol: anything that would end the
            // statement early is a syntax error here, never a second command.
            if let Err(e) = source.execute(view.as_str(), &[]).await {
                rollback(source).await;
                return Err(at(classify(e, "compiling the condition")));
            }
            let rows = source
                .query(
                    "SELECT DISTINCT a.attname::text FROM pg_depend d \
                     JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                     JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                     WHERE r.ev_class = 'pg_temp.pgtide_condition_check'::regclass AND d.refobjid = $1 AND d.refobjsubid > 0",
                    &[&t.oid],
                )
                .await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    rollback(source).await;
                    return Err(classify(e, "reading the columns a condition uses"));
                }
            };
            used_columns = rows.iter().map(|r| r.get(0)).collect();
            if cdc {
                if schema.server_version < 150000 {
                    rollback(source).await;
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "{origin}: a row condition in change data capture needs publication row filters, which the source (PostgreSQL {}) does not have (15+)",
                            schema.server_version / 10000
                        ),
                    )
                    .with_hint("run mode full-load (conditions work on every version), or upgrade the source to PostgreSQL 15+"));
                }
                let publication = format!(
                    "CREATE PUBLICATION pgtide_condition_check FOR TABLE ONLY {} WHERE ({cond})",
                    t.source.quoted()
                );
                if let Err(e) = source.execute(publication.as_str(), &[]).await {
                    rollback(source).await;
                    return Err(at(classify(e, "compiling the condition as a row filter")));
                }
            }
            rollback(source).await;
            shape.filter = Some(cond.clone());
        }
        if !cdc {
            continue;
        }
        // What identifies a row in the WAL.
        let row = source
            .query_one(
                "SELECT c.relreplident::text, ARRAY(SELECT a.attname::text FROM pg_index i \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                   WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END) \
                 FROM pg_class c WHERE c.oid = $1",
                &[&t.oid],
            )
            .await
            .map_err(|e| classify(e, &format!("reading the replica identity of {}", t.source)))?;
        let (ident, ident_cols): (String, Vec<String>) = (row.get(0), row.get(1));
        let keyless = ident != "f" && ident_cols.is_empty();
        let full = ident == "f"
            || (keyless && task.cdc.tables_without_key == TablesWithoutKey::ReplicaIdentityFull);
        let insert_only = keyless && task.cdc.tables_without_key == TablesWithoutKey::InsertOnly;
        if let Some((_, origin)) = &m.condition
            && !full
            && !insert_only
        {
            let outside: Vec<String> = used_columns
                .iter()
                .filter(|c| !ident_cols.contains(c))
                .map(|c| display_ident(c))
                .collect();
            if !outside.is_empty() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{origin}: the condition for {} reads {}, which {} not part of the table's replica identity; PostgreSQL would then refuse UPDATE and DELETE on that table on the source",
                        t.source,
                        outside.join(", "),
                        if outside.len() == 1 { "is" } else { "are" }
                    ),
                )
                .with_hint(format!(
                    "run ALTER TABLE {} REPLICA IDENTITY FULL on the source (updates then carry the whole old row), or write the condition on the key columns ({})",
                    t.source,
                    ident_cols.join(", ")
                )));
            }
        }
        if !m.removed.is_empty() {
            let kept: Vec<String> = t.columns.clone();
            if full && !insert_only {
                warnings.push(format!(
                    "{}: the removed columns ({}) still leave the source in the change stream (with REPLICA IDENTITY FULL a publication column list must name every column); pgtide drops them before writing",
                    t.source,
                    m.removed.iter().map(|c| display_ident(c)).collect::<Vec<_>>().join(", ")
                ));
            } else if schema.server_version < 150000 {
                warnings.push(format!(
                    "{}: the removed columns still leave the source in the change stream (publication column lists need PostgreSQL 15+); pgtide drops them before writing",
                    t.source
                ));
            } else {
                if !insert_only && let Some(c) = ident_cols.iter().find(|c| m.removed.contains(c)) {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "a rule removes {}.{}, which is part of the table's replica identity: change data capture needs it to find rows",
                            t.source,
                            display_ident(c)
                        ),
                    )
                    .with_hint("keep the column (rename it if needed), or replicate the table with REPLICA IDENTITY FULL and a row_identifier_key"));
                }
                // Generated columns are never published; the list names stored columns only.
                shape.columns = Some(kept);
            }
        }
        if let Some((key, origin)) = &m.row_identifier_key
            && !full
            && !key.iter().all(|k| ident_cols.contains(k))
        {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{origin}: row_identifier_key of {} needs the source to send those columns of the old row, but its replica identity is {}",
                    t.source,
                    if ident_cols.is_empty() {
                        "empty".to_string()
                    } else {
                        format!("({})", ident_cols.join(", "))
                    }
                ),
            )
            .with_hint(format!(
                "run ALTER TABLE {} REPLICA IDENTITY FULL on the source, or set cdc.tables_without_key: replica-identity-full",
                t.source
            )));
        }
        if src.primary_key.is_none() && m.row_identifier_key.is_some() {
            warnings.push(format!(
                "{}: updates and deletes find rows on the target by row_identifier_key; give the target table an index on those columns for speed",
                t.source
            ));
        }
        shapes.insert(t.oid, shape);
    }
    Ok((shapes, warnings))
}

/// Publication entries for `names` (source tables by OID).
pub fn published(
    tables: &[(u32, QualifiedName)],
    shapes: &HashMap<u32, CdcShape>,
) -> Vec<PublishedTable> {
    tables
        .iter()
        .map(|(oid, name)| {
            let s = shapes.get(oid).cloned().unwrap_or_default();
            PublishedTable {
                name: name.clone(),
                columns: s.columns,
                filter: s.filter,
            }
        })
        .collect()
}

/// Routes for the stream: every planned table whose name, columns or key change.
pub fn routes(plan: &LoadPlan) -> Routes {
    let mut out = Routes::new();
    for t in &plan.tables {
        let Some(m) = plan.mappings.get(&t.oid) else {
            continue;
        };
        let changes =
            m.renames(&t.source) || !m.removed.is_empty() || m.row_identifier_key.is_some();
        if !changes {
            continue;
        }
        out.insert(
            (t.source.schema.clone(), t.source.name.clone()),
            Route {
                schema: m.target.schema.clone(),
                name: m.target.name.clone(),
                columns: m
                    .columns
                    .iter()
                    .filter(|c| c.source != c.target)
                    .map(|c| (c.source.clone(), c.target.clone()))
                    .collect(),
                removed: m.removed.clone(),
                key: m.row_identifier_key.as_ref().map(|(k, _)| {
                    k.iter()
                        .map(|c| m.target_column(c).unwrap_or(c).to_string())
                        .collect()
                }),
            },
        );
    }
    out
}

/// Primary keys by final target name, in target column names (for `REPLICA IDENTITY FULL`
/// tables that have one).
pub fn target_keys(schema: &Schema, plan: &LoadPlan) -> HashMap<QualifiedName, Vec<String>> {
    schema
        .tables
        .iter()
        .filter_map(|t| {
            let pk = t.primary_key.as_ref()?;
            match plan.mappings.get(&t.oid) {
                Some(m) => {
                    let cols: Option<Vec<String>> = pk
                        .columns
                        .iter()
                        .map(|c| m.target_column(c).map(str::to_string))
                        .collect();
                    Some((m.target.clone(), cols?))
                }
                None => Some((t.name.clone(), pk.columns.clone())),
            }
        })
        .collect()
}
