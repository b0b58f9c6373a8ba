//! Checks of the target for `truncate` and `do-nothing`, which keep existing tables, and the
//! truncate itself. Everything here runs before the first write, except [`truncate_targets`].

use super::*;

pub(super) async fn can_set_replica_role(target: &Client) -> Result<bool> {
    match target
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica; ROLLBACK")
        .await
    {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            if e.code().map(|c| c.code() == "42501").unwrap_or(false) {
                Ok(false)
            } else {
                Err(classify(
                    e,
                    "checking session_replication_role on the target",
                ))
            }
        }
    }
}

/// truncate / do-nothing: the target tables must exist with every copied column; a column
/// whose type differs switches the table to text COPY; do-nothing also wants them empty.
pub(super) async fn check_existing_targets(
    target: &Client,
    schema: &Schema,
    plan: &mut LoadPlan,
    prep: TablePreparation,
    resume: bool,
) -> Result<()> {
    let schemas: Vec<String> = plan
        .tables
        .iter()
        .map(|t| t.target.schema.clone())
        .collect();
    let names: Vec<String> = plan.tables.iter().map(|t| t.target.name.clone()).collect();
    let rows = target
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '' \
             FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t AND c.relkind IN ('r', 'p') \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| classify(e, "reading the target tables"))?;
    let mut cols: HashMap<(String, String), HashMap<String, (String, bool)>> = HashMap::new();
    for r in rows {
        cols.entry((r.get(0), r.get(1)))
            .or_default()
            .insert(r.get(2), (r.get(3), r.get(4)));
    }
    let mut missing_tables = Vec::new();
    let mut problems = Vec::new();
    for t in plan.tables.iter_mut() {
        let Some(tc) = cols.get(&(t.target.schema.clone(), t.target.name.clone())) else {
            missing_tables.push(t.target.to_string());
            continue;
        };
        let src_columns = schema.table(t.oid).map(|x| &x.columns).or_else(|| {
            schema
                .views
                .iter()
                .find(|v| v.oid == t.oid)
                .map(|v| &v.columns)
        });
        for (sc, c) in t.columns.iter().zip(&t.target_columns) {
            match tc.get(c) {
                None => problems.push(format!(
                    "{} has no column {}",
                    t.target,
                    pgtide_core::ident::display_ident(c)
                )),
                Some((_, true)) => problems.push(format!(
                    "{}.{} is a generated column on the target",
                    t.target, c
                )),
                Some((ty, false)) => {
                    let src_ty = src_columns
                        .and_then(|cols| cols.iter().find(|x| &x.name == sc))
                        .map(|x| x.type_name.as_str())
                        .unwrap_or("");
                    if ty != src_ty && t.format == WireFormat::Binary {
                        t.format = WireFormat::Text;
                        t.text_reason = Some(format!(
                            "column {c} is {src_ty} on the source and {ty} on the target"
                        ));
                    }
                }
            }
        }
    }
    if !missing_tables.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "table_preparation: {} needs the target tables to exist; missing: {}",
                prep.as_str(),
                summarize(&missing_tables)
            ),
        )
        .with_hint("create them first, or use table_preparation: drop-and-create"));
    }
    if !problems.is_empty() {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "the target tables do not match the source: {}",
                summarize(&problems)
            ),
        )
        .with_hint(
            "align the target columns with the source, or use table_preparation: drop-and-create",
        ));
    }
    if !resume {
        let mut non_empty = Vec::new();
        for t in plan
            .tables
            .iter()
            .filter(|t| t.preparation == TablePreparation::DoNothing)
        {
            let has: bool = target
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 FROM ONLY {})", t.target.quoted()),
                    &[],
                )
                .await
                .map_err(|e| classify(e, &format!("checking whether {} is empty", t.target)))?
                .get(0);
            if has {
                non_empty.push(t.target.to_string());
            }
        }
        if !non_empty.is_empty() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "table_preparation: do-nothing keeps target rows, and these target tables already hold rows that the load would mix with (or collide with on a key): {}",
                    summarize(&non_empty)
                ),
            )
            .with_hint("empty them, use table_preparation: truncate, or exclude them from the task"));
        }
    }
    Ok(())
}

pub(super) fn summarize(items: &[String]) -> String {
    if items.len() <= 8 {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..8].join(", "), items.len() - 8)
    }
}

pub(super) async fn refuse_if_triggers_would_fire(target: &Client, plan: &LoadPlan) -> Result<()> {
    let schemas: Vec<String> = plan
        .tables
        .iter()
        .map(|t| t.target.schema.clone())
        .collect();
    let names: Vec<String> = plan.tables.iter().map(|t| t.target.name.clone()).collect();
    let rows = target
        .query(
            "SELECT DISTINCT n.nspname::text, c.relname::text FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t \
             JOIN pg_trigger tg ON tg.tgrelid = c.oid AND tg.tgenabled <> 'D'",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| classify(e, "reading target triggers"))?;
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = rows
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).to_string())
        .collect();
    Err(Error::new(
        ErrorKind::Prerequisite,
        format!(
            "these target tables have triggers or foreign keys that would fire during the load, and the target user may not set session_replication_role to turn them off: {}",
            summarize(&names)
        ),
    )
    .with_hint("connect as a superuser, or GRANT SET ON PARAMETER session_replication_role TO the user (PostgreSQL 15+), or disable those triggers"))
}

pub(super) async fn truncate_targets(target: &Client, task: &Task, plan: &LoadPlan) -> Result<()> {
    let started = Instant::now();
    let list: Vec<String> = plan
        .tables
        .iter()
        .filter(|t| t.preparation == TablePreparation::Truncate)
        .map(|t| t.target.quoted())
        .collect();
    if list.is_empty() {
        return state::step_done(target, &task.name, "truncate", 0.0).await;
    }
    in_transaction(target, "emptying the target tables", async {
        target
            .batch_execute(&format!("TRUNCATE ONLY {}", list.join(", ")))
            .await
            .map_err(|e| {
                classify(e, "emptying the target tables (table_preparation: truncate)")
                    .with_hint("a table outside the task references one of them; include it in the task, or use drop-and-create")
            })?;
        state::step_done(target, &task.name, "truncate", started.elapsed().as_secs_f64()).await
    })
    .await
}
