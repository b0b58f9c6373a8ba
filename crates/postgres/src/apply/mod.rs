//! Applying committed source transactions to a PostgreSQL target, exactly once, fast.
//!
//! # Batches
//!
//! Consecutive source transactions are grouped into one target transaction until it holds
//! `max_batch_changes` changes or `max_batch_bytes` of values, or has been open for
//! `max_batch_age`, or holds an eighth of `max_batch_changes` while nothing runs on the target
//! (the target would otherwise idle while the first batch of a backlog is built); the caller
//! also closes it when the stream goes quiet. A batch always ends at a source commit, never
//! inside a source transaction.
//!
//! # Inside a batch
//!
//! Only the end state of a batch is ever visible, and triggers and foreign-key checks are off in
//! the apply session (`session_replication_role = replica`), so changes are buffered per table
//! and, per row, merged into one operation ([`buffer`] has the rules and the property test that
//! proves them). A buffered table becomes at most: one `DELETE ... USING unnest(keys)`, one
//! `UPDATE ... FROM unnest(...)` per set of changed columns, and one `COPY` of new rows. Under a
//! pgbench workload that turns thousands of row changes (many on the same hot rows) into a
//! handful of statements per batch. Buffers are flushed into the open transaction when they grow
//! past `max_buffer_bytes`, so a transaction of any size fits in bounded memory.
//!
//! Tables where merging is not safe keep the source's order row by row, with the statements
//! pipelined on the connection: tables without a key (`REPLICA IDENTITY FULL`: each change finds
//! one row equal on every column, compared by text form, which also works for types without an
//! equality operator such as `point` and `json`), and tables with another immediate unique or
//! exclusion constraint (a set-based UPDATE that swaps such values could collide halfway).
//!
//! Every UPDATE and DELETE must touch exactly the rows it carries; anything else means the target
//! no longer matches the source, and the task stops instead of silently drifting. Unchanged
//! TOASTed values (pgoutput's `u`) are left out of the SET list: the target keeps its value.
//!
//! # Exactly once
//!
//! The last applied source transaction (commit LSN, end LSN, time) is written into
//! `pgtide.cdc_progress` in the same target transaction as the changes, with per-table counts.
//! A transaction whose commit LSN is at or below the stored one is skipped whole on restart;
//! changes are never skipped one by one by their own LSN. A position is confirmed to the
//! source only once its commit is on the target's disk: batches handed off in the background
//! commit without waiting for the flush and are confirmed when the target is seen flushed past
//! them ([`executor`] explains how); every other commit is synchronous.

mod buffer;
mod executor;
mod sql;

use crate::changes::{Change, ChangeSink, RelationRef};
use crate::connect::classify;
use crate::pgoutput::{OldTuple, PgTimestamp, Tuple, Value};
use buffer::{Compacted, Drained, Key, Ordered, Patch, Row};
use bytes::{Bytes, BytesMut};
use executor::{CommitOutcome, Executor, Step};
use pgtide_core::ident::QualifiedName;
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, ErrorKind, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::Client;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Batch limits.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Changes per target transaction.
    pub max_batch_changes: usize,
    /// Value bytes per target transaction.
    pub max_batch_bytes: usize,
    /// Age of a target transaction.
    pub max_batch_age: Duration,
    /// Batches handed off in the background commit without waiting for the target's WAL
    /// flush (`synchronous_commit = off` for that transaction), as native logical
    /// replication's apply worker does; what they apply is confirmed to the source only once
    /// the target is seen flushed past them. Turned off by the applier when the target waits
    /// for synchronous standbys (a failover there must not lose what the source was told).
    pub commit_without_flush: bool,
    /// Buffered value bytes that are flushed into the open transaction.
    pub max_buffer_bytes: usize,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_batch_changes: 50_000,
            max_batch_bytes: 64 << 20,
            max_batch_age: Duration::from_millis(200),
            commit_without_flush: true,
            max_buffer_bytes: 16 << 20,
        }
    }
}

/// A source transaction's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// LSN of its commit record: its place in commit order.
    pub commit_lsn: Lsn,
    /// LSN just past its commit record: what the slot is confirmed up to.
    pub end_lsn: Lsn,
    /// Commit time on the source.
    pub commit_time: PgTimestamp,
}

/// Counts of applied changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableCounts {
    /// Inserted rows.
    pub inserts: u64,
    /// Updated rows.
    pub updates: u64,
    /// Deleted rows.
    pub deletes: u64,
    /// TRUNCATEs.
    pub truncates: u64,
}

impl TableCounts {
    /// Add `o` to these counts.
    pub fn add(&mut self, o: &TableCounts) {
        self.inserts += o.inserts;
        self.updates += o.updates;
        self.deletes += o.deletes;
        self.truncates += o.truncates;
    }

    /// All changes.
    pub fn total(&self) -> u64 {
        self.inserts + self.updates + self.deletes + self.truncates
    }
}

