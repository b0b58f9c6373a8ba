//! One consistent snapshot shared by every worker of the full load.
//!
//! # One instant for all tables
//!
//! ```text
//!   exporter:  BEGIN REPEATABLE READ; SELECT pg_export_snapshot()  ──► 'snap-id'   (held open)
//!                 │
//!   worker 1:  BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT 'snap-id'; COPY a; COPY b; ...
//!   worker 2:  BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT 'snap-id'; COPY c (chunk 1); ...
//!   pg_dump:   --snapshot='snap-id'  (the schema of the same instant)
//! ```
//!
//! Every worker sees exactly the rows committed when the exporter took its snapshot, so the
//! target becomes a copy of one instant of the source even though tables are read at different
//! times by different connections. The exported snapshot only stays importable while the
//! exporting transaction is open, so [`ExportedSnapshot`] owns that connection and must outlive
//! every import (including re-imports after a worker reconnects). The exporter is also the
//! connection that introspects the catalog, inside the same transaction.
//!
//! With change data capture, the snapshot comes instead from creating the replication slot
//! (`CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`), which ties it to the slot's consistent
//! point; the import side is the same.

use crate::connect::{Side, classify, connect};
use pgtide_core::Result;
use pgtide_core::endpoint::ConnUrl;
use pgtide_core::ident::{QualifiedName, quote_literal};
use tokio_postgres::Client;

/// Lock the tables a load reads in `ACCESS SHARE` mode, in the snapshot's transaction on
/// `client`, until that transaction ends.
///
/// TRUNCATE and most ALTER TABLEs are not MVCC-safe: one committed while the load runs would
/// show the snapshot an empty or rewritten table, and the target would silently miss rows. With
/// the lock they wait, as with `pg_dump`; reads and writes are not blocked. `tables` pairs a
/// name with whether the lock covers its partitions too (otherwise `ONLY`).
pub async fn lock_for_load(client: &Client, tables: &[(&QualifiedName, bool)]) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = tables
        .iter()
        .map(|(t, recurse)| format!("{}{}", if *recurse { "" } else { "ONLY " }, t.quoted()))
        .collect();
    client
        .batch_execute(&format!(
            "SET LOCAL lock_timeout = '60s'; LOCK TABLE {} IN ACCESS SHARE MODE; SET LOCAL lock_timeout = 0",
            list.join(", ")
        ))
        .await
        .map_err(|e| {
            classify(e, "locking the source tables against TRUNCATE and ALTER during the load")
                .with_hint("a session holds an exclusive lock on one of them (a long ALTER TABLE or VACUUM FULL?); retry when it is done")
        })
}

/// A snapshot exported by an open transaction on the source.
pub struct ExportedSnapshot {
    client: Client,
    name: String,
}

impl ExportedSnapshot {
    /// Open a connection, start a repeatable-read transaction and export its snapshot.
    pub async fn export(url: &ConnUrl) -> Result<Self> {
        let client = connect(url, Side::Source).await?;
        client
            .batch_execute(
                "SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0; \
                 BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            )
            .await
            .map_err(|e| classify(e, "starting the snapshot transaction on the source"))?;
        let name: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| classify(e, "exporting a snapshot on the source"))?
            .get(0);
        Ok(ExportedSnapshot { client, name })
    }

    /// Hold a snapshot exported elsewhere (by `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`),
    /// through a connection that imported it. The exporter must stay open meanwhile.
    pub async fn import(url: &ConnUrl, name: &str) -> Result<Self> {
        let client = connect(url, Side::Source).await?;
        begin_in_snapshot(&client, name).await?;
        Ok(ExportedSnapshot {
            client,
            name: name.to_string(),
        })
    }

    /// The snapshot identifier to import.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exporting connection, inside the snapshot's transaction (for introspection).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// End the exporting transaction. Imports fail after this.
    pub async fn release(self) -> Result<()> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(e, "closing the snapshot transaction on the source"))
    }
}

/// Start a read-only repeatable-read transaction on `client` that sees `snapshot`.
pub async fn begin_in_snapshot(client: &Client, snapshot: &str) -> Result<()> {
    // SET TRANSACTION SNAPSHOT takes no parameters; the identifier comes from the server
    // (pg_export_snapshot or CREATE_REPLICATION_SLOT), never from user input, and is quoted.
    let sql = format!(
        "SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0; \
         BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| classify(e, "importing the load snapshot on a source connection"))
}
