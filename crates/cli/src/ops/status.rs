//! `pgtide status`: where a task stands, read from the state on the target and the slot on the
//! source, so it works while `run` is active, after it stopped, and after it crashed.
//!
//! The target's `pgtide` schema is the record: the task's phase, per table the full-load rows
//! and seconds, the CDC counters (written in the same transactions as the changes they count,
//! so they are exact), the last applied source commit, the last validation, and the last error
//! a run stopped with. The source adds the slot (active, confirmed position, WAL status) and its
//! current WAL position, from which the lag in bytes follows. Throughput is measured by reading
//! the counters twice, one second apart, when a run is active. A source that cannot be reached
//! is reported as such; the target's part is still shown.

use pgtide_core::ident::QualifiedName;
use pgtide_core::lsn::Lsn;
use pgtide_core::task::{CdcSettings, Task};
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::connect::{Side, classify, connect};
use pgtide_postgres::slot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::Client;

/// Per-table statistics (DMS's table statistics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableStatus {
    /// Source table.
    pub table: String,
    /// Full-load state: `pending`, `copied`, `ready`; `-` when the table was not loaded by pgtide.
    pub state: String,
    /// Rows copied by the full load.
    pub full_load_rows: i64,
    /// Seconds spent copying.
    pub full_load_seconds: f64,
    /// Changes applied by CDC.
    pub inserts: i64,
    /// Updates applied.
    pub updates: i64,
    /// Deletes applied.
    pub deletes: i64,
    /// Truncates applied.
    pub truncates: i64,
    /// DDL applied (pgtide does not replicate DDL: always 0).
    pub ddl: i64,
    /// `equal`, `different` or `not validated`.
    pub validation: String,
    /// Detail of the last validation.
    pub validation_detail: Option<String>,
}

/// The replication side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CdcState {
    /// Slot name.
    pub slot: String,
    /// The slot exists on the source.
    pub slot_exists: Option<bool>,
    /// A walsender streams from it now.
    pub slot_active: Option<bool>,
    /// `reserved`, `extended`, `unreserved`, `lost`.
    pub wal_status: Option<String>,
    /// Confirmed flush position of the slot.
    pub confirmed_lsn: Option<String>,
    /// End of the last applied source transaction (on the target).
    pub applied_lsn: Option<String>,
    /// Commit time of the last applied source transaction.
    pub applied_commit_time: Option<String>,
    /// The source's current WAL position.
    pub source_lsn: Option<String>,
    /// Source WAL not yet applied, in bytes.
    pub lag_bytes: Option<u64>,
    /// Seconds since the last applied source commit when WAL is pending, else 0.
    pub lag_seconds: Option<f64>,
    /// Changes applied per second, measured over one second (only while a run is active).
    pub changes_per_second: Option<f64>,
    /// Why the source part is missing.
    pub source_error: Option<String>,
}

/// Everything `status` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskStatus {
    /// Task name.
    pub task: String,
    /// Task mode as recorded.
    pub mode: String,
    /// Phase: `prepare`, `load`, `post-load`, `cdc`, `done`.
    pub phase: String,
    /// A run of the task is active now (it holds the task's lock on the target).
    pub running: bool,
    /// When the task started and last changed phase.
    pub started_at: String,
    /// Last phase change.
    pub updated_at: String,
    /// The error the last run stopped with, if it failed.
    pub last_error: Option<String>,
    /// Per table.
    pub tables: Vec<TableStatus>,
    /// Change data capture, for modes that stream.
    pub cdc: Option<CdcState>,
}

