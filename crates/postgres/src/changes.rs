//! From pgoutput messages to committed transactions, in commit order, in bounded memory.
//!
//! # Ordinary transactions
//!
//! The server sends a transaction when it commits, as `Begin`, its changes, `Commit`. Those are
//! passed on to the [`ChangeSink`] as they arrive; nothing is buffered here, so a transaction of
//! two million rows costs no more memory than one of two.
//!
//! # Streamed (in-progress) transactions
//!
//! With `streaming 'on'` (protocol v2, PostgreSQL 14+), a transaction that outgrows the
//! server's `logical_decoding_work_mem` arrives in blocks *before* it commits, interleaved with
//! other transactions that commit earlier:
//!
//! ```text
//!   Stream Start(xid 7) I I U ... Stream Stop   Begin(xid 8) I Commit   Stream Start(7) D ... Stream Stop
//!   Stream Commit(7)            or: Stream Abort(7, 7)  /  Stream Abort(7, 9) for subtransaction 9
//! ```
//!
//! Applying transaction 7's rows before transaction 8's commit would break commit order, so
//! each streamed transaction is spooled to a file, message by message (length-prefixed, raw
//! bytes), and replayed from disk at `Stream Commit` as if it had just arrived whole. A
//! `Stream Abort` of the whole transaction deletes its file. A `Stream Abort` of a
//! subtransaction (`ROLLBACK TO SAVEPOINT`) truncates the file at the first message of that
//! subtransaction: every later message belongs to it or to its children, because
//! subtransactions nest. (PostgreSQL's own apply worker does the same.)
//!
//! Relation messages inside a stream block describe the table for that transaction; they are
//! spooled with it and take effect when it is replayed, as the server expects.

use crate::pgoutput::{self, Context, Message, OldTuple, PgTimestamp, Relation, Tuple};
use bytes::Bytes;
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, ErrorKind, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// A table as the stream describes it.
pub type RelationRef = Arc<Relation>;

/// One row change.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new row.
    Insert {
        /// The table.
        relation: RelationRef,
        /// Its values.
        new: Tuple,
    },
    /// A changed row.
    Update {
        /// The table.
        relation: RelationRef,
        /// Old key (key changed) or old row (`REPLICA IDENTITY FULL`).
        old: Option<OldTuple>,
        /// New values; unchanged TOASTed columns are [`pgoutput::Value::UnchangedToast`].
        new: Tuple,
    },
    /// A removed row.
    Delete {
        /// The table.
        relation: RelationRef,
        /// Old key or old row.
        old: OldTuple,
    },
    /// Emptied tables.
    Truncate {
        /// The tables.
        relations: Vec<RelationRef>,
        /// `CASCADE`.
        cascade: bool,
        /// `RESTART IDENTITY`.
        restart_identity: bool,
    },
}

/// How one source table appears on the target, from the task's rules: applied to every
/// Relation message and every row before the applier sees them, so every target kind gets the
/// same renames and the same dropped columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Target schema.
    pub schema: String,
    /// Target table.
    pub name: String,
    /// Source column → target column, for renamed columns; others keep their name. A column
    /// the rules do not know (added on the source since) passes through unchanged, so the
    /// applier stops on it rather than dropping its values.
    pub columns: HashMap<String, String>,
    /// Source columns that are dropped here (removed columns the publication could not leave
    /// out, e.g. under `REPLICA IDENTITY FULL`).
    pub removed: Vec<String>,
    /// Target columns that identify a row, instead of the replica identity (the task's
    /// `row_identifier_key`; the source sends whole old rows).
    pub key: Option<Vec<String>>,
}

/// Routes by source `(schema, table)`; tables without a route pass unchanged.
pub type Routes = HashMap<(String, String), Route>;

/// The relation as the target sees it, and which source columns it keeps (None: all).
fn route_relation(rel: Relation, route: &Route) -> (Relation, Option<Vec<usize>>) {
    let keep: Vec<usize> = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !route.removed.contains(&c.name))
        .map(|(i, _)| i)
        .collect();
    let projection = (keep.len() != rel.columns.len()).then(|| keep.clone());
    let mut columns: Vec<pgoutput::RelationColumn> = keep
        .iter()
        .map(|&i| {
            let mut c = rel.columns[i].clone();
            if let Some(n) = route.columns.get(&c.name) {
                c.name = n.clone();
            }
            c
        })
        .collect();
    let mut replica_identity = rel.replica_identity;
    if let Some(key) = &route.key {
        for c in columns.iter_mut() {
            c.key = key.contains(&c.name);
        }
        // The key columns now identify rows, whatever the source's identity was.
        replica_identity = b'i';
    }
    (
        Relation {
            oid: rel.oid,
            namespace: route.schema.clone(),
            name: route.name.clone(),
            replica_identity,
            columns,
        },
        projection,
    )
}

