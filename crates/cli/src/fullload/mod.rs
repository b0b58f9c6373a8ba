//! The full load, from a consistent snapshot, resumable after any crash.
//!
//! # Phases
//!
//! ```text
//!  check    connect both ends, lock the task, export the snapshot, introspect, plan,
//!           lock the source tables (ACCESS SHARE, in the snapshot's transaction, until the
//!           end: a concurrent TRUNCATE or ALTER waits instead of emptying the snapshot's view),
//!           dump the schema, check the target for the preparation mode
//!           ── nothing has been written anywhere up to here ──
//!  prepare  record the plan; drop-and-create: pre-data schema (+ primary keys) in one
//!           transaction; truncate: TRUNCATE the tables in one transaction
//!  copy     N workers: chunks largest-first; each chunk's COPY and its "done" row commit together;
//!           a table's indexes and constraints start as soon as its last chunk commits
//!  finish   foreign keys when both sides are built, the rest of post-data (triggers, rules,
//!           comments, index attachment) in one transaction, sequences, materialized views
//! ```
//!
//! # Resuming
//!
//! Every step commits together with the state row that records it (see
//! `pgtide_postgres::state`). A re-run of an unfinished task with the same configuration reads
//! the recorded plan and does only what did not commit: chunks whose transaction was cut off
//! are copied again (their partial rows were rolled back with them), DDL that did not commit is
//! run again. The resumed chunks are read from a *new* snapshot: the target then holds rows from
//! two instants of the source (see the README's "Consistency after a resume").
//!
//! # Guards in the copy of one chunk
//!
//! - the chunk is already recorded as done → it is not in the queue;
//! - the single chunk of a table under drop-and-create → `TRUNCATE` + `COPY ... FREEZE` in one
//!   transaction (frozen rows need no later vacuum, and the truncate makes a redo idempotent);
//! - any error → the target transaction is rolled back and the worker's connections are
//!   replaced (the source one re-imports the snapshot); retryable errors are retried with
//!   backoff, others end the run after the in-flight chunks are abandoned.

mod finish;
mod jobs;
mod rules;
mod schema_jobs;
mod target_checks;
mod workers;

use finish::*;
use jobs::*;
use rules::*;
use schema_jobs::*;
use target_checks::*;
use workers::*;

use crate::plan::{self, ChunkRange, LoadPlan, PlannedTable, Split, SplitDecision};
use crate::progress::Progress;
use crate::report::{LoadReport, TableReport};
use crate::scheduler::{DdlWait, Job, Scheduler};
use pgtide_core::ident::{QualifiedName, quote_ident};
use pgtide_core::schema::{ConstraintKind, Schema, TableKind};
use pgtide_core::task::{PrimaryKeyTiming, TablePreparation, Task};
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::connect::{Side, classify, connect, with_retries};
use pgtide_postgres::copy_stream::{self, WireFormat};
use pgtide_postgres::introspect;
use pgtide_postgres::programs::find_pg_dump;
use pgtide_postgres::schema_copy::{SchemaArchive, Script, ScriptOptions, TocEntry};
use pgtide_postgres::snapshot::{ExportedSnapshot, begin_in_snapshot};
use pgtide_postgres::state::{self, ChunkRow, TablePlanRow, TableState};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Options from the command line and from the CDC orchestration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Discard the state of an unfinished earlier run and start over.
    pub restart: bool,
    /// Load from this exported snapshot (a replication slot's) instead of exporting one.
    pub snapshot: Option<String>,
    /// Phase recorded when the load is finished: `done`, or `cdc` when streaming follows.
    pub final_phase: Option<&'static str>,
    /// The caller already holds the task's lock on the target.
    pub lock_held: bool,
}

