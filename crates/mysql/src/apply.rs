//! Applying committed source transactions to a MySQL/MariaDB target, exactly once.
//!
//! # Exactly once
//!
//! As for PostgreSQL targets: consecutive source transactions are grouped into one InnoDB
//! transaction, and the last applied source transaction's commit and end LSN are written into
//! `_pgtide_cdc` in that same transaction. On restart a source transaction whose commit LSN is
//! at or below the stored one is skipped whole. What is confirmed to the source never passes
//! what COMMIT returned for (with `innodb_flush_log_at_trx_commit=1`, MySQL's default, that is
//! on disk; with 2 a crash of the target's OS can lose the last second — say so to operators).
//!
//! # Statements
//!
//! Row order per table is the source's. Consecutive inserts into one table become multi-row
//! `INSERT`s, consecutive deletes one `DELETE ... WHERE key IN (...)`, in chunks of 64, 32, …,
//! 1 rows so that only a handful of distinct prepared statements exist per table. Updates are
//! one statement each, with unchanged TOASTed columns left out of `SET` (the target keeps its
//! value). A TRUNCATE is a `DELETE FROM` (MySQL's TRUNCATE commits implicitly, which would
//! break the checkpoint's atomicity).
//!
//! The session runs with `FOREIGN_KEY_CHECKS=0` (the source already enforced them, and its
//! cascades arrive as changes of their own) and a strict `sql_mode`, so a value MySQL would
//! alter is an error. The connection counts *matched* rows (`CLIENT_FOUND_ROWS`): every
//! UPDATE and DELETE must match exactly the rows it carries, or the target has drifted and
//! the task stops.

use crate::convert::{ConvertedTable, quote};
use crate::load::{MysqlTarget, my_err};
use crate::range::{self, Guard, Verdict};
use crate::values::{self, Shape};
use mysql_async::Value;
use mysql_async::prelude::Queryable;
use pgtide_core::ident::QualifiedName;
use pgtide_core::lsn::Lsn;
use pgtide_core::task::OutOfRange;
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::apply::{Applied, Applier, Checkpoint, TableCounts};
use pgtide_postgres::changes::{Change, ChangeSink, RelationRef};
use pgtide_postgres::pgoutput::{OldTuple, PgTimestamp, Tuple, Value as PgValue};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The state table in the target database.
pub const STATE_TABLE: &str = "_pgtide_cdc";

/// Where a source table's changes go.
#[derive(Debug, Clone)]
pub struct Route {
    /// The converted table.
    pub table: Arc<ConvertedTable>,
    /// The source table is a partition of the converted (partitioned) table.
    pub partition: bool,
    /// Key columns (source names) for updates and deletes when the stream's own key flags do
    /// not name them (`REPLICA IDENTITY FULL`): the source's primary key.
    pub primary_key: Vec<String>,
}

/// Batch limits and routes.
#[derive(Debug, Clone)]
pub struct MysqlApplyConfig {
    /// Source table → route.
    pub routes: HashMap<QualifiedName, Route>,
    /// Changes per target transaction.
    pub max_batch_changes: usize,
    /// Age of a target transaction.
    pub max_batch_age: Duration,
    /// Values outside MySQL's range (`mysql.out_of_range`).
    pub out_of_range: OutOfRange,
}

/// The state of a task on a MySQL target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// `full-load` or `cdc`.
    pub phase: String,
    /// The task's fingerprint when it started.
    pub fingerprint: String,
    /// Last applied source transaction (zero: none yet).
    pub commit_lsn: Lsn,
    /// Its end.
    pub end_lsn: Lsn,
    /// Highest position recorded as confirmed.
    pub confirmed_lsn: Lsn,
}

