//! Applying committed source transactions to a PostgreSQL target, exactly once.
//!
//! # Batches
//!
//! Consecutive source transactions are grouped into one target transaction until it holds
//! `max_batch_changes` changes or `max_batch_bytes` of values, or has been open for
//! `max_batch_age`; the caller also closes it when the stream goes quiet. A batch always ends
//! at a source commit, never inside a source transaction. Commit order is kept: changes are
//! applied in the order they arrive.
//!
//! # Runs
//!
//! Inside a batch, consecutive changes of the same kind to the same table form a *run*, applied
//! with one statement instead of one round trip per row:
//!
//! - inserts: `COPY ... FROM STDIN` (text format, the values exactly as pgoutput sent them);
//! - updates that keep the key and change the same set of columns:
//!   `UPDATE ONLY t SET c = v.c::type FROM unnest($1::text[], ...) AS v WHERE t.k = v.k::type`;
//! - deletes: `DELETE FROM ONLY t USING unnest(...) AS v WHERE t.k = v.k::type`.
//!
//! A run ends when the kind, table or changed-column set changes, when a key repeats (a
//! set-based UPDATE cannot apply two changes to one row in order), or at `max_run_rows`. The
//! result is identical to applying the changes one by one. Every UPDATE and DELETE must touch
//! exactly as many rows as it carries; anything else means the target no longer matches the
//! source, and the task stops instead of silently drifting.
//!
//! Updates that change the key, and tables without a key (`REPLICA IDENTITY FULL`), are applied
//! one statement per row. Without a key, the row is found by comparing every column's text form
//! (which also works for types without an equality operator, such as `point` and `json`), and
//! exactly one matching row is changed (`WHERE ctid = (SELECT ctid ... LIMIT 1)`), because such a
//! table may hold identical rows.
//!
//! Unchanged TOASTed values (pgoutput's `u`) are left out of the SET list: the target keeps the
//! value it has.
//!
//! # Exactly once
//!
//! The last applied source transaction (its commit LSN, end LSN and time) is written into
//! `pgtide.cdc_progress` in the same target transaction as the changes, with per-table counters.
//! A transaction whose commit LSN is at or below the stored one is skipped whole on restart;
//! changes are never skipped one by one by their own LSN. The session runs with
//! `synchronous_commit = on`: when COMMIT returns, the position is durable and may be confirmed
//! to the source.

