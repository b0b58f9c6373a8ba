//! pgtide: move a live PostgreSQL database to a new server.
//!
//! # Layout
//! - [`plan`]: table selection, COPY format and chunking, decided from the schema model alone.
//! - [`cdc`]: change data capture: slot and publication, the full load from the slot's
//!   snapshot, the streaming loop with exactly-once apply, reconnects and end-LSN stops.
//! - [`shutdown`]: the operator's stop request.
//! - [`fullload`]: the full load's phases: check, prepare, copy with per-table DDL, finish.
//! - [`scheduler`]: the work queue shared by the load's workers.
//! - [`progress`] and [`report`]: what the operator sees while it runs and at the end.
//! - [`metrics`]: Prometheus metrics and a JSON status over HTTP for a running task.
//! - [`mysql_load`]: the full load into a MySQL/MariaDB target.
//! - [`ops`]: `cleanup`, `status` and `validate`.
//! - [`verify`]: a whole-database comparison (tables, sequences, schema objects).
//! - [`demo`] and [`demo_data`]: `pgtide demo` on throwaway servers.
//! - [`logging`]: log lines (text or JSON) routed around the progress bars.
//!
//! The domain types live in `pgtide-core`, everything that speaks to PostgreSQL in
//! `pgtide-postgres`; this crate is orchestration and presentation.

pub mod cdc;
pub mod demo;
pub mod demo_data;
pub mod fullload;
pub mod logging;
pub mod metrics;
pub mod mysql_cdc;
pub mod mysql_load;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod report;
pub mod rules_check;
pub mod scheduler;
pub mod shutdown;
pub mod verify;

/// Wait for every worker; the first error (in spawn order) wins, a panicked worker is an
/// internal error naming `what`. Every worker is awaited before returning, so none is left
/// running against a connection the caller is about to close.
pub(crate) async fn join_workers(
    workers: Vec<tokio::task::JoinHandle<pgtide_core::Result<()>>>,
    what: &str,
) -> pgtide_core::Result<()> {
    let mut first_err = None;
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(pgtide_core::Error::internal(format!("{what}: {e}")));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
