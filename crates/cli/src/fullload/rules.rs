//! The task's transformation rules on a PostgreSQL target created by the load
//! (`drop-and-create`).
//!
//! # Why renames come last
//!
//! The schema is created from `pg_dump`'s archive, whose post-data part (indexes, constraints,
//! triggers, foreign keys) is SQL text that names tables and columns by their *source* names.
//! Renaming before that text runs would break it, and rewriting SQL text is how migration
//! tools corrupt schemas. So the target is built with source names, loaded, finished, and
//! then one transaction renames columns, renames tables and moves tables to their target
//! schemas (owned sequences, indexes and constraints follow a table; views keep pointing at it
//! by OID). That transaction commits together with its state row, so a crash leaves either
//! the source names or the final ones, and a resumed run knows which.
//!
//! Removed and retyped columns are the exception: data must never be written into a column
//! the operator removed, and values must arrive in the new type. A retyped column is altered
//! right after its CREATE TABLE (before views and partition attachments refer to it); removed
//! columns are dropped on the root tables at the end of the pre-data script, when the comments,
//! defaults, owned sequences and identities that name them exist and can go with them. Objects
//! that use a removed column (an index on it, a view that reads it, a foreign key that
//! references it) cannot exist on the target: they are left out with a warning each, found
//! through the source's `pg_depend`, not by reading SQL.

use super::*;
use pgtide_core::ident::display_ident;

/// What the rules do to a target built by this load.
#[derive(Debug, Default)]
pub(super) struct RuleDdl {
    /// Archive entries left out because they use a removed column: (catalog OID, object OID).
    pub(super) skip: HashSet<(u32, u32)>,
    /// Type changes, run right after each table's CREATE TABLE in the pre-data script, before
    /// views and partition attachments see it: (label, SQL) by table.
    pub(super) reshape: HashMap<QualifiedName, Vec<(String, String)>>,
    /// Removed columns, dropped after the pre-data script (same transaction): (label, SQL).
    pub(super) drops: Vec<(String, String)>,
    /// Run at the very end: (label, SQL).
    pub(super) renames: Vec<(String, String)>,
    /// Objects left out, for the report.
    pub(super) warnings: Vec<String>,
}

