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
//! * The caller applies a chunk and records its end in the target transaction that commits
//!   its last changes (with the checkpoint, as for streamed changes; that batch may go on
//!   with the next chunk's transactions). It moves the slot (`pg_replication_slot_advance`
//!   while catching up, a status update through the replication protocol at a stop) only to
//!   what the target made durable, never further. A crash in between re-reads the chunk, and
//!   the applier skips what its checkpoint covers.
//! * The slot is held only while the function decodes (it is released before the rows are
//!   sent), and a slot held by a walsender makes the function fail with `55006`, which is
//!   retried like a busy slot at `START_REPLICATION`.
//!
//! # Decoding ahead of the applier
//!
//! The function returns nothing before it has decoded its whole chunk, and the slot cannot
//! move past what the target has made durable, so chunk after chunk on the task's slot would
//! leave the target idle while the source decodes and the source idle while the target
//! applies. [`Prefetch`] decodes ahead instead, on a *copy* of the slot
//! (`pg_copy_logical_replication_slot`, PostgreSQL 12+): a temporary slot owned by a session
//! of its own, consumed chunk after chunk with `pg_logical_slot_get_binary_changes`. `get`
//! moves the copy to the end of what it decoded, so the next chunk starts there (an earlier
//! design peeked a fresh copy per chunk, moved to the chunk's start by a fast-forward decode
//! from the task's slot: that re-read up to two chunks of WAL per chunk, and the next chunk's
//! decoding only started when the previous one was being applied). The copy may run ahead of
//! the target because nothing ever resumes from it: it disappears with its session (also when
//! pgtide dies), and the task's own slot still moves only to durable positions.
//!
//! A `get` stops after the WAL record that reaches `upto_lsn`, or after the record whose output
//! brings its rows to `upto_nchanges`, leaving the copy confirmed at that record's end; the
//! next `get` skips every transaction whose commit record starts before it. So chunk `k` holds
//! exactly the transactions whose commit record starts in `[end(k-1), end(k))` ([`chunk_end`]).
//!
//! A chunk is bounded twice, whichever comes first: by WAL (`upto_lsn`: `cdc.catch_up_chunk_mb`,
//! or what the next `get` re-reads when that is more than two chunks, below, [`chunk_size`])
//! and by decoded messages (`upto_nchanges`: 8192 in the first chunk, twice as many in each
//! next one, so that after a dozen chunks the WAL bound is the only one left). Bounding the
//! first chunks by WAL alone fed the applier badly right after a checkpoint:
//! the WAL there is mostly full-page images, so the first 4 + 8 + 16 + 32 + 32 MB of a pgbench
//! backlog held only ~70k messages, and the target then sat idle for ~0.4 s while the source
//! decoded the next, much larger chunk. The price is paid where `get`s re-read much: each of
//! the first, small chunks re-reads the stretch behind `restart_lsn` too. Measured on a saved
//! pgbench backlog (interleaved drains, one sitting): in the benchmark's regime the drain took
//! 5–8% less time with the message bound (medians of six, 2.29 vs 2.42 s and 2.51 vs 2.61 s);
//! with 8 MB chunks, standing in for a source writing four times more WAL per interval, the
//! source spent ~0.2 CPU-s more (medians 1.54 vs 1.34) in the same drain time (2.85 vs 2.87 s);
//! lifting the message bound once a chunk grows for re-reading made the benchmark's drain 30%
//! slower (3.47 vs 2.67 s). The prefetch holds a bounded number of bytes of
//! decoded messages; when that is full the server waits to send the rest, which bounds
//! pgtide's memory and keeps the source from decoding arbitrarily far ahead. The overlap is
//! partial: the next `get` starts once the current chunk's rows are all in pgtide's buffer,
//! and its rows come only after its whole chunk is decoded, so the applier waits whenever
//! decoding a chunk takes longer than applying what the buffer holds. Smaller chunks shorten that wait but make each
//! `get` re-read more: decoding restarts at the copy's `restart_lsn`, which only moves to
//! `xl_running_xacts` records (every 15 s on an idle-free primary) and then to where the
//! oldest transaction open at that record began, i.e. one interval back or more. Every `get`
//! decodes that stretch again before its own chunk (measured on a pgbench backlog: 8 chunks of
//! 32 MB took 1.6 s of decoding on the source, one `get` of all of it 1.1 s). On a source that
//! writes more WAL per interval than a chunk holds, that stretch would dwarf the chunks, so
//! they grow with it.
//!
//! The rows are received on a thread of its own (with its own runtime and the session's
//! connection task): on the applier's thread, receiving a 32 MB chunk's ~330k rows took 0.3 s,
//! in which the source did not decode the next chunk. They are copied into shared blocks and
//! handed over in batches, one budget permit and one channel message per batch.
//!
//! Large transactions are spilled to disk by the server's reorder buffer and its tuple store,
//! not held in memory, and the rows come through a bounded buffer, so pgtide's memory stays
//! bounded too.

