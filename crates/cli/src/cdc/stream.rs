//! The streaming loop: read the slot, apply, confirm, reconnect.
//!
//! # Guards, in the order they apply to each message
//!
//! 1. A transaction whose commit LSN is at or below the checkpoint was applied before a restart:
//!    the applier skips it whole (never single changes by their own LSN).
//! 2. With `--end-lsn E`: a transaction committing at or after `E` is not applied; the loop stops
//!    before it. A keepalive reporting the server at or past `E` while no transaction is open
//!    also stops it (everything committed before `E` has arrived and is applied).
//! 3. A stop request (SIGINT/SIGTERM) inside a source transaction waits for that transaction's
//!    end, so the final batch commits whole transactions only.
//!
//! # What is confirmed to the source
//!
//! The standby status update's flush position is the end LSN of the last source transaction
//! whose target COMMIT returned (the session commits synchronously), never more. When nothing is
//! open (no target batch, no source transaction in flight), the position the server reported
//! (keepalive or last message) is confirmed instead, so an idle or filtered slot does not pin
//! WAL; that position is recorded on the target first, so that a slot found further ahead after
//! a restart can be told apart from one that lost changes.
//!
//! # Catching up
//!
//! Before streaming, a backlog of at least `cdc.catch_up_from_mb` is read in chunks through
//! the SQL decoding interface (`pgtide_postgres::replication::peek` has the why and the
//! exactly-once argument): the same guards apply to each message, a chunk's transactions are
//! committed on the target before the slot is moved past them, and streaming then starts where
//! the target is.
//!
//! # Reconnecting
//!
//! Any retryable failure (source or target restarting, a dropped connection, a slot still held
//! by a dying walsender) tears everything down, rolls the open batch back, waits with backoff,
//! and starts over from the checkpoint: the server re-sends every transaction not confirmed, and
//! guard 1 skips those already applied. Permanent failures (authentication, a missing or
//! invalidated slot, a diverged target) stop the task with their hint.

use super::status::CdcStatus;
use crate::shutdown::Shutdown;
use pgtide_core::ident::QualifiedName;
use pgtide_core::lsn::Lsn;
use pgtide_core::task::Task;
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::apply::{Applier, ApplyOptions, PgApplier};
use pgtide_postgres::changes::Assembler;
use pgtide_postgres::connect::{Side, classify, connect};
use pgtide_postgres::replication::wire::StreamMessage;
use pgtide_postgres::replication::{ReplicationClient, WalStream, peek};
use pgtide_postgres::slot::{check_slot, slot_info};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why streaming stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every transaction committed before this LSN is applied.
    EndLsn(Lsn),
    /// The operator asked to stop.
    Signal,
}

impl Stop {
    /// How the run ended, for the end-of-run text.
    pub fn describe(&self) -> String {
        match self {
            Stop::EndLsn(l) => {
                format!("stopped at end LSN {l}: every transaction committed before it is applied")
            }
            Stop::Signal => "stopped on request; resume with the same command".to_string(),
        }
    }
}

/// What the loop needs besides the task.
pub struct StreamSetup {
    /// Slot name.
    pub slot: String,
    /// Publications to decode with.
    pub publications: Vec<String>,
    /// Stop when everything committed before this LSN is applied.
    pub end_lsn: Option<Lsn>,
    /// Primary keys from the source catalog (by target name, target column names).
    pub source_keys: HashMap<QualifiedName, Vec<String>>,
    /// Renames and dropped columns from the task's rules.
    pub routes: pgtide_postgres::changes::Routes,
    /// Where the changes go.
    pub target: ApplyTarget,
}

/// The kind of target the stream is applied to.
#[derive(Clone)]
pub enum ApplyTarget {
    /// The task's PostgreSQL target.
    Postgres,
    /// A MySQL/MariaDB target with its table routes.
    Mysql(Arc<pgtide_mysql::apply::MysqlApplyConfig>),
}