/// Read the task's status.
pub async fn status(task: &Task) -> Result<TaskStatus> {
    let target = connect(&task.target.url, Side::Target).await?;
    let exists: bool = target
        .query_one("SELECT to_regclass('pgtide.task') IS NOT NULL", &[])
        .await
        .map_err(|e| classify(e, "looking for pgtide state on the target"))?
        .get(0);
    let row = if exists {
        target
            .query_opt(
                "SELECT mode, phase, started_at::text, updated_at::text, last_error FROM pgtide.task WHERE name = $1",
                &[&task.name],
            )
            .await
            .map_err(|e| classify(e, "reading the task state on the target"))?
    } else {
        None
    };
    let Some(row) = row else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("task {:?} has not run against this target", task.name),
        )
        .with_hint("start it with pgtide run; status reads the state a run keeps in schema pgtide on the target"));
    };
    let mut st = TaskStatus {
        task: task.name.clone(),
        mode: row.get(0),
        phase: row.get(1),
        started_at: row.get(2),
        updated_at: row.get(3),
        last_error: row.get(4),
        running: run_active(&target, &task.name).await?,
        ..TaskStatus::default()
    };
    let mut tables: BTreeMap<String, TableStatus> = BTreeMap::new();
    let err = |e| classify(e, "reading the task state on the target");
    for r in target
        .query(
            "SELECT source_schema, source_table, state, rows, seconds \
             FROM pgtide.load_table WHERE task = $1",
            &[&task.name],
        )
        .await
        .map_err(err)?
    {
        let name = QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).to_string();
        tables.insert(
            name.clone(),
            TableStatus {
                table: name,
                state: r.get(2),
                full_load_rows: r.get(3),
                full_load_seconds: r.get(4),
                validation: "not validated".into(),
                ..TableStatus::default()
            },
        );
    }
    for r in target
        .query(
            "SELECT schema_name, table_name, inserts, updates, deletes, truncates \
             FROM pgtide.cdc_table_stats WHERE task = $1",
            &[&task.name],
        )
        .await
        .map_err(err)?
    {
        let name = QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).to_string();
        let t = tables.entry(name.clone()).or_insert_with(|| TableStatus {
            table: name,
            state: "-".into(),
            validation: "not validated".into(),
            ..TableStatus::default()
        });
        t.inserts = r.get(2);
        t.updates = r.get(3);
        t.deletes = r.get(4);
        t.truncates = r.get(5);
    }
    for r in target
        .query(
            "SELECT table_name, state, detail FROM pgtide.validation WHERE task = $1",
            &[&task.name],
        )
        .await
        .map_err(err)?
    {
        let name: String = r.get(0);
        if let Some(t) = tables.get_mut(&name) {
            t.validation = r.get(1);
            t.validation_detail = r.get(2);
        }
    }
    st.tables = tables.into_values().collect();

    if st.mode != "full-load" {
        st.cdc = Some(cdc_state(task, &target, st.running).await?);
    }
    Ok(st)
}

async fn cdc_state(task: &Task, target: &Client, running: bool) -> Result<CdcState> {
    let err = |e| classify(e, "reading the CDC state on the target");
    let mut c = CdcState {
        slot: CdcSettings::slot_name(&task.name),
        ..CdcState::default()
    };
    let progress = target
        .query_opt(
            "SELECT end_lsn::text, commit_time::text, \
                    extract(epoch FROM commit_time)::float8 \
             FROM pgtide.cdc_progress WHERE task = $1",
            &[&task.name],
        )
        .await
        .map_err(err)?;
    let mut applied: Option<Lsn> = None;
    let mut commit_epoch: Option<f64> = None;
    if let Some(p) = &progress {
        let lsn: String = p.get(0);
        applied = lsn.parse().ok();
        c.applied_lsn = Some(lsn);
        c.applied_commit_time = p.get(1);
        commit_epoch = p.get(2);
    }
    if running {
        let a = changes_total(target, &task.name).await.map_err(err)?;
        let t0 = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = changes_total(target, &task.name).await.map_err(err)?;
        c.changes_per_second = Some((b - a) as f64 / t0.elapsed().as_secs_f64());
    }
    match connect(&task.source.url, Side::Source).await {
        Err(e) => c.source_error = Some(e.report()),
        Ok(source) => {
            match slot::slot_info(&source, &c.slot).await? {
                Some(info) => {
                    c.slot_exists = Some(true);
                    c.slot_active = Some(info.active);
                    c.wal_status = info.wal_status;
                    c.confirmed_lsn = info.confirmed_flush.map(|l| l.to_string());
                }
                None => c.slot_exists = Some(false),
            }
            let row = source
                .query_one(
                    "SELECT pg_current_wal_lsn()::text, extract(epoch FROM now())::float8",
                    &[],
                )
                .await
                .map_err(|e| classify(e, "reading the source's WAL position"))?;
            let current: String = row.get(0);
            let now: f64 = row.get(1);
            if let (Ok(cur), Some(app)) = (current.parse::<Lsn>(), applied) {
                let lag = cur.0.saturating_sub(app.0);
                c.lag_bytes = Some(lag);
                // Only WAL written after the last applied commit is pending; with none (or only
                // WAL no transaction of ours will ever apply) the lag in time is zero.
                c.lag_seconds = Some(match commit_epoch {
                    Some(t) if lag > 0 => (now - t).max(0.0),
                    _ => 0.0,
                });
            }
            c.source_lsn = Some(current);
        }
    }
    Ok(c)
}