fn project(t: Tuple, keep: Option<&[usize]>) -> Result<Tuple> {
    match keep {
        None => Ok(t),
        Some(k) => {
            let mut values = t.0;
            let width = values.len();
            k.iter()
                .map(|&i| {
                    values
                        .get_mut(i)
                        .map(|v| std::mem::replace(v, pgoutput::Value::Null))
                        .ok_or_else(|| {
                            Error::internal(format!(
                                "a row with {width} values for a relation with more columns"
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()
                .map(Tuple)
        }
    }
}

fn project_old(t: OldTuple, keep: Option<&[usize]>) -> Result<OldTuple> {
    Ok(match t {
        OldTuple::Key(t) => OldTuple::Key(project(t, keep)?),
        OldTuple::Full(t) => OldTuple::Full(project(t, keep)?),
    })
}

/// Where assembled transactions go (the applier).
pub trait ChangeSink {
    /// A transaction starts. `commit_lsn` is its position in commit order.
    fn begin(
        &mut self,
        commit_lsn: Lsn,
        commit_time: PgTimestamp,
        xid: u32,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
    /// A change of the current transaction.
    fn change(&mut self, change: Change) -> impl std::future::Future<Output = Result<()>> + Send;
    /// A `pg_logical_emit_message` record (inside a transaction when `transactional`).
    fn message(
        &mut self,
        transactional: bool,
        prefix: &str,
        content: &Bytes,
        lsn: Lsn,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
    /// The current transaction committed.
    fn commit(
        &mut self,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: PgTimestamp,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
}

struct Spool {
    path: PathBuf,
    writer: BufWriter<File>,
    len: u64,
    /// Offset of each subtransaction's first message.
    first_offset: HashMap<u32, u64>,
}

/// Turns pgoutput messages into [`ChangeSink`] calls.
pub struct Assembler {
    /// Looked up for every change (foldhash: cheaper than SipHash for an OID).
    relations: foldhash::HashMap<u32, RelationRef>,
    /// Source columns kept per relation, when a route drops some.
    projections: foldhash::HashMap<u32, Option<Vec<usize>>>,
    routes: Routes,
    /// Inside a stream block: the top-level xid.
    streaming: Option<u32>,
    spools: HashMap<u32, Spool>,
    spool_dir: PathBuf,
    parallel_abort: bool,
    /// Inside an ordinary transaction.
    in_txn: bool,
}

fn spool_err(what: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {e}"))
        .with_hint("check free space and permissions of cdc.spill_dir")
}

impl Assembler {
    /// A new assembler spooling streamed transactions under `spool_dir` (created if needed;
    /// leftovers of an earlier run are removed: the server re-sends what was not confirmed).
    pub fn new(spool_dir: PathBuf) -> Result<Self> {
        if spool_dir.exists() {
            for e in std::fs::read_dir(&spool_dir)
                .map_err(|e| spool_err("reading the spill directory", e))?
                .flatten()
            {
                if e.file_name().to_string_lossy().ends_with(".spool") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        } else {
            std::fs::create_dir_all(&spool_dir)
                .map_err(|e| spool_err("creating the spill directory", e))?;
        }
        Ok(Assembler {
            relations: Default::default(),
            projections: Default::default(),
            routes: Routes::new(),
            streaming: None,
            spools: HashMap::new(),
            spool_dir,
            parallel_abort: false,
            in_txn: false,
        })
    }

    /// Rename and project tables on their way to the sink (the task's rules).
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    /// True between `Begin` and `Commit` of an ordinary transaction.
    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// Streamed transactions currently spooled.
    pub fn spooled(&self) -> usize {
        self.spools.len()
    }

    /// The relation with this OID, if announced.
    pub fn relation(&self, oid: u32) -> Option<&RelationRef> {
        self.relations.get(&oid)
    }

    fn rel(&self, oid: u32) -> Result<RelationRef> {
        self.relations.get(&oid).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!(
                    "the stream changed table OID {oid} before describing it (no Relation message)"
                ),
            )
        })
    }

    /// The source columns a route keeps for this relation (None: all).
    fn keep(&self, oid: u32) -> Option<&[usize]> {
        self.projections.get(&oid).and_then(|p| p.as_deref())
    }

    /// Handle one pgoutput message (the payload of an XLogData frame).
    pub async fn process<S: ChangeSink>(&mut self, data: Bytes, sink: &mut S) -> Result<()> {
        let ctx = Context {
            in_stream: self.streaming.is_some(),
            parallel_abort: self.parallel_abort,
        };
        let msg = pgoutput::decode(&data, ctx)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        if let Some(top) = self.streaming {
            return self.spool(top, data, msg);
        }
        match msg {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                self.in_txn = true;
                sink.begin(final_lsn, commit_time, xid).await
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                self.in_txn = false;
                sink.commit(commit_lsn, end_lsn, commit_time).await
            }
            Message::StreamStart { xid, first_segment } => {
                if first_segment || !self.spools.contains_key(&xid) {
                    self.open_spool(xid)?;
                }
                self.streaming = Some(xid);
                Ok(())
            }
            Message::StreamStop => Err(Error::internal("Stream Stop outside a stream block")),
            Message::StreamAbort { xid, subxid, .. } => self.abort(xid, subxid),
            Message::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                self.replay(xid, commit_lsn, end_lsn, commit_time, sink)
                    .await
            }
            other => self.dispatch(other, sink).await,
        }
    }

    /// Messages that may appear both directly and in a replayed spool.
    async fn dispatch<S: ChangeSink>(&mut self, msg: Message, sink: &mut S) -> Result<()> {
        match msg {
            Message::Relation { relation, .. } => {
                let key = (relation.namespace.clone(), relation.name.clone());
                let (relation, projection) = match self.routes.get(&key) {
                    Some(route) => route_relation(relation, route),
                    None => (relation, None),
                };
                // The projection always follows the message (the source's columns may have
                // changed where the route's output did not). The same routed shape keeps its
                // `RelationRef`, so the applier keeps the table's state and its buffered
                // changes: every decoding session (each catch-up chunk) sends a table's
                // Relation again before its first change, and a new `RelationRef`
                // makes the applier flush the table and resolve it against the target,
                // waiting for the batch in flight.
                self.projections.insert(relation.oid, projection);
                if !self
                    .relations
                    .get(&relation.oid)
                    .is_some_and(|known| **known == relation)
                {
                    self.relations.insert(relation.oid, Arc::new(relation));
                }
                Ok(())
            }
            Message::Type { .. } | Message::Origin { .. } => Ok(()),
            Message::Insert { relation, new, .. } => {
                let new = project(new, self.keep(relation))?;
                sink.change(Change::Insert {
                    relation: self.rel(relation)?,
                    new,
                })
                .await
            }
            Message::Update {
                relation, old, new, ..
            } => {
                let keep = self.keep(relation);
                let old = old.map(|o| project_old(o, keep)).transpose()?;
                let new = project(new, keep)?;
                sink.change(Change::Update {
                    relation: self.rel(relation)?,
                    old,
                    new,
                })
                .await
            }
            Message::Delete { relation, old, .. } => {
                let old = project_old(old, self.keep(relation))?;
                sink.change(Change::Delete {
                    relation: self.rel(relation)?,
                    old,
                })
                .await
            }
            Message::Truncate {
                cascade,
                restart_identity,
                relations,
                ..
            } => {
                let rels = relations
                    .iter()
                    .map(|r| self.rel(*r))
                    .collect::<Result<Vec<_>>>()?;
                sink.change(Change::Truncate {
                    relations: rels,
                    cascade,
                    restart_identity,
                })
                .await
            }
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content,
                ..
            } => sink.message(transactional, &prefix, &content, lsn).await,
            other => Err(Error::internal(format!(
                "unexpected message in a transaction: {other:?}"
            ))),
        }
    }

    fn open_spool(&mut self, xid: u32) -> Result<()> {
        let path = self.spool_dir.join(format!("{xid}.spool"));
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| spool_err("creating a spill file", e))?;
        self.spools.insert(
            xid,
            Spool {
                path,
                writer: BufWriter::with_capacity(256 * 1024, file),
                len: 0,
                first_offset: HashMap::new(),
            },
        );
        Ok(())
    }

    fn spool(&mut self, top: u32, data: Bytes, msg: Message) -> Result<()> {
        let xid = match &msg {
            Message::StreamStop => {
                self.streaming = None;
                if let Some(s) = self.spools.get_mut(&top) {
                    s.writer
                        .flush()
                        .map_err(|e| spool_err("writing a spill file", e))?;
                }
                return Ok(());
            }
            Message::Relation { xid, .. }
            | Message::Type { xid, .. }
            | Message::Insert { xid, .. }
            | Message::Update { xid, .. }
            | Message::Delete { xid, .. }
            | Message::Truncate { xid, .. }
            | Message::LogicalMessage { xid, .. } => xid.unwrap_or(top),
            other => {
                return Err(Error::internal(format!(
                    "unexpected message inside a stream block: {other:?}"
                )));
            }
        };
        let s = self.spools.get_mut(&top).ok_or_else(|| {
            Error::internal(format!("no spill file for streamed transaction {top}"))
        })?;
        s.first_offset.entry(xid).or_insert(s.len);
        s.writer
            .write_all(&(data.len() as u32).to_be_bytes())
            .map_err(|e| spool_err("writing a spill file", e))?;
        s.writer
            .write_all(&data)
            .map_err(|e| spool_err("writing a spill file", e))?;
        s.len += 4 + data.len() as u64;
        Ok(())
    }

    fn abort(&mut self, xid: u32, subxid: u32) -> Result<()> {
        if xid == subxid {
            if let Some(s) = self.spools.remove(&xid) {
                drop(s.writer);
                let _ = std::fs::remove_file(&s.path);
            }
            return Ok(());
        }
        let Some(s) = self.spools.get_mut(&xid) else {
            return Ok(());
        };
        let Some(&cut) = s.first_offset.get(&subxid) else {
            return Ok(());
        };
        s.writer
            .flush()
            .map_err(|e| spool_err("writing a spill file", e))?;
        let file = s.writer.get_mut();
        file.set_len(cut)
            .map_err(|e| spool_err("truncating a spill file", e))?;
        file.seek(SeekFrom::Start(cut))
            .map_err(|e| spool_err("truncating a spill file", e))?;
        s.len = cut;
        s.first_offset.retain(|_, off| *off < cut);
        Ok(())
    }

    async fn replay<S: ChangeSink>(
        &mut self,
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: PgTimestamp,
        sink: &mut S,
    ) -> Result<()> {
        let Some(s) = self.spools.remove(&xid) else {
            // A streamed transaction with no spooled change (everything rolled back to a
            // savepoint, or nothing published) still commits in order.
            sink.begin(commit_lsn, commit_time, xid).await?;
            return sink.commit(commit_lsn, end_lsn, commit_time).await;
        };
        let mut file = s
            .writer
            .into_inner()
            .map_err(|e| spool_err("writing a spill file", e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| spool_err("reading a spill file", e))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file.take(s.len));
        sink.begin(commit_lsn, commit_time, xid).await?;
        let ctx = Context {
            in_stream: true,
            parallel_abort: self.parallel_abort,
        };
        let mut len = [0u8; 4];
        loop {
            match reader.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(spool_err("reading a spill file", e)),
            }
            let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
            reader
                .read_exact(&mut buf)
                .map_err(|e| spool_err("reading a spill file", e))?;
            let msg = pgoutput::decode(&Bytes::from(buf), ctx)
                .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
            self.dispatch(msg, sink).await?;
        }
        drop(reader);
        let _ = std::fs::remove_file(&s.path);
        sink.commit(commit_lsn, end_lsn, commit_time).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the assembler hands on.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl ChangeSink for Log {
        async fn begin(&mut self, lsn: Lsn, _t: PgTimestamp, xid: u32) -> Result<()> {
            self.0.push(format!("begin {xid} {lsn}"));
            Ok(())
        }
        async fn change(&mut self, c: Change) -> Result<()> {
            self.0.push(match c {
                Change::Insert { new, .. } => match &new.0[0] {
                    pgoutput::Value::Text(b) => format!("insert {}", String::from_utf8_lossy(b)),
                    _ => "insert ?".into(),
                },
                Change::Update { .. } => "update".into(),
                Change::Delete { .. } => "delete".into(),
                Change::Truncate { .. } => "truncate".into(),
            });
            Ok(())
        }
        async fn message(&mut self, _t: bool, prefix: &str, _c: &Bytes, _l: Lsn) -> Result<()> {
            self.0.push(format!("message {prefix}"));
            Ok(())
        }
        async fn commit(&mut self, lsn: Lsn, _e: Lsn, _t: PgTimestamp) -> Result<()> {
            self.0.push(format!("commit {lsn}"));
            Ok(())
        }
    }

    fn rel(xid: Option<u32>) -> Bytes {
        let mut v = vec![b'R'];
        if let Some(x) = xid {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(b"public\0t\0d");
        v.extend_from_slice(&1i16.to_be_bytes());
        v.push(1);
        v.extend_from_slice(b"id\0");
        v.extend_from_slice(&23u32.to_be_bytes());
        v.extend_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(v)
    }

    fn insert(xid: Option<u32>, val: &str) -> Bytes {
        let mut v = vec![b'I'];
        if let Some(x) = xid {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(&1u32.to_be_bytes());
        v.push(b'N');
        v.extend_from_slice(&1i16.to_be_bytes());
        v.push(b't');
        v.extend_from_slice(&(val.len() as i32).to_be_bytes());
        v.extend_from_slice(val.as_bytes());
        Bytes::from(v)
    }

    fn begin(lsn: u64, xid: u32) -> Bytes {
        Bytes::from(
            [
                &b"B"[..],
                &lsn.to_be_bytes(),
                &0i64.to_be_bytes(),
                &xid.to_be_bytes(),
            ]
            .concat(),
        )
    }

    fn commit(lsn: u64) -> Bytes {
        Bytes::from(
            [
                &b"C"[..],
                &[0],
                &lsn.to_be_bytes(),
                &(lsn + 8).to_be_bytes(),
                &0i64.to_be_bytes(),
            ]
            .concat(),
        )
    }

    fn stream_start(xid: u32, first: bool) -> Bytes {
        Bytes::from([&b"S"[..], &xid.to_be_bytes(), &[first as u8]].concat())
    }

    fn stream_commit(xid: u32, lsn: u64) -> Bytes {
        Bytes::from(
            [
                &b"c"[..],
                &xid.to_be_bytes(),
                &[0],
                &lsn.to_be_bytes(),
                &(lsn + 8).to_be_bytes(),
                &0i64.to_be_bytes(),
            ]
            .concat(),
        )
    }

    fn stream_abort(xid: u32, sub: u32) -> Bytes {
        Bytes::from([&b"A"[..], &xid.to_be_bytes(), &sub.to_be_bytes()].concat())
    }

    #[tokio::test]
    async fn streamed_transactions_are_replayed_at_commit_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Assembler::new(dir.path().to_path_buf()).unwrap();
        let mut log = Log::default();
        let msgs = vec![
            stream_start(7, true),
            rel(Some(7)),
            insert(Some(7), "a"),
            insert(Some(9), "sub9-dropped"),
            insert(Some(10), "sub10-dropped-too"),
            Bytes::from_static(b"E"),
            rel(None),
            begin(100, 8),
            insert(None, "x"),
            commit(100),
            // ROLLBACK TO SAVEPOINT: subtransaction 9 and its child 10 are gone. The abort is
            // sent when it is decoded, before any later change of the transaction.
            stream_abort(7, 9),
            stream_start(7, false),
            insert(Some(7), "b"),
            insert(Some(11), "c"),
            Bytes::from_static(b"E"),
            stream_commit(7, 200),
            stream_start(12, true),
            insert(Some(12), "never"),
            Bytes::from_static(b"E"),
            stream_abort(12, 12),
        ];
        for m in msgs {
            a.process(m, &mut log).await.unwrap();
        }
        assert_eq!(
            log.0,
            vec![
                "begin 8 0/64",
                "insert x",
                "commit 0/64",
                "begin 7 0/C8",
                "insert a",
                "insert b",
                "insert c",
                "commit 0/C8",
            ],
            "the subtransaction abort removed sub 9 and its child, the aborted stream left nothing"
        );
        assert_eq!(a.spooled(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spill files are removed"
        );
    }

    /// A table's Relation is sent again by every decoding session: the same shape keeps its
    /// `RelationRef` (the applier keeps its buffered changes), a new shape replaces it.
    #[tokio::test]
    async fn the_same_relation_again_keeps_its_reference() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Assembler::new(dir.path().to_path_buf()).unwrap();
        let mut log = Log::default();
        a.process(rel(None), &mut log).await.unwrap();
        let first = a.relation(1).unwrap().clone();
        a.process(rel(None), &mut log).await.unwrap();
        assert!(Arc::ptr_eq(&first, a.relation(1).unwrap()));
        let mut renamed = rel(None).to_vec();
        let at = renamed.windows(3).position(|w| w == b"id\0").unwrap();
        renamed[at..at + 2].copy_from_slice(b"nr");
        a.process(Bytes::from(renamed), &mut log).await.unwrap();
        let now = a.relation(1).unwrap();
        assert!(!Arc::ptr_eq(&first, now));
        assert_eq!(now.columns[0].name, "nr");
    }

    #[tokio::test]
    async fn changes_before_their_relation_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Assembler::new(dir.path().to_path_buf()).unwrap();
        let mut log = Log::default();
        a.process(begin(1, 1), &mut log).await.unwrap();
        assert!(a.process(insert(None, "x"), &mut log).await.is_err());
    }
}
