//! pgtide's own state on a PostgreSQL target, in the `pgtide` schema.
//!
//! The state lives on the target, next to the data it describes, so that recording progress
//! can be part of the same transaction as the data: a chunk's COPY and the row saying "chunk 7
//! of public.orders is done" commit together or not at all. After a crash, a re-run reads these
//! tables and redoes exactly what did not commit.
//!
//! ```text
//! pgtide.meta        key/value: state format version
//! pgtide.task        one row per task: configuration fingerprint, mode, phase
//! pgtide.load_table  one row per source table: target name, state, format, totals
//! pgtide.load_chunk  one row per chunk: block range, rows, bytes, done_at (NULL = not done)
//! pgtide.load_step   schema and DDL steps that completed (pre-data, each index, ...)
//! pgtide.cdc_progress     the last applied source transaction (commit LSN, end LSN, time),
//!                         written in the same transaction as the changes it covers, and the
//!                         highest position ever confirmed to the slot (recorded before it is
//!                         confirmed, so a slot that is further ahead is detected)
//! pgtide.cdc_table_stats  inserts, updates, deletes, truncates applied per table
//! pgtide.validation  the last `pgtide validate` result per table
//! ```
//!
//! `pgtide.task.last_error` holds the error the last run stopped with (cleared when a run
//! starts), so `pgtide status` can show it after the process is gone.
//!
//! A table moves through [`TableState`]: `pending` (planned) → `copied` (every chunk done) →
//! `ready` (its indexes and constraints built). The per-chunk `done_at` is the source of truth
//! for resuming the copy; the table state is what `status` reports.
//!
//! Two runs of the same task must not interleave: [`lock_task`] takes a session-level advisory
//! lock on the target that is released when the run's control connection closes, even if the
//! process is killed.

use crate::connect::classify;
use pgtide_core::{Error, ErrorKind, Result};
use std::collections::{HashMap, HashSet};
use tokio_postgres::{Client, GenericClient};

/// Version of the state tables' layout; bumped on incompatible changes.
pub const STATE_VERSION: i32 = 1;

const DDL: &str = "
CREATE SCHEMA IF NOT EXISTS pgtide;
CREATE TABLE IF NOT EXISTS pgtide.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS pgtide.task (
    name text PRIMARY KEY,
    fingerprint text NOT NULL,
    mode text NOT NULL,
    phase text NOT NULL,
    source text NOT NULL,
    pgtide_version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE IF NOT EXISTS pgtide.load_table (
    task text NOT NULL,
    source_schema text NOT NULL,
    source_table text NOT NULL,
    target_schema text NOT NULL,
    target_table text NOT NULL,
    state text NOT NULL,
    format text NOT NULL,
    split text NOT NULL,
    rows bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    seconds double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (task, source_schema, source_table)
);
CREATE TABLE IF NOT EXISTS pgtide.load_chunk (
    task text NOT NULL,
    source_schema text NOT NULL,
    source_table text NOT NULL,
    chunk integer NOT NULL,
    range_start bigint,
    range_end bigint,
    rows bigint,
    bytes bigint,
    seconds double precision,
    done_at timestamptz,
    PRIMARY KEY (task, source_schema, source_table, chunk)
);
CREATE TABLE IF NOT EXISTS pgtide.cdc_progress (
    task text PRIMARY KEY,
    commit_lsn pg_lsn NOT NULL,
    end_lsn pg_lsn NOT NULL,
    commit_time timestamptz,
    confirmed_lsn pg_lsn NOT NULL,
    applied_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS pgtide.cdc_table_stats (
    task text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    inserts bigint NOT NULL DEFAULT 0,
    updates bigint NOT NULL DEFAULT 0,
    deletes bigint NOT NULL DEFAULT 0,
    truncates bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task, schema_name, table_name)
);
ALTER TABLE pgtide.task ADD COLUMN IF NOT EXISTS last_error text;
CREATE TABLE IF NOT EXISTS pgtide.validation (
    task text NOT NULL,
    table_name text NOT NULL,
    state text NOT NULL,
    detail text,
    checked_at timestamptz NOT NULL,
    PRIMARY KEY (task, table_name)
);
CREATE TABLE IF NOT EXISTS pgtide.load_step (
    task text NOT NULL,
    step text NOT NULL,
    seconds double precision,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, step)
);
";

/// Per-table lifecycle on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableState {
    /// Planned; some chunks not copied yet. Set when the plan is recorded.
    Pending,
    /// Every chunk copied. Set by the worker that commits the last chunk.
    Copied,
    /// Indexes and constraints built too. Set when the table's last DDL job commits.
    Ready,
}

