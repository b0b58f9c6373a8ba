//! Operating a migration: the commands around `run`.
//!
//! - [`check`]: every prerequisite and risk, with its fix; `run` refuses to start on errors.
//! - [`dry_run`]: `pgtide plan`, the resolved tables and how each will move.
//! - [`convert`]: the MySQL schema and assessment report for a MySQL/MariaDB target.
//! - [`cleanup`]: remove what a task created (slot, publications, state, spill files).
//! - [`status`]: where a task stands, from the state on the target and the slot on the source.
//! - [`validate`]: compare source and target table by table, naming differing keys.
//!
//! Each reads the task file like `run` does, so the same file drives the whole migration.

pub mod check;
pub mod cleanup;
pub mod convert;
pub mod dry_run;
pub mod status;
pub mod validate;

use pgtide_core::task::Task;
use pgtide_postgres::connect::{Side, connect};
use std::time::Duration;

/// Record how a run ended in the task's state on the target, for `status`: the error it stopped
/// with, or none. Best effort and bounded in time: when the target is what failed, the run's
/// own error message is what the operator sees.
pub async fn record_outcome(task: &Task, error: Option<&pgtide_core::Error>) {
    let work = async {
        let client = connect(&task.target.url, Side::Target).await.ok()?;
        let exists: bool = client
            .query_one("SELECT to_regclass('pgtide.task') IS NOT NULL", &[])
            .await
            .ok()?
            .get(0);
        if exists {
            let text = error.map(|e| e.report());
            pgtide_postgres::state::record_error(&client, &task.name, text.as_deref())
                .await
                .ok()?;
        }
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
}
