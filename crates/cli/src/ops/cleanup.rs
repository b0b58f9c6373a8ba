//! `pgtide cleanup`: remove everything a task created, and say what was removed.
//!
//! On the source: the replication slot (a forgotten slot pins WAL until the disk fills, the
//! most dangerous leftover of any CDC tool) and the publications. On the target: the task's
//! rows in the `pgtide` state schema, and the schema itself when no other task uses it, unless
//! `--keep-state`. Locally: the spill directory.
//!
//! Idempotent: a second run finds nothing and says so. It refuses to run while a run of the task
//! is active (the task's advisory lock on the target is held, or the slot is in use), because
//! dropping the slot under a live stream would lose the changes not applied yet.
//!
//! pgtide writes its heartbeats as logical messages (`pg_logical_emit_message`), so there is no
//! heartbeat table to remove, and it does not capture DDL, so there are no event triggers either.
//! `REPLICA IDENTITY FULL` set under `tables_without_key: replica-identity-full` is left in place
//! and reported: it changes what the source logs, not what it stores, and resetting it could
//! break another consumer that relies on it.

use pgtide_core::task::{CdcSettings, Task};
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::connect::{Side, classify, connect};
use pgtide_postgres::{slot, state};
use serde::Serialize;

/// What cleanup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    /// Objects removed, one line each (`replication slot pgtide_shop on the source`).
    pub removed: Vec<String>,
    /// Things deliberately left in place, with why.
    pub kept: Vec<String>,
}

impl CleanupReport {
    /// Human-readable lines.
    pub fn render(&self, task: &str) -> String {
        let mut out = String::new();
        if self.removed.is_empty() {
            out.push_str(&format!("cleanup of task {task}: nothing to remove\n"));
        } else {
            out.push_str(&format!("cleanup of task {task}: removed\n"));
            for r in &self.removed {
                out.push_str(&format!("  {r}\n"));
            }
        }
        for k in &self.kept {
            out.push_str(&format!("  kept: {k}\n"));
        }
        out
    }
}

/// Remove the task's slot, publications, state and spill files.
pub async fn cleanup(task: &Task, keep_state: bool) -> Result<CleanupReport> {
    let mut report = CleanupReport::default();
    let target = connect(&task.target.url, Side::Target).await?;
    let source = connect(&task.source.url, Side::Source).await?;

    let state_exists: bool = target
        .query_one("SELECT to_regclass('pgtide.task') IS NOT NULL", &[])
        .await
        .map_err(|e| classify(e, "looking for pgtide state on the target"))?
        .get(0);
    // Holding the task's lock keeps a run from starting halfway through, and fails at once if
    // one is active.
    state::lock_task(&target, &task.name).await.map_err(|e| {
        if e.kind() == ErrorKind::Conflict {
            Error::new(
                ErrorKind::Conflict,
                format!("a run of task {:?} is active on the target", task.name),
            )
            .with_hint("stop it first (Ctrl-C or SIGTERM, or pgtide run --end-lsn), then run cleanup again")
        } else {
            e
        }
    })?;

    let slot_name = CdcSettings::slot_name(&task.name);
    if let Some(info) = slot::slot_info(&source, &slot_name).await? {
        if info.active {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("replication slot {slot_name} on the source is in use by a running process"),
            )
            .with_hint("stop the pgtide run that streams from it (or whatever else uses it), then run cleanup again"));
        }
        if slot::drop_slot(&source, &slot_name).await? {
            report
                .removed
                .push(format!("replication slot {slot_name} on the source"));
        }
    }
    for publication in [
        CdcSettings::publication_name(&task.name),
        CdcSettings::insert_only_publication_name(&task.name),
    ] {
        if slot::drop_publication(&source, &publication).await? {
            report
                .removed
                .push(format!("publication {publication} on the source"));
        }
    }
    let full_identity: Vec<String> = source
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relreplident = 'f' AND c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| classify(e, "reading replica identities on the source"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !full_identity.is_empty() {
        report.kept.push(format!(
            "REPLICA IDENTITY FULL on {} (reset with ALTER TABLE ... REPLICA IDENTITY DEFAULT if pgtide set it and nothing else needs it)",
            full_identity.join(", ")
        ));
    }

    if state_exists && keep_state {
        report
            .kept
            .push("the pgtide state schema on the target (--keep-state)".into());
    } else if state_exists {
        remove_state(&target, &task.name, &mut report).await?;
    }
    let _ = state::unlock_task(&target, &task.name).await;

    // Only pgtide's own spool files: cdc.spill_dir may be a directory the operator shares
    // with other things. The directory goes too when that leaves it empty.
    let spill = &task.cdc.spill_dir;
    if spill.is_dir() {
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("cleaning the spill directory {}", spill.display()),
            )
            .with_source(e)
            .with_hint(
                "check the directory's permissions, or remove pgtide's *.spool files by hand",
            )
        };
        let mut files = 0;
        for entry in std::fs::read_dir(spill).map_err(io)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".spool") {
                std::fs::remove_file(entry.path()).map_err(io)?;
                files += 1;
            }
        }
        let empty = std::fs::read_dir(spill).map_err(io)?.next().is_none();
        if empty {
            std::fs::remove_dir(spill).map_err(io)?;
            report
                .removed
                .push(format!("spill directory {}", spill.display()));
        } else if files > 0 {
            report.removed.push(format!(
                "{files} spool file(s) in {} (the directory holds other files and is kept)",
                spill.display()
            ));
        }
    }
    Ok(report)
}