use crate::connect::{Side, classify, connect_with_options};
use crate::slot::busy_is_transient;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use pgtide_core::endpoint::ConnUrl;
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, ErrorKind, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
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
        let flat = plugin_options(options);
        let upto_text = upto.to_string();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&slot, &upto_text, &flat];
        let rows = client
            .query_raw(PEEK, params)
            .await
            .map_err(|e| busy_is_transient(classify(e, &what)))?;
        let (tx, rx) = mpsc::channel(read_ahead.max(1));
        let reader = tokio::spawn(async move {
            let mut rows = std::pin::pin!(rows);
            let mut arena = BytesMut::new();
            while let Some(row) = rows.next().await {
                let item = message(&mut arena, row, &what);
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

/// The pgoutput options as the decoding functions take them (`VARIADIC text[]`: name, value,
/// name, value, ...).
fn plugin_options(options: &[(&str, String)]) -> Vec<String> {
    options
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.clone()])
        .collect()
}

/// One decoded message from a row of the decoding functions (`data bytea`), copied into
/// `arena`: messages are cut from shared blocks, one allocation per block instead of one per
/// message.
fn message(
    arena: &mut BytesMut,
    row: std::result::Result<tokio_postgres::Row, tokio_postgres::Error>,
    what: &str,
) -> Result<Bytes> {
    let row = row.map_err(|e| busy_is_transient(classify(e, what)))?;
    let data: &[u8] = row
        .try_get(0)
        .map_err(|e| Error::internal(format!("{what}: unexpected row: {e}")))?;
    if arena.capacity() - arena.len() < data.len() {
        // A new block: the old one is freed once the messages cut from it are dropped.
        *arena = BytesMut::with_capacity(ARENA_BLOCK.max(data.len()));
    }
    arena.extend_from_slice(data);
    Ok(arena.split().freeze())
}

/// Move the slot's confirmed position to `to`, or leave it where it is when it is already
/// further (the server refuses to move a slot backwards). The task's slot is only ever moved to
/// a position the target has made durable.
pub async fn advance_slot(client: &Client, slot: &str, to: Lsn) -> Result<()> {
    let to_text = to.to_string();
    let moved = client
        .execute(
            "SELECT pg_catalog.pg_replication_slot_advance(s.slot_name, GREATEST($2::text::pg_lsn, s.confirmed_flush_lsn)) \
             FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1::text::name",
            &[&slot, &to_text],
        )
        .await
        .map_err(|e| {
            busy_is_transient(classify(
                e,
                &format!("moving replication slot {slot} to {to} on the source"),
            ))
        })?;
    if moved == 0 {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("replication slot {slot} is missing on the source"),
        )
        .with_hint("it was dropped while pgtide used it; run the task again (with --restart if the task's own slot is gone)"));
    }
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

/// Whether what is left from `position` is decoded in chunks (else streamed): a backlog of at
/// least `min_backlog`, or the rest up to an `end` the server has already flushed.
pub fn rest_is_a_chunk(end: Option<Lsn>, head: Lsn, position: Lsn, min_backlog: u64) -> bool {
    match end {
        Some(end) if end <= head => end > position,
        _ => head > position && head.0 - position.0 >= min_backlog,
    }
}

/// What the [`Prefetch`] hands over next.
#[derive(Debug)]
pub enum Prefetched {
    /// A pgoutput message of the current chunk.
    Message(Bytes),
    /// The current chunk is complete: every transaction whose commit record starts before
    /// this position was in it or in an earlier one.
    ChunkEnd(Lsn),
    /// No further chunk: the backlog left is below the catch-up threshold, or the end
    /// position was reached.
    Done,
}