/// Create the state table if needed.
pub async fn ensure_state(target: &MysqlTarget) -> Result<()> {
    let mut s = target.session().await?;
    s.exec(
        &format!(
            "CREATE TABLE IF NOT EXISTS {} (task VARCHAR(200) NOT NULL PRIMARY KEY, phase VARCHAR(32) NOT NULL, \
             fingerprint VARCHAR(200) NOT NULL, commit_lsn BIGINT UNSIGNED NOT NULL DEFAULT 0, \
             end_lsn BIGINT UNSIGNED NOT NULL DEFAULT 0, confirmed_lsn BIGINT UNSIGNED NOT NULL DEFAULT 0, \
             applied_at DATETIME(6) NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            quote(STATE_TABLE)
        ),
        "creating pgtide's state table on the target",
    )
    .await?;
    s.close().await;
    Ok(())
}

/// Read a task's state (`None`: no state table or no row).
pub async fn read_state(target: &MysqlTarget, task: &str) -> Result<Option<TaskState>> {
    let mut s = target.session().await?;
    let exists = s
        .query_text(
            &format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = {}",
                crate::types::mysql_literal(STATE_TABLE)
            ),
            "looking for pgtide state on the target",
        )
        .await?;
    if exists.as_deref() != Some("1") {
        s.close().await;
        return Ok(None);
    }
    let row: Option<(String, String, u64, u64, u64)> = s
        .conn
        .exec_first(
            format!(
                "SELECT phase, fingerprint, commit_lsn, end_lsn, confirmed_lsn FROM {} WHERE task = ?",
                quote(STATE_TABLE)
            ),
            (task,),
        )
        .await
        .map_err(|e| my_err("reading pgtide state on the target", e))?;
    s.close().await;
    Ok(row.map(|(phase, fingerprint, c, e, f)| TaskState {
        phase,
        fingerprint,
        commit_lsn: Lsn(c),
        end_lsn: Lsn(e),
        confirmed_lsn: Lsn(f),
    }))
}

/// Set a task's phase and fingerprint; with `start`, also reset the checkpoint to "nothing
/// applied, stream from `start`".
pub async fn set_state(
    target: &MysqlTarget,
    task: &str,
    phase: &str,
    fingerprint: &str,
    start: Option<Lsn>,
) -> Result<()> {
    let mut s = target.session().await?;
    let sql = match start {
        Some(_) => format!(
            "INSERT INTO {t} (task, phase, fingerprint, commit_lsn, end_lsn, confirmed_lsn, applied_at) \
             VALUES (?, ?, ?, 0, 0, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE phase = VALUES(phase), \
             fingerprint = VALUES(fingerprint), commit_lsn = 0, end_lsn = 0, confirmed_lsn = VALUES(confirmed_lsn)",
            t = quote(STATE_TABLE)
        ),
        None => format!(
            "INSERT INTO {t} (task, phase, fingerprint, confirmed_lsn) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE phase = VALUES(phase), fingerprint = VALUES(fingerprint)",
            t = quote(STATE_TABLE)
        ),
    };
    let start = start.unwrap_or(Lsn::ZERO).0;
    s.conn
        .exec_drop(sql, (task, phase, fingerprint, start))
        .await
        .map_err(|e| my_err("recording pgtide state on the target", e))?;
    s.close().await;
    Ok(())
}

/// A relation's columns mapped onto its target table.
struct Mapped {
    relation: RelationRef,
    route: Route,
    /// Per relation column: target column name, value shape, range guard.
    columns: Vec<(String, Shape, Option<Guard>)>,
    /// Relation column indices of the key.
    key: Vec<usize>,
}

/// Pending rows of one table, in source order.
enum Run {
    Inserts { oid: u32, rows: Vec<Vec<Value>> },
    Deletes { oid: u32, keys: Vec<Vec<Value>> },
}