/// Convert a PostgreSQL timestamp (µs since 2000-01-01) to system time.
pub fn pg_time(t: PgTimestamp) -> SystemTime {
    let unix_us = t as i128 + 946_684_800_000_000i128;
    if unix_us >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_micros(unix_us as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// The target side of one replicated table.
#[derive(Debug)]
pub(crate) struct TargetTable {
    name: QualifiedName,
    columns: Vec<String>,
    /// Target `format_type` per column, used to cast text values.
    types: Vec<String>,
    /// Columns that identify a row.
    key: Vec<usize>,
    /// No usable key: rows are matched on every column.
    whole_row: bool,
    /// Changes may be merged per key (the key is the only uniqueness rule).
    compactable: bool,
}

struct TableState {
    rel: RelationRef,
    table: Arc<TargetTable>,
    compact: Compacted,
    ordered: Vec<Ordered>,
}

/// Work handed to the executor and not yet waited for.
struct InFlight {
    handle: tokio::task::JoinHandle<(Executor, Result<()>)>,
    /// Set when the work ends with the batch's COMMIT.
    committing: Option<Committing>,
}

/// What a batch handed off makes true once its `COMMIT` has returned (how far that is on
/// the target's disk: [`executor::CommitOutcome`]).
struct Committing {
    /// The position it records as confirmed (`Step::Confirmed`).
    confirms: Option<Lsn>,
    /// The batch's change counts, added to the totals.
    counts: Vec<(QualifiedName, TableCounts)>,
}

impl Drop for PgApplier {
    fn drop(&mut self) {
        // Dropped on an error: the connection closes and the target rolls back whatever was
        // not committed; the checkpoint tells the next run where to resume.
        if let Some(f) = &self.in_flight {
            f.handle.abort();
        }
    }
}

/// Parameters of one single-row statement: (column index, text value or NULL).
type Bound = Vec<(usize, Option<Bytes>)>;

/// Applies [`Change`]s to a PostgreSQL target; implements [`ChangeSink`].
pub struct PgApplier {
    /// The target connection, when no work is in flight on it.
    executor: Option<Executor>,
    /// Work running on the target while the next batch is built (see [`executor`]).
    in_flight: Option<InFlight>,
    /// A position to record as confirmed with the next batch handed off.
    confirm_with_batch: Option<Lsn>,
    opts: ApplyOptions,
    /// Primary keys known from the source catalog, for `REPLICA IDENTITY FULL` tables that
    /// have one (matching on the key is faster and exact).
    source_keys: HashMap<QualifiedName, Vec<String>>,
    /// Looked up for every change (foldhash: cheaper than SipHash for an OID).
    tables: foldhash::HashMap<u32, TableState>,
    /// Tables with buffered changes, in first-touch order.
    touched: Vec<u32>,
    /// A batch is being built (its transaction opens with its first statements).
    in_tx: bool,
    checkpoint: Checkpoint,
    batch_changes: usize,
    batch_bytes: usize,
    buffered_bytes: usize,
    batch_opened: Option<Instant>,
    /// Counted for every change (foldhash, as `tables`: SipHash of the two names showed in
    /// profiles of a drain).
    counts_pending: foldhash::HashMap<QualifiedName, TableCounts>,
    counts_total: HashMap<QualifiedName, TableCounts>,
}

fn value_text(v: &Value, table: &TargetTable, col: usize) -> Result<Option<Bytes>> {
    match v {
        Value::Null => Ok(None),
        Value::Text(b) => Ok(Some(b.clone())),
        Value::UnchangedToast => Err(Error::internal(format!(
            "{}.{}: an unchanged TOAST value where a full value is needed",
            table.name, table.columns[col]
        ))),
        Value::Binary(_) => Err(Error::internal(
            "binary values in the stream, but pgtide asked for text",
        )),
    }
}

/// A value in PostgreSQL's text format, bound as a `text` parameter as it is.
///
/// Not checked for UTF-8 here: change data capture starts only from UTF8 source databases
/// ([`crate::slot::check_source`]), whose text output is valid UTF-8, and the target verifies
/// every text parameter's encoding on receipt anyway, refusing the batch if one were not.
/// (Checking each value again through `str` cost the applier's thread ~4% of its time.)
#[derive(Debug, Clone, Copy)]
struct Text<'a>(&'a [u8]);

impl ToSql for Text<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// A value (or SQL NULL) as a text parameter.
fn text(v: &Option<Bytes>) -> Option<Text<'_>> {
    v.as_deref().map(Text)
}

fn copy_escape(out: &mut BytesMut, v: &[u8]) {
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[b]),
        }
    }
}

fn diverged(table: &QualifiedName, what: &str, expected: usize, got: u64) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!("applying {expected} {what} to {table}: {got} rows matched on the target; the target no longer matches the source"),
    )
    .with_hint("something changed that table on the target outside pgtide; reload it (drop it from the target and re-run the full load) and resume")
}

impl PgApplier {
    /// An applier on `client` (a dedicated target connection). Reads the checkpoint.
    ///
    /// The session pins its plans: every set-based statement joins an array of keys to the
    /// table through the key's unique index, which a nested loop of index lookups does best.
    /// Left alone, the planner sees a 10,000-element array, prefers a hash join, and scans the
    /// whole table for each batch (measured: 500 ms instead of a few ms on a 1M-row table).
    pub async fn new(
        client: Client,
        task: &str,
        opts: ApplyOptions,
        source_keys: HashMap<QualifiedName, Vec<String>>,
    ) -> Result<Self> {
        client
            .batch_execute(
                "SET synchronous_commit = on; SET session_replication_role = replica; \
                 SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
                 SET plan_cache_mode = force_generic_plan; SET enable_hashjoin = off; SET enable_mergejoin = off",
            )
            .await
            .map_err(|e| classify(e, "preparing the apply session on the target"))?;
        let mut opts = opts;
        if opts.commit_without_flush {
            let standbys: String = client
                .query_one("SELECT current_setting('synchronous_standby_names')", &[])
                .await
                .map_err(|e| classify(e, "reading the target's synchronous_standby_names"))?
                .get(0);
            if !standbys.trim().is_empty() {
                tracing::info!(
                    "the target waits for synchronous standbys: every apply transaction waits for them too"
                );
                opts.commit_without_flush = false;
            }
        }
        // A run before this one may have committed batches without waiting for the flush and
        // then died: what it left must be on disk before the checkpoint read below is
        // confirmed to the source. A synchronous commit of a transaction with an xid flushes
        // the target's WAL up to it.
        flush_wal(&client).await?;
        if opts.commit_without_flush
            && let Err(e) = client
                .simple_query("SELECT pg_catalog.pg_current_wal_insert_lsn(), pg_catalog.pg_current_wal_flush_lsn()")
                .await
        {
            // A PostgreSQL-compatible target without them cannot say what is on its disk.
            tracing::info!(
                "the target's WAL positions cannot be read ({e}): every apply transaction waits for its disk"
            );
            opts.commit_without_flush = false;
        }
        let progress = read_progress(&client, task).await?;
        let (durable, confirmed) = match progress {
            Some(p) => (p.applied, p.confirmed),
            None => (None, Lsn::ZERO),
        };
        Ok(PgApplier {
            executor: Some(Executor::new(client, task)),
            in_flight: None,
            confirm_with_batch: None,
            opts,
            source_keys,
            tables: Default::default(),
            touched: Vec::new(),
            in_tx: false,
            checkpoint: Checkpoint::new(durable, confirmed),
            batch_changes: 0,
            batch_bytes: 0,
            buffered_bytes: 0,
            batch_opened: None,
            counts_pending: Default::default(),
            counts_total: HashMap::new(),
        })
    }

    /// The last source transaction applied in a committed target transaction (confirmable
    /// once on the target's disk: [`PgApplier::confirmable`]).
    pub fn durable(&self) -> Option<Applied> {
        self.checkpoint.durable
    }

    /// The position the source may be told is done: the durable checkpoint, later when
    /// transactions after it were skipped as already applied, or the recorded idle position;
    /// never past a commit the target has not flushed yet.
    pub fn confirmable(&self) -> Lsn {
        self.checkpoint.confirmable(self.has_open_batch())
    }

    /// Record on the target that the slot will be confirmed up to `lsn` although no applied
    /// transaction ends there (the stream is idle, or everything up to `lsn` was filtered out).
    /// Must be called between batches.
    pub async fn record_confirmed(&mut self, lsn: Lsn) -> Result<()> {
        if self.in_tx || lsn <= self.checkpoint.confirmed {
            return Ok(());
        }
        let ex = self.settle().await?;
        if ex.open {
            return Ok(());
        }
        ex.write_confirmed(lsn).await?;
        // Written outside a batch, in a transaction of its own committed synchronously: the
        // target's WAL is on disk up to it.
        self.checkpoint.confirmed = lsn;
        self.checkpoint.all_flushed();
        Ok(())
    }