/// Settings for the replication session, sent in its startup packet: the text forms of the
/// values pgoutput sends follow the walsender's settings, and the appliers parse them. ISO
/// dates, UTC and hex bytea are read by every target whatever the source server's defaults
/// are (a source in `DateStyle = 'SQL, DMY'` would otherwise send dates a target in MDY
/// misreads). MySQL targets also need money in the C locale to strip its symbols safely.
fn replication_session_options(target: &ApplyTarget) -> String {
    let mut o = String::from(
        "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=postgres -c bytea_output=hex -c extra_float_digits=3",
    );
    if matches!(target, ApplyTarget::Mysql(_)) {
        o.push_str(" -c lc_monetary=C");
    }
    o
}

/// The commit LSN of a `Begin` or `Stream Commit` message, read from its bytes.
fn commit_position(data: &[u8]) -> Option<Lsn> {
    let at = |from: usize| {
        data.get(from..from + 8)
            .map(|b| Lsn(u64::from_be_bytes(b.try_into().expect("8 bytes"))))
    };
    match data.first() {
        Some(b'B') => at(1),
        Some(b'c') => at(6),
        _ => None,
    }
}

/// Stream until `--end-lsn` or a stop request, reconnecting on retryable failures.
pub async fn stream(
    task: &Task,
    setup: &StreamSetup,
    shutdown: &Shutdown,
    status: &Arc<CdcStatus>,
) -> Result<Stop> {
    let mut delay = Duration::from_secs(1);
    loop {
        status.rebase();
        match stream_once(task, setup, shutdown, status).await {
            Ok(stop) => return Ok(stop),
            Err(e) if e.is_retryable() && !shutdown.is_triggered() => {
                status.set_phase("reconnecting");
                status.count_error();
                tracing::warn!(retry_in_s = delay.as_secs(), "{}", e.report());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(Stop::Signal),
                }
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn stream_once(
    task: &Task,
    setup: &StreamSetup,
    shutdown: &Shutdown,
    status: &Arc<CdcStatus>,
) -> Result<Stop> {
    status.set_phase("connecting");
    match &setup.target {
        ApplyTarget::Postgres => {
            let target = connect(&task.target.url, Side::Target).await?;
            // The task's lock lives with the apply connection, so it is taken again after a
            // reconnect (a restarted target forgets it) and no second run can apply at the
            // same time.
            pgtide_postgres::state::lock_task_waiting(&target, &task.name, Duration::from_secs(10))
                .await?;
            let opts = ApplyOptions {
                max_batch_changes: task.cdc.max_batch_changes,
                max_batch_age: Duration::from_millis(task.cdc.max_batch_delay_ms),
                ..ApplyOptions::default()
            };
            let applier =
                PgApplier::new(target, &task.name, opts, setup.source_keys.clone()).await?;
            stream_into(task, setup, shutdown, status, applier).await
        }
        ApplyTarget::Mysql(config) => {
            // The lock is taken by the applier's own connection (GET_LOCK), released when it
            // closes.
            let target = pgtide_mysql::load::MysqlTarget::new(&task.target.url)?;
            let applier =
                pgtide_mysql::apply::MysqlApplier::new(&target, &task.name, config.clone()).await?;
            stream_into(task, setup, shutdown, status, applier).await
        }
    }
}

async fn stream_into<A: Applier>(
    task: &Task,
    setup: &StreamSetup,
    shutdown: &Shutdown,
    status: &Arc<CdcStatus>,
    mut applier: A,
) -> Result<Stop> {
    let source = connect(&task.source.url, Side::Source).await?;
    let info = slot_info(&source, &setup.slot).await?.ok_or_else(|| {
        Error::new(ErrorKind::NotFound, format!("replication slot {} is missing on the source", setup.slot)).with_hint(
            "it was dropped, so changes since the last checkpoint cannot be recovered; run the task again with --restart for a new full load",
        )
    })?;
    check_slot(&setup.slot, &info, &task.source.url.database)?;
    let ours = applier.confirmable();
    if let Some(cf) = info.confirmed_flush
        && !ours.is_zero()
        && cf > ours
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "replication slot {} is confirmed up to {cf}, past the target's checkpoint {ours}: changes in between were consumed by something else and are missing from the target",
                setup.slot
            ),
        )
        .with_hint("another consumer used this slot; run the task again with --restart for a new full load"));
    }
    if info.active {
        return Err(Error::new(ErrorKind::Transient, format!("replication slot {} is still in use by another connection", setup.slot))
            .with_hint("if a previous pgtide run was just stopped, its walsender ends within seconds; pgtide retries"));
    }
    let start = if ours.is_zero() {
        info.confirmed_flush.unwrap_or(Lsn::ZERO)
    } else {
        ours
    };
    let mut repl = ReplicationClient::connect_with_options(
        &task.source.url,
        Side::Source,
        &replication_session_options(&setup.target),
    )
    .await?;
    let version = repl.server_version().await?;
    let pubs: Vec<String> = setup
        .publications
        .iter()
        .map(|p| pgtide_core::ident::quote_ident(p))
        .collect();
    let mut options: Vec<(&str, String)> = vec![
        (
            "proto_version",
            if version >= 140000 { "2" } else { "1" }.into(),
        ),
        ("publication_names", pubs.join(",")),
    ];
    let mut streaming_options = Vec::new();
    if version >= 140000 {
        options.push(("messages", "true".into()));
        streaming_options.push(("streaming", "on".into()));
    }
    let mut asm = Assembler::new(task.cdc.spill_dir.clone())?.with_routes(setup.routes.clone());
    // A backlog is read through the SQL decoding interface first (the walsender costs the
    // source several times more CPU per message while it drains one); streaming starts where
    // that leaves off.
    let mut start = start;
    if let Some(settings) = task.cdc.catch_up {
        let mut catch = CatchUpRun {
            task,
            setup,
            shutdown,
            status,
            settings,
            slot_confirmed: info.confirmed_flush.unwrap_or(Lsn::ZERO),
            moving: None,
        };
        if let Some(stop) = catch.run(&mut applier, &mut asm, &options, start).await? {
            let to = applier.confirmable();
            if to > catch.slot_confirmed {
                confirm_at_stop(repl, &setup.slot, &options, catch.slot_confirmed, to).await;
            }
            return Ok(stop);
        }
        start = start.max(applier.confirmable());
    }
    options.extend(streaming_options);
    let stream = repl
        .start_logical(&setup.slot, start, &options)
        .await
        .map_err(pgtide_postgres::slot::busy_is_transient)?;
    // Read ahead while the target works, holding at most 64 MB of received changes.
    let mut stream = stream.pipelined(64 << 20);
    status.set_phase("streaming");
    tracing::info!(slot = %setup.slot, start = %start, "streaming changes");

    let mut server_at = start;
    let mut last_message = Instant::now();
    let mut last_status = Instant::now();
    let mut heartbeat_at = Instant::now();
    let mut heartbeat_ok = task.cdc.heartbeat_interval > 0;
    let mut stopping = false;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    macro_rules! publish {
        () => {
            publish(
                status,
                &applier,
                !applier.has_open_batch()
                    && !asm.in_transaction()
                    && server_at <= applier.confirmable(),
            );
        };
    }

    // One stop-request future for the whole loop: a new one per message registered and
    // unregistered a waiter (under the notifier's lock) for every message.
    let stop_requested = shutdown.wait();
    tokio::pin!(stop_requested);
    loop {
        // Stop points that need the loop to be between source transactions.
        if stopping && !asm.in_transaction() {
            applier.commit_batch().await?;
            confirm(&mut stream, &mut applier, &asm, server_at, false).await?;
            publish!();
            return Ok(Stop::Signal);
        }
        tokio::select! {
            biased;
            _ = &mut stop_requested, if !stopping => {
                stopping = true;
                status.set_phase("stopping");
            }
            m = stream.next_message() => {
                match m? {
                    None => return Err(Error::new(ErrorKind::Connection, "the source ended the replication stream")),
                    Some(StreamMessage::XLogData { wal_end, data, .. }) => {
                        last_message = Instant::now();
                        if wal_end > server_at {
                            tracing::trace!(wal_end = %wal_end, kind = %(data.first().copied().unwrap_or(b'?') as char), "position from data");
                        }
                        server_at = server_at.max(wal_end);
                        status.server_at(wal_end);
                        if let Some(end) = setup.end_lsn
                            && !asm.in_transaction()
                            && commit_position(&data).map(|c| c >= end).unwrap_or(false)
                        {
                            return finish_at_end(&mut stream, &mut applier, &asm, end, status).await;
                        }
                        asm.process(data, &mut applier).await?;
                        if !asm.in_transaction() && applier.batch_is_old() {
                            applier.hand_off_batch().await?;
                            publish!();
                        }
                    }
                    Some(StreamMessage::Keepalive { wal_end, reply_requested, .. }) => {
                        tracing::trace!(wal_end = %wal_end, "keepalive");
                        server_at = server_at.max(wal_end);
                        status.server_at(wal_end);
                        // A keepalive arrives after almost every transaction when the stream
                        // is live: it must not close the batch (that would be one synchronous
                        // commit per source transaction). Batches close by age or quiet.
                        if !asm.in_transaction()
                            && let Some(end) = setup.end_lsn
                            && wal_end >= end
                        {
                            return finish_at_end(&mut stream, &mut applier, &asm, end, status).await;
                        }
                        if reply_requested {
                            confirm(&mut stream, &mut applier, &asm, server_at, false).await?;
                            last_status = Instant::now();
                        }
                    }
                }
            }
            _ = tick.tick() => {}
        }
        // Periodic duties, after every message too: a stream that never pauses must still
        // commit aged batches, confirm progress (or the server's wal_sender_timeout ends the
        // connection) and write heartbeats.
        // A quiet stream commits what it has.
        if applier.has_open_batch()
            && !asm.in_transaction()
            && (last_message.elapsed() >= Duration::from_millis(20) || applier.batch_is_old())
        {
            applier.commit_batch().await?;
            publish!();
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            // While waiting for an end LSN, ask for a keepalive so the server's position
            // arrives without waiting for its own timer.
            confirm(
                &mut stream,
                &mut applier,
                &asm,
                server_at,
                setup.end_lsn.is_some(),
            )
            .await?;
            last_status = Instant::now();
            publish!();
        }
        if heartbeat_ok
            && heartbeat_at.elapsed() >= Duration::from_secs(task.cdc.heartbeat_interval)
        {
            heartbeat_at = Instant::now();
            if let Err(e) = source
                .execute(
                    "SELECT pg_logical_emit_message(true, 'pgtide_heartbeat', $1)",
                    &[&task.name],
                )
                .await
            {
                let e = classify(e, "writing a heartbeat on the source");
                if e.is_retryable() {
                    return Err(e);
                }
                tracing::warn!("heartbeat disabled: {}", e.report());
                heartbeat_ok = false;
            }
        }
    }
}

