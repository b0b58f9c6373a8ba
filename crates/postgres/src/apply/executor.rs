//! The target connection's side of the applier: runs what the buffers turned into.
//!
//! # Why a separate owner
//!
//! Building a batch (decoding pgoutput, merging changes per key) is pgtide's CPU; running it
//! (`UPDATE ... FROM unnest`, `COPY`, `COMMIT`) is the target's. Done one after the other, each
//! side idles while the other works: measured on a pgbench backlog, 40% of the two cores were
//! idle. So a full batch is handed to the [`Executor`] on its own task while the next batch is
//! built, and the two overlap. Within a batch, each statement is queued on the connection as
//! soon as it is encoded, ahead of the previous one's result ([`InOrder`]), so the target does
//! not wait for pgtide between the statements of a batch either.
//!
//! # Order and exactly-once
//!
//! At most one piece of work is in flight, and the applier waits for it ("settles") before it
//! hands over the next one or touches the connection itself, so statements reach the target in
//! exactly the order they would have without the overlap, and `BEGIN` of the next batch is sent
//! only after `COMMIT` of the previous one returned. A handed-over batch's position counts as
//! applied only when the applier has seen its `COMMIT` succeed, and is confirmable to the
//! source only once that commit is also on the target's disk (below); until it is seen
//! committed it is "in flight" ([`super::Checkpoint`]). If the task or the process dies with a
//! batch in flight, the target either committed it with its checkpoint or not at all.
//!
//! # Commits that do not wait for the disk
//!
//! A batch handed off commits with `synchronous_commit = off` for its transaction (as the
//! apply worker of native logical replication does by default): waiting for each batch's WAL
//! flush cost the drain of a pgbench backlog 5–10% of its time, the target idle while its
//! disk synced. A target crash can then lose the last batches, with their
//! checkpoint (they are in the same transaction), so the next run resumes before them; what
//! must never happen is the source being told they are done. The `COMMIT` therefore reads
//! the target's insert position right after it (at or past the end of its commit record) and
//! its flush position, in the same round trip; the batch's position is held back from
//! confirmation ([`super::Checkpoint::in_flight_committed`]) until a later commit reports the
//! target flushed past it, or a synchronous commit (the last batch before any stop, a
//! recorded idle position, or an explicit flush) has flushed everything before it. Targets
//! that wait for synchronous standbys (checked at start and with every such commit) and
//! targets that cannot report their WAL positions get synchronous commits throughout.

use super::buffer::{Drained, Ordered, Row};
use super::{
    Applied, Bound, TableCounts, TargetTable, Text, copy_escape, diverged, pg_time, sql, text,
};
use crate::connect::classify;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use pgtide_core::ident::{QualifiedName, quote_ident};
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, Result};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// Indices of the columns a patch (or old row) carries.
fn present<T>(values: &[Option<T>]) -> Vec<usize> {
    (0..values.len()).filter(|&i| values[i].is_some()).collect()
}

/// One piece of work for the target, in order.
pub(super) enum Step {
    /// A table's buffered changes: merged deletes, updates and inserts, then the ones that
    /// keep the source's order.
    Table {
        oid: u32,
        table: Arc<TargetTable>,
        drained: Drained,
        ordered: Vec<Ordered>,
    },
    /// A statement of ours (TRUNCATE), with what it does for the error message.
    Sql(String, &'static str),
    /// The batch's checkpoint, written in its transaction.
    Checkpoint(Applied),
    /// A position every source transaction before which is in this batch or an earlier one,
    /// recorded as confirmed in the batch's transaction (see
    /// [`super::PgApplier::mark_through`]).
    Confirmed(Lsn),
    /// Per-table change counts, written in the batch's transaction.
    Stats(Vec<(QualifiedName, TableCounts)>),
    /// End of the batch: `COMMIT`, waiting for the target's WAL flush or not.
    Commit {
        /// Commit with the session's `synchronous_commit = on`; else the transaction sets it
        /// off for itself and the commit reports where the target stands.
        wait_for_flush: bool,
    },
}

/// How far the last `COMMIT` is known to be on the target's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommitOutcome {
    /// It waited for the flush, which also flushed every commit before it.
    Flushed,
    /// It did not wait: its commit record ends at or before `commit_end` (the target's
    /// insert position read right after it), and the target had flushed up to
    /// `target_flushed` then.
    Unflushed {
        commit_end: Lsn,
        target_flushed: Lsn,
    },
    /// It did not wait, and the target was found waiting for synchronous standbys
    /// (`synchronous_standby_names` set since the session started): the commit counts as on
    /// disk only after a later synchronous one, and commits wait from now on.
    StandbysAppeared,
}