/// When the [`Prefetch`] stops and how big its chunks are.
#[derive(Debug, Clone, Copy)]
pub struct PrefetchPlan {
    /// Decode no further than this (the run's end LSN), if set.
    pub end: Option<Lsn>,
    /// Stop when less than this much WAL is left to decode (streaming takes over), unless
    /// the rest up to `end` is all there: that is decoded as a last chunk (switching to
    /// streaming for it took ~1 s: the slot's move and the walsender's start both decode from
    /// the slot's `restart_lsn`).
    pub min_backlog: u64,
    /// The first chunk ends after the first transaction that brings its decoded messages to
    /// this many (small, so that applying starts early); each later chunk may hold
    /// [`CHANGES_GROWTH`] times more than the one before.
    pub first_changes: u64,
    /// WAL bytes a chunk decodes, at most (more when what a `get` re-reads is larger, see
    /// [`chunk_size`]).
    pub max_chunk: u64,
    /// Bytes of decoded messages queued in pgtide (received, not yet taken by the applier)
    /// at most. What the applier has taken stays until its batch is sent to the target.
    pub budget: usize,
}

/// What the read-ahead thread hands over: messages in batches (one permit and one channel
/// operation per batch, not per message: per message they cost the thread a third of its time),
/// chunk ends, the end.
enum Item {
    Messages(Vec<Bytes>, OwnedSemaphorePermit),
    ChunkEnd(Lsn),
    Done,
}

/// Messages per batch handed over, at most.
const BATCH_MESSAGES: usize = 512;

/// Bytes of messages per batch handed over, at most (a batch is also handed over when the
/// server has sent nothing more for now).
const BATCH_BYTES: usize = 256 << 10;

/// Messages are copied out of their rows into blocks of this size ([`message`]).
const ARENA_BLOCK: usize = 256 << 10;

/// Chunks decoded one after the other, ahead of the applier, on a temporary copy of the slot
/// (see the module documentation), by a session on a thread of its own. The copy is consumed
/// with `pg_logical_slot_get_binary_changes`, so each chunk starts where the previous one
/// ended; the session, the copy and the thread end when this is dropped.
pub struct Prefetch {
    rx: mpsc::UnboundedReceiver<Result<Item>>,
    /// The rest of the batch being handed out, and its share of the budget.
    ready: std::collections::VecDeque<Bytes>,
    _permit: Option<OwnedSemaphorePermit>,
    /// The source's flush position as the prefetch last read it (for the status).
    head: Arc<AtomicU64>,
    /// Dropped with the prefetch: the thread stops at once (closing its session).
    _cancel: oneshot::Sender<()>,
}

impl Prefetch {
    /// Start a thread with a new session on the source (`url`, startup `session_options`),
    /// copy `slot` into a temporary slot of that session, move the copy to `from` (where the
    /// applier is), and decode chunk after chunk from there. Errors up to the copy's move are
    /// returned here (the caller then decodes on the slot itself).
    ///
    /// The thread matters: receiving a chunk's rows (~330k for 32 MB of pgbench WAL) took
    /// 0.3 s when it shared the applier's thread, and the next chunk's decoding only starts
    /// once they are all received; on its own thread it takes half that, and decoding on the
    /// source is no longer what the applier waits for.
    pub async fn start(
        url: &ConnUrl,
        session_options: &str,
        slot: &str,
        from: Lsn,
        plan: PrefetchPlan,
        options: &[(&str, String)],
    ) -> Result<Prefetch> {
        let flat = plugin_options(options);
        let (url, session_options, slot) =
            (url.clone(), session_options.to_string(), slot.to_string());
        let (tx, rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = oneshot::channel::<Result<()>>();
        let (cancel, cancelled) = oneshot::channel::<()>();
        let head = Arc::new(AtomicU64::new(from.0));
        let seen = head.clone();
        std::thread::Builder::new()
            .name("pgtide-decode".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(Error::internal(format!(
                            "cannot start the read-ahead's runtime: {e}"
                        ))));
                        return;
                    }
                };
                let work = async move {
                    let budget = Arc::new(Semaphore::new(plan.budget.max(1)));
                    match start_copy(&url, &session_options, &slot, from).await {
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                        }
                        Ok((session, copy)) => {
                            let _ = started_tx.send(Ok(()));
                            if let Err(e) =
                                prefetch(&session, &copy, from, plan, &flat, &budget, &seen, &tx)
                                    .await
                            {
                                let _ = tx.send(Err(e));
                            }
                        }
                    }
                };
                // The session's connection task lives on this runtime and ends with it.
                rt.block_on(async move {
                    tokio::select! {
                        _ = cancelled => {}
                        _ = work => {}
                    }
                });
            })
            .map_err(|e| Error::internal(format!("cannot start the read-ahead thread: {e}")))?;
        started_rx
            .await
            .map_err(|_| Error::internal("the read-ahead thread ended before it started"))??;
        Ok(Prefetch {
            rx,
            ready: Default::default(),
            _permit: None,
            head,
            _cancel: cancel,
        })
    }

    /// The source's flush position as last read before a chunk.
    pub fn server_at(&self) -> Lsn {
        Lsn(self.head.load(Ordering::Relaxed))
    }

    /// The next message, chunk end or end of the prefetch. Cancel-safe: dropping the future
    /// before it returns loses nothing.
    pub async fn next(&mut self) -> Result<Prefetched> {
        loop {
            if !self.ready.is_empty() {
                // One unit of the task's cooperative budget per message, as a channel receive
                // would take: without it the applier ran through whole batches without ever
                // yielding, and the target's executor task (on the same thread) waited ~20 ms
                // to send each batch's first statement. Taken before the message leaves the
                // queue: a caller that drops this future while it yields loses nothing.
                tokio::task::consume_budget().await;
                let data = self.ready.pop_front().expect("the queue is not empty");
                return Ok(Prefetched::Message(data));
            }
            // The batch is all the applier's: its share of the budget is free again.
            self._permit = None;
            match self.rx.recv().await {
                Some(Ok(Item::Messages(batch, permit))) => {
                    self.ready.extend(batch);
                    self._permit = Some(permit);
                }
                Some(Ok(Item::ChunkEnd(at))) => return Ok(Prefetched::ChunkEnd(at)),
                Some(Ok(Item::Done)) => return Ok(Prefetched::Done),
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(Error::internal(
                        "the read-ahead of the slot ended unexpectedly",
                    ));
                }
            }
        }
    }
}