    /// Record with the open batch that every source transaction committing before `upto` is
    /// in it or in an earlier batch (the caller guarantees it: a catch-up chunk ends there).
    /// The batch stays open, later transactions join it, and `upto` becomes confirmable when
    /// it is seen committed and flushed (like the batch itself): ending the batch at every
    /// chunk boundary left the target idle while the next full batch was built. When the last
    /// batch was just handed off, `upto` goes with the next one ([`PgApplier::commit_batch`]
    /// records it if none comes); with nothing on the target at all, it is recorded at once
    /// ([`PgApplier::record_confirmed`]).
    pub async fn mark_through(&mut self, upto: Lsn) -> Result<()> {
        if !self.in_tx && self.in_flight.is_none() {
            return self.record_confirmed(upto).await;
        }
        self.confirm_with_batch = Some(self.confirm_with_batch.map_or(upto, |c| c.max(upto)));
        Ok(())
    }

    /// A batch is being built or is in flight on the target (changes not yet committed).
    pub fn has_open_batch(&self) -> bool {
        self.in_tx || self.in_flight.is_some()
    }

    /// Nothing is running on the target: a batch handed off now starts at once. (An eighth
    /// of a full batch is then worth handing off: when a backlog starts draining, the target
    /// would otherwise wait for the whole first batch to be built.)
    fn target_is_idle(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_none_or(|f| f.handle.is_finished())
    }

    /// The open batch is older than `max_batch_age`.
    pub fn batch_is_old(&self) -> bool {
        self.batch_opened
            .map(|t| t.elapsed() >= self.opts.max_batch_age)
            .unwrap_or(false)
    }

    /// Applied-change counts per table since this applier started (durable ones).
    pub fn counts(&self) -> &HashMap<QualifiedName, TableCounts> {
        &self.counts_total
    }

    /// The table's state, resolving it against the target on first sight or when the source
    /// sent a new shape for it (buffered changes of the old shape are applied first).
    async fn state(&mut self, rel: &RelationRef) -> Result<Arc<TargetTable>> {
        if let Some(st) = self.tables.get(&rel.oid)
            && Arc::ptr_eq(&st.rel, rel)
        {
            return Ok(st.table.clone());
        }
        if self.tables.contains_key(&rel.oid) {
            self.flush_table(rel.oid).await?;
        }
        self.settle().await?.forget_table(rel.oid);
        let table = Arc::new(self.resolve(rel).await?);
        self.tables.insert(
            rel.oid,
            TableState {
                rel: rel.clone(),
                table: table.clone(),
                compact: Compacted::default(),
                ordered: Vec::new(),
            },
        );
        Ok(table)
    }