/// Run the full load of `task`.
pub async fn run(task: &Task, options: &RunOptions, progress: Arc<Progress>) -> Result<LoadReport> {
    let started = Instant::now();
    let mut phases: Vec<(String, Duration)> = Vec::new();
    progress.set_phase("check");
    let phase_start = Instant::now();

    // ---- check: read-only on both ends --------------------------------------------------
    let source = connect(&task.source.url, Side::Source).await?;
    let target = connect(&task.target.url, Side::Target).await?;
    let source_version = introspect::server_version(&source).await?;
    let target_version = introspect::server_version(&target).await?;
    tracing::info!(source = %task.source.url, source_version, target = %task.target.url, target_version, "connected");
    drop(source);
    if !options.lock_held {
        state::lock_task(&target, &task.name).await?;
    }

    let prep = task.full_load.table_preparation;
    let fingerprint = plan::task_fingerprint(task);
    let state_exists: bool = target
        .query_one("SELECT to_regclass('pgtide.task') IS NOT NULL", &[])
        .await
        .map_err(|e| classify(e, "looking for pgtide state on the target"))?
        .get(0);
    let previous = if state_exists {
        state::task_row(&target, &task.name).await?
    } else {
        None
    };
    let resume = match &previous {
        Some(p) if p.phase != "done" && !options.restart => {
            if p.fingerprint != fingerprint {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "task {:?} has an unfinished load on this target that was started with a different configuration \
                         (source, mode, table selection, preparation or copy format changed)",
                        task.name
                    ),
                )
                .with_hint("run with the original task file to finish it, or add --restart to discard that progress and start over"));
            }
            true
        }
        _ => false,
    };
    let done_steps = if resume {
        state::steps_done(&target, &task.name).await?
    } else {
        HashSet::new()
    };

    let snapshot = match &options.snapshot {
        Some(name) => ExportedSnapshot::import(&task.source.url, name).await?,
        None => ExportedSnapshot::export(&task.source.url).await?,
    };
    let schema = introspect::introspect(snapshot.client()).await?;
    let (mut plan, decisions) = plan::plan(&schema, task)?;
    if plan.tables.iter().any(|t| t.condition.is_some()) {
        // Row conditions are compiled by the source before anything is written (on a
        // connection of their own: the snapshot's transaction must stay open).
        let checker = connect(&task.source.url, Side::Source).await?;
        crate::rules_check::check(&checker, task, &schema, &plan).await?;
    }
    lock_source_tables(snapshot.client(), &schema, &plan).await?;
    fill_key_chunks(snapshot.client(), &mut plan, &decisions).await?;

    if resume {
        apply_recorded_plan(&target, task, &mut plan).await?;
    }

    // Target checks for modes that keep existing tables.
    let replica_role = can_set_replica_role(&target).await?;
    if prep != TablePreparation::DropAndCreate {
        check_existing_targets(&target, &schema, &mut plan, prep, resume).await?;
        if !replica_role {
            refuse_if_triggers_would_fire(&target, &plan).await?;
        }
    } else if !replica_role {
        tracing::info!(
            "the target user may not set session_replication_role; fine for drop-and-create (triggers and foreign keys are created after the load)"
        );
    }

    // What the rules do to tables this load creates (reads dependencies in the snapshot).
    let rule_ddl = if prep == TablePreparation::DropAndCreate && plan.has_renames() {
        rule_ddl(snapshot.client(), &schema, &mut plan).await?
    } else {
        RuleDdl::default()
    };
    plan.warnings.extend(rule_ddl.warnings.iter().cloned());

    // Schema archive and the DDL derived from it (PostgreSQL target, drop-and-create).
    let mut schema_work = None;
    if prep == TablePreparation::DropAndCreate {
        let bin = find_pg_dump(
            task.schema.pg_dump.as_deref(),
            source_version / 10000,
            target_version / 10000,
        )?;
        tracing::info!(pg_dump = %bin.program("pg_dump").display(), version = bin.major, "dumping the source schema");
        let archive =
            SchemaArchive::dump(&bin, &task.source.url, snapshot.name(), &plan.dump_filter).await?;
        schema_work =
            Some(prepare_schema_work(&schema, &plan, task, &archive, &rule_ddl.skip).await?);
    }
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    if let Some(sw) = &schema_work {
        for w in &sw.warnings {
            tracing::warn!("{w}");
        }
    }
    phases.push(("check".into(), phase_start.elapsed()));

    // ---- prepare: first writes -----------------------------------------------------------
    progress.set_phase("prepare");
    let phase_start = Instant::now();
    state::ensure_schema(&target).await?;
    if !resume {
        in_transaction(&target, "recording the load plan", async {
            state::start_task(
                &target,
                &task.name,
                &fingerprint,
                task.mode.as_str(),
                &task.source.url.redacted(),
            )
            .await?;
            state::record_plan(&target, &task.name, &plan_rows(&plan)).await
        })
        .await?;
    }
    match prep {
        TablePreparation::DropAndCreate => {
            let sw = schema_work
                .as_ref()
                .expect("schema work for drop-and-create");
            if !done_steps.contains("schema-pre") {
                create_schema(&target, task, &schema, &plan, sw, &rule_ddl).await?;
            }
        }
        TablePreparation::Truncate | TablePreparation::DoNothing => {
            if !done_steps.contains("truncate") {
                truncate_targets(&target, task, &plan).await?;
            }
        }
    }
    state::set_phase(&target, &task.name, "load").await?;
    phases.push(("prepare".into(), phase_start.elapsed()));

    // ---- copy and per-table DDL ------------------------------------------------------------
    progress.set_phase("copy");
    let phase_start = Instant::now();
    let recorded = state::read_plan(&target, &task.name).await?;
    let (copies, ddl, names) = build_jobs(
        &schema,
        &plan,
        &recorded,
        schema_work.as_ref(),
        &done_steps,
        prep,
        &progress,
    );
    let ddl_count = ddl.len();
    progress.set_ddl_total(ddl_count);
    let table_oids: Vec<u32> = names.keys().copied().collect();
    let scheduler = Scheduler::new(copies, ddl, &table_oids, done_steps.clone());
    for oid in scheduler.ready_now(&table_oids) {
        if let Some(n) = names.get(&oid) {
            state::set_table_state(&target, &task.name, &n.schema, &n.name, TableState::Ready)
                .await?;
        }
    }
    let mut target_setup = schema_work
        .as_ref()
        .map(|s| s.session_setup.clone())
        .unwrap_or_default();
    target_setup.push_str(&format!(
        "\nSET synchronous_commit = off; SET maintenance_work_mem = '{}kB';{}",
        task.full_load.index_memory / 1024,
        if replica_role {
            " SET session_replication_role = replica;"
        } else {
            ""
        }
    ));
    let shared = Arc::new(Shared {
        task: task.clone(),
        snapshot: snapshot.name().to_string(),
        target_setup,
        progress: progress.clone(),
        scheduler,
        names,
        cancel: Cancel::default(),
    });
    run_workers(shared.clone(), task.full_load.threads).await?;
    if shared.scheduler.stranded() > 0 {
        return Err(Error::internal(format!(
            "{} load jobs could never start (their prerequisites were not met)",
            shared.scheduler.stranded()
        )));
    }
    // "data": until the last row was in; the copy+indexes phase also holds index builds that
    // ran alongside the copy and after it.
    if let Some(last) = progress.last_chunk_at()
        && last > phase_start
    {
        phases.push(("data".into(), last - phase_start));
    }
    phases.push(("copy+indexes".into(), phase_start.elapsed()));

    // ---- finish ----------------------------------------------------------------------------
    progress.set_phase("finish");
    let phase_start = Instant::now();
    state::set_phase(&target, &task.name, "post-load").await?;
    let done_steps = state::steps_done(&target, &task.name).await?;
    let mut warnings = plan.warnings.clone();
    if let Some(sw) = &schema_work {
        warnings.extend(sw.warnings.iter().cloned());
        if !done_steps.contains("schema-post") {
            run_script_step(
                &target,
                task,
                "schema-post",
                &sw.post_script,
                "finishing the schema (post-data)",
            )
            .await?;
        }
    }
    let sequences = sync_sequences(
        snapshot.client(),
        &target,
        task,
        &plan,
        &done_steps,
        &mut warnings,
    )
    .await?;
    let matviews = refresh_matviews(&target, task, &plan, &done_steps).await?;
    if !done_steps.contains("rules-rename") {
        rename_step(&target, task, &rule_ddl).await?;
    }
    snapshot.release().await?;
    // This commit is synchronous: it makes every earlier asynchronous chunk commit durable too.
    state::set_phase(&target, &task.name, options.final_phase.unwrap_or("done")).await?;
    phases.push(("finish".into(), phase_start.elapsed()));

    let report = build_report(
        &target,
        task,
        &plan,
        &progress,
        phases,
        started.elapsed(),
        warnings,
        resume,
        ddl_count,
        sequences,
        matviews,
    )
    .await?;
    Ok(report)
}