/// A background task that is no longer polled once its owner is gone. (The server still
/// finishes a statement it started: see [`CatchUpRun::run`] for slot moves.)
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Bytes of decoded messages the prefetch holds at most: room for what a whole chunk of the
/// default size decodes into on a pgbench backlog, so that the next chunk's `get` starts while
/// this one is applied (with 16 MB the applier waited ~0.2 s per chunk for decoding). See
/// `peek`'s module documentation for what it overlaps.
const PREFETCH_BUDGET: usize = 64 << 20;

/// The read-ahead's first chunk ends after the first transaction that brings its decoded
/// messages to this many (each later chunk may hold twice as many as the one before). See
/// `peek`'s module documentation for why chunks are bounded by messages as well as by WAL.
const FIRST_CHUNK_CHANGES: u64 = 8192;

/// WAL bytes the slot may trail what the catch-up made durable before it is moved in the
/// background. A move (`pg_replication_slot_advance`) decodes from the slot's `restart_lsn`,
/// which itself trails by a running-xacts interval (logged every 15 s, when the backlog was
/// written): moving at every chunk decoded most of the backlog three times over and cost a
/// pgbench drain 5% of its time. What the slot holds back meanwhile was held back before the
/// catch-up began. At a stop the slot is confirmed through the replication protocol, which
/// decodes nothing; before streaming takes over it is moved the rest of the way, which then
/// decodes at most this much more (~0.3 s once).
const MOVE_SLOT_EVERY: u64 = 256 << 20;