use crate::changes::{Change, ChangeSink, RelationRef};
use crate::connect::classify;
use crate::pgoutput::{OldTuple, PgTimestamp, Tuple, Value};
use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use pgtide_core::ident::{QualifiedName, quote_ident};
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, ErrorKind, Result};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// Batch limits.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Changes per target transaction.
    pub max_batch_changes: usize,
    /// Value bytes per target transaction.
    pub max_batch_bytes: usize,
    /// Age of a target transaction.
    pub max_batch_age: Duration,
    /// Rows per run (one statement).
    pub max_run_rows: usize,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_batch_changes: 50_000,
            max_batch_bytes: 64 << 20,
            max_batch_age: Duration::from_millis(500),
            max_run_rows: 10_000,
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
    fn add(&mut self, o: &TableCounts) {
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
struct TargetTable {
    name: QualifiedName,
    columns: Vec<String>,
    /// Target `format_type` per column, used to cast text values.
    types: Vec<String>,
    /// Columns that identify a row.
    key: Vec<usize>,
    /// No usable key: rows are matched on every column.
    whole_row: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RunKind {
    Insert,
    /// Update of these (non-key) columns, key unchanged.
    Update(Vec<usize>),
    Delete,
}

#[derive(Default)]
struct Run {
    oid: u32,
    kind: Option<RunKind>,
    /// Values per row: all columns (insert), key then set columns (update), key (delete).
    rows: Vec<Vec<Option<Bytes>>>,
    keys: HashSet<Vec<Option<Bytes>>>,
    bytes: usize,
}

/// Applies [`Change`]s to a PostgreSQL target; implements [`ChangeSink`].
pub struct PgApplier {
    client: Client,
    task: String,
    opts: ApplyOptions,
    /// Primary keys known from the source catalog, for `REPLICA IDENTITY FULL` tables that
    /// have one (matching on the key is faster and exact).
    source_keys: HashMap<QualifiedName, Vec<String>>,
    tables: HashMap<u32, (RelationRef, Arc<TargetTable>)>,
    statements: HashMap<String, Statement>,
    run: Run,
    in_tx: bool,
    skipping: bool,
    durable: Option<Applied>,
    pending: Option<Applied>,
    batch_changes: usize,
    batch_bytes: usize,
    batch_opened: Option<Instant>,
    counts_pending: HashMap<QualifiedName, TableCounts>,
    counts_total: HashMap<QualifiedName, TableCounts>,
    skipped_through: Lsn,
    /// Highest position recorded as confirmed to the slot.
    confirmed: Lsn,
    /// Source transactions applied since start.
    pub transactions: u64,
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

fn as_str<'a>(b: &'a Option<Bytes>, table: &TargetTable, col: usize) -> Result<Option<&'a str>> {
    match b {
        None => Ok(None),
        Some(b) => std::str::from_utf8(b).map(Some).map_err(|_| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}.{}: a value is not valid UTF-8",
                    table.name, table.columns[col]
                ),
            )
            .with_hint("pgtide replicates from UTF8 source databases")
        }),
    }
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
    pub async fn new(
        client: Client,
        task: &str,
        opts: ApplyOptions,
        source_keys: HashMap<QualifiedName, Vec<String>>,
    ) -> Result<Self> {
        client
            .batch_execute(
                "SET synchronous_commit = on; SET session_replication_role = replica; \
                 SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0",
            )
            .await
            .map_err(|e| classify(e, "preparing the apply session on the target"))?;
        let progress = read_progress(&client, task).await?;
        let (durable, confirmed) = match progress {
            Some(p) => (p.applied, p.confirmed),
            None => (None, Lsn::ZERO),
        };
        Ok(PgApplier {
            client,
            task: task.to_string(),
            opts,
            source_keys,
            tables: HashMap::new(),
            statements: HashMap::new(),
            run: Run::default(),
            in_tx: false,
            skipping: false,
            durable,
            pending: None,
            batch_changes: 0,
            batch_bytes: 0,
            batch_opened: None,
            counts_pending: HashMap::new(),
            counts_total: HashMap::new(),
            skipped_through: Lsn::ZERO,
            confirmed,
            transactions: 0,
        })
    }

    /// The last source transaction durably applied.
    pub fn durable(&self) -> Option<Applied> {
        self.durable
    }

    /// The position the source may be told is done: the durable checkpoint, later when
    /// transactions after it were skipped as already applied, or the recorded idle position.
    pub fn confirmable(&self) -> Lsn {
        let d = self
            .durable
            .map(|a| a.end_lsn)
            .unwrap_or(Lsn::ZERO)
            .max(self.confirmed);
        if self.in_tx {
            d
        } else {
            d.max(self.skipped_through)
        }
    }

    /// Record on the target that the slot will be confirmed up to `lsn` although no applied
    /// transaction ends there (the stream is idle, or everything up to `lsn` was filtered out).
    /// Must be called between batches.
    pub async fn record_confirmed(&mut self, lsn: Lsn) -> Result<()> {
        if self.in_tx || lsn <= self.confirmed {
            return Ok(());
        }
        self.client
            .execute(
                "INSERT INTO pgtide.cdc_progress (task, commit_lsn, end_lsn, commit_time, confirmed_lsn, applied_at) \
                 VALUES ($1, '0/0', '0/0', NULL, $2::text::pg_lsn, now()) \
                 ON CONFLICT (task) DO UPDATE SET confirmed_lsn = greatest(cdc_progress.confirmed_lsn, EXCLUDED.confirmed_lsn)",
                &[&self.task, &lsn.to_string()],
            )
            .await
            .map_err(|e| classify(e, "recording the confirmed position on the target"))?;
        self.confirmed = lsn;
        Ok(())
    }

    /// A target transaction is open (changes not yet durable).
    pub fn has_open_batch(&self) -> bool {
        self.in_tx
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

    async fn exec(&self, sql: &str, what: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| classify(e, what))
    }

    async fn statement(&mut self, key: String, sql: impl FnOnce() -> String) -> Result<Statement> {
        if let Some(s) = self.statements.get(&key) {
            return Ok(s.clone());
        }
        let text = sql();
        let s = self
            .client
            .prepare(&text)
            .await
            .map_err(|e| classify(e, "preparing an apply statement on the target"))?;
        self.statements.insert(key, s.clone());
        Ok(s)
    }

    async fn target_table(&mut self, rel: &RelationRef) -> Result<Arc<TargetTable>> {
        if let Some((r, t)) = self.tables.get(&rel.oid)
            && Arc::ptr_eq(r, rel)
        {
            return Ok(t.clone());
        }
        // New or changed relation: (re)resolve against the target. Prepared statements of the
        // table are dropped with it (their SQL may name other columns now).
        self.flush_run().await?;
        self.statements
            .retain(|k, _| !k.ends_with(&format!(":{}", rel.oid)));
        let name = QualifiedName::new(
            if rel.namespace.is_empty() {
                "pg_catalog"
            } else {
                &rel.namespace
            },
            rel.name.clone(),
        );
        let rows = self
            .client
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
        let t = Arc::new(TargetTable {
            name,
            columns,
            types,
            key,
            whole_row,
        });
        self.tables.insert(rel.oid, (rel.clone(), t.clone()));
        Ok(t)
    }

    fn count(&mut self, table: &QualifiedName, f: impl FnOnce(&mut TableCounts)) {
        f(self.counts_pending.entry(table.clone()).or_default());
    }

    /// Add a row to the current run, flushing it first if the row does not fit.
    async fn push(
        &mut self,
        oid: u32,
        kind: RunKind,
        key: Option<Vec<Option<Bytes>>>,
        row: Vec<Option<Bytes>>,
    ) -> Result<()> {
        let fits = self.run.oid == oid
            && self.run.kind.as_ref() == Some(&kind)
            && self.run.rows.len() < self.opts.max_run_rows
            && key
                .as_ref()
                .map(|k| !self.run.keys.contains(k))
                .unwrap_or(true);
        if !fits {
            self.flush_run().await?;
            self.run.oid = oid;
            self.run.kind = Some(kind);
        }
        let size: usize = row
            .iter()
            .map(|v| v.as_ref().map(|b| b.len()).unwrap_or(0) + 1)
            .sum();
        self.run.bytes += size;
        self.batch_bytes += size;
        if let Some(k) = key {
            self.run.keys.insert(k);
        }
        self.run.rows.push(row);
        Ok(())
    }

    /// Apply the current run.
    async fn flush_run(&mut self) -> Result<()> {
        let Some(kind) = self.run.kind.take() else {
            return Ok(());
        };
        let run = std::mem::take(&mut self.run);
        if run.rows.is_empty() {
            return Ok(());
        }
        let table = self
            .tables
            .get(&run.oid)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| Error::internal("run for an unknown table"))?;
        let n = run.rows.len();
        match kind {
            RunKind::Insert => {
                let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
                let sql = format!(
                    "COPY {} ({}) FROM STDIN",
                    table.name.quoted(),
                    cols.join(", ")
                );
                let sink = self
                    .client
                    .copy_in::<_, Bytes>(&sql)
                    .await
                    .map_err(|e| classify(e, &format!("inserting into {}", table.name)))?;
                futures::pin_mut!(sink);
                let mut buf = BytesMut::with_capacity(run.bytes.min(4 << 20) + 1024);
                for row in &run.rows {
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
                        sink.send(buf.split().freeze())
                            .await
                            .map_err(|e| classify(e, &format!("inserting into {}", table.name)))?;
                    }
                }
                if !buf.is_empty() {
                    sink.send(buf.split().freeze())
                        .await
                        .map_err(|e| classify(e, &format!("inserting into {}", table.name)))?;
                }
                let got = sink
                    .as_mut()
                    .finish()
                    .await
                    .map_err(|e| classify(e, &format!("inserting into {}", table.name)))?;
                if got != n as u64 {
                    return Err(diverged(&table.name, "inserts", n, got));
                }
                self.count(&table.name, |c| c.inserts += n as u64);
            }
            RunKind::Update(set) => {
                let key = format!("U{set:?}:{}", run.oid);
                let stmt = self.statement(key, || update_run_sql(&table, &set)).await?;
                let cols: Vec<usize> = table.key.iter().chain(set.iter()).copied().collect();
                let got = self
                    .execute_columns(&stmt, &table, &cols, &run.rows)
                    .await?;
                if got != n as u64 {
                    return Err(diverged(&table.name, "updates", n, got));
                }
                self.count(&table.name, |c| c.updates += n as u64);
            }
            RunKind::Delete => {
                let stmt = self
                    .statement(format!("D:{}", run.oid), || delete_run_sql(&table))
                    .await?;
                let got = self
                    .execute_columns(&stmt, &table, &table.key.clone(), &run.rows)
                    .await?;
                if got != n as u64 {
                    return Err(diverged(&table.name, "deletes", n, got));
                }
                self.count(&table.name, |c| c.deletes += n as u64);
            }
        }
        Ok(())
    }

    /// Execute a run statement whose parameters are one text[] per column of `cols`.
    async fn execute_columns(
        &self,
        stmt: &Statement,
        table: &TargetTable,
        cols: &[usize],
        rows: &[Vec<Option<Bytes>>],
    ) -> Result<u64> {
        let mut arrays: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(rows.len()); cols.len()];
        for row in rows {
            for (j, v) in row.iter().enumerate() {
                arrays[j].push(as_str(v, table, cols[j])?);
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        self.client
            .execute(stmt, &params)
            .await
            .map_err(|e| classify(e, &format!("applying changes to {}", table.name)))
    }

    /// One UPDATE or DELETE that must match exactly one row.
    async fn single(
        &mut self,
        stmt: Statement,
        table: &TargetTable,
        values: &[(usize, Option<Bytes>)],
        what: &str,
    ) -> Result<()> {
        let texts: Vec<Option<&str>> = values
            .iter()
            .map(|(c, v)| as_str(v, table, *c))
            .collect::<Result<_>>()?;
        let params: Vec<&(dyn ToSql + Sync)> =
            texts.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let got = self
            .client
            .execute(&stmt, &params)
            .await
            .map_err(|e| classify(e, &format!("applying {what} to {}", table.name)))?;
        if got != 1 {
            return Err(diverged(&table.name, what, 1, got));
        }
        Ok(())
    }

    async fn apply_update(
        &mut self,
        rel: RelationRef,
        old: Option<OldTuple>,
        new: Tuple,
    ) -> Result<()> {
        let table = self.target_table(&rel).await?;
        check_width(&table, &new)?;
        let set: Vec<usize> = (0..table.columns.len())
            .filter(|i| new.0[*i] != Value::UnchangedToast)
            .collect();
        if table.key.is_empty() {
            return Err(no_key(&table));
        }
        let old_vals = match &old {
            Some(o) => {
                check_width(&table, o.tuple())?;
                Some(o.tuple())
            }
            None => None,
        };
        if table.whole_row {
            let old = old_vals.ok_or_else(|| {
                Error::internal(format!(
                    "{}: update without its old row under REPLICA IDENTITY FULL",
                    table.name
                ))
            })?;
            return self
                .whole_row_change(&table, rel.oid, old, Some((&set, &new)))
                .await;
        }
        // The row's key before the change.
        let key_before: Vec<Option<Bytes>> = table
            .key
            .iter()
            .map(|&k| match old_vals {
                Some(o) if o.0[k] != Value::UnchangedToast => value_text(&o.0[k], &table, k),
                _ => value_text(&new.0[k], &table, k),
            })
            .collect::<Result<_>>()?;
        let key_after: Vec<Option<Bytes>> = table
            .key
            .iter()
            .map(|&k| value_text(&new.0[k], &table, k))
            .collect::<Result<_>>()?;
        let non_key: Vec<usize> = set
            .iter()
            .copied()
            .filter(|c| !table.key.contains(c))
            .collect();
        if key_before != key_after {
            // The key changed: one statement that sets every sent column, matched on the old key.
            self.flush_run().await?;
            let stmt = self
                .statement(format!("K{set:?}:{}", rel.oid), || {
                    key_update_sql(&table, &set)
                })
                .await?;
            let mut values: Vec<(usize, Option<Bytes>)> = set
                .iter()
                .map(|&c| Ok((c, value_text(&new.0[c], &table, c)?)))
                .collect::<Result<_>>()?;
            values.extend(table.key.iter().zip(key_before).map(|(&c, v)| (c, v)));
            self.single(stmt, &table, &values, "a key-changing update")
                .await?;
            self.count(&table.name, |c| c.updates += 1);
            return Ok(());
        }
        if non_key.is_empty() {
            // Nothing but the key was sent and it did not change: the row must still exist, and
            // applying it as an update of the key to itself checks that.
            self.flush_run().await?;
            let stmt = self
                .statement(format!("K{:?}:{}", table.key, rel.oid), || {
                    key_update_sql(&table, &table.key)
                })
                .await?;
            let mut values: Vec<(usize, Option<Bytes>)> = table
                .key
                .iter()
                .zip(key_after.clone())
                .map(|(&c, v)| (c, v))
                .collect();
            values.extend(table.key.iter().zip(key_after).map(|(&c, v)| (c, v)));
            self.single(stmt, &table, &values, "an update").await?;
            self.count(&table.name, |c| c.updates += 1);
            return Ok(());
        }
        let mut row = key_after.clone();
        for &c in &non_key {
            row.push(value_text(&new.0[c], &table, c)?);
        }
        self.push(rel.oid, RunKind::Update(non_key), Some(key_after), row)
            .await
    }

    async fn whole_row_change(
        &mut self,
        table: &TargetTable,
        oid: u32,
        old: &Tuple,
        update: Option<(&[usize], &Tuple)>,
    ) -> Result<()> {
        self.flush_run().await?;
        // Columns whose old value was not sent (unchanged TOAST) cannot be compared.
        let matchable: Vec<usize> = (0..table.columns.len())
            .filter(|&i| old.0[i] != Value::UnchangedToast)
            .collect();
        let mut values: Vec<(usize, Option<Bytes>)> = Vec::new();
        let stmt = match update {
            Some((set, new)) => {
                for &c in set {
                    values.push((c, value_text(&new.0[c], table, c)?));
                }
                let key = format!("WU{set:?}{matchable:?}:{oid}");
                self.statement(key, || whole_row_update_sql(table, set, &matchable))
                    .await?
            }
            None => {
                self.statement(format!("WD{matchable:?}:{oid}"), || {
                    whole_row_delete_sql(table, &matchable)
                })
                .await?
            }
        };
        for &c in &matchable {
            values.push((c, value_text(&old.0[c], table, c)?));
        }
        let what = if update.is_some() {
            "an update"
        } else {
            "a delete"
        };
        self.single(stmt, table, &values, what).await?;
        if update.is_some() {
            self.count(&table.name, |c| c.updates += 1);
        } else {
            self.count(&table.name, |c| c.deletes += 1);
        }
        Ok(())
    }

    async fn ensure_tx(&mut self) -> Result<()> {
        if !self.in_tx {
            self.exec("BEGIN", "starting an apply transaction on the target")
                .await?;
            self.in_tx = true;
            self.batch_opened = Some(Instant::now());
        }
        Ok(())
    }

    /// Commit the open batch with its checkpoint. Returns the new durable position.
    pub async fn commit_batch(&mut self) -> Result<Option<Applied>> {
        if !self.in_tx {
            return Ok(self.durable);
        }
        self.flush_run().await?;
        if let Some(p) = self.pending {
            self.client
                .execute(
                    "INSERT INTO pgtide.cdc_progress (task, commit_lsn, end_lsn, commit_time, confirmed_lsn, applied_at) \
                     VALUES ($1, $2::text::pg_lsn, $3::text::pg_lsn, $4, $3::text::pg_lsn, now()) \
                     ON CONFLICT (task) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, end_lsn = EXCLUDED.end_lsn, \
                       commit_time = EXCLUDED.commit_time, applied_at = EXCLUDED.applied_at, \
                       confirmed_lsn = greatest(cdc_progress.confirmed_lsn, EXCLUDED.end_lsn)",
                    &[&self.task, &p.commit_lsn.to_string(), &p.end_lsn.to_string(), &pg_time(p.commit_time)],
                )
                .await
                .map_err(|e| classify(e, "recording the applied position on the target"))?;
        }
        if !self.counts_pending.is_empty() {
            let mut schemas = Vec::new();
            let mut names = Vec::new();
            let (mut ins, mut upd, mut del, mut tru) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (n, c) in &self.counts_pending {
                schemas.push(n.schema.clone());
                names.push(n.name.clone());
                ins.push(c.inserts as i64);
                upd.push(c.updates as i64);
                del.push(c.deletes as i64);
                tru.push(c.truncates as i64);
            }
            self.client
                .execute(
                    "INSERT INTO pgtide.cdc_table_stats AS s (task, schema_name, table_name, inserts, updates, deletes, truncates) \
                     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) \
                     ON CONFLICT (task, schema_name, table_name) DO UPDATE SET inserts = s.inserts + EXCLUDED.inserts, \
                       updates = s.updates + EXCLUDED.updates, deletes = s.deletes + EXCLUDED.deletes, \
                       truncates = s.truncates + EXCLUDED.truncates",
                    &[&self.task, &schemas, &names, &ins, &upd, &del, &tru],
                )
                .await
                .map_err(|e| classify(e, "recording change counts on the target"))?;
        }
        pgtide_core::failpoint::hit("apply-before-commit");
        self.exec("COMMIT", "committing an apply transaction on the target")
            .await?;
        self.in_tx = false;
        self.batch_opened = None;
        self.batch_changes = 0;
        self.batch_bytes = 0;
        for (n, c) in std::mem::take(&mut self.counts_pending) {
            self.counts_total.entry(n).or_default().add(&c);
        }
        if self.pending.is_some() {
            self.durable = self.pending.take();
        }
        Ok(self.durable)
    }

    /// Abandon the open batch (after an error); the stream must restart from the checkpoint.
    pub async fn rollback(&mut self) {
        if self.in_tx {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        self.in_tx = false;
        self.run = Run::default();
        self.pending = None;
        self.counts_pending.clear();
        self.batch_opened = None;
        self.batch_changes = 0;
        self.batch_bytes = 0;
    }
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

fn cast(table: &TargetTable, col: usize, expr: &str) -> String {
    format!("{expr}::{}", table.types[col])
}

fn update_run_sql(table: &TargetTable, set: &[usize]) -> String {
    let cols: Vec<usize> = table.key.iter().chain(set.iter()).copied().collect();
    let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..cols.len()).map(|i| format!("p{i}")).collect();
    let sets: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("v.p{}", table.key.len() + j))
            )
        })
        .collect();
    let conds: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "t.{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("v.p{j}"))
            )
        })
        .collect();
    format!(
        "UPDATE ONLY {} AS t SET {} FROM unnest({}) AS v({}) WHERE {}",
        table.name.quoted(),
        sets.join(", "),
        params.join(", "),
        aliases.join(", "),
        conds.join(" AND ")
    )
}