async fn changes_total(
    client: &Client,
    task: &str,
) -> std::result::Result<i64, tokio_postgres::Error> {
    client
        .query_one(
            "SELECT coalesce(sum(inserts + updates + deletes + truncates), 0)::int8 \
             FROM pgtide.cdc_table_stats WHERE task = $1",
            &[&task],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
}

/// True when a run of the task holds its lock on the target.
pub async fn run_active(target: &Client, task: &str) -> Result<bool> {
    Ok(target
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND classid = hashtext('pgtide')::oid AND objid = hashtext($1)::oid AND objsubid = 2)",
            &[&task],
        )
        .await
        .map_err(|e| classify(e, "looking for an active run of the task on the target"))?
        .get(0))
}

impl TaskStatus {
    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut out = format!(
            "task {}: mode {}, phase {}, {} (started {}, updated {})\n",
            self.task,
            self.mode,
            self.phase,
            if self.running {
                "running"
            } else {
                "not running"
            },
            self.started_at,
            self.updated_at
        );
        if let Some(e) = &self.last_error {
            out.push_str(&format!("last error: {e}\n"));
        }
        if let Some(c) = &self.cdc {
            let slot = match (c.slot_exists, c.slot_active) {
                (Some(true), Some(true)) => "active",
                (Some(true), _) => "inactive",
                (Some(false), _) => "MISSING",
                _ => "unknown",
            };
            out.push_str(&format!(
                "slot {} {slot}{}; confirmed {}; applied {} (commit {})\n",
                c.slot,
                c.wal_status
                    .as_deref()
                    .map(|w| format!(", wal_status {w}"))
                    .unwrap_or_default(),
                c.confirmed_lsn.as_deref().unwrap_or("-"),
                c.applied_lsn.as_deref().unwrap_or("-"),
                c.applied_commit_time.as_deref().unwrap_or("-"),
            ));
            match (&c.source_error, c.lag_bytes) {
                (Some(e), _) => out.push_str(&format!("source unreachable: {e}\n")),
                (None, Some(b)) => out.push_str(&format!(
                    "source at {}; lag {} bytes, {:.1} s{}\n",
                    c.source_lsn.as_deref().unwrap_or("-"),
                    b,
                    c.lag_seconds.unwrap_or(0.0),
                    c.changes_per_second
                        .map(|r| format!("; applying {r:.0} changes/s"))
                        .unwrap_or_default()
                )),
                _ => {}
            }
        }
        out.push_str(&format!(
            "{:<40} {:>8} {:>12} {:>9} {:>10} {:>10} {:>10} {:>9} {:>4}  {}\n",
            "table",
            "state",
            "loaded rows",
            "load s",
            "inserts",
            "updates",
            "deletes",
            "truncates",
            "ddl",
            "validation"
        ));
        for t in &self.tables {
            out.push_str(&format!(
                "{:<40} {:>8} {:>12} {:>9.1} {:>10} {:>10} {:>10} {:>9} {:>4}  {}\n",
                t.table,
                t.state,
                t.full_load_rows,
                t.full_load_seconds,
                t.inserts,
                t.updates,
                t.deletes,
                t.truncates,
                t.ddl,
                t.validation
            ));
        }
        out
    }
}