    async fn resolve(&mut self, rel: &RelationRef) -> Result<TargetTable> {
        self.settle().await?;
        let client = &self.executor.as_ref().expect("settled").client;
        let name = QualifiedName::new(
            if rel.namespace.is_empty() {
                "pg_catalog"
            } else {
                &rel.namespace
            },
            rel.name.clone(),
        );
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '' \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&name.quoted()],
            )
            .await
            .map_err(|e| classify(e, &format!("reading the target columns of {name}")))?;
        if rows.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("{name} is replicated from the source but does not exist on the target"),
            )
            .with_hint("create it on the target (or re-run the full load), then resume"));
        }
        let target_cols: HashMap<String, (String, bool)> = rows
            .into_iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, String>(1), r.get::<_, bool>(2)),
                )
            })
            .collect();
        let mut types = Vec::new();
        for c in &rel.columns {
            match target_cols.get(&c.name) {
                None => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("{name}.{} arrives from the source but the target table has no such column", pgtide_core::ident::display_ident(&c.name)),
                    )
                    .with_hint("pgtide does not replicate DDL: add the column on the target the same way (ALTER TABLE), then resume"));
                }
                Some((_, true)) => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("{name}.{} is a generated column on the target", c.name),
                    )
                    .with_hint("make the target column match the source"));
                }
                Some((ty, false)) => types.push(ty.clone()),
            }
        }
        let columns: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
        let flagged: Vec<usize> = rel
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        let (key, whole_row) = if rel.replica_identity == b'f' {
            match self.source_keys.get(&name) {
                Some(pk) if pk.iter().all(|k| columns.contains(k)) => (
                    pk.iter()
                        .map(|k| columns.iter().position(|c| c == k).expect("checked"))
                        .collect(),
                    false,
                ),
                _ => ((0..columns.len()).collect(), true),
            }
        } else {
            (flagged, false)
        };
        // Merging changes per key is safe only if no other immediate unique or exclusion rule
        // could be violated halfway through a set-based statement. A unique index that covers
        // every key column is implied by the key and harmless.
        let key_names: Vec<&str> = key.iter().map(|&i| columns[i].as_str()).collect();
        let rules = client
            .query(
                "SELECT i.indisexclusion OR i.indexprs IS NOT NULL OR i.indpred IS NOT NULL, \
                        ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) k JOIN pg_attribute a \
                              ON a.attrelid = i.indrelid AND a.attnum = k) \
                 FROM pg_index i WHERE i.indrelid = to_regclass($1) AND (i.indisunique OR i.indisexclusion) AND i.indimmediate",
                &[&name.quoted()],
            )
            .await
            .map_err(|e| classify(e, &format!("reading the target indexes of {name}")))?;
        let other_rule = rules.iter().any(|r| {
            let complex: bool = r.get(0);
            let cols: Vec<String> = r.get(1);
            complex || !key_names.iter().all(|k| cols.iter().any(|c| c == k))
        });
        let compactable = !key.is_empty() && !whole_row && !other_rule;
        Ok(TargetTable {
            name,
            columns,
            types,
            key,
            whole_row,
            compactable,
        })
    }

    fn count(&mut self, table: &QualifiedName, f: impl FnOnce(&mut TableCounts)) {
        // Per change: look up before cloning the name into a new entry.
        match self.counts_pending.get_mut(table) {
            Some(c) => f(c),
            None => f(self.counts_pending.entry(table.clone()).or_default()),
        }
    }

    fn touch(&mut self, oid: u32) {
        if !self.touched.contains(&oid) {
            self.touched.push(oid);
        }
    }

    fn buffered(&mut self, size: usize) {
        self.buffered_bytes += size;
        self.batch_bytes += size;
    }

    /// A batch starts with its first applied transaction. `BEGIN` itself is sent by the
    /// executor with the batch's first statements.
    fn ensure_tx(&mut self) {
        if !self.in_tx {
            self.in_tx = true;
            self.batch_opened = Some(Instant::now());
        }
    }

    /// Wait for the work in flight, if any, and take its outcome: a committed batch becomes
    /// durable. Returns the connection, free for the caller.
    async fn settle(&mut self) -> Result<&mut Executor> {
        if let Some(f) = self.in_flight.take() {
            let (ex, result) = f.handle.await.map_err(|e| {
                Error::internal(format!("the task applying to the target failed: {e}"))
            })?;
            self.executor = Some(ex);
            result?;
            if let Some(c) = f.committing {
                let ex = self.executor.as_mut().expect("just returned");
                let unflushed = match ex.last_commit.take() {
                    Some(CommitOutcome::Flushed) => None,
                    Some(CommitOutcome::StandbysAppeared) => {
                        tracing::info!(
                            "the target now waits for synchronous standbys: every apply transaction waits for them too"
                        );
                        self.opts.commit_without_flush = false;
                        NOT_KNOWN_FLUSHED
                    }
                    Some(CommitOutcome::Unflushed {
                        commit_end,
                        target_flushed,
                    }) => Some((commit_end, target_flushed)),
                    // Nothing was open to commit: nothing new to wait for, but what was
                    // committed before is not known to be flushed either.
                    None => NOT_KNOWN_FLUSHED,
                };
                self.checkpoint.in_flight_committed(c.confirms, unflushed);
                for (n, c) in c.counts {
                    self.counts_total.entry(n).or_default().add(&c);
                }
            }
        }
        self.executor
            .as_mut()
            .ok_or_else(|| Error::internal("the target connection was lost with a failed batch"))
    }

    /// Hand `steps` to the executor on its own task, after the previous work is done.
    async fn submit(&mut self, steps: Vec<Step>, committing: Option<Committing>) -> Result<()> {
        self.settle().await?;
        let mut ex = self.executor.take().expect("settled");
        let handle = tokio::spawn(async move {
            let result = ex.run(steps).await;
            (ex, result)
        });
        self.in_flight = Some(InFlight { handle, committing });
        Ok(())
    }

    /// The buffered changes of every touched table, as executor steps.
    fn drain_steps(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        for oid in std::mem::take(&mut self.touched) {
            if let Some(step) = self.drain_table(oid) {
                steps.push(step);
            }
        }
        self.buffered_bytes = 0;
        steps
    }

    fn drain_table(&mut self, oid: u32) -> Option<Step> {
        let st = self.tables.get_mut(&oid)?;
        let drained = st.compact.drain();
        let ordered = std::mem::take(&mut st.ordered);
        if drained == Drained::default() && ordered.is_empty() {
            return None;
        }
        Some(Step::Table {
            oid,
            table: st.table.clone(),
            drained,
            ordered,
        })
    }

    /// Apply every buffered change into the open transaction (in the background: the next
    /// changes are buffered meanwhile).
    async fn flush_all(&mut self) -> Result<()> {
        let steps = self.drain_steps();
        self.submit(steps, None).await
    }

    /// Apply one table's buffered changes now, before a change that cannot be buffered.
    async fn flush_table(&mut self, oid: u32) -> Result<()> {
        self.touched.retain(|&o| o != oid);
        if let Some(step) = self.drain_table(oid) {
            self.submit(vec![step], None).await?;
            self.settle().await?;
        }
        Ok(())
    }

    /// Hand the open batch with its checkpoint to the executor and go on; it becomes durable
    /// (see [`PgApplier::durable`]) once its `COMMIT` has returned, which the next interaction
    /// with the target waits for.
    pub async fn hand_off_batch(&mut self) -> Result<()> {
        self.hand_off(!self.opts.commit_without_flush).await
    }

    /// Hand the open batch off, its commit waiting for the target's WAL flush or not.
    async fn hand_off(&mut self, wait_for_flush: bool) -> Result<()> {
        if !self.in_tx {
            return Ok(());
        }
        // The statements are built while the previous batch still runs on the target (they
        // do not depend on it: sorting keys and building arrays left the target idle ~10 ms
        // per batch); the previous batch must then be done, as only one position is in
        // flight at a time.
        let mut steps = self.drain_steps();
        self.settle().await?;
        if let Some(p) = self.checkpoint.batch_handed_off() {
            steps.push(Step::Checkpoint(p));
        }
        let confirms = self.confirm_with_batch.take();
        if let Some(upto) = confirms {
            steps.push(Step::Confirmed(upto));
        }
        let counts: Vec<(QualifiedName, TableCounts)> = std::mem::take(&mut self.counts_pending)
            .into_iter()
            .collect();
        if !counts.is_empty() {
            steps.push(Step::Stats(counts.clone()));
        }
        steps.push(Step::Commit { wait_for_flush });
        self.in_tx = false;
        self.batch_opened = None;
        self.batch_changes = 0;
        self.batch_bytes = 0;
        self.submit(steps, Some(Committing { confirms, counts }))
            .await
    }

    /// Commit the open batch with its checkpoint and wait for it, on the target's disk with
    /// every batch before it (so all of it is confirmable), and record a position left by
    /// [`PgApplier::mark_through`] for a batch that did not come. Returns the new durable
    /// position.
    pub async fn commit_batch(&mut self) -> Result<Option<Applied>> {
        self.hand_off(true).await?;
        if let Some(upto) = self.confirm_with_batch.take() {
            // Written synchronously: everything before it is flushed with it.
            self.record_confirmed(upto).await?;
        }
        let open = self.settle().await?.open;
        if self.checkpoint.has_unflushed() && !open {
            // Batches handed off before were committed without waiting for the flush.
            flush_wal(&self.executor.as_ref().expect("settled").client).await?;
            self.checkpoint.all_flushed();
        }
        Ok(self.checkpoint.durable)
    }

    /// Abandon the open batch (after an error); the stream must restart from the checkpoint.
    pub async fn rollback(&mut self) {
        let _ = self.settle().await;
        if let Some(ex) = self.executor.as_mut()
            && ex.open
        {
            let _ = ex.client.batch_execute("ROLLBACK").await;
            ex.open = false;
        }
        self.in_tx = false;
        for st in self.tables.values_mut() {
            st.compact.clear();
            st.ordered.clear();
        }
        self.touched.clear();
        self.checkpoint.batch_abandoned();
        self.confirm_with_batch = None;
        self.counts_pending.clear();
        self.batch_opened = None;
        self.batch_changes = 0;
        self.batch_bytes = 0;
        self.buffered_bytes = 0;
    }

    fn buffer_err(table: &TargetTable, problem: &str) -> Error {
        Error::new(
            ErrorKind::Conflict,
            format!(
                "{}: the change stream holds {problem}; the target no longer matches the source",
                table.name
            ),
        )
        .with_hint("reload the table on the target (re-run the full load) and resume")
    }

    async fn on_insert(&mut self, rel: RelationRef, new: Tuple) -> Result<()> {
        let table = self.state(&rel).await?;
        check_width(&table, &new)?;
        let row: Row = (0..table.columns.len())
            .map(|c| value_text(&new.0[c], &table, c))
            .collect::<Result<_>>()?;
        let size = row_size(&row);
        let st = self.tables.get_mut(&rel.oid).expect("resolved");
        if table.compactable {
            let key: Key = table.key.iter().map(|&k| row[k].clone()).collect();
            st.compact
                .insert(key, row)
                .map_err(|p| Self::buffer_err(&table, p))?;
        } else {
            st.ordered.push(Ordered::Insert(row));
        }
        self.buffered(size);
        self.touch(rel.oid);
        self.count(&table.name, |c| c.inserts += 1);
        Ok(())
    }

    async fn on_update(
        &mut self,
        rel: RelationRef,
        old: Option<OldTuple>,
        new: Tuple,
    ) -> Result<()> {
        let table = self.state(&rel).await?;
        check_width(&table, &new)?;
        if table.key.is_empty() {
            return Err(no_key(&table));
        }
        let patch: Patch = (0..table.columns.len())
            .map(|c| {
                if new.0[c] == Value::UnchangedToast {
                    Ok(None)
                } else {
                    value_text(&new.0[c], &table, c).map(Some)
                }
            })
            .collect::<Result<_>>()?;
        // Counted like a row (see `row_size`), key included.
        let size = PER_ROW
            + patch
                .iter()
                .map(|v| {
                    v.as_ref()
                        .map(|x| x.as_ref().map(|b| b.len()).unwrap_or(0))
                        .unwrap_or(0)
                        + PER_VALUE
                })
                .sum::<usize>();
        let old_vals = match &old {
            Some(o) => {
                check_width(&table, o.tuple())?;
                Some(o.tuple())
            }
            None => None,
        };
        let oid = rel.oid;
        if table.whole_row {
            let old = old_vals.ok_or_else(|| {
                Error::internal(format!(
                    "{}: an update without its old row under REPLICA IDENTITY FULL",
                    table.name
                ))
            })?;
            let old: Patch = old_patch(old, &table)?;
            self.tables
                .get_mut(&oid)
                .expect("resolved")
                .ordered
                .push(Ordered::WholeRowUpdate { old, patch });
        } else {
            let key_before: Key = table
                .key
                .iter()
                .map(|&k| match old_vals {
                    Some(o) if o.0[k] != Value::UnchangedToast => value_text(&o.0[k], &table, k),
                    _ => value_text(&new.0[k], &table, k),
                })
                .collect::<Result<_>>()?;
            let key_after: Key = table
                .key
                .iter()
                .map(|&k| value_text(&new.0[k], &table, k))
                .collect::<Result<_>>()?;
            let st = self.tables.get_mut(&oid).expect("resolved");
            if !table.compactable {
                st.ordered.push(Ordered::Update {
                    key: key_before,
                    patch,
                });
            } else if key_before == key_after {
                let mut p = patch;
                for &k in &table.key {
                    p[k] = None;
                }
                st.compact
                    .update(key_after, p)
                    .map_err(|e| Self::buffer_err(&table, e))?;
            } else if patch.iter().all(Option::is_some) {
                // The key changed and the whole new row is here: a delete and an insert.
                st.compact
                    .delete(key_before)
                    .map_err(|e| Self::buffer_err(&table, e))?;
                let row: Row = patch.into_iter().map(|v| v.expect("all set")).collect();
                st.compact
                    .insert(key_after, row)
                    .map_err(|e| Self::buffer_err(&table, e))?;
            } else {
                // The key changed and some TOASTed value was not sent: apply what is buffered
                // for the table, then this change as a statement matched on the old key.
                self.flush_table(oid).await?;
                let st = self.tables.get_mut(&oid).expect("resolved");
                st.ordered.push(Ordered::Update {
                    key: key_before,
                    patch,
                });
                self.flush_table(oid).await?;
            }
        }
        self.buffered(size);
        self.touch(oid);
        self.count(&table.name, |c| c.updates += 1);
        Ok(())
    }

    async fn on_delete(&mut self, rel: RelationRef, old: OldTuple) -> Result<()> {
        let table = self.state(&rel).await?;
        check_width(&table, old.tuple())?;
        if table.key.is_empty() {
            return Err(no_key(&table));
        }
        let st = self.tables.get_mut(&rel.oid).expect("resolved");
        if table.whole_row {
            st.ordered.push(Ordered::WholeRowDelete {
                old: old_patch(old.tuple(), &table)?,
            });
        } else {
            let key: Key = table
                .key
                .iter()
                .map(|&k| value_text(&old.tuple().0[k], &table, k))
                .collect::<Result<_>>()?;
            if table.compactable {
                st.compact
                    .delete(key)
                    .map_err(|e| Self::buffer_err(&table, e))?;
            } else {
                st.ordered.push(Ordered::Delete { key });
            }
        }
        self.buffered(128);
        self.touch(rel.oid);
        self.count(&table.name, |c| c.deletes += 1);
        Ok(())
    }

    async fn on_truncate(
        &mut self,
        relations: Vec<RelationRef>,
        restart_identity: bool,
    ) -> Result<()> {
        // Buffered changes of the truncated tables are moot; other tables are independent.
        let mut names = Vec::new();
        for r in &relations {
            let t = self.state(r).await?;
            let st = self.tables.get_mut(&r.oid).expect("resolved");
            st.compact.clear();
            st.ordered.clear();
            names.push(t.name.clone());
        }
        let list: Vec<String> = names.iter().map(|n| n.quoted()).collect();
        let sql = format!(
            "TRUNCATE ONLY {}{}",
            list.join(", "),
            if restart_identity {
                " RESTART IDENTITY"
            } else {
                ""
            }
        );
        let truncated = async {
            self.submit(
                vec![Step::Sql(sql, "applying a TRUNCATE on the target")],
                None,
            )
            .await?;
            self.settle().await.map(|_| ())
        };
        truncated.await.map_err(|e| {
            if e.message().contains("foreign key") {
                e.with_hint("a table outside the task references a truncated table on the target; include it in the task or drop that foreign key on the target")
            } else {
                e
            }
        })?;
        for n in names {
            self.count(&n, |c| c.truncates += 1);
        }
        Ok(())
    }
}