/// The target connection, its prepared statements, and whether a transaction is open on it.
pub(super) struct Executor {
    pub(super) client: Client,
    task: String,
    statements: HashMap<String, Statement>,
    /// `BEGIN` was sent and no `COMMIT` yet.
    pub(super) open: bool,
    /// The outcome of the last `COMMIT` step, taken by the applier.
    pub(super) last_commit: Option<CommitOutcome>,
}

impl Executor {
    pub(super) fn new(client: Client, task: &str) -> Self {
        Executor {
            client,
            task: task.to_string(),
            statements: HashMap::new(),
            open: false,
            last_commit: None,
        }
    }

    /// Forget the prepared statements of a table whose shape changed.
    pub(super) fn forget_table(&mut self, oid: u32) {
        let suffix = format!(":{oid}");
        self.statements.retain(|k, _| !k.ends_with(&suffix));
    }

    /// Run `steps` in order, opening the batch's transaction first when none is open.
    ///
    /// Statements are sent ahead of their results ([`InOrder`]); every result is checked, in
    /// order, before a `COMMIT` is sent, so a batch with a failed or diverged statement is
    /// never committed.
    pub(super) async fn run(&mut self, steps: Vec<Step>) -> Result<()> {
        let Executor {
            client,
            task,
            statements,
            open,
            last_commit,
        } = self;
        let client: &Client = client;
        let task: &str = task;
        let mut sent = InOrder::default();
        for step in steps {
            if !*open && !matches!(step, Step::Commit { .. }) {
                sent.push(exec(
                    client,
                    "BEGIN",
                    "starting an apply transaction on the target",
                ));
                *open = true;
            }
            match step {
                Step::Table {
                    oid,
                    table,
                    drained,
                    ordered,
                } => {
                    let mut prepared = Prepared { client, statements };
                    flush_table(&mut prepared, &mut sent, oid, table, drained, ordered).await?
                }
                Step::Sql(sql, what) => sent.push(exec_owned(client, sql, what)),
                Step::Checkpoint(p) => sent.push(write_checkpoint(client, task, p)),
                Step::Confirmed(lsn) => sent.push(write_confirmed(client, task, lsn)),
                Step::Stats(counts) => sent.push(write_stats(client, task, counts)),
                Step::Commit { wait_for_flush } => {
                    sent.finish().await?;
                    if *open {
                        pgtide_core::failpoint::hit("apply-before-commit");
                        let outcome = commit(client, wait_for_flush).await;
                        // A failure after the COMMIT itself (reading the positions) still
                        // leaves no transaction open; the error ends the connection anyway.
                        *open = false;
                        *last_commit = Some(outcome?);
                    }
                }
            }
        }
        sent.finish().await
    }

    /// Record `lsn` as confirmed (in the open transaction, if any).
    pub(super) async fn write_confirmed(&self, lsn: Lsn) -> Result<()> {
        write_confirmed(&self.client, &self.task, lsn).await
    }
}