/// The read-ahead's session, with the temporary copy of `slot` moved to `from`.
async fn start_copy(
    url: &ConnUrl,
    session_options: &str,
    slot: &str,
    from: Lsn,
) -> Result<(Client, String)> {
    let session = connect_with_options(url, Side::Source, session_options).await?;
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
    // The copy starts at the slot's confirmed position, which trails `from` when the target's
    // durable position does.
    advance_slot(&session, &copy, from).await?;
    Ok((session, copy))
}

/// The prefetch loop: one chunk at a time on the copy, as long as enough backlog is left.
/// `get` (not `peek`) moves the copy to the end of each chunk, so the next one starts there.
#[allow(clippy::too_many_arguments)]
async fn prefetch(
    session: &Client,
    copy: &str,
    from: Lsn,
    plan: PrefetchPlan,
    options: &[String],
    budget: &Arc<Semaphore>,
    seen: &AtomicU64,
    tx: &mpsc::UnboundedSender<Result<Item>>,
) -> Result<()> {
    const GET: &str = "SELECT data FROM pg_catalog.pg_logical_slot_get_binary_changes($1::text::name, $2::text::pg_lsn, $3::int4, VARIADIC $4::text[])";
    let budget_total = plan.budget.max(1);
    let mut position = from;
    // What the next `get` decodes again before its own chunk (none known before the first).
    let mut rereads = 0;
    let mut changes = plan.first_changes.max(1);
    let mut arena = BytesMut::new();
    loop {
        let head = server_position(session).await?;
        seen.store(head.0, Ordering::Relaxed);
        let limit = plan.end.map_or(head, |e| e.min(head));
        if !rest_is_a_chunk(plan.end, head, position, plan.min_backlog) {
            let _ = tx.send(Ok(Item::Done));
            return Ok(());
        }
        let size = chunk_size(plan.max_chunk, rereads);
        if size > plan.max_chunk {
            tracing::debug!(
                slot = copy,
                rereads,
                size,
                "this chunk re-reads more WAL than two chunks hold: a larger chunk"
            );
        }
        let upto = Lsn(limit.0.min(position.0.saturating_add(size)));
        let most = i32::try_from(changes).unwrap_or(i32::MAX);
        tracing::debug!(slot = copy, from = %position, upto = %upto, changes = most, "decoding a chunk ahead");
        let what = format!("decoding up to {upto} ahead on the source");
        let upto_text = upto.to_string();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&copy, &upto_text, &most, &options];
        let rows = session
            .query_raw(GET, params)
            .await
            .map_err(|e| busy_is_transient(classify(e, &what)))?;
        let mut rows = std::pin::pin!(rows);
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        loop {
            // Hand the batch over when it is full or when no further row is at hand (the
            // applier should not wait for rows that are still on their way).
            let row = match futures::FutureExt::now_or_never(rows.next()) {
                Some(row) => row,
                None => {
                    if !send_batch(&mut batch, &mut batch_bytes, budget, budget_total, tx).await? {
                        return Ok(());
                    }
                    rows.next().await
                }
            };
            let Some(row) = row else { break };
            let data = message(&mut arena, row, &what)?;
            batch_bytes += data.len();
            batch.push(data);
            let full = batch.len() >= BATCH_MESSAGES || batch_bytes >= BATCH_BYTES;
            if full && !send_batch(&mut batch, &mut batch_bytes, budget, budget_total, tx).await? {
                return Ok(());
            }
        }
        if !send_batch(&mut batch, &mut batch_bytes, budget, budget_total, tx).await? {
            return Ok(());
        }
        // Where the `get` stopped: at the record that reached `upto`, or earlier, after the
        // record whose output brought its messages to `most` (see `chunk_end`).
        let confirmed;
        (confirmed, rereads) = copy_position(session, copy).await?;
        let end = chunk_end(position, upto, confirmed)?;
        if tx.send(Ok(Item::ChunkEnd(end))).is_err() {
            return Ok(());
        }
        position = end;
        changes = changes.saturating_mul(CHANGES_GROWTH);
    }
}