/// The next message of the chunk being applied: decoded on the task's slot (on the control
/// session) when there is no prefetch, else from the prefetch.
async fn next_decoded(
    on_slot: &mut Option<(peek::PeekChunk, Lsn)>,
    prefetch: &mut Option<peek::Prefetch>,
) -> Result<peek::Prefetched> {
    if let Some((chunk, upto)) = on_slot {
        return Ok(match chunk.next().await? {
            Some(data) => peek::Prefetched::Message(data),
            None => peek::Prefetched::ChunkEnd(*upto),
        });
    }
    match prefetch {
        Some(p) => p.next().await,
        None => Err(Error::internal(
            "a chunk is applied with nothing decoding it",
        )),
    }
}

/// One catch-up through the SQL decoding interface (see `pgtide_postgres::replication::peek`
/// for why and for the exactly-once argument).
struct CatchUpRun<'a> {
    task: &'a Task,
    setup: &'a StreamSetup,
    shutdown: &'a Shutdown,
    status: &'a Arc<CdcStatus>,
    settings: pgtide_core::task::CatchUp,
    /// The slot's confirmed position as last set (it cannot be moved backwards).
    slot_confirmed: Lsn,
    /// A move of the slot running in the background, ending with the position it set.
    moving: Option<AbortOnDrop<Result<Lsn>>>,
}