/// Statements sent to the target ahead of their results, whose results are taken in order.
///
/// # Why
///
/// Awaiting each statement before building the next left the target idle while pgtide
/// encoded the next one's arrays or COPY data, and while pgtide's thread was busy elsewhere
/// (building the next batch). Measured in a pgbench backlog drain with the kernel's per-thread
/// scheduler statistics: batches were in the executor's hands for 3.3 s, in which the target's
/// backend ran or waited for a CPU for 2.7 s, idle 0.6 s; queued ahead, 0.2 s (the first
/// statement of each batch, and the `COMMIT` after the checks). Now each statement is encoded
/// and queued on the connection as soon as it is built, and the target works through the queue
/// while the next one is encoded. (On the benchmark's two shared cores the drain time stayed the
/// same: the others took the CPU time the target no longer leaves unused.)
///
/// # Order and errors
///
/// The connection sends requests in the order they are queued, and a statement's future
/// queues its request on its first poll, so [`InOrder::push`] polls each future once right
/// away, in push order; [`InOrder::send`] then yields, and the connection task (on the same
/// thread) writes the requests to the socket before the next large statement is encoded. After the first failure the
/// target rejects everything after it in the transaction ("current transaction is aborted");
/// the first failure in push order is the one reported. Nothing is committed before
/// [`InOrder::finish`] has seen every result succeed.
///
/// While statements are queued, nothing else may be awaited on the connection: a queued COPY
/// holds the connection until its data is sent, which happens only while this set is polled
/// (in [`InOrder::push`] or [`InOrder::finish`]).
#[derive(Default)]
struct InOrder<'a> {
    pending: FuturesOrdered<BoxFuture<'a, Result<()>>>,
    failed: Option<Error>,
}

impl<'a> InOrder<'a> {
    /// Queue `statement` on the connection now; its result is taken later.
    fn push(&mut self, statement: impl Future<Output = Result<()>> + Send + 'a) {
        self.pending.push_back(Box::pin(statement));
        // The first poll encodes the statement and queues it (results that are already in are
        // taken too; the connection wakes the set for the rest).
        while let Some(Some(result)) = self.pending.next().now_or_never() {
            self.record(result);
        }
    }

    /// Let the connection task write what is queued to the socket now, before more is
    /// encoded: called after each set-based statement or COPY, not after single-row
    /// statements, which go out together (one write for many, as before this queue).
    async fn send(&mut self) {
        tokio::task::yield_now().await;
    }

    fn record(&mut self, result: Result<()>) {
        if let Err(e) = result {
            self.failed.get_or_insert(e);
        }
    }

    /// Wait for every queued statement; the first failure in order, if any.
    async fn finish(&mut self) -> Result<()> {
        while let Some(result) = self.pending.next().await {
            self.record(result);
        }
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The connection and its prepared statements, for building one table's statements.
struct Prepared<'a, 'b> {
    client: &'a Client,
    statements: &'b mut HashMap<String, Statement>,
}

impl<'a> Prepared<'a, '_> {
    /// The prepared statement `key`, prepared from `sql()` on first use.
    ///
    /// Everything queued is finished first: the `PREPARE` would wait behind a queued COPY
    /// whose data only goes out when its future is polled, which nothing does while this
    /// awaits (a deadlock; it happens once per statement shape and connection, so waiting
    /// costs little). A failure of what was queued is reported as itself, not as the
    /// prepare's "current transaction is aborted".
    async fn get(
        &mut self,
        sent: &mut InOrder<'a>,
        key: String,
        sql: impl FnOnce() -> String,
    ) -> Result<Statement> {
        if let Some(s) = self.statements.get(&key) {
            return Ok(s.clone());
        }
        sent.finish().await?;
        let s = self
            .client
            .prepare(&sql())
            .await
            .map_err(|e| classify(e, "preparing an apply statement on the target"))?;
        self.statements.insert(key, s.clone());
        Ok(s)
    }
}

async fn exec(client: &Client, sql: &str, what: &str) -> Result<()> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| classify(e, what))
}

async fn exec_owned(client: &Client, sql: String, what: &str) -> Result<()> {
    exec(client, &sql, what).await
}