/// Run `body` between BEGIN and COMMIT on `client`, rolling back on error.
async fn in_transaction<T>(
    client: &Client,
    what: &str,
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| classify(e, what))?;
    match body.await {
        Ok(v) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| classify(e, what))?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Lock every table the load reads (see [`pgtide_postgres::snapshot::lock_for_load`]).
async fn lock_source_tables(client: &Client, schema: &Schema, plan: &LoadPlan) -> Result<()> {
    let tables: Vec<(&QualifiedName, bool)> = plan
        .tables
        .iter()
        .filter(|t| !t.view)
        .map(|t| (&t.source, false))
        .chain(
            schema
                .tables
                .iter()
                .filter(|t| plan.selected.contains(&t.oid) && !t.has_storage())
                .map(|t| (&t.name, false)),
        )
        .collect();
    pgtide_postgres::snapshot::lock_for_load(client, &tables).await
}

async fn fill_key_chunks(
    client: &Client,
    plan: &mut LoadPlan,
    decisions: &HashMap<u32, SplitDecision>,
) -> Result<()> {
    for t in plan.tables.iter_mut() {
        if let Some(SplitDecision::Key(col, n)) = decisions.get(&t.oid) {
            let sql = format!(
                "SELECT min({c})::int8, max({c})::int8 FROM ONLY {}",
                t.source.quoted(),
                c = quote_ident(col)
            );
            let row = client
                .query_one(&sql, &[])
                .await
                .map_err(|e| classify(e, &format!("reading the key range of {}", t.source)))?;
            let (min, max): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
            t.chunks = match (min, max) {
                (Some(a), Some(b)) => plan::key_chunks(a, b, *n),
                _ => vec![ChunkRange {
                    start: None,
                    end: None,
                }],
            };
            if t.chunks.len() == 1 {
                t.split = Split::None;
            }
        }
    }
    Ok(())
}

