//! Catching up through the SQL decoding interface (`pg_logical_slot_peek_binary_changes`).
//!
//! # Why
//!
//! A walsender streaming to a fast consumer sends every pgoutput message with its own `send()`
//! and checks for replies after every WAL record. Measured on a pgbench backlog (2 cores, TCP
//! over loopback), that costs the source ~6× the CPU of decoding itself: 3.2 CPU-seconds to
//! stream what `pg_logical_slot_peek_binary_changes` decodes and returns in 0.5 s. While a
//! backlog drains, the walsender is then the bottleneck, and it burns CPU on the production
//! source. The SQL function decodes the same slot with the same output plugin into a tuple
//! store and returns it as ordinary rows, which the server sends in 8 kB packets.
//!
//! # How it stays exactly-once
//!
//! * `peek` never moves the slot: every chunk starts at the slot's `confirmed_flush_lsn` and
//!   skips every transaction whose commit record starts before it, exactly as
//!   `START_REPLICATION` does.
//! * Decoding a chunk stops after the WAL record that reaches `upto_lsn`. Without streaming
//!   (not requested here) a transaction is output whole at its commit record, so a chunk holds
//!   only complete transactions, and every transaction whose commit record starts before
//!   `upto_lsn` is in this chunk or an earlier one.
//! * The caller applies and commits a chunk on the target (the checkpoint goes in the same
//!   target transaction, as for streamed changes) before it moves the slot with
//!   `pg_replication_slot_advance` to what the target made durable, never further. A crash
//!   in between re-reads the chunk, and the applier skips what its checkpoint covers.
//! * The slot is held only while the function decodes (it is released before the rows are
//!   sent), and a slot held by a walsender makes the function fail with `55006`, which is
//!   retried like a busy slot at `START_REPLICATION`.
//!
//! # Decoding the next chunk while this one is applied
//!
//! The function returns nothing before it has decoded its whole chunk, and the slot cannot
//! move past what the target has made durable, so chunk after chunk on the task's slot would
//! leave the target idle while the source decodes and the source idle while the target
//! applies. [`ReadAhead`] decodes the next chunk meanwhile on a *copy* of the slot
//! (`pg_copy_logical_replication_slot`, PostgreSQL 12+): a temporary slot owned by a session
//! of its own, moved (`pg_replication_slot_advance`, a cheap fast-forward decode) to the start
//! of that chunk and peeked there. The copy may run ahead of the target because nothing ever
//! resumes from it: it disappears with its session (also when pgtide dies), and the task's own
//! slot still moves only to durable positions.
//!
//! Large transactions are spilled to disk by the server's reorder buffer and its tuple store,
//! not held in memory, and the rows come through a bounded channel, so pgtide's memory stays
//! bounded too.

use crate::connect::classify;
use crate::slot::busy_is_transient;
use bytes::Bytes;
use futures::StreamExt;
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, Result};
use tokio::sync::mpsc;
use tokio_postgres::Client;

/// The peek statement. The slot name, end position and plugin options are parameters.
const PEEK: &str = "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1::text::name, $2::text::pg_lsn, NULL, VARIADIC $3::text[])";

/// A chunk of decoded messages arriving from a running peek.
pub struct PeekChunk {
    rx: mpsc::Receiver<Result<Bytes>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for PeekChunk {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PeekChunk {
    /// Decode the slot's changes from its confirmed position up to `upto` (see the module
    /// documentation for where exactly it stops). `options` are pgoutput's options, as for
    /// `START_REPLICATION`. Rows are read ahead by a background task, at most `read_ahead`
    /// messages at a time.
    pub async fn start(
        client: &Client,
        slot: &str,
        upto: Lsn,
        options: &[(&str, String)],
        read_ahead: usize,
    ) -> Result<PeekChunk> {
        let what = format!("decoding replication slot {slot} up to {upto} on the source");
        let flat: Vec<String> = options
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.clone()])
            .collect();
        let upto_text = upto.to_string();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&slot, &upto_text, &flat];
        let rows = client
            .query_raw(PEEK, params)
            .await
            .map_err(|e| busy_is_transient(classify(e, &what)))?;
        let (tx, rx) = mpsc::channel(read_ahead.max(1));
        let reader = tokio::spawn(async move {
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                let item = row
                    .map_err(|e| busy_is_transient(classify(e, &what)))
                    .and_then(|r| {
                        r.try_get::<_, &[u8]>(0)
                            .map(Bytes::copy_from_slice)
                            .map_err(|e| Error::internal(format!("{what}: unexpected row: {e}")))
                    });
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(PeekChunk { rx, reader })
    }

    /// The next message, `None` at the end of the chunk.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        self.rx.recv().await.transpose()
    }
}

/// Move the slot's confirmed position to `to` (never backwards: the server ignores a position
/// below the current one). Only ever called with a position the target has made durable.
pub async fn advance_slot(client: &Client, slot: &str, to: Lsn) -> Result<()> {
    let to_text = to.to_string();
    client
        .execute(
            "SELECT pg_catalog.pg_replication_slot_advance($1::text::name, $2::text::pg_lsn)",
            &[&slot, &to_text],
        )
        .await
        .map_err(|e| {
            busy_is_transient(classify(
                e,
                &format!("moving replication slot {slot} to {to} on the source"),
            ))
        })?;
    Ok(())
}

/// How far the source has flushed its WAL (what decoding can read): the flush position on a primary, the replayed one on
/// a standby (where logical decoding runs from PostgreSQL 16).
pub async fn server_position(client: &Client) -> Result<Lsn> {
    let row = client
        .query_one(
            "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_flush_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|e| classify(e, "reading the source's WAL position"))?;
    let text: String = row.get(0);
    text.parse().map_err(Error::internal)
}

/// A chunk decoded ahead on a temporary copy of the slot (see the module documentation). Its
/// session, and with it the copy, ends when this is dropped.
pub struct ReadAhead {
    /// Where the chunk starts: transactions committing before it are not in it.
    pub from: Lsn,
    /// Where decoding stops.
    pub upto: Lsn,
    chunk: PeekChunk,
    _session: Client,
}

impl ReadAhead {
    /// Copy `slot` into a temporary slot on the new session `session`, move the copy to
    /// `from`, and start decoding up to `upto`.
    pub async fn start(
        session: Client,
        slot: &str,
        from: Lsn,
        upto: Lsn,
        options: &[(&str, String)],
        read_ahead: usize,
    ) -> Result<ReadAhead> {
        let pid: i32 = session
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
            .await
            .map_err(|e| classify(e, "starting a read-ahead session on the source"))?
            .get(0);
        // Unique while the session lives, and the session is the copy's lifetime.
        let copy = format!("pgtide_read_ahead_{pid}");
        session
            .execute(
                "SELECT pg_catalog.pg_copy_logical_replication_slot($1::text::name, $2::text::name, true)",
                &[&slot, &copy],
            )
            .await
            .map_err(|e| {
                busy_is_transient(classify(
                    e,
                    &format!("copying replication slot {slot} to decode ahead"),
                ))
            })?;
        advance_slot(&session, &copy, from).await?;
        let chunk = PeekChunk::start(&session, &copy, upto, options, read_ahead).await?;
        Ok(ReadAhead {
            from,
            upto,
            chunk,
            _session: session,
        })
    }

    /// The next message, `None` at the end of the chunk.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        self.chunk.next().await
    }
}