/// `COMMIT` the open transaction. Without waiting for the flush, the target's insert
/// position right after it (at or past the end of its commit record) and its flush
/// position come back in the same round trip.
async fn commit(client: &Client, wait_for_flush: bool) -> Result<CommitOutcome> {
    const WHAT: &str = "committing an apply transaction on the target";
    if wait_for_flush {
        exec(client, "COMMIT", WHAT).await?;
        return Ok(CommitOutcome::Flushed);
    }
    let messages = client
        .simple_query(
            "SET LOCAL synchronous_commit = off; COMMIT; \
             SELECT pg_catalog.pg_current_wal_insert_lsn()::text, pg_catalog.pg_current_wal_flush_lsn()::text, \
               current_setting('synchronous_standby_names')",
        )
        .await
        .map_err(|e| classify(e, WHAT))?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .ok_or_else(|| Error::internal("the target returned no WAL position after COMMIT"))?;
    if row.get(2).is_some_and(|s| !s.trim().is_empty()) {
        return Ok(CommitOutcome::StandbysAppeared);
    }
    let lsn = |i: usize| -> Result<Lsn> {
        row.get(i)
            .ok_or_else(|| Error::internal("the target returned a NULL WAL position"))?
            .parse()
            .map_err(Error::internal)
    };
    Ok(CommitOutcome::Unflushed {
        commit_end: lsn(0)?,
        target_flushed: lsn(1)?,
    })
}

async fn write_checkpoint(client: &Client, task: &str, p: Applied) -> Result<()> {
    client
        .execute(
            "INSERT INTO pgtide.cdc_progress (task, commit_lsn, end_lsn, commit_time, confirmed_lsn, applied_at) \
             VALUES ($1, $2::text::pg_lsn, $3::text::pg_lsn, $4, $3::text::pg_lsn, now()) \
             ON CONFLICT (task) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, end_lsn = EXCLUDED.end_lsn, \
               commit_time = EXCLUDED.commit_time, applied_at = EXCLUDED.applied_at, \
               confirmed_lsn = greatest(cdc_progress.confirmed_lsn, EXCLUDED.end_lsn)",
            &[&task, &p.commit_lsn.to_string(), &p.end_lsn.to_string(), &pg_time(p.commit_time)],
        )
        .await
        .map_err(|e| classify(e, "recording the applied position on the target"))?;
    Ok(())
}

async fn write_confirmed(client: &Client, task: &str, lsn: Lsn) -> Result<()> {
    client
        .execute(
            "INSERT INTO pgtide.cdc_progress (task, commit_lsn, end_lsn, commit_time, confirmed_lsn, applied_at) \
             VALUES ($1, '0/0', '0/0', NULL, $2::text::pg_lsn, now()) \
             ON CONFLICT (task) DO UPDATE SET confirmed_lsn = greatest(cdc_progress.confirmed_lsn, EXCLUDED.confirmed_lsn)",
            &[&task, &lsn.to_string()],
        )
        .await
        .map_err(|e| classify(e, "recording the confirmed position on the target"))?;
    Ok(())
}

async fn write_stats(
    client: &Client,
    task: &str,
    counts: Vec<(QualifiedName, TableCounts)>,
) -> Result<()> {
    let mut schemas = Vec::new();
    let mut names = Vec::new();
    let (mut ins, mut upd, mut del, mut tru) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, c) in counts {
        schemas.push(n.schema);
        names.push(n.name);
        ins.push(c.inserts as i64);
        upd.push(c.updates as i64);
        del.push(c.deletes as i64);
        tru.push(c.truncates as i64);
    }
    client
        .execute(
            "INSERT INTO pgtide.cdc_table_stats AS s (task, schema_name, table_name, inserts, updates, deletes, truncates) \
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) \
             ON CONFLICT (task, schema_name, table_name) DO UPDATE SET inserts = s.inserts + EXCLUDED.inserts, \
               updates = s.updates + EXCLUDED.updates, deletes = s.deletes + EXCLUDED.deletes, \
               truncates = s.truncates + EXCLUDED.truncates",
            &[&task, &schemas, &names, &ins, &upd, &del, &tru],
        )
        .await
        .map_err(|e| classify(e, "recording change counts on the target"))?;
    Ok(())
}

