//! The full load, from a consistent snapshot, resumable after any crash.
//!
//! # Phases
//!
//! ```text
//!  check    connect both ends, lock the task, export the snapshot, introspect, plan,
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

/// Options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Discard the state of an unfinished earlier run and start over.
    pub restart: bool,
}

/// Attempts for one chunk or DDL job when errors are retryable.
const JOB_ATTEMPTS: u32 = 5;

/// One chunk to copy.
#[derive(Debug, Clone)]
struct CopyJob {
    table: Arc<PlannedTable>,
    chunk: i32,
    range: ChunkRange,
    /// Truncate and copy with FREEZE in the same transaction: only for the single chunk of a
    /// table created by this load (under truncate, another table's foreign key may reference
    /// it, and TRUNCATE of one table would fail).
    freeze: bool,
}

/// One DDL job.
#[derive(Debug, Clone)]
struct DdlJob {
    /// State step key (`ddl:<oid>`, `analyze:<oid>`).
    key: String,
    table: u32,
    /// Runs once the table is built (foreign keys, ANALYZE); see [`Scheduler`].
    late: bool,
    /// For messages: `INDEX public.idx_title`.
    label: String,
    sql: String,
}

/// What the workers share.
struct Shared {
    task: Task,
    snapshot: String,
    /// Run on every target connection: pg_restore's session settings plus ours.
    target_setup: String,
    progress: Arc<Progress>,
    scheduler: Scheduler<CopyJob, DdlJob>,
    /// Every table DDL refers to (including partitioned roots), for names in state updates.
    names: HashMap<u32, QualifiedName>,
}

fn sql_copy_out(t: &PlannedTable, range: &ChunkRange) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
    let opt = t.format.copy_option();
    let bound = |col: &str, start: Option<i64>, end: Option<i64>, tid: bool| -> Vec<String> {
        let lit = |v: i64| {
            if tid {
                format!("'({v},0)'::tid")
            } else {
                v.to_string()
            }
        };
        let mut w = Vec::new();
        if let Some(s) = start {
            w.push(format!("{col} >= {}", lit(s)));
        }
        if let Some(e) = end {
            w.push(format!("{col} < {}", lit(e)));
        }
        w
    };
    let conds = match &t.split {
        Split::None => Vec::new(),
        Split::Ctid => bound("ctid", range.start, range.end, true),
        Split::Key(c) => bound(&quote_ident(c), range.start, range.end, false),
    };
    if conds.is_empty() {
        // COPY of a table reads only that table, never its children: ONLY semantics.
        format!(
            "COPY {} ({}) TO STDOUT ({opt})",
            t.source.quoted(),
            cols.join(", ")
        )
    } else {
        format!(
            "COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT ({opt})",
            cols.join(", "),
            t.source.quoted(),
            conds.join(" AND ")
        )
    }
}