impl TableState {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TableState::Pending => "pending",
            TableState::Copied => "copied",
            TableState::Ready => "ready",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TableState::Pending,
            "copied" => TableState::Copied,
            "ready" => TableState::Ready,
            _ => return None,
        })
    }
}

/// Create the state schema if needed and check its version.
pub async fn ensure_schema(client: &Client) -> Result<()> {
    let err = |e| classify(e, "creating pgtide's state schema on the target");
    client
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('pgtide state schema'))")
        .await
        .map_err(err)?;
    let result = async {
        client.batch_execute(DDL).await.map_err(err)?;
        let v: Option<String> = client
            .query_opt("SELECT value FROM pgtide.meta WHERE key = 'state_version'", &[])
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        match v {
            None => {
                client
                    .execute(
                        "INSERT INTO pgtide.meta (key, value) VALUES ('state_version', $1)",
                        &[&STATE_VERSION.to_string()],
                    )
                    .await
                    .map_err(err)?;
            }
            Some(v) if v == STATE_VERSION.to_string() => {}
            Some(v) => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("the target's pgtide schema has state version {v}, this pgtide uses {STATE_VERSION}"),
                )
                .with_hint("finish the task with the pgtide version that started it, or drop schema pgtide to start over"));
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => client.batch_execute("COMMIT").await.map_err(err),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Take the task's advisory lock for the life of `client`'s session.
pub async fn lock_task(client: &Client, task: &str) -> Result<()> {
    let got: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('pgtide'), hashtext($1))",
            &[&task],
        )
        .await
        .map_err(|e| classify(e, "locking the task on the target"))?
        .get(0);
    if !got {
        return Err(Error::new(ErrorKind::Conflict, format!("another pgtide run of task {task:?} is active on this target"))
            .with_hint("wait for it to finish or stop it; two runs of one task must not write at the same time"));
    }
    Ok(())
}

/// Like [`lock_task`], but wait up to `wait` for a lock held by a session that is ending (a
/// connection of this process that was just dropped releases its locks when the server notices).
pub async fn lock_task_waiting(
    client: &Client,
    task: &str,
    wait: std::time::Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match lock_task(client, task).await {
            Err(e) if e.kind() == ErrorKind::Conflict && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// Release the task's lock held by `client`'s session.
pub async fn unlock_task(client: &Client, task: &str) -> Result<()> {
    client
        .query_one(
            "SELECT pg_advisory_unlock(hashtext('pgtide'), hashtext($1))",
            &[&task],
        )
        .await
        .map_err(|e| classify(e, "unlocking the task on the target"))?;
    Ok(())
}

/// A task's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Hash of the configuration that decides what the state means.
    pub fingerprint: String,
    /// Task mode.
    pub mode: String,
    /// Phase: `prepare`, `load`, `post-load`, `done`.
    pub phase: String,
}

/// The task's row, if the task ran on this target before.
pub async fn task_row<C: GenericClient>(client: &C, task: &str) -> Result<Option<TaskRow>> {
    let row = client
        .query_opt(
            "SELECT fingerprint, mode, phase FROM pgtide.task WHERE name = $1",
            &[&task],
        )
        .await
        .map_err(|e| classify(e, "reading the task state on the target"))?;
    Ok(row.map(|r| TaskRow {
        fingerprint: r.get(0),
        mode: r.get(1),
        phase: r.get(2),
    }))
}

/// Forget any earlier run of the task and record a new one in phase `prepare`.
pub async fn start_task<C: GenericClient>(
    client: &C,
    task: &str,
    fingerprint: &str,
    mode: &str,
    source: &str,
) -> Result<()> {
    let err = |e| classify(e, "recording the task on the target");
    for t in [
        "load_table",
        "load_chunk",
        "load_step",
        "cdc_progress",
        "cdc_table_stats",
        "validation",
    ] {
        client
            .execute(&format!("DELETE FROM pgtide.{t} WHERE task = $1"), &[&task])
            .await
            .map_err(err)?;
    }
    client
        .execute(
            "INSERT INTO pgtide.task (name, fingerprint, mode, phase, source, pgtide_version) \
             VALUES ($1, $2, $3, 'prepare', $4, $5) \
             ON CONFLICT (name) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, mode = EXCLUDED.mode, \
               phase = 'prepare', source = EXCLUDED.source, pgtide_version = EXCLUDED.pgtide_version, \
               started_at = now(), updated_at = now(), finished_at = NULL, last_error = NULL",
            &[&task, &fingerprint, &mode, &source, &env!("CARGO_PKG_VERSION")],
        )
        .await
        .map_err(err)?;
    Ok(())
}

/// Move the task to `phase`.
pub async fn set_phase<C: GenericClient>(client: &C, task: &str, phase: &str) -> Result<()> {
    client
        .execute(
            "UPDATE pgtide.task SET phase = $2, updated_at = now(), \
               finished_at = CASE WHEN $2 = 'done' THEN now() END WHERE name = $1",
            &[&task, &phase],
        )
        .await
        .map_err(|e| classify(e, "recording the task phase on the target"))?;
    Ok(())
}

/// One planned chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRow {
    /// Chunk number within the table, from 0.
    pub chunk: i32,
    /// First block (ctid split) or key value (key split); `None` = unbounded.
    pub range_start: Option<i64>,
    /// End (exclusive); `None` = unbounded.
    pub range_end: Option<i64>,
    /// Committed already.
    pub done: bool,
}