/// Memory of a buffered row besides its values (its vector and map entry), roughly.
const PER_ROW: usize = 96;
/// Memory of one buffered `Option<Bytes>` besides its bytes.
const PER_VALUE: usize = 32;

/// What a buffered row costs in memory, roughly: its values, one `Option<Bytes>` (32 bytes)
/// per column, and the row's vector and map entry. Counting only the values let a buffer of
/// narrow rows take four times its budget.
fn row_size(row: &Row) -> usize {
    PER_ROW
        + row
            .iter()
            .map(|v| v.as_ref().map(|b| b.len()).unwrap_or(0) + PER_VALUE)
            .sum::<usize>()
}

/// An old row as a patch: `None` where the value was not sent (unchanged TOAST).
fn old_patch(old: &Tuple, table: &TargetTable) -> Result<Patch> {
    (0..table.columns.len())
        .map(|c| {
            if old.0[c] == Value::UnchangedToast {
                Ok(None)
            } else {
                value_text(&old.0[c], table, c).map(Some)
            }
        })
        .collect()
}

fn check_width(table: &TargetTable, t: &Tuple) -> Result<()> {
    if t.0.len() == table.columns.len() {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "{}: a row with {} values for {} columns",
            table.name,
            t.0.len(),
            table.columns.len()
        )))
    }
}