/// Chunks grow up to this many times `max_chunk` to keep up with what each `get` re-reads.
const REREAD_GROWTH: u64 = 16;

/// The WAL size of the next chunk: `max_chunk`; and when the next `get` re-reads more than two
/// such chunks before its own (`rereads`, from the copy's `restart_lsn` to its confirmed
/// position), as much as it re-reads, up to [`REREAD_GROWTH`] times `max_chunk`. Up to two
/// chunks of re-reading are left alone: on the benchmark's pgbench backlog (a `restart_lsn` one
/// or two intervals back) larger chunks saved source CPU but not drain time, and the applier
/// waits longer for a larger chunk's first rows.
///
/// `restart_lsn` moves only to `xl_running_xacts` records (every 15 s while the server is
/// busy, and at checkpoints), to where the oldest transaction open at such a record began. On
/// a source writing much WAL per 15 s, that is far more than a chunk: measured on a backlog
/// with 138 MB of WAL between two such records, the copy's `restart_lsn` stayed put for six
/// 32 MB chunks, the last of which re-read 188 MB before its own 32 MB. With chunks at least
/// as large as what they re-read (beyond two chunks' worth), the re-reading costs at most
/// twice as much decoding again as the chunks themselves.
fn chunk_size(max_chunk: u64, rereads: u64) -> u64 {
    let max_chunk = max_chunk.max(1);
    if rereads <= max_chunk.saturating_mul(2) {
        return max_chunk;
    }
    rereads.min(max_chunk.saturating_mul(REREAD_GROWTH))
}

/// The copy's confirmed position (where its last `get` stopped reading), and how much WAL the
/// next `get` decodes again before its own chunk: from the copy's `restart_lsn` to there.
async fn copy_position(session: &Client, copy: &str) -> Result<(Lsn, u64)> {
    let what = "reading the read-ahead slot's position on the source";
    let row = session
        .query_opt(
            "SELECT confirmed_flush_lsn::text, \
                    pg_catalog.pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn)::int8 \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1::text::name",
            &[&copy],
        )
        .await
        .map_err(|e| classify(e, what))?
        .ok_or_else(|| Error::internal(format!("{what}: the slot {copy} is gone")))?;
    let confirmed: Option<String> = row.get(0);
    let confirmed: Lsn = confirmed
        .ok_or_else(|| Error::internal(format!("{what}: {copy} has no confirmed position")))?
        .parse()
        .map_err(|e| Error::internal(format!("{what}: {e}")))?;
    let distance: Option<i64> = row.get(1);
    Ok((confirmed, distance.map_or(0, |d| d.max(0) as u64)))
}

/// Each chunk may hold this many times more messages than the one before.
const CHANGES_GROWTH: u64 = 2;