/// Queue one table's changes: merged deletes, update groups and inserts, then the changes
/// kept in source order (runs of inserts by COPY, the rest one statement each).
async fn flush_table<'a>(
    prepared: &mut Prepared<'a, '_>,
    sent: &mut InOrder<'a>,
    oid: u32,
    table: Arc<TargetTable>,
    drained: Drained,
    ordered: Vec<Ordered>,
) -> Result<()> {
    let client = prepared.client;
    if !drained.deletes.is_empty() {
        let stmt = prepared
            .get(sent, format!("D:{oid}"), || sql::delete_run_sql(&table))
            .await?;
        let (table, keys) = (table.clone(), drained.deletes);
        sent.push(async move {
            let mut arrays: Vec<Vec<Option<Text>>> =
                vec![Vec::with_capacity(keys.len()); table.key.len()];
            for key in &keys {
                for (a, v) in arrays.iter_mut().zip(key) {
                    a.push(text(v));
                }
            }
            let got = execute_arrays(client, &stmt, &table, &arrays).await?;
            if got != keys.len() as u64 {
                return Err(diverged(&table.name, "deletes", keys.len(), got));
            }
            Ok(())
        });
        sent.send().await;
    }
    for (sig, group) in drained.updates {
        let set: Vec<usize> = sig
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(i, _)| i)
            .collect();
        let stmt = prepared
            .get(sent, format!("U{set:?}:{oid}"), || {
                sql::update_run_sql(&table, &set)
            })
            .await?;
        let table = table.clone();
        sent.push(async move {
            // One array per key column, then one per column set, borrowing the values.
            let width = table.key.len();
            let mut arrays: Vec<Vec<Option<Text>>> =
                vec![Vec::with_capacity(group.len()); width + set.len()];
            for (key, patch) in &group {
                for (a, v) in arrays.iter_mut().zip(key) {
                    a.push(text(v));
                }
                for (a, &c) in arrays[width..].iter_mut().zip(&set) {
                    a.push(patch[c].as_ref().and_then(text));
                }
            }
            let got = execute_arrays(client, &stmt, &table, &arrays).await?;
            if got != group.len() as u64 {
                return Err(diverged(&table.name, "updates", group.len(), got));
            }
            Ok(())
        });
        sent.send().await;
    }
    if !drained.inserts.is_empty() {
        sent.push(copy_rows(client, table.clone(), drained.inserts));
        sent.send().await;
    }
    // Ordered changes: runs of inserts go by COPY, everything else one statement per row.
    // The changes are ours now: rows move into their run.
    let mut rows = Vec::new();
    for change in ordered {
        if let Ordered::Insert(row) = change {
            rows.push(row);
            continue;
        }
        if !rows.is_empty() {
            sent.push(copy_rows(client, table.clone(), std::mem::take(&mut rows)));
            sent.send().await;
        }
        let (stmt, values, what) = single_statement(prepared, sent, oid, &table, change).await?;
        let table = table.clone();
        sent.push(async move {
            let texts: Vec<Option<Text>> = values.iter().map(|(_, v)| text(v)).collect();
            let params: Vec<&(dyn ToSql + Sync)> =
                texts.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            let got = client
                .execute(&stmt, &params)
                .await
                .map_err(|e| classify(e, &format!("applying {what} to {}", table.name)))?;
            if got != 1 {
                return Err(diverged(&table.name, what, 1, got));
            }
            Ok(())
        });
    }
    if !rows.is_empty() {
        sent.push(copy_rows(client, table, rows));
        sent.send().await;
    }
    Ok(())
}