/// Applies the stream to a MySQL target.
pub struct MysqlApplier {
    conn: mysql_async::Conn,
    task: String,
    config: Arc<MysqlApplyConfig>,
    mapped: HashMap<u32, Mapped>,
    /// Pending runs by target table (partitions of one source table share a target table,
    /// and a row moving between them must keep its delete-then-insert order).
    runs: HashMap<String, Run>,
    in_tx: bool,
    checkpoint: Checkpoint,
    batch_changes: usize,
    batch_opened: Option<Instant>,
    counts_pending: HashMap<QualifiedName, TableCounts>,
    counts_total: HashMap<QualifiedName, TableCounts>,
    /// Columns (relation OID, column index) whose values the out-of-range policy changed in
    /// the open batch (a mutex because values are converted through `&self`).
    altered_pending: Mutex<HashSet<(u32, usize)>>,
    /// Columns already reported as changed (one warning per column).
    altered_warned: HashSet<(u32, usize)>,
}

const CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

impl MysqlApplier {
    /// An applier on a dedicated connection: takes the task's lock (one applier per task) and
    /// reads the checkpoint.
    pub async fn new(
        target: &MysqlTarget,
        task: &str,
        config: Arc<MysqlApplyConfig>,
    ) -> Result<Self> {
        let mut conn = target.dedicated().await?.conn;
        let lock = format!("pgtide:{}", task.chars().take(50).collect::<String>());
        let got: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, 10)", (lock,))
            .await
            .map_err(|e| my_err("taking the task's lock on the target", e))?;
        if got.flatten() != Some(1) {
            return Err(Error::new(
                ErrorKind::Transient,
                format!("task {task:?} is being applied by another pgtide run on this target"),
            )
            .with_hint("stop the other run first; pgtide retries"));
        }
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| my_err("preparing the apply session on the target", e))?;
        let state = read_state_on(&mut conn, task).await?;
        let (durable, confirmed) = match state {
            Some((c, e, f)) if c > 0 => (
                Some(Applied {
                    commit_lsn: Lsn(c),
                    end_lsn: Lsn(e),
                    commit_time: 0,
                }),
                Lsn(f),
            ),
            Some((_, _, f)) => (None, Lsn(f)),
            None => (None, Lsn::ZERO),
        };
        Ok(MysqlApplier {
            conn,
            task: task.to_string(),
            config,
            mapped: HashMap::new(),
            runs: HashMap::new(),
            in_tx: false,
            checkpoint: Checkpoint::new(durable, confirmed),
            batch_changes: 0,
            batch_opened: None,
            counts_pending: HashMap::new(),
            counts_total: HashMap::new(),
            altered_pending: Mutex::new(HashSet::new()),
            altered_warned: HashSet::new(),
        })
    }

    /// Abandon the open batch (after an error).
    pub async fn rollback(&mut self) {
        if self.in_tx {
            let _ = self.conn.query_drop("ROLLBACK").await;
        }
        self.in_tx = false;
        self.runs.clear();
        self.checkpoint.batch_abandoned();
        self.counts_pending.clear();
        self.altered_pending
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn map(&mut self, relation: &RelationRef) -> Result<u32> {
        let oid = relation.oid;
        if let Some(m) = self.mapped.get(&oid)
            && Arc::ptr_eq(&m.relation, relation)
        {
            return Ok(oid);
        }
        let name = QualifiedName::new(relation.namespace.clone(), relation.name.clone());
        let route = self.config.routes.get(&name).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("changes arrived for {name}, which has no table on the MySQL target"),
            )
            .with_hint("the table was added to the publication after the task started; restart the task with --restart")
        })?;
        let mut columns = Vec::new();
        for rc in &relation.columns {
            let c = route
                .table
                .columns
                .iter()
                .find(|c| c.source == rc.name)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Unsupported,
                        format!("{name}.{}: the column is not on the MySQL target (added on the source after the task started?)", rc.name),
                    )
                    .with_hint("add the column on the target with the type pgtide convert gives it, then resume; or restart the task")
                })?;
            let shape = values::shape(c).map_err(|e| {
                Error::new(ErrorKind::Unsupported, format!("{name}: {}", e.0)).with_hint(
                    "exclude the table from the task, or change the column's type on the source",
                )
            })?;
            columns.push((
                c.target.clone(),
                shape,
                Guard::of(c, self.config.out_of_range),
            ));
        }
        let mut key: Vec<usize> = if relation.replica_identity == b'f' {
            Vec::new()
        } else {
            relation
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key)
                .map(|(i, _)| i)
                .collect()
        };
        if key.is_empty() {
            key = route
                .primary_key
                .iter()
                .filter_map(|k| relation.columns.iter().position(|c| &c.name == k))
                .collect();
        }
        self.mapped.insert(
            oid,
            Mapped {
                relation: relation.clone(),
                route,
                columns,
                key,
            },
        );
        Ok(oid)
    }

    /// A column value as MySQL takes it. `written`: the value is stored (a row's or a SET's
    /// value), so a change by the out-of-range policy is counted; key values that only find
    /// rows are converted alike but not counted again.
    fn value(&self, oid: u32, col: usize, v: &PgValue, written: bool) -> Result<Value> {
        let m = &self.mapped[&oid];
        match v {
            PgValue::Null => Ok(Value::NULL),
            PgValue::Text(b) => {
                let (_, shape, guard) = &m.columns[col];
                let name = || format!("{}.{}", m.route.table.source, m.relation.columns[col].name);
                let text = match guard.map(|g| g.judge(b)) {
                    None | Some(Ok(Verdict::Fits)) => Cow::Borrowed(&b[..]),
                    Some(Ok(Verdict::Replace(v))) => {
                        if written {
                            self.altered_pending
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert((oid, col));
                        }
                        match v {
                            Some(v) => v,
                            None => return Ok(Value::NULL),
                        }
                    }
                    Some(Err(e)) => {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!("{}: {}; the change is not applied", name(), e.0),
                        )
                        .with_hint(range::HINT));
                    }
                };
                values::convert(*shape, &text).map_err(|e| {
                    Error::new(ErrorKind::Unsupported, format!("{}: {}", name(), e.0))
                        .with_hint("fix the value on the source (the change is not applied and the task stops), or exclude the table")
                })
            }
            PgValue::UnchangedToast => Err(Error::internal(format!(
                "{}.{}: an unchanged TOAST value where a full value is needed",
                m.route.table.source, m.relation.columns[col].name
            ))),
            PgValue::Binary(_) => Err(Error::internal(
                "binary values in the stream, but pgtide asked for text",
            )),
        }
    }

    fn key_values(&self, oid: u32, tuple: &Tuple) -> Result<Vec<Value>> {
        let m = &self.mapped[&oid];
        if m.key.is_empty() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: no key to find rows by on the MySQL target",
                    m.route.table.source
                ),
            )
            .with_hint(
                "add a primary key on the source, or use cdc.tables_without_key: insert-only",
            ));
        }
        m.key
            .iter()
            .map(|&i| self.value(oid, i, tuple.0.get(i).unwrap_or(&PgValue::Null), false))
            .collect()
    }

    fn count(&mut self, oid: u32) -> &mut TableCounts {
        let name = self.mapped[&oid].route.table.source.clone();
        self.counts_pending.entry(name).or_default()
    }

    async fn ensure_tx(&mut self) -> Result<()> {
        if !self.in_tx {
            self.conn
                .query_drop("START TRANSACTION")
                .await
                .map_err(|e| my_err("starting an apply transaction on the target", e))?;
            self.in_tx = true;
            self.batch_opened = Some(Instant::now());
        }
        Ok(())
    }

    async fn exec_counted(
        &mut self,
        sql: String,
        params: Vec<Value>,
        expected: usize,
        oid: u32,
        what: &str,
    ) -> Result<()> {
        let table = self.mapped[&oid].route.table.target.clone();
        self.conn
            .exec_drop(sql, params)
            .await
            .map_err(|e| my_err(&format!("applying {what} to {}", quote(&table)), e))?;
        let got = self.conn.affected_rows();
        if got != expected as u64 {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("applying {expected} {what} to {}: {got} rows matched on the target; the target no longer matches the source", quote(&table)),
            )
            .with_hint("something changed that table on the target outside pgtide; reload it (run the task again with --restart) and resume"));
        }
        Ok(())
    }

    fn target_of(&self, oid: u32) -> String {
        self.mapped[&oid].route.table.target.clone()
    }

    async fn flush(&mut self, target: &str) -> Result<()> {
        let Some(run) = self.runs.remove(target) else {
            return Ok(());
        };
        let oid = match &run {
            Run::Inserts { oid, .. } | Run::Deletes { oid, .. } => *oid,
        };
        let m = &self.mapped[&oid];
        let table = quote(&m.route.table.target);
        match run {
            Run::Inserts { oid, rows } => {
                let cols: Vec<String> = m.columns.iter().map(|(n, _, _)| quote(n)).collect();
                let one = format!("({})", vec!["?"; cols.len()].join(","));
                let head = format!("INSERT INTO {table} ({}) VALUES ", cols.join(","));
                let mut rows = rows.into_iter();
                let mut left = rows.len();
                while left > 0 {
                    let n = *CHUNKS.iter().find(|c| **c <= left).expect("1 fits");
                    let sql = format!("{head}{}", vec![one.as_str(); n].join(","));
                    let params: Vec<Value> = rows.by_ref().take(n).flatten().collect();
                    self.exec_counted(sql, params, n, oid, "inserts").await?;
                    left -= n;
                }
            }
            Run::Deletes { oid, keys } => {
                let key_cols: Vec<String> = m.key.iter().map(|&i| quote(&m.columns[i].0)).collect();
                let (lhs, one) = if key_cols.len() == 1 {
                    (key_cols[0].clone(), "?".to_string())
                } else {
                    (
                        format!("({})", key_cols.join(",")),
                        format!("({})", vec!["?"; key_cols.len()].join(",")),
                    )
                };
                let mut keys = keys.into_iter();
                let mut left = keys.len();
                while left > 0 {
                    let n = *CHUNKS.iter().find(|c| **c <= left).expect("1 fits");
                    let sql = format!(
                        "DELETE FROM {table} WHERE {lhs} IN ({})",
                        vec![one.as_str(); n].join(",")
                    );
                    let params: Vec<Value> = keys.by_ref().take(n).flatten().collect();
                    self.exec_counted(sql, params, n, oid, "deletes").await?;
                    left -= n;
                }
            }
        }
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<()> {
        let targets: Vec<String> = self.runs.keys().cloned().collect();
        for t in targets {
            self.flush(&t).await?;
        }
        Ok(())
    }

    async fn on_insert(&mut self, relation: RelationRef, new: Tuple) -> Result<()> {
        let oid = self.map(&relation)?;
        let row: Vec<Value> = new
            .0
            .iter()
            .enumerate()
            .map(|(i, v)| self.value(oid, i, v, true))
            .collect::<Result<_>>()?;
        let target = self.target_of(oid);
        match self.open_run(oid, target, false).await? {
            Run::Inserts { rows, .. } => rows.push(row),
            Run::Deletes { .. } => return Err(Error::internal("an insert run was expected")),
        }
        self.count(oid).inserts += 1;
        Ok(())
    }

    /// The run that takes the next change of `oid` into `target`: the open one when it holds
    /// the same kind of change from the same source table, else a new one after the open one is
    /// flushed (the target must see the changes in source order).
    async fn open_run(&mut self, oid: u32, target: String, deletes: bool) -> Result<&mut Run> {
        let same = match self.runs.get(&target) {
            None => true,
            Some(Run::Deletes { oid: o, .. }) => deletes && *o == oid,
            Some(Run::Inserts { oid: o, .. }) => !deletes && *o == oid,
        };
        if !same {
            self.flush(&target).await?;
        }
        Ok(self.runs.entry(target).or_insert(if deletes {
            Run::Deletes {
                oid,
                keys: Vec::new(),
            }
        } else {
            Run::Inserts {
                oid,
                rows: Vec::new(),
            }
        }))
    }

    async fn on_delete(&mut self, relation: RelationRef, old: OldTuple) -> Result<()> {
        let oid = self.map(&relation)?;
        let key = self.key_values(oid, old.tuple())?;
        let target = self.target_of(oid);
        match self.open_run(oid, target, true).await? {
            Run::Deletes { keys, .. } => keys.push(key),
            Run::Inserts { .. } => return Err(Error::internal("a delete run was expected")),
        }
        self.count(oid).deletes += 1;
        Ok(())
    }

    async fn on_update(
        &mut self,
        relation: RelationRef,
        old: Option<OldTuple>,
        new: Tuple,
    ) -> Result<()> {
        let oid = self.map(&relation)?;
        let target = self.target_of(oid);
        self.flush(&target).await?;
        let key = match &old {
            Some(o) => self.key_values(oid, o.tuple())?,
            None => self.key_values(oid, &new)?,
        };
        let m = &self.mapped[&oid];
        let mut sets = Vec::new();
        let mut params = Vec::new();
        for (i, v) in new.0.iter().enumerate() {
            if matches!(v, PgValue::UnchangedToast) {
                continue;
            }
            sets.push(format!("{} = ?", quote(&m.columns[i].0)));
            params.push(self.value(oid, i, v, true)?);
        }
        let m = &self.mapped[&oid];
        let key_cols: Vec<String> = m
            .key
            .iter()
            .map(|&i| format!("{} = ?", quote(&m.columns[i].0)))
            .collect();
        if sets.is_empty() {
            // Nothing but unchanged TOAST: still check that the row is there.
            let k = quote(&m.columns[m.key[0]].0);
            sets.push(format!("{k} = {k}"));
        }
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            quote(&m.route.table.target),
            sets.join(", "),
            key_cols.join(" AND ")
        );
        params.extend(key);
        self.exec_counted(sql, params, 1, oid, "an update").await?;
        self.count(oid).updates += 1;
        Ok(())
    }

    async fn on_truncate(&mut self, relations: Vec<RelationRef>) -> Result<()> {
        let mut done: Vec<String> = Vec::new();
        for r in &relations {
            let oid = self.map(r)?;
            let target = self.target_of(oid);
            self.runs.remove(&target);
            let m = &self.mapped[&oid];
            if m.route.partition {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "TRUNCATE of partition {}.{}: on MySQL its rows are part of {} with the other partitions' rows",
                        r.namespace,
                        r.name,
                        quote(&m.route.table.target)
                    ),
                )
                .with_hint("delete the partition's rows with DELETE on the source instead, or restart the task with --restart to reload"));
            }
            let target = m.route.table.target.clone();
            if done.contains(&target) {
                continue;
            }
            let sql = format!("DELETE FROM {}", quote(&target));
            self.conn
                .query_drop(sql)
                .await
                .map_err(|e| my_err(&format!("applying a TRUNCATE to {}", quote(&target)), e))?;
            done.push(target);
            self.count(oid).truncates += 1;
        }
        Ok(())
    }
}