/// Work out the DDL for `plan`'s rules, reading dependencies from the source (in the load's
/// snapshot); views that read a removed column are taken out of the dump.
pub(super) async fn rule_ddl(
    source: &Client,
    schema: &Schema,
    plan: &mut LoadPlan,
) -> Result<RuleDdl> {
    let mut out = RuleDdl::default();
    let by_oid: HashMap<u32, &pgtide_core::schema::Table> =
        schema.tables.iter().map(|t| (t.oid, t)).collect();
    let (mut rels, mut cols) = (Vec::<u32>::new(), Vec::<String>::new());
    for (oid, m) in &plan.mappings {
        for c in &m.removed {
            rels.push(*oid);
            cols.push(c.clone());
        }
    }
    if !rels.is_empty() {
        let rows = source
            .query(
                "SELECT DISTINCT CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 'pg_class'::regclass::oid ELSE d.classid END, \
                        COALESCE(r.ev_class, d.objid), \
                        pg_describe_object(d.classid, d.objid, 0), w.rel, w.col \
                 FROM unnest($1::oid[], $2::text[]) AS w(rel, col) \
                 JOIN pg_attribute a ON a.attrelid = w.rel AND a.attname = w.col \
                 JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum \
                 LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid \
                 WHERE d.deptype IN ('n', 'a') AND NOT (d.classid = 'pg_class'::regclass AND d.objid = w.rel)",
                &[&rels, &cols],
            )
            .await
            .map_err(|e| classify(e, "finding what uses the removed columns on the source"))?;
        let mut views: HashSet<u32> = HashSet::new();
        for r in rows {
            let (catalog, oid, what, rel, col): (u32, u32, String, u32, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let table = by_oid
                .get(&rel)
                .map(|t| t.name.to_string())
                .unwrap_or_default();
            if let Some(v) = schema.views.iter().find(|v| v.oid == oid) {
                views.insert(v.oid);
                continue;
            }
            if out.skip.insert((catalog, oid)) {
                out.warnings.push(format!(
                    "{what} is not created on the target: it uses {table}.{}, which a rule removes",
                    display_ident(&col)
                ));
            }
        }
        // Views that read those views go too.
        loop {
            let before = views.len();
            for v in &schema.views {
                if !views.contains(&v.oid) && v.depends_on.iter().any(|d| views.contains(d)) {
                    views.insert(v.oid);
                }
            }
            if views.len() == before {
                break;
            }
        }
        for v in schema.views.iter().filter(|v| views.contains(&v.oid)) {
            out.warnings.push(format!(
                "{} {} is not created on the target: it reads a column that a rule removes",
                if v.materialized {
                    "materialized view"
                } else {
                    "view"
                },
                v.name
            ));
            plan.dump_filter
                .exclude_relations
                .push((v.name.schema.clone(), v.name.name.clone()));
            plan.materialized_views.retain(|n| n != &v.name);
        }
    }

    // Reshape and renames, on the tables this load creates. A partition takes its columns from
    // its partitioned table: column DDL runs on the root only and PostgreSQL recurses.
    let mut oids: Vec<u32> = plan.mappings.keys().copied().collect();
    oids.sort_unstable();
    // Renames go through temporary names (`a` -> `a_v2` while `a_v2` -> `a_v2_v2`, or two
    // tables swapping schemas, must not collide halfway): columns of each table first, then
    // tables, moved to their schema under the temporary name and given the final name there.
    let mut columns_out = Vec::new();
    let mut columns_in = Vec::new();
    let mut tables_out = Vec::new();
    let mut tables_move = Vec::new();
    let mut tables_in = Vec::new();
    let mut new_schemas: Vec<String> = Vec::new();
    for oid in oids {
        let (Some(t), Some(m)) = (by_oid.get(&oid), plan.mappings.get(&oid)) else {
            continue;
        };
        // Types change right after CREATE TABLE: pg_dump creates partitions as tables of
        // their own and attaches them later, so each gets the same change as its root before
        // the attachment checks they match, and views are created on the new type.
        for c in m.columns.iter().filter(|c| c.target_type.is_some()) {
            let ty = c.target_type.as_deref().expect("filtered");
            out.reshape.entry(t.name.clone()).or_default().push((
                format!(
                    "changing the type of {}.{} to {ty}",
                    t.name,
                    display_ident(&c.source)
                ),
                format!(
                    "ALTER TABLE {} ALTER COLUMN {c} TYPE {ty} USING {c}::{ty}",
                    t.name.quoted(),
                    c = quote_ident(&c.source)
                ),
            ));
        }
        // Drops and renames run on the root and PostgreSQL recurses to attached partitions.
        let root_level = t
            .partition_of
            .is_none_or(|p| !plan.mappings.contains_key(&p));
        if root_level {
            // Removed columns go after the whole pre-data script, when comments, defaults,
            // owned sequences and identities that name them exist (they go with the column).
            for c in &m.removed {
                out.drops.push((
                    format!("removing column {}.{}", t.name, display_ident(c)),
                    format!(
                        "ALTER TABLE {} DROP COLUMN {}",
                        t.name.quoted(),
                        quote_ident(c)
                    ),
                ));
            }
            for (i, c) in m
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.source != c.target)
            {
                let tmp = format!("pgtide_rename_{i}");
                columns_out.push((
                    format!("renaming column {}.{}", t.name, display_ident(&c.source)),
                    format!(
                        "ALTER TABLE {} RENAME COLUMN {} TO {}",
                        t.name.quoted(),
                        quote_ident(&c.source),
                        quote_ident(&tmp)
                    ),
                ));
                columns_in.push((
                    format!(
                        "renaming column {}.{} to {}",
                        t.name,
                        display_ident(&c.source),
                        display_ident(&c.target)
                    ),
                    format!(
                        "ALTER TABLE {} RENAME COLUMN {} TO {}",
                        t.name.quoted(),
                        quote_ident(&tmp),
                        quote_ident(&c.target)
                    ),
                ));
            }
        }
        if m.target != t.name {
            let tmp = format!("pgtide_rename_{oid}");
            tables_out.push((
                format!("renaming {}", t.name),
                format!(
                    "ALTER TABLE {} RENAME TO {}",
                    t.name.quoted(),
                    quote_ident(&tmp)
                ),
            ));
            if m.target.schema != t.name.schema {
                if !new_schemas.contains(&m.target.schema) {
                    new_schemas.push(m.target.schema.clone());
                }
                tables_move.push((
                    format!(
                        "moving {} to schema {}",
                        t.name,
                        display_ident(&m.target.schema)
                    ),
                    format!(
                        "ALTER TABLE {} SET SCHEMA {}",
                        QualifiedName::new(t.name.schema.clone(), tmp.clone()).quoted(),
                        quote_ident(&m.target.schema)
                    ),
                ));
            }
            tables_in.push((
                format!("renaming {} to {}", t.name, m.target),
                format!(
                    "ALTER TABLE {} RENAME TO {}",
                    QualifiedName::new(m.target.schema.clone(), tmp).quoted(),
                    quote_ident(&m.target.name)
                ),
            ));
        }
    }
    out.renames.extend(columns_out);
    out.renames.extend(columns_in);
    for s in new_schemas {
        out.renames.push((
            format!("creating schema {}", display_ident(&s)),
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&s)),
        ));
    }
    out.renames.extend(tables_out);
    out.renames.extend(tables_move);
    out.renames.extend(tables_in);
    Ok(out)
}

/// Run labelled statements on `target` inside the caller's transaction.
pub(super) async fn run_labelled(target: &Client, steps: &[(String, String)]) -> Result<()> {
    for (label, sql) in steps {
        target.batch_execute(sql).await.map_err(|e| {
            classify(e, &format!("{label} on the target")).with_hint(
                "a name the rules produce may already exist on the target, or an object there depends on the column; fix the rule or the target, then re-run",
            )
        })?;
    }
    Ok(())
}

/// The final renames, in one transaction with their state row.
pub(super) async fn rename_step(target: &Client, task: &Task, ddl: &RuleDdl) -> Result<()> {
    if ddl.renames.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    in_transaction(target, "renaming to the target names", async {
        run_labelled(target, &ddl.renames).await?;
        state::step_done(
            target,
            &task.name,
            "rules-rename",
            started.elapsed().as_secs_f64(),
        )
        .await
    })
    .await
}