impl CatchUpRun<'_> {
    /// Apply chunk after chunk while the backlog is at least `settings.from`, the chunks
    /// decoded ahead on a copy of the slot ([`peek::Prefetch`]). Returns the stop when
    /// `--end-lsn` or a stop request ended the run during the catch-up; `None` when the rest is
    /// to be streamed. A chunk boundary does not end the batch: the open batch carries the
    /// chunk's end as its confirmed position and the next chunk's transactions join it; the
    /// slot is only ever moved to what is durable (in the background while chunks are
    /// applied), and every way out commits first (and moves the slot before streaming; at a
    /// stop the caller confirms it through the replication protocol).
    async fn run<A: Applier>(
        &mut self,
        applier: &mut A,
        asm: &mut Assembler,
        options: &[(&str, String)],
        start: Lsn,
    ) -> Result<Option<Stop>> {
        let result = self.run_chunks(applier, asm, options, start).await;
        if result.is_err()
            && let Some(moving) = self.moving.take()
        {
            // A slot move still running on the server would hold the slot when the retry
            // starts streaming from it (the retry would see it busy and back off); it only goes
            // to a durable position, so wait for it (a minute at most), whatever its outcome.
            let mut moving = moving;
            let _ = tokio::time::timeout(Duration::from_secs(60), &mut moving.0).await;
        }
        result
    }

    async fn run_chunks<A: Applier>(
        &mut self,
        applier: &mut A,
        asm: &mut Assembler,
        options: &[(&str, String)],
        start: Lsn,
    ) -> Result<Option<Stop>> {
        let control = Arc::new(self.decoding_session().await?);
        let slot = self.setup.slot.clone();
        // Every transaction committed before `position` has been handed to the applier (it is
        // committed, in flight, or in the open batch) or was confirmed before. The slot itself
        // only ever moves to what is committed and on the target's disk
        // (`applier.confirmable()`), which trails it by the open batch and the last batches.
        let mut position = start.max(applier.confirmable());
        let mut announced = false;
        // Chunks decoded on the slot itself (no read-ahead) start small so that applying
        // starts early, and double up to the setting; the read-ahead bounds its chunks by
        // decoded messages as well (`peek::PrefetchPlan`).
        let first_chunk = (self.settings.chunk / 8).max(64 << 10);
        let mut size = first_chunk;
        let mut prefetch: Option<peek::Prefetch> = None;
        let mut read_ahead_ok = true;
        let mut first = true;
        loop {
            if self.shutdown.is_triggered() {
                drop(prefetch.take());
                return self.finish(applier, Stop::Signal).await;
            }
            // Without a prefetch running (at the start, after one found too little backlog
            // left, or when the slot cannot be copied) the next chunk is decided here.
            let mut on_slot = None;
            if prefetch.is_none() {
                // Decoding on the slot itself and streaming start at the slot's position: what
                // was handed off must be durable and the slot moved to it first.
                applier.commit_batch().await?;
                applier.record_confirmed(position).await?;
                // The flush position, not the insert position: decoding reads only flushed
                // WAL, and a chunk must end where decoding can reach.
                let head = peek::server_position(&control).await?;
                self.status.server_at(head);
                let limit = match self.setup.end_lsn {
                    Some(end) => end.min(head),
                    None => head,
                };
                if !peek::rest_is_a_chunk(self.setup.end_lsn, head, position, self.settings.from) {
                    self.move_slot(&control, applier.confirmable()).await?;
                    return Ok(None);
                }
                if !announced {
                    announced = true;
                    self.status.set_phase("catching up");
                    tracing::info!(slot, from = %position, backlog_bytes = head.0.saturating_sub(position.0), "catching up through the SQL decoding interface");
                }
                // The slot may trail the target's checkpoint (a run stopped between its
                // commit and its confirmation): move it first, so no chunk re-sends applied
                // work.
                self.move_slot(&control, applier.confirmable()).await?;
                if read_ahead_ok {
                    let plan = peek::PrefetchPlan {
                        end: self.setup.end_lsn,
                        min_backlog: self.settings.from,
                        first_changes: FIRST_CHUNK_CHANGES,
                        max_chunk: self.settings.chunk,
                        budget: PREFETCH_BUDGET,
                    };
                    match self.start_prefetch(position, plan, options).await {
                        Ok(p) => prefetch = Some(p),
                        Err(e) if e.is_retryable() => return Err(e),
                        Err(e) => {
                            tracing::warn!(
                                "catching up without decoding ahead (one chunk at a time): {}",
                                e.report()
                            );
                            read_ahead_ok = false;
                        }
                    }
                }
                if prefetch.is_none() {
                    let upto = Lsn(limit.0.min(position.0.saturating_add(size)));
                    size = size.saturating_mul(2).min(self.settings.chunk);
                    tracing::debug!(slot, from = %position, upto = %upto, "decoding a chunk");
                    match peek::PeekChunk::start(&control, &slot, upto, options, 4096).await {
                        Ok(chunk) => on_slot = Some((chunk, upto)),
                        // The SQL interface may be refused where the replication protocol is
                        // not (a function's privileges, a managed service): stream.
                        Err(e) if !e.is_retryable() && first => {
                            tracing::warn!("catching up by streaming instead: {}", e.report());
                            return Ok(None);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            first = false;
            // Apply one chunk. One stop-request future per chunk, not one per message.
            let mut stopping = false;
            let stop_requested = self.shutdown.wait();
            tokio::pin!(stop_requested);
            let upto = loop {
                let next = tokio::select! {
                    biased;
                    _ = &mut stop_requested, if !stopping => {
                        stopping = true;
                        self.status.set_phase("stopping");
                        continue;
                    }
                    m = next_decoded(&mut on_slot, &mut prefetch) => m?,
                };
                let data = match next {
                    peek::Prefetched::Message(data) => data,
                    peek::Prefetched::ChunkEnd(upto) => break Some(upto),
                    peek::Prefetched::Done => break None,
                };
                if !asm.in_transaction() {
                    let end = self
                        .setup
                        .end_lsn
                        .filter(|&end| commit_position(&data).is_some_and(|c| c >= end));
                    if end.is_some() || stopping {
                        // The chunk's decoding stops here (on the task's slot it would hold
                        // the slot that the stop then confirms).
                        drop(on_slot);
                        drop(prefetch.take());
                        let stop = end.map(Stop::EndLsn).unwrap_or(Stop::Signal);
                        return self.finish(applier, stop).await;
                    }
                }
                asm.process(data, applier).await?;
                if !asm.in_transaction() && applier.batch_is_old() {
                    applier.hand_off_batch().await?;
                    self.publish(applier, false);
                }
            };
            drop(on_slot);
            let Some(upto) = upto else {
                // Too little backlog was left to decode ahead: streaming takes over, or a new
                // prefetch if the backlog has grown meanwhile.
                prefetch = None;
                if stopping {
                    return self.finish(applier, Stop::Signal).await;
                }
                continue;
            };
            if asm.in_transaction() {
                return Err(Error::internal(format!(
                    "decoding replication slot {slot} up to {upto} ended inside a transaction"
                )));
            }
            // Every transaction whose commit record starts before `upto` was in this chunk or
            // an earlier one, so the position is recorded even when none of them was
            // published (an all-filtered chunk would otherwise be decoded again and again).
            // The position rides with the open batch, which the next chunk goes on filling:
            // committing at every chunk boundary (or waiting for the target there) left the
            // target idle while the next full batch was built.
            applier.mark_through(upto).await?;
            if applier.batch_is_old() {
                // The next chunk may still be decoding; what is here need not wait for it.
                applier.hand_off_batch().await?;
            }
            pgtide_core::failpoint::hit("catch-up-before-advance");
            position = upto;
            if let Some(p) = &prefetch {
                self.status.server_at(p.server_at());
            }
            if self.setup.end_lsn == Some(upto) {
                drop(prefetch.take());
                return self.finish(applier, Stop::EndLsn(upto)).await;
            }
            if stopping {
                drop(prefetch.take());
                return self.finish(applier, Stop::Signal).await;
            }
            // Only what is committed and flushed (the open batch, with this chunk's end, moves
            // the slot at a later boundary), in the background (moving a slot decodes WAL,
            // time in which the next chunk is applied), and only every `MOVE_SLOT_EVERY`.
            self.move_slot_in_background(&control, applier.confirmable())
                .await?;
            self.publish(applier, false);
        }
    }

    /// A new session on the source for the SQL decoding functions.
    async fn decoding_session(&self) -> Result<tokio_postgres::Client> {
        pgtide_postgres::connect::connect_with_options(
            &self.task.source.url,
            Side::Source,
            &self.decoding_options(),
        )
        .await
    }

    /// Startup options of the sessions that decode: the settings the text forms of decoded
    /// values depend on ([`replication_session_options`]) and room in memory for what a
    /// chunk decodes into.
    ///
    /// The functions collect a chunk's output in a tuple store before returning its first
    /// row; past `work_mem` (4 MB by default) the store spills to a temporary file, which the
    /// server writes and reads back: 15% of the decoding time of a 32 MB pgbench chunk
    /// (whose ~330k messages take ~30 MB in the store). Twice the chunk size, at most
    /// 256 MB, covers that; the memory is held by this one session while a chunk is returned.
    fn decoding_options(&self) -> String {
        let work_mem_kb = (self.settings.chunk.saturating_mul(2) >> 10).clamp(4 << 10, 256 << 10);
        format!(
            "{} -c work_mem={work_mem_kb}kB",
            replication_session_options(&self.setup.target)
        )
    }

    /// A prefetch from `from` on a copy of the slot, on a session and a thread of its own.
    async fn start_prefetch(
        &self,
        from: Lsn,
        plan: peek::PrefetchPlan,
        options: &[(&str, String)],
    ) -> Result<peek::Prefetch> {
        peek::Prefetch::start(
            &self.task.source.url,
            &self.decoding_options(),
            &self.setup.slot,
            from,
            plan,
            options,
        )
        .await
    }

    /// Leave the catch-up with `stop`: commit what was handed to the applier, wait for a move
    /// of the slot still running (the caller confirms the rest through the replication
    /// protocol, which needs the slot free), show it (caught up when the end LSN was reached).
    async fn finish<A: Applier>(&mut self, applier: &mut A, stop: Stop) -> Result<Option<Stop>> {
        applier.commit_batch().await?;
        self.settle_move().await?;
        self.publish(applier, matches!(stop, Stop::EndLsn(_)));
        Ok(Some(stop))
    }

    /// Move the slot to `to` when that is ahead of it (only positions durable on the target),
    /// after the move in the background, if any, has ended.
    async fn move_slot(&mut self, client: &Arc<tokio_postgres::Client>, to: Lsn) -> Result<()> {
        self.settle_move().await?;
        if to > self.slot_confirmed {
            peek::advance_slot(client, &self.setup.slot, to).await?;
            self.slot_confirmed = to;
        }
        Ok(())
    }

    /// Wait for the move in the background, if any, and take the position it set.
    async fn settle_move(&mut self) -> Result<()> {
        if let Some(mut moving) = self.moving.take() {
            self.slot_confirmed = (&mut moving.0)
                .await
                .map_err(|e| Error::internal(format!("moving the slot failed: {e}")))??;
        }
        Ok(())
    }

    /// Start moving the slot to `to` in the background, unless the previous move is still
    /// running (the slot then moves further at a later boundary).
    async fn move_slot_in_background(
        &mut self,
        client: &Arc<tokio_postgres::Client>,
        to: Lsn,
    ) -> Result<()> {
        if self.moving.as_ref().is_some_and(|m| !m.0.is_finished())
            || to.0.saturating_sub(self.slot_confirmed.0) < MOVE_SLOT_EVERY
        {
            return Ok(());
        }
        self.settle_move().await?;
        if to > self.slot_confirmed {
            let (client, slot) = (client.clone(), self.setup.slot.clone());
            self.moving = Some(AbortOnDrop(tokio::spawn(async move {
                peek::advance_slot(&client, &slot, to).await.map(|()| to)
            })));
        }
        Ok(())
    }

    fn publish<A: Applier>(&self, applier: &A, caught_up: bool) {
        publish(self.status, applier, caught_up);
    }
}

async fn finish_at_end<S: WalStream, A: Applier>(
    stream: &mut S,
    applier: &mut A,
    asm: &Assembler,
    end: Lsn,
    status: &Arc<CdcStatus>,
) -> Result<Stop> {
    applier.commit_batch().await?;
    confirm(stream, applier, asm, applier.confirmable(), false).await?;
    publish(status, applier, true);
    Ok(Stop::EndLsn(end))
}

/// Confirm the slot up to `to` (what the catch-up applied) when the run stops, through the
/// replication protocol: a status update sets the confirmed position without decoding the WAL
/// before it, which `pg_replication_slot_advance` does from the slot's `restart_lsn` (that
/// trails by up to a running-xacts interval: 0.1–0.45 s at the end of a drain, all of it in
/// the run's time). Best effort: what is applied is on the target with its checkpoint, and a
/// slot left `at` only makes the next run re-read (and skip) what it already has, so a failure
/// here must not turn a clean stop into an error.
async fn confirm_at_stop(
    repl: ReplicationClient,
    slot: &str,
    options: &[(&str, String)],
    at: Lsn,
    to: Lsn,
) {
    let confirm = async {
        repl.start_logical(slot, to, options)
            .await?
            .confirm_and_end(to)
            .await
    };
    let failed = match tokio::time::timeout(Duration::from_secs(10), confirm).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.report()),
        Err(_) => Some("no answer within 10 s".to_string()),
    };
    if let Some(why) = failed {
        tracing::warn!(
            slot,
            %at,
            applied = %to,
            "the slot could not be confirmed up to what is applied ({why}); it may stay behind, and then the next run re-reads and skips what the target already has"
        );
    }
}

/// Show the applier's progress in the status (terminal, `pgtide status`).
fn publish<A: Applier>(status: &CdcStatus, applier: &A, caught_up: bool) {
    status.update(
        applier.durable(),
        applier.confirmable(),
        caught_up,
        applier.transactions(),
        applier.counts(),
    );
}

/// Send a standby status update. When nothing is open, first record the server's position on
/// the target, then confirm it.
async fn confirm<S: WalStream, A: Applier>(
    stream: &mut S,
    applier: &mut A,
    asm: &Assembler,
    server_at: Lsn,
    reply: bool,
) -> Result<()> {
    if applier.durable().is_some() {
        pgtide_core::failpoint::hit("cdc-after-commit");
    }
    let mut flush = applier.confirmable();
    if !applier.has_open_batch() && !asm.in_transaction() && server_at > flush {
        tracing::debug!(from = %flush, to = %server_at, spooled = asm.spooled(), "confirming an idle position");
        applier.record_confirmed(server_at).await?;
        flush = applier.confirmable();
    }
    stream.send_status(server_at.max(flush), flush, reply).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_positions_are_read_from_begin_and_stream_commit() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x0000_0001_0000_0020u64.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        assert_eq!(commit_position(&b), Some(Lsn(0x1_0000_0020)));
        let mut c = vec![b'c', 0, 0, 0, 7, 0];
        c.extend_from_slice(&42u64.to_be_bytes());
        c.extend_from_slice(&[0; 16]);
        assert_eq!(commit_position(&c), Some(Lsn(42)));
        assert_eq!(commit_position(b"I..."), None);
        assert_eq!(commit_position(b"B"), None);
    }
}