async fn read_state_on(
    conn: &mut mysql_async::Conn,
    task: &str,
) -> Result<Option<(u64, u64, u64)>> {
    conn.exec_first(
        format!(
            "SELECT commit_lsn, end_lsn, confirmed_lsn FROM {} WHERE task = ?",
            quote(STATE_TABLE)
        ),
        (task,),
    )
    .await
    .map_err(|e| my_err("reading the checkpoint on the target", e))
}

impl ChangeSink for MysqlApplier {
    async fn begin(&mut self, commit_lsn: Lsn, _commit_time: PgTimestamp, _xid: u32) -> Result<()> {
        if self.checkpoint.begin(commit_lsn) {
            self.ensure_tx().await?;
        }
        Ok(())
    }

    async fn change(&mut self, change: Change) -> Result<()> {
        if self.checkpoint.skipping() {
            return Ok(());
        }
        self.batch_changes += 1;
        match change {
            Change::Insert { relation, new } => self.on_insert(relation, new).await,
            Change::Update { relation, old, new } => self.on_update(relation, old, new).await,
            Change::Delete { relation, old } => self.on_delete(relation, old).await,
            Change::Truncate { relations, .. } => self.on_truncate(relations).await,
        }
    }

    async fn message(
        &mut self,
        _transactional: bool,
        _prefix: &str,
        _content: &bytes::Bytes,
        _lsn: Lsn,
    ) -> Result<()> {
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
        if self.batch_changes >= self.config.max_batch_changes || self.batch_is_old() {
            Applier::commit_batch(self).await?;
        }
        Ok(())
    }
}