fn sql_copy_in(t: &PlannedTable, freeze: bool) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "COPY {} ({}) FROM STDIN ({}{})",
        t.target.quoted(),
        cols.join(", "),
        t.format.copy_option(),
        if freeze { ", FREEZE" } else { "" }
    )
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
    state::lock_task(&target, &task.name).await?;

    let prep = task.full_load.table_preparation;
    let fingerprint = plan::fingerprint(&[
        &task.source.url.redacted(),
        task.mode.as_str(),
        prep.as_str(),
        &format!("{:?}", task.full_load.copy_format),
        &task
            .tables
            .include
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\u{1}"),
        &task
            .tables
            .exclude
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\u{1}"),
    ]);
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

    let snapshot = ExportedSnapshot::export(&task.source.url).await?;
    let schema = introspect::introspect(snapshot.client()).await?;
    let (mut plan, decisions) = plan::plan(&schema, task)?;
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
        schema_work = Some(prepare_schema_work(&schema, &plan, task, &archive).await?);
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
                create_schema(&target, task, &schema, &plan, sw).await?;
            }
        }
        TablePreparation::Truncate => {
            if !done_steps.contains("truncate") {
                truncate_targets(&target, task, &plan).await?;
            }
        }
        TablePreparation::DoNothing => {}
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
    });
    let workers = (0..task.full_load.threads).map(|i| worker(shared.clone(), i));
    let result = futures::future::try_join_all(workers).await;
    if let Err(e) = result {
        shared.scheduler.stop();
        return Err(e);
    }
    if shared.scheduler.stranded() > 0 {
        return Err(Error::internal(format!(
            "{} load jobs could never start (their prerequisites were not met)",
            shared.scheduler.stranded()
        )));
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
    snapshot.release().await?;
    // This commit is synchronous: it makes every earlier asynchronous chunk commit durable too.
    state::set_phase(&target, &task.name, "done").await?;
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

async fn can_set_replica_role(target: &Client) -> Result<bool> {
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
async fn check_existing_targets(
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
        let src = schema.table(t.oid).expect("planned table exists");
        for c in &t.columns {
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
                    let src_ty = src.column(c).map(|x| x.type_name.as_str()).unwrap_or("");
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
    if prep == TablePreparation::DoNothing && !resume {
        let mut non_empty = Vec::new();
        for t in &plan.tables {
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

fn summarize(items: &[String]) -> String {
    if items.len() <= 8 {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..8].join(", "), items.len() - 8)
    }
}

async fn refuse_if_triggers_would_fire(target: &Client, plan: &LoadPlan) -> Result<()> {
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

/// DDL derived from the schema archive.
struct SchemaWork {
    /// Pre-data script with `DROP ... IF EXISTS` first.
    pre_script: Script,
    /// Primary keys built with the tables (before the load), by constraint OID.
    pre_load_keys: Vec<(u32, String)>,
    /// Per-table DDL jobs: (table, constraint/index OID, foreign key?, label, SQL, references).
    jobs: Vec<SchemaJob>,
    /// Everything else in post-data, run at the end.
    post_script: Script,
    /// pg_restore's session settings.
    session_setup: String,
    /// Skipped objects.
    warnings: Vec<String>,
}

struct SchemaJob {
    /// State step key.
    key: String,
    table: u32,
    foreign_key: bool,
    references: Option<u32>,
    /// Keys of jobs that must be done first (an index attachment needs both indexes).
    after: Vec<String>,
    label: String,
    sql: String,
}

/// How an archive entry becomes work.
enum EntryUse {
    /// A per-table job: table, foreign key?, referenced table, primary key?
    Job {
        table: u32,
        fk: bool,
        refs: Option<u32>,
        pk: bool,
    },
    /// `ALTER INDEX parent ATTACH PARTITION child`: parent's table, parent and child index OIDs.
    Attach { table: u32, parent: u32, child: u32 },
}

async fn prepare_schema_work(
    schema: &Schema,
    plan: &LoadPlan,
    task: &Task,
    archive: &SchemaArchive,
) -> Result<SchemaWork> {
    let opts = ScriptOptions {
        owners: task.schema.owners,
        privileges: task.schema.privileges,
        clean: false,
    };
    let mut warnings = Vec::new();
    // Index and constraint OIDs of selected tables.
    let mut index_table: HashMap<u32, u32> = HashMap::new();
    let mut index_by_name: HashMap<(String, String), (u32, Option<u32>)> = HashMap::new();
    let mut constraint_info: HashMap<u32, (u32, ConstraintKind, Option<u32>, Option<u32>)> =
        HashMap::new();
    for t in schema
        .tables
        .iter()
        .filter(|t| plan.selected.contains(&t.oid))
    {
        for i in &t.indexes {
            index_table.insert(i.oid, t.oid);
            index_by_name.insert(
                (t.name.schema.clone(), i.name.clone()),
                (i.oid, i.parent_index),
            );
        }
        for c in &t.constraints {
            constraint_info.insert(c.oid, (t.oid, c.kind, c.references, c.index));
        }
    }
    let pk_before = task.full_load.primary_keys == PrimaryKeyTiming::BeforeLoad;
    let mut uses: Vec<(&TocEntry, EntryUse)> = Vec::new();
    let mut rest: Vec<&TocEntry> = Vec::new();
    // Which job creates each index (an index job, or the constraint it backs).
    let mut index_job: HashMap<u32, String> = HashMap::new();
    for e in &archive.post_data {
        match e.desc.as_str() {
            "INDEX" if index_table.contains_key(&e.object_oid) => {
                index_job.insert(e.object_oid, format!("ddl:{}", e.object_oid));
                uses.push((
                    e,
                    EntryUse::Job {
                        table: index_table[&e.object_oid],
                        fk: false,
                        refs: None,
                        pk: false,
                    },
                ));
            }
            "CONSTRAINT" | "CHECK CONSTRAINT" | "FK CONSTRAINT"
                if constraint_info.contains_key(&e.object_oid) =>
            {
                let (table, kind, refs, index) = constraint_info[&e.object_oid];
                if kind == ConstraintKind::ForeignKey {
                    let r = refs.unwrap_or(0);
                    if !plan.selected.contains(&r) {
                        let tn = schema
                            .table(table)
                            .map(|t| t.name.to_string())
                            .unwrap_or_default();
                        let rn = schema
                            .table(r)
                            .map(|t| t.name.to_string())
                            .unwrap_or_else(|| r.to_string());
                        warnings.push(format!(
                            "foreign key {} on {tn} is not created: it references {rn}, which is not selected",
                            e.tag.rsplit(' ').next().unwrap_or(&e.tag)
                        ));
                        continue;
                    }
                }
                let pk = kind == ConstraintKind::PrimaryKey;
                if let Some(i) = index
                    && !(pk && pk_before)
                    && kind != ConstraintKind::ForeignKey
                {
                    index_job.insert(i, format!("ddl:{}", e.object_oid));
                }
                uses.push((
                    e,
                    EntryUse::Job {
                        table,
                        fk: kind == ConstraintKind::ForeignKey,
                        refs,
                        pk,
                    },
                ));
            }
            _ => rest.push(e),
        }
    }
    // Index attachments become jobs too: a foreign key that references a partitioned table
    // needs the parent's unique index, which is valid only once every partition's is attached.
    let mut rest_after = Vec::new();
    for e in rest {
        if e.desc == "INDEX ATTACH"
            && let Some(schema_name) = &e.schema
            && let Some((child, Some(parent))) =
                index_by_name.get(&(schema_name.clone(), e.tag.clone()))
            && let Some(&table) = index_table.get(parent)
        {
            uses.push((
                e,
                EntryUse::Attach {
                    table,
                    parent: *parent,
                    child: *child,
                },
            ));
            continue;
        }
        rest_after.push(e);
    }
    let entries: Vec<&TocEntry> = uses.iter().map(|u| u.0).collect();
    let job_script = archive.sql(&entries, &opts).await?;
    let by_key = job_script.by_key();
    let mut jobs = Vec::new();
    let mut pre_load_keys = Vec::new();
    for (e, u) in &uses {
        let seg = by_key
            .get(&(e.desc.clone(), e.schema.clone(), e.tag.clone()))
            .ok_or_else(|| {
                Error::internal(format!(
                    "pg_restore printed no SQL for {} {} (dump id {})",
                    e.desc, e.tag, e.dump_id
                ))
            })?;
        let label = format!(
            "{} {}.{}",
            e.desc,
            e.schema.as_deref().unwrap_or("-"),
            e.tag
        );
        match u {
            EntryUse::Job { pk: true, .. } if pk_before => {
                pre_load_keys.push((e.object_oid, seg.sql.clone()))
            }
            EntryUse::Job {
                table, fk, refs, ..
            } => jobs.push(SchemaJob {
                key: format!("ddl:{}", e.object_oid),
                table: *table,
                foreign_key: *fk,
                references: *refs,
                after: Vec::new(),
                label,
                sql: seg.sql.clone(),
            }),
            EntryUse::Attach {
                table,
                parent,
                child,
            } => jobs.push(SchemaJob {
                key: format!("attach:{child}"),
                table: *table,
                foreign_key: false,
                references: None,
                // Indexes made before the load (primary keys) have no job to wait for.
                after: [parent, child]
                    .iter()
                    .filter_map(|i| index_job.get(i).cloned())
                    .collect(),
                label,
                sql: seg.sql.clone(),
            }),
        }
    }
    let pre_entries: Vec<&TocEntry> = archive.pre_data.iter().collect();
    let pre_script = archive
        .sql(
            &pre_entries,
            &ScriptOptions {
                clean: true,
                ..opts
            },
        )
        .await?;
    let post_script = archive.sql(&rest_after, &opts).await?;
    let session_setup = if job_script.preamble.is_empty() {
        post_script.preamble.clone()
    } else {
        job_script.preamble.clone()
    };
    Ok(SchemaWork {
        pre_script,
        pre_load_keys,
        jobs,
        post_script,
        session_setup,
        warnings,
    })
}

/// Drop the selected tables where they exist on the target, then create the pre-data schema
/// and the primary keys, all in one transaction with the step's state row.
async fn create_schema(
    target: &Client,
    task: &Task,
    schema: &Schema,
    plan: &LoadPlan,
    sw: &SchemaWork,
) -> Result<()> {
    let started = Instant::now();
    let selected: Vec<&QualifiedName> = schema
        .tables
        .iter()
        .filter(|t| plan.selected.contains(&t.oid))
        .map(|t| &t.name)
        .collect();
    let schemas: Vec<String> = selected.iter().map(|n| n.schema.clone()).collect();
    let names: Vec<String> = selected.iter().map(|n| n.name.clone()).collect();
    let existing = target
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t AND c.relkind IN ('r', 'p', 'f')",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| classify(e, "looking for existing target tables"))?;
    in_transaction(target, "creating the schema on the target", async {
        if !existing.is_empty() {
            let oids: Vec<u32> = existing.iter().map(|r| r.get(0)).collect();
            // What else goes with them: views that read them, foreign keys that point at them.
            let deps = target
                .query(
                    "SELECT DISTINCT format('%s %s', CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'table' END, c.oid::regclass::text) \
                     FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                     JOIN pg_class c ON c.oid = r.ev_class \
                     WHERE d.refobjid = ANY($1) AND NOT (r.ev_class = ANY($1)) \
                     UNION \
                     SELECT DISTINCT format('foreign key %s on %s', con.conname, con.conrelid::regclass::text) FROM pg_constraint con \
                     WHERE con.contype = 'f' AND con.confrelid = ANY($1) AND NOT (con.conrelid = ANY($1))",
                    &[&oids],
                )
                .await
                .map_err(|e| classify(e, "finding objects that depend on the target tables"))?;
            for d in &deps {
                tracing::warn!("drop-and-create also drops {} on the target, which depends on a table being replaced", d.get::<_, String>(0));
            }
            let list: Vec<String> = existing
                .iter()
                .map(|r| QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)).quoted())
                .collect();
            tracing::info!(tables = existing.len(), "dropping target tables that will be re-created");
            target
                .batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", list.join(", ")))
                .await
                .map_err(|e| classify(e, "dropping the existing target tables"))?;
        }
        run_script(target, &sw.pre_script).await?;
        for (_, sql) in &sw.pre_load_keys {
            target.batch_execute(sql).await.map_err(|e| classify(e, "creating a primary key on the target"))?;
        }
        state::step_done(target, &task.name, "schema-pre", started.elapsed().as_secs_f64()).await
    })
    .await?;
    // pg_restore's preamble changed this session's settings (search_path = ''); put them back.
    target
        .batch_execute("RESET ALL")
        .await
        .map_err(|e| classify(e, "resetting the session"))
}

async fn run_script(target: &Client, script: &Script) -> Result<()> {
    if !script.preamble.trim().is_empty() {
        target
            .batch_execute(&script.preamble)
            .await
            .map_err(|e| classify(e, "running pg_restore's preamble on the target"))?;
    }
    for s in &script.segments {
        if s.sql.trim().is_empty() {
            continue;
        }
        target.batch_execute(&s.sql).await.map_err(|e| {
            classify(
                e,
                &format!(
                    "creating {} {}{} on the target",
                    s.desc,
                    s.schema
                        .as_deref()
                        .map(|x| format!("{x}."))
                        .unwrap_or_default(),
                    s.name
                ),
            )
        })?;
    }
    Ok(())
}

async fn run_script_step(
    target: &Client,
    task: &Task,
    step: &str,
    script: &Script,
    what: &str,
) -> Result<()> {
    let started = Instant::now();
    in_transaction(target, what, async {
        run_script(target, script).await?;
        state::step_done(target, &task.name, step, started.elapsed().as_secs_f64()).await
    })
    .await?;
    // pg_restore's preamble changed this session's search_path; put it back for our queries.
    target
        .batch_execute("RESET ALL")
        .await
        .map_err(|e| classify(e, what))
}

async fn truncate_targets(target: &Client, task: &Task, plan: &LoadPlan) -> Result<()> {
    let started = Instant::now();
    let list: Vec<String> = plan.tables.iter().map(|t| t.target.quoted()).collect();
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

type Jobs = (
    Vec<(u32, CopyJob)>,
    Vec<(String, u32, bool, Vec<DdlWait>, DdlJob)>,
    HashMap<u32, QualifiedName>,
);

/// All tables below `oid` in the partition and inheritance trees, with `oid` itself.
fn with_descendants(schema: &Schema, oid: u32) -> Vec<u32> {
    let mut out = vec![oid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        for t in &schema.tables {
            if (t.partition_of == Some(cur) || t.inherits.contains(&cur)) && !out.contains(&t.oid) {
                out.push(t.oid);
            }
        }
        i += 1;
    }
    out
}

fn build_jobs(
    schema: &Schema,
    plan: &LoadPlan,
    recorded: &[TablePlanRow],
    schema_work: Option<&SchemaWork>,
    done_steps: &HashSet<String>,
    prep: TablePreparation,
    progress: &Progress,
) -> Jobs {
    let recorded: HashMap<(String, String), &TablePlanRow> = recorded
        .iter()
        .map(|r| ((r.source_schema.clone(), r.source_table.clone()), r))
        .collect();
    let mut copies = Vec::new();
    let mut names: HashMap<u32, QualifiedName> = HashMap::new();
    for t in &plan.tables {
        let t = Arc::new(t.clone());
        let done: HashSet<i32> = recorded
            .get(&(t.source.schema.clone(), t.source.name.clone()))
            .map(|r| {
                r.chunks
                    .iter()
                    .filter(|c| c.done)
                    .map(|c| c.chunk)
                    .collect()
            })
            .unwrap_or_default();
        progress.register(
            t.oid,
            t.source.to_string(),
            t.bytes,
            t.estimated_rows,
            t.chunks.len(),
            done.len(),
        );
        let single = t.chunks.len() == 1;
        for (i, range) in t.chunks.iter().enumerate() {
            if done.contains(&(i as i32)) {
                continue;
            }
            copies.push((
                t.oid,
                CopyJob {
                    table: t.clone(),
                    chunk: i as i32,
                    range: *range,
                    freeze: single && prep == TablePreparation::DropAndCreate,
                },
            ));
        }
        names.insert(t.oid, t.source.clone());
    }
    // Largest tables first; within a table, chunk order.
    let size: HashMap<u32, u64> = plan.tables.iter().map(|t| (t.oid, t.bytes)).collect();
    copies.sort_by(|a, b| {
        size[&b.0]
            .cmp(&size[&a.0])
            .then(a.0.cmp(&b.0))
            .then(a.1.chunk.cmp(&b.1.chunk))
    });

    let mut ddl = Vec::new();
    if let Some(sw) = schema_work {
        for j in &sw.jobs {
            let key = j.key.clone();
            if let Some(t) = schema.table(j.table) {
                names.entry(j.table).or_insert_with(|| t.name.clone());
            }
            if done_steps.contains(&key) {
                continue;
            }
            let mut waits: Vec<DdlWait> = if j.foreign_key {
                let mut w: Vec<DdlWait> = with_descendants(schema, j.table)
                    .into_iter()
                    .map(DdlWait::Built)
                    .collect();
                if let Some(r) = j.references {
                    w.extend(with_descendants(schema, r).into_iter().map(DdlWait::Built));
                }
                w
            } else {
                with_descendants(schema, j.table)
                    .into_iter()
                    .map(DdlWait::Copied)
                    .collect()
            };
            for w in &waits {
                if let DdlWait::Copied(o) | DdlWait::Built(o) = w
                    && let Some(t) = schema.table(*o)
                {
                    names.entry(*o).or_insert_with(|| t.name.clone());
                }
            }
            waits.extend(j.after.iter().cloned().map(DdlWait::Job));
            ddl.push((
                key.clone(),
                j.table,
                j.foreign_key,
                waits,
                DdlJob {
                    key,
                    table: j.table,
                    late: j.foreign_key,
                    label: j.label.clone(),
                    sql: j.sql.clone(),
                },
            ));
        }
    }
    for t in &plan.tables {
        if schema
            .table(t.oid)
            .map(|x| x.kind == TableKind::Ordinary)
            .unwrap_or(false)
        {
            let key = format!("analyze:{}", t.oid);
            if done_steps.contains(&key) {
                continue;
            }
            // After the table's indexes (CREATE INDEX and ANALYZE lock each other out, and
            // expression indexes get statistics too); "late" like a foreign key.
            ddl.push((
                key.clone(),
                t.oid,
                true,
                vec![DdlWait::Built(t.oid)],
                DdlJob {
                    key,
                    table: t.oid,
                    late: true,
                    label: format!("ANALYZE {}", t.target),
                    sql: format!("ANALYZE {}", t.target.quoted()),
                },
            ));
        }
    }
    (copies, ddl, names)
}

struct WorkerConns {
    source: Client,
    target: Client,
}

async fn open_worker(shared: &Shared) -> Result<WorkerConns> {
    let source = connect(&shared.task.source.url, Side::Source).await?;
    begin_in_snapshot(&source, &shared.snapshot).await.map_err(|e| {
        if e.kind() == ErrorKind::Database || e.kind() == ErrorKind::NotFound {
            Error::new(
                ErrorKind::Connection,
                "the load snapshot is gone (the source connection that held it was lost)",
            )
            .with_source(e)
            .with_hint("re-run the same command: finished chunks are kept, the rest is copied from a new snapshot")
        } else {
            e
        }
    })?;
    let target = connect(&shared.task.target.url, Side::Target).await?;
    target
        .batch_execute(&shared.target_setup)
        .await
        .map_err(|e| classify(e, "preparing a target session"))?;
    Ok(WorkerConns { source, target })
}

async fn worker(shared: Arc<Shared>, id: usize) -> Result<()> {
    let mut conns: Option<WorkerConns> = None;
    while let Some(job) = shared.scheduler.next().await {
        let mut attempt = 1;
        loop {
            if conns.is_none() {
                match with_retries(3, "opening worker connections", || open_worker(&shared)).await {
                    Ok(c) => conns = Some(c),
                    Err(e) => {
                        shared.scheduler.stop();
                        return Err(e);
                    }
                }
            }
            let c = conns.as_ref().expect("connections are open");
            let result = match &job {
                Job::Copy(j) => run_copy(&shared, c, j).await.map(|_| ()),
                Job::Ddl(j) => run_ddl(&shared, c, j).await,
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    // Never reuse connections after a failed job: the source side may have lost
                    // its snapshot transaction, the target side may be mid-COPY.
                    conns = None;
                    if e.is_retryable() && attempt < JOB_ATTEMPTS {
                        let wait = Duration::from_secs(1 << attempt.min(4));
                        tracing::warn!(
                            worker = id,
                            attempt,
                            retry_in_s = wait.as_secs(),
                            "{}",
                            e.message()
                        );
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    shared.scheduler.stop();
                    return Err(e);
                }
            }
        }
        match &job {
            Job::Copy(j) => {
                let r = shared.scheduler.copy_done(j.table.oid);
                mark_ready(&shared, conns.as_ref(), &r.ready).await?;
            }
            Job::Ddl(j) => {
                shared.progress.ddl_finished();
                let r = shared.scheduler.ddl_done(&j.key, j.table, j.late);
                mark_ready(&shared, conns.as_ref(), &r.ready).await?;
            }
        }
    }
    Ok(())
}

async fn mark_ready(shared: &Shared, conns: Option<&WorkerConns>, tables: &[u32]) -> Result<()> {
    let Some(c) = conns else { return Ok(()) };
    for oid in tables {
        if let Some(n) = shared.names.get(oid) {
            state::set_table_state(
                &c.target,
                &shared.task.name,
                &n.schema,
                &n.name,
                TableState::Ready,
            )
            .await?;
        }
    }
    Ok(())
}

async fn run_copy(shared: &Shared, c: &WorkerConns, job: &CopyJob) -> Result<()> {
    let t = &job.table;
    let started = Instant::now();
    let what = if t.chunks.len() > 1 {
        format!(
            "{} (chunk {} of {})",
            t.source,
            job.chunk + 1,
            t.chunks.len()
        )
    } else {
        t.source.to_string()
    };
    shared.progress.chunk_started(t.oid);
    let (mut moved_bytes, mut moved_rows) = (0u64, 0u64);
    let result: Result<bool> = async {
        c.target
            .batch_execute("BEGIN")
            .await
            .map_err(|e| classify(e, &format!("starting the load of {what}")))?;
        if job.freeze {
            c.target
                .batch_execute(&format!("TRUNCATE ONLY {}", t.target.quoted()))
                .await
                .map_err(|e| classify(e, &format!("emptying {} before its load", t.target)))?;
        }
        let stats = copy_stream::pipe(
            &c.source,
            &c.target,
            &sql_copy_out(t, &job.range),
            &sql_copy_in(t, job.freeze),
            t.format,
            &what,
            |b, r| {
                moved_bytes += b;
                moved_rows += r;
                shared.progress.add(t.oid, b, r);
            },
        )
        .await?;
        let last = state::chunk_done(
            &c.target,
            &shared.task.name,
            &t.source.schema,
            &t.source.name,
            job.chunk,
            stats.rows,
            stats.bytes,
            started.elapsed().as_secs_f64(),
        )
        .await?;
        c.target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, &format!("committing {what}")))?;
        Ok(last)
    }
    .await;
    match result {
        Ok(last) => {
            if let Some(tp) = shared.progress.chunk_ended(t.oid, true, 0, 0) {
                tracing::info!(
                    table = %t.source,
                    rows = tp.rows,
                    bytes = tp.bytes,
                    seconds = format!("{:.2}", tp.copy_time.unwrap_or_default().as_secs_f64()),
                    format = t.format.as_str(),
                    "table copied"
                );
            }
            let _ = last;
            Ok(())
        }
        Err(e) => {
            let _ = c.target.batch_execute("ROLLBACK").await;
            shared
                .progress
                .chunk_ended(t.oid, false, moved_bytes, moved_rows);
            Err(e)
        }
    }
}

async fn run_ddl(shared: &Shared, c: &WorkerConns, job: &DdlJob) -> Result<()> {
    let started = Instant::now();
    let what = format!("building {} on the target", job.label);
    c.target
        .batch_execute("BEGIN")
        .await
        .map_err(|e| classify(e, &what))?;
    let result = async {
        c.target
            .batch_execute(&job.sql)
            .await
            .map_err(|e| classify(e, &what))?;
        state::step_done(
            &c.target,
            &shared.task.name,
            &job.key,
            started.elapsed().as_secs_f64(),
        )
        .await?;
        c.target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, &what))
    }
    .await;
    if result.is_err() {
        let _ = c.target.batch_execute("ROLLBACK").await;
    } else {
        tracing::debug!(job = %job.label, seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "built");
    }
    result
}

async fn sync_sequences(
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

async fn refresh_matviews(
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
async fn build_report(
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