/// The end of a chunk that was asked to stop at `upto`, from `position`, after which the
/// copy's confirmed position is `confirmed`.
///
/// `pg_logical_slot_get_binary_changes` reads record after record and stops after the record
/// that reaches `upto_lsn` or once it has returned `upto_nchanges` rows, and confirms the
/// end of the last record it read. Without streaming (never asked for here), rows are only
/// produced whole transactions at a time, at their commit record (non-transactional messages
/// at their own record, empty transactions too on servers before 15), so the chunk holds
/// exactly the transactions whose commit record starts in `[position, end)`, and the next
/// `get` goes on from there. When the `get` stopped at `upto`, its last
/// record may end past `upto`; the chunk's end is then `upto` itself, as when chunks were
/// bounded by WAL only (every transaction committing before it is in this chunk or an
/// earlier one; an end LSN the caller stops at stays exact).
fn chunk_end(position: Lsn, upto: Lsn, confirmed: Lsn) -> Result<Lsn> {
    let end = confirmed.min(upto);
    if end <= position {
        return Err(Error::internal(format!(
            "decoding from {position} up to {upto} ahead stopped at {confirmed}: the read-ahead slot did not move"
        )));
    }
    Ok(end)
}

/// Hand `batch` over once the budget has room for it (a batch larger than the whole budget
/// takes all of it). `false` when the receiving side is gone.
async fn send_batch(
    batch: &mut Vec<Bytes>,
    batch_bytes: &mut usize,
    budget: &Arc<Semaphore>,
    budget_total: usize,
    tx: &mpsc::UnboundedSender<Result<Item>>,
) -> Result<bool> {
    if batch.is_empty() {
        return Ok(true);
    }
    let want = (*batch_bytes).clamp(1, budget_total).min(u32::MAX as usize) as u32;
    let permit = budget
        .clone()
        .acquire_many_owned(want)
        .await
        .map_err(|_| Error::internal("the read-ahead budget was closed"))?;
    *batch_bytes = 0;
    Ok(tx
        .send(Ok(Item::Messages(std::mem::take(batch), permit)))
        .is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_with_what_they_reread() {
        let mb = 1 << 20;
        // Up to two chunks of re-reading change nothing...
        assert_eq!(chunk_size(32 * mb, 0), 32 * mb);
        assert_eq!(chunk_size(32 * mb, 60 * mb), 32 * mb);
        assert_eq!(chunk_size(32 * mb, 64 * mb), 32 * mb);
        // ... beyond that, a chunk is as large as what it re-reads...
        assert_eq!(chunk_size(8 * mb, 100 * mb), 100 * mb);
        assert_eq!(chunk_size(32 * mb, 65 * mb), 65 * mb);
        // ... up to 16 times the maximum.
        assert_eq!(chunk_size(32 * mb, 4096 * mb), 512 * mb);
        assert_eq!(chunk_size(8 * mb, 188 * mb), 128 * mb);
        // Never zero, whatever the settings.
        assert_eq!(chunk_size(0, 0), 1);
    }

    #[test]
    fn a_chunk_ends_where_its_get_stopped_but_never_past_what_was_asked() {
        let (position, upto) = (Lsn(1000), Lsn(5000));
        // Stopped early, after the commit that brought the messages to the limit.
        assert_eq!(chunk_end(position, upto, Lsn(2345)).unwrap(), Lsn(2345));
        // Stopped at `upto`: its last record may end past it; the chunk ends at `upto`.
        assert_eq!(chunk_end(position, upto, Lsn(5000)).unwrap(), upto);
        assert_eq!(chunk_end(position, upto, Lsn(5120)).unwrap(), upto);
        // A copy that did not move is an error, never an empty chunk decoded forever.
        assert!(chunk_end(position, upto, position).is_err());
        assert!(chunk_end(position, upto, Lsn(10)).is_err());
    }

    #[test]
    fn the_rest_up_to_a_flushed_end_is_one_more_chunk_however_small() {
        let (head, min) = (Lsn(1000), 100);
        // No end: only a backlog of `min_backlog` or more is decoded in chunks.
        assert!(rest_is_a_chunk(None, head, Lsn(900), min));
        assert!(!rest_is_a_chunk(None, head, Lsn(901), min));
        // An end the server has flushed: everything up to it, however little.
        assert!(rest_is_a_chunk(Some(Lsn(950)), head, Lsn(949), min));
        assert!(!rest_is_a_chunk(Some(Lsn(950)), head, Lsn(950), min));
        // An end still ahead of the server: as without one.
        assert!(rest_is_a_chunk(Some(Lsn(5000)), head, Lsn(900), min));
        assert!(!rest_is_a_chunk(Some(Lsn(5000)), head, Lsn(990), min));
        // Nothing left is never a chunk, not even with no minimum.
        assert!(!rest_is_a_chunk(None, head, head, 0));
        assert!(rest_is_a_chunk(None, head, Lsn(999), 0));
    }
}