fn no_key(table: &TargetTable) -> Error {
    Error::new(ErrorKind::Unsupported, format!("an update or delete arrived for {}, which has no replica identity to find the row by", table.name))
        .with_hint("give the table a primary key or REPLICA IDENTITY FULL on the source, or use cdc.tables_without_key")
}

/// What `pgtide.cdc_progress` holds for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The last applied source transaction, if any.
    pub applied: Option<Applied>,
    /// The highest position confirmed (or about to be confirmed) to the slot.
    pub confirmed: Lsn,
}

/// Read the progress of `task`.
pub async fn read_progress(client: &Client, task: &str) -> Result<Option<Progress>> {
    let row = client
        .query_opt(
            "SELECT commit_lsn::text, end_lsn::text, \
                    (extract(epoch FROM commit_time - '2000-01-01 00:00:00+00'::timestamptz) * 1000000)::int8, \
                    confirmed_lsn::text \
             FROM pgtide.cdc_progress WHERE task = $1",
            &[&task],
        )
        .await
        .map_err(|e| classify(e, "reading the applied position on the target"))?;
    let Some(r) = row else { return Ok(None) };
    let commit_lsn: Lsn = r.get::<_, String>(0).parse().map_err(Error::internal)?;
    let applied = if commit_lsn.is_zero() {
        None
    } else {
        Some(Applied {
            commit_lsn,
            end_lsn: r.get::<_, String>(1).parse().map_err(Error::internal)?,
            commit_time: r.get::<_, Option<i64>>(2).unwrap_or(0),
        })
    };
    Ok(Some(Progress {
        applied,
        confirmed: r.get::<_, String>(3).parse().map_err(Error::internal)?,
    }))
}

/// Wait until the target's WAL is on disk up to now: a synchronous commit of a transaction
/// with an xid flushes it (commits that did not wait for the flush included).
async fn flush_wal(client: &Client) -> Result<()> {
    client
        .batch_execute("BEGIN; SELECT pg_catalog.txid_current(); COMMIT")
        .await
        .map_err(|e| classify(e, "waiting for the target to flush its WAL"))
}

/// For [`Checkpoint::in_flight_committed`]: a commit whose place in the target's WAL is not
/// known, held back until a synchronous commit flushes everything.
const NOT_KNOWN_FLUSHED: Option<(Lsn, Lsn)> = Some((Lsn(u64::MAX), Lsn::ZERO));

/// Where an applier stands in the source's commit order, with the exactly-once rules on it.
/// Shared by every applier: what differs per target is only how the position is stored (in
/// the same target transaction as the changes).
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// The last source transaction applied in a committed target transaction (see
    /// `unflushed` for when it may be confirmed).
    pub durable: Option<Applied>,
    /// The last source transaction applied in the open batch.
    pub pending: Option<Applied>,
    /// The last source transaction of a batch handed to the target and not yet seen
    /// committed (PostgreSQL targets, see `executor`).
    pub in_flight: Option<Applied>,
    /// Highest position recorded as confirmed with nothing applied there.
    pub confirmed: Lsn,
    /// The current source transaction is skipped whole.
    skipping: bool,
    /// End of the last transaction skipped as already applied.
    skipped_through: Lsn,
    /// Source transactions applied since start.
    pub transactions: u64,
    /// Batches committed without waiting for the target's WAL flush and not yet known to be
    /// on its disk, oldest first: a target WAL position their commit record ends at or
    /// before, and the source position they made confirmable. A target crash may lose them,
    /// so the source is not told of them before the target has flushed that far.
    unflushed: VecDeque<(Lsn, Lsn)>,
    /// While `unflushed` is not empty: the highest source position made confirmable by
    /// commits known to be on the target's disk.
    flushed: Lsn,
}

impl Checkpoint {
    /// The position read from the target at start.
    pub fn new(durable: Option<Applied>, confirmed: Lsn) -> Self {
        Checkpoint {
            durable,
            confirmed,
            ..Default::default()
        }
    }

    /// Guard 1: a source transaction at or below the durable checkpoint, or at or below the one
    /// pending in the open batch, was applied already and is skipped whole (never change by
    /// change). Returns true when the transaction beginning is to be applied.
    pub fn begin(&mut self, commit_lsn: Lsn) -> bool {
        let done = |a: Option<Applied>| a.is_some_and(|a| commit_lsn <= a.commit_lsn);
        self.skipping = done(self.durable) || done(self.in_flight) || done(self.pending);
        !self.skipping
    }