fn delete_run_sql(table: &TargetTable) -> String {
    let params: Vec<String> = (1..=table.key.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let aliases: Vec<String> = (0..table.key.len()).map(|i| format!("p{i}")).collect();
    let conds: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "t.{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("v.p{j}"))
            )
        })
        .collect();
    format!(
        "DELETE FROM ONLY {} AS t USING unnest({}) AS v({}) WHERE {}",
        table.name.quoted(),
        params.join(", "),
        aliases.join(", "),
        conds.join(" AND ")
    )
}

/// `UPDATE ... SET <set> WHERE <key> = old key`; parameters: set values, then old key values.
fn key_update_sql(table: &TargetTable, set: &[usize]) -> String {
    let sets: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", j + 1))
            )
        })
        .collect();
    let conds: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", set.len() + j + 1))
            )
        })
        .collect();
    format!(
        "UPDATE ONLY {} SET {} WHERE {}",
        table.name.quoted(),
        sets.join(", "),
        conds.join(" AND ")
    )
}

/// Text-form comparison of every matchable column, for tables without a key. Parameters follow
/// `first_param`.
fn whole_row_match(table: &TargetTable, matchable: &[usize], first_param: usize) -> String {
    if matchable.is_empty() {
        return "true".into();
    }
    matchable
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{}::text IS NOT DISTINCT FROM ({})::text",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", first_param + j))
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn whole_row_update_sql(table: &TargetTable, set: &[usize], matchable: &[usize]) -> String {
    let sets: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", j + 1))
            )
        })
        .collect();
    format!(
        "UPDATE ONLY {t} SET {} WHERE ctid = (SELECT ctid FROM ONLY {t} WHERE {} LIMIT 1)",
        sets.join(", "),
        whole_row_match(table, matchable, set.len() + 1),
        t = table.name.quoted()
    )
}