/// One planned table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlanRow {
    /// Source schema.
    pub source_schema: String,
    /// Source table.
    pub source_table: String,
    /// Target schema.
    pub target_schema: String,
    /// Target table.
    pub target_table: String,
    /// `binary` or `text`.
    pub format: String,
    /// `none`, `ctid` or `key:<column>`.
    pub split: String,
    /// Lifecycle state.
    pub state: TableState,
    /// Chunks in order.
    pub chunks: Vec<ChunkRow>,
}

/// Record the load plan (inside the caller's transaction).
pub async fn record_plan<C: GenericClient>(
    client: &C,
    task: &str,
    tables: &[TablePlanRow],
) -> Result<()> {
    let err = |e| classify(e, "recording the load plan on the target");
    let ins_t = client
        .prepare(
            "INSERT INTO pgtide.load_table (task, source_schema, source_table, target_schema, target_table, state, format, split) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await
        .map_err(err)?;
    let ins_c = client
        .prepare(
            "INSERT INTO pgtide.load_chunk (task, source_schema, source_table, chunk, range_start, range_end) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await
        .map_err(err)?;
    for t in tables {
        client
            .execute(
                &ins_t,
                &[
                    &task,
                    &t.source_schema,
                    &t.source_table,
                    &t.target_schema,
                    &t.target_table,
                    &t.state.as_str(),
                    &t.format,
                    &t.split,
                ],
            )
            .await
            .map_err(err)?;
        for c in &t.chunks {
            client
                .execute(
                    &ins_c,
                    &[
                        &task,
                        &t.source_schema,
                        &t.source_table,
                        &c.chunk,
                        &c.range_start,
                        &c.range_end,
                    ],
                )
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Read the recorded plan with each chunk's completion.
pub async fn read_plan<C: GenericClient>(client: &C, task: &str) -> Result<Vec<TablePlanRow>> {
    let err = |e| classify(e, "reading the load plan on the target");
    let rows = client
        .query(
            "SELECT source_schema, source_table, target_schema, target_table, format, split, state \
             FROM pgtide.load_table WHERE task = $1 ORDER BY source_schema, source_table",
            &[&task],
        )
        .await
        .map_err(err)?;
    let mut tables: Vec<TablePlanRow> = rows
        .into_iter()
        .map(|r| TablePlanRow {
            source_schema: r.get(0),
            source_table: r.get(1),
            target_schema: r.get(2),
            target_table: r.get(3),
            format: r.get(4),
            split: r.get(5),
            state: TableState::parse(r.get::<_, &str>(6)).unwrap_or(TableState::Pending),
            chunks: Vec::new(),
        })
        .collect();
    let idx: HashMap<(String, String), usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| ((t.source_schema.clone(), t.source_table.clone()), i))
        .collect();
    for r in client
        .query(
            "SELECT source_schema, source_table, chunk, range_start, range_end, done_at IS NOT NULL \
             FROM pgtide.load_chunk WHERE task = $1 ORDER BY source_schema, source_table, chunk",
            &[&task],
        )
        .await
        .map_err(err)?
    {
        if let Some(&i) = idx.get(&(r.get::<_, String>(0), r.get::<_, String>(1))) {
            tables[i].chunks.push(ChunkRow { chunk: r.get(2), range_start: r.get(3), range_end: r.get(4), done: r.get(5) });
        }
    }
    Ok(tables)
}

/// A chunk that was just loaded.
#[derive(Debug, Clone, Copy)]
pub struct ChunkDone<'a> {
    /// Source schema.
    pub schema: &'a str,
    /// Source table.
    pub table: &'a str,
    /// Chunk number.
    pub chunk: i32,
    /// Rows loaded.
    pub rows: u64,
    /// COPY bytes moved.
    pub bytes: u64,
    /// Seconds the chunk took.
    pub seconds: f64,
}

/// Mark a chunk done (inside the transaction that loaded it). Returns true when it was the
/// table's last chunk, in which case the table is marked `copied` with its totals.
pub async fn chunk_done<C: GenericClient>(
    client: &C,
    task: &str,
    done: &ChunkDone<'_>,
) -> Result<bool> {
    let ChunkDone {
        schema,
        table,
        chunk,
        rows,
        bytes,
        seconds,
    } = *done;
    let err = |e| classify(e, "recording a finished chunk on the target");
    let n = client
        .execute(
            "UPDATE pgtide.load_chunk SET rows = $5, bytes = $6, seconds = $7, done_at = clock_timestamp() \
             WHERE task = $1 AND source_schema = $2 AND source_table = $3 AND chunk = $4 AND done_at IS NULL",
            &[&task, &schema, &table, &chunk, &(rows as i64), &(bytes as i64), &seconds],
        )
        .await
        .map_err(err)?;
    if n != 1 {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "chunk {chunk} of {schema}.{table} is already recorded as loaded; another run may be writing to this target"
            ),
        ));
    }
    // Lock the table row so two workers finishing the last two chunks agree on who was last.
    client
        .execute(
            "SELECT 1 FROM pgtide.load_table WHERE task = $1 AND source_schema = $2 AND source_table = $3 FOR UPDATE",
            &[&task, &schema, &table],
        )
        .await
        .map_err(err)?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE done_at IS NULL), coalesce(sum(rows), 0)::int8, \
                    coalesce(sum(bytes), 0)::int8, coalesce(sum(seconds), 0)::float8 \
             FROM pgtide.load_chunk WHERE task = $1 AND source_schema = $2 AND source_table = $3",
            &[&task, &schema, &table],
        )
        .await
        .map_err(err)?;
    let remaining: i64 = row.get(0);
    if remaining == 0 {
        client
            .execute(
                "UPDATE pgtide.load_table SET state = 'copied', rows = $4, bytes = $5, seconds = $6 \
                 WHERE task = $1 AND source_schema = $2 AND source_table = $3",
                &[&task, &schema, &table, &row.get::<_, i64>(1), &row.get::<_, i64>(2), &row.get::<_, f64>(3)],
            )
            .await
            .map_err(err)?;
    }
    Ok(remaining == 0)
}