fn plan_rows(plan: &LoadPlan) -> Vec<TablePlanRow> {
    plan.tables
        .iter()
        .map(|t| TablePlanRow {
            source_schema: t.source.schema.clone(),
            source_table: t.source.name.clone(),
            target_schema: t.target.schema.clone(),
            target_table: t.target.name.clone(),
            format: t.format.as_str().into(),
            split: t.split.encode(),
            state: TableState::Pending,
            chunks: t
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| ChunkRow {
                    chunk: i as i32,
                    range_start: c.start,
                    range_end: c.end,
                    done: false,
                })
                .collect(),
        })
        .collect()
}

/// On resume, chunk boundaries and formats come from the recorded plan, so that what is
/// recorded as done means the same rows as before.
async fn apply_recorded_plan(target: &Client, task: &Task, plan: &mut LoadPlan) -> Result<()> {
    let recorded = state::read_plan(target, &task.name).await?;
    let by_name: HashMap<(String, String), &TablePlanRow> = recorded
        .iter()
        .map(|r| ((r.source_schema.clone(), r.source_table.clone()), r))
        .collect();
    for t in plan.tables.iter_mut() {
        let Some(r) = by_name.get(&(t.source.schema.clone(), t.source.name.clone())) else {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{} is selected now but was not part of the interrupted load", t.source),
            )
            .with_hint("the source's tables changed since the interrupted run; re-run with --restart to start over"));
        };
        t.split = Split::decode(&r.split);
        t.format = if r.format == "text" {
            WireFormat::Text
        } else {
            WireFormat::Binary
        };
        t.chunks = r
            .chunks
            .iter()
            .map(|c| ChunkRange {
                start: c.range_start,
                end: c.range_end,
            })
            .collect();
    }
    if recorded.len() != plan.tables.len() {
        let now: HashSet<(String, String)> = plan
            .tables
            .iter()
            .map(|t| (t.source.schema.clone(), t.source.name.clone()))
            .collect();
        let gone: Vec<String> = recorded
            .iter()
            .filter(|r| !now.contains(&(r.source_schema.clone(), r.source_table.clone())))
            .map(|r| {
                QualifiedName::new(r.source_schema.clone(), r.source_table.clone()).to_string()
            })
            .collect();
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "tables of the interrupted load are gone from the source: {}",
                gone.join(", ")
            ),
        )
        .with_hint("re-run with --restart to start over"));
    }
    Ok(())
}