fn whole_row_delete_sql(table: &TargetTable, matchable: &[usize]) -> String {
    format!(
        "DELETE FROM ONLY {t} WHERE ctid = (SELECT ctid FROM ONLY {t} WHERE {} LIMIT 1)",
        whole_row_match(table, matchable, 1),
        t = table.name.quoted()
    )
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

impl ChangeSink for PgApplier {
    async fn begin(&mut self, commit_lsn: Lsn, _commit_time: PgTimestamp, _xid: u32) -> Result<()> {
        // Guard 1: a transaction at or below the checkpoint was applied before: skip it whole.
        self.skipping = self
            .durable
            .map(|d| commit_lsn <= d.commit_lsn)
            .unwrap_or(false)
            || self
                .pending
                .map(|p| commit_lsn <= p.commit_lsn)
                .unwrap_or(false);
        if !self.skipping {
            self.ensure_tx().await?;
        }
        Ok(())
    }

    async fn change(&mut self, change: Change) -> Result<()> {
        if self.skipping {
            return Ok(());
        }
        self.batch_changes += 1;
        match change {
            Change::Insert { relation, new } => {
                let table = self.target_table(&relation).await?;
                check_width(&table, &new)?;
                let row: Vec<Option<Bytes>> = (0..table.columns.len())
                    .map(|c| value_text(&new.0[c], &table, c))
                    .collect::<Result<_>>()?;
                self.push(relation.oid, RunKind::Insert, None, row).await
            }
            Change::Update { relation, old, new } => self.apply_update(relation, old, new).await,
            Change::Delete { relation, old } => {
                let table = self.target_table(&relation).await?;
                check_width(&table, old.tuple())?;
                if table.key.is_empty() {
                    return Err(no_key(&table));
                }
                if table.whole_row {
                    return self
                        .whole_row_change(&table, relation.oid, old.tuple(), None)
                        .await;
                }
                let key: Vec<Option<Bytes>> = table
                    .key
                    .iter()
                    .map(|&k| value_text(&old.tuple().0[k], &table, k))
                    .collect::<Result<_>>()?;
                self.push(relation.oid, RunKind::Delete, Some(key.clone()), key)
                    .await
            }
            Change::Truncate {
                relations,
                restart_identity,
                ..
            } => {
                self.flush_run().await?;
                let mut names = Vec::new();
                for r in &relations {
                    names.push(self.target_table(r).await?.name.clone());
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
                self.exec(&sql, "applying a TRUNCATE on the target").await.map_err(|e| {
                    if e.kind() == ErrorKind::Unsupported || e.message().contains("foreign key") {
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
        if self.skipping {
            self.skipping = false;
            self.skipped_through = self.skipped_through.max(end_lsn);
            return Ok(());
        }
        self.pending = Some(Applied {
            commit_lsn,
            end_lsn,
            commit_time,
        });
        self.transactions += 1;
        if self.batch_changes >= self.opts.max_batch_changes
            || self.batch_bytes >= self.opts.max_batch_bytes
            || self.batch_is_old()
        {
            self.commit_batch().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TargetTable {
        TargetTable {
            name: QualifiedName::new("public", "My Table"),
            columns: vec!["id".into(), "Val".into(), "p".into()],
            types: vec!["integer".into(), "text".into(), "point".into()],
            key: vec![0],
            whole_row: false,
        }
    }

    #[test]
    fn run_statements_quote_and_cast() {
        let t = table();
        assert_eq!(
            update_run_sql(&t, &[1]),
            "UPDATE ONLY \"public\".\"My Table\" AS t SET \"Val\" = v.p1::text FROM unnest($1::text[], $2::text[]) AS v(p0, p1) WHERE t.\"id\" = v.p0::integer"
        );
        assert_eq!(
            delete_run_sql(&t),
            "DELETE FROM ONLY \"public\".\"My Table\" AS t USING unnest($1::text[]) AS v(p0) WHERE t.\"id\" = v.p0::integer"
        );
        assert_eq!(
            key_update_sql(&t, &[0, 1]),
            "UPDATE ONLY \"public\".\"My Table\" SET \"id\" = $1::text::integer, \"Val\" = $2::text::text WHERE \"id\" = $3::text::integer"
        );
        let d = whole_row_delete_sql(&t, &[0, 2]);
        assert!(
            d.contains("\"p\"::text IS NOT DISTINCT FROM ($2::text::point)::text"),
            "{d}"
        );
        assert!(d.contains("LIMIT 1"));
    }

    #[test]
    fn copy_text_escaping() {
        let mut b = BytesMut::new();
        copy_escape(&mut b, b"a\tb\nc\\d\re");
        assert_eq!(&b[..], b"a\\tb\\nc\\\\d\\re");
    }

    #[test]
    fn pg_time_epoch() {
        assert_eq!(
            pg_time(0),
            SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800)
        );
    }
}