/// Set a table's state.
pub async fn set_table_state<C: GenericClient>(
    client: &C,
    task: &str,
    schema: &str,
    table: &str,
    state: TableState,
) -> Result<()> {
    client
        .execute(
            "UPDATE pgtide.load_table SET state = $4 WHERE task = $1 AND source_schema = $2 AND source_table = $3",
            &[&task, &schema, &table, &state.as_str()],
        )
        .await
        .map_err(|e| classify(e, "recording a table's state on the target"))?;
    Ok(())
}

/// Record a completed step (inside the step's own transaction).
pub async fn step_done<C: GenericClient>(
    client: &C,
    task: &str,
    step: &str,
    seconds: f64,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO pgtide.load_step (task, step, seconds) VALUES ($1, $2, $3) ON CONFLICT (task, step) DO NOTHING",
            &[&task, &step, &seconds],
        )
        .await
        .map_err(|e| classify(e, "recording a finished step on the target"))?;
    Ok(())
}

/// Steps already completed.
pub async fn steps_done<C: GenericClient>(client: &C, task: &str) -> Result<HashSet<String>> {
    let rows = client
        .query(
            "SELECT step FROM pgtide.load_step WHERE task = $1",
            &[&task],
        )
        .await
        .map_err(|e| classify(e, "reading finished steps on the target"))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Record the error a run stopped with, or clear it (`None`) when a run ends well.
pub async fn record_error(client: &Client, task: &str, error: Option<&str>) -> Result<()> {
    client
        .execute(
            "UPDATE pgtide.task SET last_error = $2, updated_at = now() WHERE name = $1",
            &[&task, &error],
        )
        .await
        .map_err(|e| classify(e, "recording the error on the target"))?;
    Ok(())
}
