//! The last steps: sequence values, materialized view refreshes, and the report.

use super::*;

pub(super) async fn sync_sequences(
    source: &Client,
    target: &Client,
    task: &Task,
    plan: &LoadPlan,
    done_steps: &HashSet<String>,
    warnings: &mut Vec<String>,
) -> Result<usize> {
    if done_steps.contains("sequences") || plan.sequences.is_empty() {
        return Ok(plan.sequences.len());
    }
    let started = Instant::now();
    // Sequence reads are not transactional: this is the current value, which is at least the
    // value at the snapshot. A target sequence may run ahead of the source, never behind.
    let mut values = Vec::new();
    for chunk in plan.sequences.chunks(200) {
        let sql: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| format!("SELECT {i}, last_value, is_called FROM {}", s.quoted()))
            .collect();
        let rows = source
            .query(&sql.join(" UNION ALL "), &[])
            .await
            .map_err(|e| classify(e, "reading sequence values on the source"))?;
        for r in rows {
            let i: i32 = r.get(0);
            values.push((
                chunk[i as usize].clone(),
                r.get::<_, i64>(1),
                r.get::<_, bool>(2),
            ));
        }
    }
    let mut set = 0;
    in_transaction(target, "setting sequences on the target", async {
        let stmt = target
            .prepare(
                "SELECT to_regclass($1) IS NOT NULL, setval(to_regclass($1), $2, $3) IS NOT NULL",
            )
            .await
            .map_err(|e| classify(e, "setting sequences on the target"))?;
        for (name, last, called) in &values {
            // Tables this load creates still have their source names here (renames come
            // last); existing target tables already live under their final names.
            let name = if task.full_load.table_preparation == TablePreparation::DropAndCreate {
                name
            } else {
                plan.sequence_targets.get(name).unwrap_or(name)
            };
            let row = target
                .query_one(&stmt, &[&name.quoted(), last, called])
                .await
                .map_err(|e| classify(e, &format!("setting sequence {name} on the target")))?;
            if row.get::<_, bool>(0) {
                set += 1;
            } else {
                warnings.push(format!(
                    "sequence {name} does not exist on the target and was not set"
                ));
            }
        }
        state::step_done(
            target,
            &task.name,
            "sequences",
            started.elapsed().as_secs_f64(),
        )
        .await
    })
    .await?;
    Ok(set)
}

pub(super) async fn refresh_matviews(
    target: &Client,
    task: &Task,
    plan: &LoadPlan,
    done_steps: &HashSet<String>,
) -> Result<usize> {
    let mut n = 0;
    for mv in &plan.materialized_views {
        let key = format!("refresh:{}", mv.quoted());
        if done_steps.contains(&key) {
            n += 1;
            continue;
        }
        let exists: bool = target
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&mv.quoted()])
            .await
            .map_err(|e| classify(e, "looking up a materialized view on the target"))?
            .get(0);
        if !exists {
            continue;
        }
        let started = Instant::now();
        in_transaction(target, "refreshing a materialized view", async {
            target
                .batch_execute(&format!("REFRESH MATERIALIZED VIEW {}", mv.quoted()))
                .await
                .map_err(|e| {
                    classify(
                        e,
                        &format!("refreshing materialized view {mv} on the target"),
                    )
                })?;
            state::step_done(target, &task.name, &key, started.elapsed().as_secs_f64()).await
        })
        .await?;
        n += 1;
    }
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn build_report(
    target: &Client,
    task: &Task,
    plan: &LoadPlan,
    progress: &Progress,
    phases: Vec<(String, Duration)>,
    elapsed: Duration,
    warnings: Vec<String>,
    resumed: bool,
    ddl_jobs: usize,
    sequences: usize,
    materialized_views: usize,
) -> Result<LoadReport> {
    let rows = target
        .query(
            "SELECT source_schema, source_table, rows, bytes, seconds FROM pgtide.load_table WHERE task = $1",
            &[&task.name],
        )
        .await
        .map_err(|e| classify(e, "reading load totals on the target"))?;
    let recorded: HashMap<(String, String), (i64, i64, f64)> = rows
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
        .collect();
    let live = progress.tables();
    let tables = plan
        .tables
        .iter()
        .map(|t| {
            let (rows, bytes, secs) = recorded
                .get(&(t.source.schema.clone(), t.source.name.clone()))
                .copied()
                .unwrap_or((0, 0, 0.0));
            let lp = live.get(&t.oid);
            let from_earlier_run = lp.map(|p| p.started.is_none()).unwrap_or(true);
            TableReport {
                name: t.source.to_string(),
                rows: rows as u64,
                bytes: bytes as u64,
                seconds: lp
                    .and_then(|p| p.copy_time)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(secs),
                format: t.format.as_str().into(),
                chunks: t.chunks.len(),
                from_earlier_run,
            }
        })
        .collect();
    Ok(LoadReport {
        task: task.name.clone(),
        tables,
        phases,
        elapsed,
        warnings,
        resumed,
        ddl_jobs,
        sequences,
        materialized_views,
    })
}