/// COPY `rows` into the table; the data is encoded before the COPY is started, while the
/// target still works on what was queued before it.
async fn copy_rows(client: &Client, table: Arc<TargetTable>, rows: Vec<Row>) -> Result<()> {
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(1 << 20);
    for row in &rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                buf.extend_from_slice(b"\t");
            }
            match v {
                None => buf.extend_from_slice(b"\\N"),
                Some(b) => copy_escape(&mut buf, b),
            }
        }
        buf.extend_from_slice(b"\n");
        if buf.len() >= 1 << 20 {
            chunks.push(buf.split().freeze());
        }
    }
    if !buf.is_empty() {
        chunks.push(buf.freeze());
    }
    let n = rows.len();
    drop(rows);
    let what = format!("inserting into {}", table.name);
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
    let sql = format!(
        "COPY {} ({}) FROM STDIN",
        table.name.quoted(),
        cols.join(", ")
    );
    let sink = client
        .copy_in::<_, Bytes>(&sql)
        .await
        .map_err(|e| classify(e, &what))?;
    futures::pin_mut!(sink);
    for chunk in chunks {
        sink.send(chunk).await.map_err(|e| classify(e, &what))?;
    }
    let got = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| classify(e, &what))?;
    if got != n as u64 {
        return Err(diverged(&table.name, "inserts", n, got));
    }
    Ok(())
}

/// Execute a set-based statement whose parameters are text[] arrays, one per column.
async fn execute_arrays(
    client: &Client,
    stmt: &Statement,
    table: &TargetTable,
    arrays: &[Vec<Option<Text<'_>>>],
) -> Result<u64> {
    let params: Vec<&(dyn ToSql + Sync)> =
        arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    client
        .execute(stmt, &params)
        .await
        .map_err(|e| classify(e, &format!("applying changes to {}", table.name)))
}

/// The single-row statement for one ordered change (not an insert), with its parameters.
async fn single_statement<'a>(
    prepared: &mut Prepared<'a, '_>,
    sent: &mut InOrder<'a>,
    oid: u32,
    table: &TargetTable,
    change: Ordered,
) -> Result<(Statement, Bound, &'static str)> {
    Ok(match change {
        Ordered::Update { key, patch } => {
            let set: Vec<usize> = present(&patch);
            let stmt = prepared
                .get(sent, format!("K{set:?}:{oid}"), || {
                    sql::key_update_sql(table, &set)
                })
                .await?;
            let mut v: Bound = set
                .iter()
                .map(|&c| (c, patch[c].clone().flatten()))
                .collect();
            v.extend(table.key.iter().copied().zip(key));
            (stmt, v, "an update")
        }
        Ordered::Delete { key } => {
            let stmt = prepared
                .get(sent, format!("D1:{oid}"), || sql::key_delete_sql(table))
                .await?;
            let v: Bound = table.key.iter().copied().zip(key).collect();
            (stmt, v, "a delete")
        }
        Ordered::WholeRowUpdate { old, patch } => {
            let set: Vec<usize> = present(&patch);
            let matchable: Vec<usize> = present(&old);
            let stmt = prepared
                .get(sent, format!("WU{set:?}{matchable:?}:{oid}"), || {
                    sql::whole_row_update_sql(table, &set, &matchable)
                })
                .await?;
            let mut v: Bound = set
                .iter()
                .map(|&c| (c, patch[c].clone().flatten()))
                .collect();
            v.extend(matchable.iter().map(|&c| (c, old[c].clone().flatten())));
            (stmt, v, "an update")
        }
        Ordered::WholeRowDelete { old } => {
            let matchable: Vec<usize> = present(&old);
            let stmt = prepared
                .get(sent, format!("WD{matchable:?}:{oid}"), || {
                    sql::whole_row_delete_sql(table, &matchable)
                })
                .await?;
            let v: Bound = matchable
                .iter()
                .map(|&c| (c, old[c].clone().flatten()))
                .collect();
            (stmt, v, "a delete")
        }
        Ordered::Insert(_) => {
            return Err(Error::internal("inserts are copied, not sent one by one"));
        }
    })
}