/// Delete the task's state rows, and the schema when no other task is left in it.
async fn remove_state(
    target: &tokio_postgres::Client,
    task: &str,
    report: &mut CleanupReport,
) -> Result<()> {
    let err = |e| classify(e, "removing pgtide's state on the target");
    // The same lock as the schema's creation, so no other task creates it meanwhile.
    target
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('pgtide state schema'))")
        .await
        .map_err(err)?;
    let result = async {
        let mut rows = 0u64;
        for table in [
            "load_chunk",
            "load_table",
            "load_step",
            "cdc_progress",
            "cdc_table_stats",
            "validation",
        ] {
            let exists: bool = target
                .query_one(
                    "SELECT to_regclass(format('pgtide.%I', $1::text)) IS NOT NULL",
                    &[&table],
                )
                .await
                .map_err(err)?
                .get(0);
            if exists {
                rows += target
                    .execute(
                        &format!("DELETE FROM pgtide.{table} WHERE task = $1"),
                        &[&task],
                    )
                    .await
                    .map_err(err)?;
            }
        }
        rows += target
            .execute("DELETE FROM pgtide.task WHERE name = $1", &[&task])
            .await
            .map_err(err)?;
        if rows > 0 {
            report.removed.push(format!(
                "state of task {task} in schema pgtide on the target ({rows} rows)"
            ));
        }
        let others: i64 = target
            .query_one("SELECT count(*) FROM pgtide.task", &[])
            .await
            .map_err(err)?
            .get(0);
        if others == 0 {
            // pgtide's own tables by name, then the schema without CASCADE: anything else that
            // lives in it or depends on it makes this fail rather than disappear.
            target
                .batch_execute(
                    "DROP TABLE IF EXISTS pgtide.load_chunk, pgtide.load_table, pgtide.load_step, \
                     pgtide.cdc_progress, pgtide.cdc_table_stats, pgtide.validation, pgtide.task, \
                     pgtide.meta; DROP SCHEMA pgtide RESTRICT",
                )
                .await
                .map_err(|e| {
                    classify(e, "dropping schema pgtide on the target").with_hint(
                        "something else was created in schema pgtide or depends on its tables: move or drop it, or use --keep-state",
                    )
                })?;
            report
                .removed
                .push("schema pgtide on the target (no other task uses it)".into());
        } else {
            report.kept.push(format!(
                "schema pgtide on the target: {others} other task(s) keep their state there"
            ));
        }
        Ok::<_, Error>(())
    }
    .await;
    match result {
        Ok(()) => target.batch_execute("COMMIT").await.map_err(err),
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
