//! The target connection's side of the applier: runs what the buffers turned into.
//!
//! # Why a separate owner
//!
//! Building a batch (decoding pgoutput, merging changes per key) is pgtide's CPU; running it
//! (`UPDATE ... FROM unnest`, `COPY`, `COMMIT`) is the target's. Done one after the other, each
//! side idles while the other works: measured on a pgbench backlog, 40% of the two cores were
//! idle. So a full batch is handed to the [`Executor`] on its own task while the next batch is
//! built, and the two overlap.
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
    Applied, Bound, TableCounts, TargetTable, as_str, copy_escape, diverged, pg_time, sql,
};
use crate::connect::classify;
use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use pgtide_core::ident::{QualifiedName, quote_ident};
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, Result};
use std::collections::HashMap;
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
    pub(super) async fn run(&mut self, steps: Vec<Step>) -> Result<()> {
        for step in steps {
            if !self.open && !matches!(step, Step::Commit { .. }) {
                self.exec("BEGIN", "starting an apply transaction on the target")
                    .await?;
                self.open = true;
            }
            match step {
                Step::Table {
                    oid,
                    table,
                    drained,
                    ordered,
                } => self.flush_table(oid, &table, drained, ordered).await?,
                Step::Sql(sql, what) => self.exec(&sql, what).await?,
                Step::Checkpoint(p) => self.write_checkpoint(p).await?,
                Step::Confirmed(lsn) => self.write_confirmed(lsn).await?,
                Step::Stats(counts) => self.write_stats(&counts).await?,
                Step::Commit { wait_for_flush } => {
                    if self.open {
                        pgtide_core::failpoint::hit("apply-before-commit");
                        let outcome = self.commit(wait_for_flush).await;
                        // A failure after the COMMIT itself (reading the positions) still
                        // leaves no transaction open; the error ends the connection anyway.
                        self.open = false;
                        self.last_commit = Some(outcome?);
                    }
                }
            }
        }
        Ok(())
    }

    /// `COMMIT` the open transaction. Without waiting for the flush, the target's insert
    /// position right after it (at or past the end of its commit record) and its flush
    /// position come back in the same round trip.
    async fn commit(&self, wait_for_flush: bool) -> Result<CommitOutcome> {
        const WHAT: &str = "committing an apply transaction on the target";
        if wait_for_flush {
            self.exec("COMMIT", WHAT).await?;
            return Ok(CommitOutcome::Flushed);
        }
        let messages = self
            .client
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

    pub(super) async fn exec(&self, sql: &str, what: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| classify(e, what))
    }

    async fn statement(&mut self, key: String, sql: impl FnOnce() -> String) -> Result<Statement> {
        if let Some(s) = self.statements.get(&key) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(&sql())
            .await
            .map_err(|e| classify(e, "preparing an apply statement on the target"))?;
        self.statements.insert(key, s.clone());
        Ok(s)
    }

    async fn write_checkpoint(&self, p: Applied) -> Result<()> {
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
        Ok(())
    }

    /// Record `lsn` as confirmed (in the open transaction, if any).
    pub(super) async fn write_confirmed(&self, lsn: Lsn) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO pgtide.cdc_progress (task, commit_lsn, end_lsn, commit_time, confirmed_lsn, applied_at) \
                 VALUES ($1, '0/0', '0/0', NULL, $2::text::pg_lsn, now()) \
                 ON CONFLICT (task) DO UPDATE SET confirmed_lsn = greatest(cdc_progress.confirmed_lsn, EXCLUDED.confirmed_lsn)",
                &[&self.task, &lsn.to_string()],
            )
            .await
            .map_err(|e| classify(e, "recording the confirmed position on the target"))?;
        Ok(())
    }

    async fn write_stats(&self, counts: &[(QualifiedName, TableCounts)]) -> Result<()> {
        let mut schemas = Vec::new();
        let mut names = Vec::new();
        let (mut ins, mut upd, mut del, mut tru) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (n, c) in counts {
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
        Ok(())
    }

    async fn flush_table(
        &mut self,
        oid: u32,
        table: &TargetTable,
        drained: Drained,
        ordered: Vec<Ordered>,
    ) -> Result<()> {
        if !drained.deletes.is_empty() {
            let n = drained.deletes.len();
            let stmt = self
                .statement(format!("D:{oid}"), || sql::delete_run_sql(table))
                .await?;
            let got = self
                .execute_columns(&stmt, table, &table.key, &drained.deletes)
                .await?;
            if got != n as u64 {
                return Err(diverged(&table.name, "deletes", n, got));
            }
        }
        for (sig, group) in drained.updates {
            let set: Vec<usize> = sig
                .iter()
                .enumerate()
                .filter(|(_, s)| **s)
                .map(|(i, _)| i)
                .collect();
            let n = group.len();
            let stmt = self
                .statement(format!("U{set:?}:{oid}"), || {
                    sql::update_run_sql(table, &set)
                })
                .await?;
            let rows: Vec<Vec<Option<Bytes>>> = group
                .into_iter()
                .map(|(key, patch)| {
                    key.into_iter()
                        .chain(set.iter().map(|&c| patch[c].clone().flatten()))
                        .collect()
                })
                .collect();
            let cols: Vec<usize> = table.key.iter().chain(set.iter()).copied().collect();
            let got = self.execute_columns(&stmt, table, &cols, &rows).await?;
            if got != n as u64 {
                return Err(diverged(&table.name, "updates", n, got));
            }
        }
        if !drained.inserts.is_empty() {
            self.copy_rows(table, &drained.inserts).await?;
        }
        // Ordered changes: runs of inserts go by COPY, everything else one statement per row,
        // pipelined in order. The changes are ours now: rows move into their run.
        let mut rows = Vec::new();
        let mut statements = Vec::new();
        for change in ordered {
            match change {
                Ordered::Insert(row) => {
                    if !statements.is_empty() {
                        self.pipeline(oid, table, &std::mem::take(&mut statements))
                            .await?;
                    }
                    rows.push(row);
                }
                other => {
                    if !rows.is_empty() {
                        self.copy_rows(table, &std::mem::take(&mut rows)).await?;
                    }
                    statements.push(other);
                }
            }
        }
        if !rows.is_empty() {
            self.copy_rows(table, &rows).await?;
        }
        if !statements.is_empty() {
            self.pipeline(oid, table, &statements).await?;
        }
        Ok(())
    }

    async fn copy_rows(&self, table: &TargetTable, rows: &[Row]) -> Result<()> {
        let what = format!("inserting into {}", table.name);
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
            .map_err(|e| classify(e, &what))?;
        futures::pin_mut!(sink);
        let mut buf = BytesMut::with_capacity(1 << 20);
        for row in rows {
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
                    .map_err(|e| classify(e, &what))?;
            }
        }
        if !buf.is_empty() {
            sink.send(buf.split().freeze())
                .await
                .map_err(|e| classify(e, &what))?;
        }
        let got = sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| classify(e, &what))?;
        if got != rows.len() as u64 {
            return Err(diverged(&table.name, "inserts", rows.len(), got));
        }
        Ok(())
    }

    /// Execute a set-based statement whose parameters are one text[] per column of `cols`.
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

    /// Single-row statements, in order, sent back to back on the connection; each must touch
    /// exactly one row.
    async fn pipeline(&mut self, oid: u32, table: &TargetTable, changes: &[Ordered]) -> Result<()> {
        let mut prepared: Vec<(Statement, Bound, &'static str)> = Vec::with_capacity(changes.len());
        for c in changes {
            let (stmt, values, what) = match c {
                Ordered::Update { key, patch } => {
                    let set: Vec<usize> = present(patch);
                    let stmt = self
                        .statement(format!("K{set:?}:{oid}"), || {
                            sql::key_update_sql(table, &set)
                        })
                        .await?;
                    let mut v: Bound = set
                        .iter()
                        .map(|&c| (c, patch[c].clone().flatten()))
                        .collect();
                    v.extend(
                        table
                            .key
                            .iter()
                            .zip(key.iter().cloned())
                            .map(|(&c, k)| (c, k)),
                    );
                    (stmt, v, "an update")
                }
                Ordered::Delete { key } => {
                    let stmt = self
                        .statement(format!("D1:{oid}"), || sql::key_delete_sql(table))
                        .await?;
                    let v: Bound = table
                        .key
                        .iter()
                        .zip(key.iter().cloned())
                        .map(|(&c, k)| (c, k))
                        .collect();
                    (stmt, v, "a delete")
                }
                Ordered::WholeRowUpdate { old, patch } => {
                    let set: Vec<usize> = present(patch);
                    let matchable: Vec<usize> = present(old);
                    let stmt = self
                        .statement(format!("WU{set:?}{matchable:?}:{oid}"), || {
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
                    let matchable: Vec<usize> = present(old);
                    let stmt = self
                        .statement(format!("WD{matchable:?}:{oid}"), || {
                            sql::whole_row_delete_sql(table, &matchable)
                        })
                        .await?;
                    let v: Vec<(usize, Option<Bytes>)> = matchable
                        .iter()
                        .map(|&c| (c, old[c].clone().flatten()))
                        .collect();
                    (stmt, v, "a delete")
                }
                Ordered::Insert(_) => {
                    return Err(Error::internal("inserts are copied, not pipelined"));
                }
            };
            prepared.push((stmt, values, what));
        }
        let texts: Vec<Vec<Option<&str>>> = prepared
            .iter()
            .map(|(_, values, _)| {
                values
                    .iter()
                    .map(|(c, v)| as_str(v, table, *c))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = texts
            .iter()
            .map(|t| t.iter().map(|v| v as &(dyn ToSql + Sync)).collect())
            .collect();
        let futures = prepared
            .iter()
            .zip(&params)
            .map(|((stmt, _, _), p)| self.client.execute(stmt, p));
        let results = futures::future::join_all(futures).await;
        for (r, (_, _, what)) in results.into_iter().zip(&prepared) {
            let got = r.map_err(|e| classify(e, &format!("applying {what} to {}", table.name)))?;
            if got != 1 {
                return Err(diverged(&table.name, what, 1, got));
            }
        }
        Ok(())
    }
}