    /// The current source transaction is being skipped.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// The current source transaction committed. Returns true when it was applied (it is now
    /// the open batch's pending position); a skipped one only moves what may be confirmed.
    pub fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn, commit_time: PgTimestamp) -> bool {
        if self.skipping {
            self.skipping = false;
            self.skipped_through = self.skipped_through.max(end_lsn);
            return false;
        }
        self.pending = Some(Applied {
            commit_lsn,
            end_lsn,
            commit_time,
        });
        self.transactions += 1;
        true
    }

    /// The position the source may be told is done: the durable checkpoint or the recorded
    /// idle position, and, only between batches, past transactions skipped as already applied.
    /// Never past what the target has on disk (see [`Checkpoint::in_flight_committed`]).
    pub fn confirmable(&self, in_tx: bool) -> Lsn {
        let d = self.reached();
        let c = if in_tx {
            d
        } else {
            d.max(self.skipped_through)
        };
        if self.unflushed.is_empty() {
            c
        } else {
            c.min(self.flushed)
        }
    }

    /// The end of the last transaction committed on the target, or the recorded position.
    fn reached(&self) -> Lsn {
        self.durable
            .map(|a| a.end_lsn)
            .unwrap_or(Lsn::ZERO)
            .max(self.confirmed)
    }

    /// The open batch committed: its pending position is durable. Returns the durable one.
    pub fn batch_committed(&mut self) -> Option<Applied> {
        if self.pending.is_some() {
            self.durable = self.pending.take();
        }
        self.durable
    }

    /// The open batch was handed to the target to commit in the background; returns its
    /// position, to be written in its transaction. It is not durable until
    /// [`Checkpoint::in_flight_committed`].
    /// Only one batch may be in flight: the previous one must have been seen committed.
    pub fn batch_handed_off(&mut self) -> Option<Applied> {
        debug_assert!(self.in_flight.is_none(), "a batch is already in flight");
        self.in_flight = self.pending.take();
        self.in_flight
    }

    /// The batch handed off committed: its position is applied, with `confirms` recorded in
    /// its transaction. `unflushed` is `None` when the commit waited for the target's WAL
    /// flush (which also flushed every commit before it); else the batch committed without
    /// waiting (`synchronous_commit = off`): `(a target WAL position its commit record ends
    /// at or before, the target's flush position seen after it)`, and what it made
    /// confirmable is held back until the target is seen flushed that far.
    pub fn in_flight_committed(&mut self, confirms: Option<Lsn>, unflushed: Option<(Lsn, Lsn)>) {
        if unflushed.is_some() && self.unflushed.is_empty() {
            // Not `skipped_through`: a transaction skipped as part of the batch in flight
            // is only as flushed as that batch.
            self.flushed = self.reached();
        }
        if let Some(p) = self.in_flight.take() {
            self.durable = Some(p);
        }
        if let Some(lsn) = confirms {
            self.confirmed = self.confirmed.max(lsn);
        }
        match unflushed {
            None => self.all_flushed(),
            Some((commit_end, target_flushed)) => {
                self.unflushed.push_back((commit_end, self.reached()));
                self.target_flushed(target_flushed);
            }
        }
    }

    /// The target was seen with its WAL flushed up to `at`: the commits ending there are on
    /// its disk.
    pub fn target_flushed(&mut self, at: Lsn) {
        while let Some(&(end, reached)) = self.unflushed.front() {
            if end > at {
                break;
            }
            self.flushed = self.flushed.max(reached);
            self.unflushed.pop_front();
        }
    }

    /// A synchronous commit on the target returned: the target's WAL is on disk up to it,
    /// every earlier commit included.
    pub fn all_flushed(&mut self) {
        self.unflushed.clear();
    }

    /// Commits are held back from confirmation until the target has flushed them.
    pub fn has_unflushed(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// The open batch was abandoned: nothing of it is applied.
    pub fn batch_abandoned(&mut self) {
        self.pending = None;
        self.in_flight = None;
    }
}

/// What the streaming loop needs from an applier, whatever the target.
///
/// The contract every implementation keeps: a source transaction at or below the durable
/// checkpoint is skipped whole; the checkpoint is written in the same target transaction as
/// the changes; [`Applier::confirmable`] never passes what is durable on the target.
pub trait Applier: ChangeSink + Send {
    /// The last source transaction applied in a committed target transaction.
    fn durable(&self) -> Option<Applied>;
    /// The position the source may be told is done.
    fn confirmable(&self) -> Lsn;
    /// Record that the slot will be confirmed up to `lsn` with nothing to apply up to there.
    fn record_confirmed(
        &mut self,
        lsn: Lsn,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
    /// A target transaction is open or committing (changes not yet committed).
    fn has_open_batch(&self) -> bool;
    /// The open batch should be committed by age.
    fn batch_is_old(&self) -> bool;
    /// Commit the open batch with its checkpoint; returns the durable position.
    fn commit_batch(&mut self)
    -> impl std::future::Future<Output = Result<Option<Applied>>> + Send;
    /// Start committing the open batch and go on building the next one; the position becomes
    /// durable later (at the latest with the next [`Applier::commit_batch`]). Appliers that
    /// cannot overlap commit here.
    fn hand_off_batch(&mut self) -> impl std::future::Future<Output = Result<()>> + Send;
    /// Record that every source transaction committing before `upto` has been handed to the
    /// applier (a catch-up chunk ends there), so that `upto` becomes confirmable once what was
    /// handed is durable, although no applied transaction may end there. Appliers that keep
    /// it with the open batch let later transactions join that batch; the others commit and
    /// record here.
    fn mark_through(&mut self, upto: Lsn) -> impl std::future::Future<Output = Result<()>> + Send {
        async move {
            self.commit_batch().await?;
            self.record_confirmed(upto).await
        }
    }
    /// Source transactions applied since start.
    fn transactions(&self) -> u64;
    /// Applied-change counts per source table since start.
    fn counts(&self) -> &HashMap<QualifiedName, TableCounts>;
}

impl Applier for PgApplier {
    fn durable(&self) -> Option<Applied> {
        PgApplier::durable(self)
    }
    fn confirmable(&self) -> Lsn {
        PgApplier::confirmable(self)
    }
    async fn record_confirmed(&mut self, lsn: Lsn) -> Result<()> {
        PgApplier::record_confirmed(self, lsn).await
    }
    fn has_open_batch(&self) -> bool {
        PgApplier::has_open_batch(self)
    }
    fn batch_is_old(&self) -> bool {
        PgApplier::batch_is_old(self)
    }
    async fn commit_batch(&mut self) -> Result<Option<Applied>> {
        PgApplier::commit_batch(self).await
    }
    async fn hand_off_batch(&mut self) -> Result<()> {
        PgApplier::hand_off_batch(self).await
    }
    async fn mark_through(&mut self, upto: Lsn) -> Result<()> {
        PgApplier::mark_through(self, upto).await
    }
    fn transactions(&self) -> u64 {
        self.checkpoint.transactions
    }
    fn counts(&self) -> &HashMap<QualifiedName, TableCounts> {
        PgApplier::counts(self)
    }
}

impl ChangeSink for PgApplier {
    async fn begin(&mut self, commit_lsn: Lsn, _commit_time: PgTimestamp, _xid: u32) -> Result<()> {
        // Guard 1: a transaction at or below the checkpoint was applied before: skip it whole.
        if self.checkpoint.begin(commit_lsn) {
            self.ensure_tx();
        }
        Ok(())
    }

    async fn change(&mut self, change: Change) -> Result<()> {
        if self.checkpoint.skipping() {
            return Ok(());
        }
        self.batch_changes += 1;
        match change {
            Change::Insert { relation, new } => self.on_insert(relation, new).await?,
            Change::Update { relation, old, new } => self.on_update(relation, old, new).await?,
            Change::Delete { relation, old } => self.on_delete(relation, old).await?,
            Change::Truncate {
                relations,
                restart_identity,
                ..
            } => self.on_truncate(relations, restart_identity).await?,
        }
        if self.buffered_bytes >= self.opts.max_buffer_bytes {
            self.flush_all().await?;
        }
        Ok(())
    }