impl Applier for MysqlApplier {
    fn durable(&self) -> Option<Applied> {
        self.checkpoint.durable
    }

    fn confirmable(&self) -> Lsn {
        self.checkpoint.confirmable(self.in_tx)
    }

    async fn record_confirmed(&mut self, lsn: Lsn) -> Result<()> {
        if self.in_tx || lsn <= self.checkpoint.confirmed {
            return Ok(());
        }
        self.conn
            .exec_drop(
                format!(
                    "UPDATE {} SET confirmed_lsn = GREATEST(confirmed_lsn, ?) WHERE task = ?",
                    quote(STATE_TABLE)
                ),
                (lsn.0, self.task.as_str()),
            )
            .await
            .map_err(|e| my_err("recording the confirmed position on the target", e))?;
        self.checkpoint.confirmed = lsn;
        Ok(())
    }

    fn has_open_batch(&self) -> bool {
        self.in_tx
    }

    fn batch_is_old(&self) -> bool {
        self.batch_opened
            .map(|t| t.elapsed() >= self.config.max_batch_age)
            .unwrap_or(false)
    }

    async fn hand_off_batch(&mut self) -> Result<()> {
        self.commit_batch().await.map(|_| ())
    }

    async fn commit_batch(&mut self) -> Result<Option<Applied>> {
        if !self.in_tx {
            return Ok(self.checkpoint.durable);
        }
        self.flush_all().await?;
        if let Some(p) = self.checkpoint.pending {
            self.conn
                .exec_drop(
                    format!(
                        "UPDATE {} SET commit_lsn = ?, end_lsn = ?, confirmed_lsn = GREATEST(confirmed_lsn, ?), \
                         applied_at = UTC_TIMESTAMP(6) WHERE task = ?",
                        quote(STATE_TABLE)
                    ),
                    (p.commit_lsn.0, p.end_lsn.0, p.end_lsn.0, self.task.as_str()),
                )
                .await
                .map_err(|e| my_err("recording the applied position on the target", e))?;
            if self.conn.affected_rows() != 1 {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "task {:?} has no row in {STATE_TABLE} on the target",
                        self.task
                    ),
                )
                .with_hint(
                    "the state table was changed outside pgtide; run the task again with --restart",
                ));
            }
        }
        pgtide_core::failpoint::hit("apply-before-commit");
        self.conn
            .query_drop("COMMIT")
            .await
            .map_err(|e| my_err("committing an apply transaction on the target", e))?;
        self.in_tx = false;
        self.batch_opened = None;
        self.batch_changes = 0;
        for (n, c) in std::mem::take(&mut self.counts_pending) {
            self.counts_total.entry(n).or_default().add(&c);
        }
        let altered = std::mem::take(
            self.altered_pending
                .get_mut()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (oid, col) in altered {
            if self.altered_warned.insert((oid, col)) {
                let column = self
                    .mapped
                    .get(&oid)
                    .map(|m| format!("{}.{}", m.route.table.source, m.relation.columns[col].name))
                    .unwrap_or_else(|| format!("relation {oid} column {col}"));
                tracing::warn!(
                    "{column}: a value outside MySQL's range was written as {} (mysql.out_of_range: {}); further ones are not logged",
                    range::written_as(self.config.out_of_range),
                    self.config.out_of_range.as_str()
                );
            }
        }
        Ok(self.checkpoint.batch_committed())
    }

    fn transactions(&self) -> u64 {
        self.checkpoint.transactions
    }

    fn counts(&self) -> &HashMap<QualifiedName, TableCounts> {
        &self.counts_total
    }
}