    async fn message(
        &mut self,
        _transactional: bool,
        _prefix: &str,
        _content: &Bytes,
        _lsn: Lsn,
    ) -> Result<()> {
        // Logical messages (pgtide's heartbeat among them) carry nothing to apply; their
        // transaction's commit still advances the checkpoint.
        Ok(())
    }

    async fn commit(
        &mut self,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: PgTimestamp,
    ) -> Result<()> {
        if !self.checkpoint.commit(commit_lsn, end_lsn, commit_time) {
            return Ok(());
        }
        if self.batch_changes >= self.opts.max_batch_changes
            || self.batch_bytes >= self.opts.max_batch_bytes
            || self.batch_is_old()
            || (self.batch_changes >= self.opts.max_batch_changes / 8 && self.target_is_idle())
        {
            self.hand_off_batch().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escaping() {
        let mut b = BytesMut::new();
        copy_escape(&mut b, b"a\tb\nc\\d\re");
        assert_eq!(&b[..], b"a\\tb\\nc\\\\d\\re");
    }

    fn at(commit: u64, end: u64) -> Applied {
        Applied {
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(end),
            commit_time: 0,
        }
    }

    #[test]
    fn checkpoint_skips_what_was_applied_and_confirms_only_what_is_durable() {
        let mut cp = Checkpoint::new(Some(at(100, 110)), Lsn(50));
        // At or below the durable checkpoint: skipped whole; confirmable moves past it only
        // between batches.
        assert!(!cp.begin(Lsn(100)));
        assert!(cp.skipping());
        assert!(!cp.commit(Lsn(100), Lsn(120), 0));
        assert_eq!(cp.confirmable(true), Lsn(110));
        assert_eq!(cp.confirmable(false), Lsn(120));
        // A new one is applied: pending, not durable, not confirmable.
        assert!(cp.begin(Lsn(200)));
        assert!(cp.commit(Lsn(200), Lsn(210), 0));
        assert_eq!(cp.transactions, 1);
        assert_eq!(cp.confirmable(true), Lsn(110));
        // A redelivery of the pending one inside the open batch is skipped too.
        assert!(!cp.begin(Lsn(200)));
        assert!(!cp.commit(Lsn(200), Lsn(210), 0));
        assert_eq!(cp.batch_committed(), Some(at(200, 210)));
        assert_eq!(cp.confirmable(true), Lsn(210));
        // An abandoned batch leaves the durable position as it was.
        assert!(cp.begin(Lsn(300)));
        assert!(cp.commit(Lsn(300), Lsn(310), 0));
        cp.batch_abandoned();
        assert_eq!(cp.batch_committed(), Some(at(200, 210)));
    }

    #[test]
    fn a_batch_in_flight_is_skipped_on_replay_but_not_confirmable_until_seen_committed() {
        let mut cp = Checkpoint::new(Some(at(100, 110)), Lsn::ZERO);
        assert!(cp.begin(Lsn(200)));
        assert!(cp.commit(Lsn(200), Lsn(210), 0));
        assert_eq!(cp.batch_handed_off(), Some(at(200, 210)));
        // The next batch is built while the first one commits.
        assert!(
            !cp.begin(Lsn(200)),
            "the transaction in flight is not applied twice"
        );
        assert!(!cp.commit(Lsn(200), Lsn(210), 0));
        assert!(cp.begin(Lsn(300)));
        assert!(cp.commit(Lsn(300), Lsn(310), 0));
        assert_eq!(
            cp.confirmable(true),
            Lsn(110),
            "nothing past the durable batch"
        );
        cp.in_flight_committed(None, None);
        assert_eq!(cp.durable, Some(at(200, 210)));
        assert_eq!(cp.confirmable(true), Lsn(210));
        // The open batch's position stays pending until it is handed off in turn.
        assert_eq!(cp.pending, Some(at(300, 310)));
        assert_eq!(cp.batch_handed_off(), Some(at(300, 310)));
        cp.batch_abandoned();
        assert_eq!(cp.durable, Some(at(200, 210)));
        assert_eq!(cp.in_flight, None);
    }

    #[test]
    fn batches_committed_without_the_flush_are_confirmable_only_once_the_target_flushed_them() {
        let mut cp = Checkpoint::new(Some(at(100, 110)), Lsn::ZERO);
        let batch = |cp: &mut Checkpoint, c: u64, e: u64| {
            assert!(cp.begin(Lsn(c)));
            assert!(cp.commit(Lsn(c), Lsn(e), 0));
            cp.batch_handed_off();
        };
        // Batch 1 commits; the target has not flushed it (its commit ends at or before target
        // position 1000, the target flushed to 900).
        batch(&mut cp, 200, 210);
        cp.in_flight_committed(None, Some((Lsn(1000), Lsn(900))));
        assert_eq!(
            cp.durable,
            Some(at(200, 210)),
            "applied: later ones skip it"
        );
        assert!(!cp.begin(Lsn(200)));
        assert!(!cp.commit(Lsn(200), Lsn(210), 0));
        assert_eq!(
            cp.confirmable(false),
            Lsn(110),
            "not on the target's disk yet"
        );
        // Batch 2 (recording a chunk's end) commits; the target is seen flushed past batch 1.
        batch(&mut cp, 300, 310);
        cp.in_flight_committed(Some(Lsn(350)), Some((Lsn(2000), Lsn(1500))));
        assert_eq!(cp.confirmable(false), Lsn(210));
        assert_eq!(cp.confirmable(true), Lsn(210));
        // A later flush report releases batch 2 and its recorded position.
        cp.target_flushed(Lsn(2000));
        assert!(!cp.has_unflushed());
        assert_eq!(cp.confirmable(true), Lsn(350));
        // A synchronous commit flushes everything before it.
        batch(&mut cp, 400, 410);
        cp.in_flight_committed(None, Some((Lsn(3000), Lsn(2000))));
        batch(&mut cp, 500, 510);
        cp.in_flight_committed(None, Some((Lsn(4000), Lsn(2000))));
        assert_eq!(cp.confirmable(true), Lsn(350));
        batch(&mut cp, 600, 610);
        cp.in_flight_committed(None, None);
        assert_eq!(cp.confirmable(true), Lsn(610));
        // So does an explicit flush.
        batch(&mut cp, 700, 710);
        cp.in_flight_committed(None, Some((Lsn(5000), Lsn(4000))));
        assert_eq!(cp.confirmable(false), Lsn(610));
        cp.all_flushed();
        assert_eq!(cp.confirmable(false), Lsn(710));
    }

    #[test]
    fn pg_time_epoch() {
        assert_eq!(
            pg_time(0),
            SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800)
        );
    }
}
