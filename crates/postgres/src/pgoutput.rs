//! Decoding the `pgoutput` logical replication protocol.
//!
//! A pure function from the bytes of one message (the payload of an XLogData frame) to a typed
//! [`Message`]: no I/O, no allocation beyond names, values as zero-copy slices of the input.
//! It never panics, whatever the input (it is fuzzed by a property test below); malformed input
//! is an error that names the message type and the byte offset.
//!
//! # Protocol versions
//!
//! - **v1** (PostgreSQL 10+): `Begin`, `Commit`, `Origin`, `Relation`, `Type`, `Insert`,
//!   `Update`, `Delete`, `Truncate` (11+), and `Message` (14+, with `messages 'true'`).
//! - **v2** (14+, `streaming 'on'`): a large transaction arrives in blocks between
//!   `Stream Start` and `Stream Stop` before it commits, ended by `Stream Commit` or
//!   `Stream Abort`. Inside a block, every data message carries the (sub)transaction's xid right
//!   after its type byte; outside a block it does not. The caller knows which case applies
//!   (it saw the `Stream Start`), so it passes [`Context::in_stream`].
//! - **v4** (16+, `streaming 'parallel'`): `Stream Abort` additionally carries the abort LSN
//!   and time — only in that streaming mode, hence [`Context::parallel_abort`].
//!
//! Two-phase messages (v3, `two_phase 'on'`) are not requested by pgtide and are reported as
//! unexpected rather than silently skipped.
//!
//! # Tuples
//!
//! Each column of a tuple is `n` (NULL), `u` (an unchanged TOASTed value that the server did
//! not send: the applier must leave that column alone), `t` (text format) or `b` (binary).
//! The old tuple of an update or delete is `K` (only the replica identity key columns; others
//! are NULL) or `O` (the whole old row, under `REPLICA IDENTITY FULL`).

use bytes::Bytes;
use pgtide_core::lsn::Lsn;
use std::fmt;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
pub type PgTimestamp = i64;

/// One column value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that was not sent.
    UnchangedToast,
    /// The value in the type's text form.
    Text(Bytes),
    /// The value in the type's binary form.
    Binary(Bytes),
}

/// A tuple's values, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Value>);

/// The old row sent with an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Replica identity key columns only (the others are [`Value::Null`]).
    Key(Tuple),
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

impl OldTuple {
    /// The values, whichever kind.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// A column of a `Relation` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID on the source.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

/// A `Relation` message: the shape of a table, sent before its first change (and again when
/// it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID on the source.
    pub oid: u32,
    /// Schema (`pg_catalog` is sent as an empty string).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `REPLICA IDENTITY` setting: `d`efault, `n`othing, `f`ull or `i`ndex.
    pub replica_identity: u8,
    /// Published columns in order.
    pub columns: Vec<RelationColumn>,
}

/// A decoded pgoutput message. `xid` fields are present only inside a streamed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Start of a transaction.
    Begin {
        /// LSN of the commit record (the transaction's position in commit order).
        final_lsn: Lsn,
        /// Commit time.
        commit_time: PgTimestamp,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction.
    Commit {
        /// Flags (unused, 0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past the commit record.
        end_lsn: Lsn,
        /// Commit time.
        commit_time: PgTimestamp,
    },
    /// The transaction came from another replication origin.
    Origin {
        /// Commit LSN on the origin server.
        lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// A table's shape.
    Relation {
        /// Streamed (sub)transaction id.
        xid: Option<u32>,
        /// The table.
        relation: Relation,
    },
    /// A type's name (sent for non-built-in column types).
    Type {
        /// Streamed (sub)transaction id.
        xid: Option<u32>,
        /// Type OID.
        oid: u32,
        /// Schema.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A row was inserted.
    Insert {
        /// Streamed (sub)transaction id.
        xid: Option<u32>,
        /// Table OID.
        relation: u32,
        /// The new row.
        new: Tuple,
    },
    /// A row was updated.
    Update {
        /// Streamed (sub)transaction id.
        xid: Option<u32>,
        /// Table OID.
        relation: u32,
        /// The old key or row, when the key changed or identity is FULL.
        old: Option<OldTuple>,
        /// The new row.
        new: Tuple,
    },
    /// A row was deleted.
    Delete {
        /// Streamed (sub)transaction id.
        xid: Option<u32>,
        /// Table OID.
        relation: u32,
        /// The old key or row.
        old: OldTuple,
    },
    /// Tables were truncated.
    Truncate {
        /// Streamed (sub)transaction id.
        xid: Option<u32>,
        /// `CASCADE` was given.
        cascade: bool,
        /// `RESTART IDENTITY` was given.
        restart_identity: bool,
        /// Table OIDs.
        relations: Vec<u32>,
    },
    /// A `pg_logical_emit_message` record.
    LogicalMessage {
        /// Streamed (sub)transaction id.
        xid: Option<u32>,
        /// Emitted inside a transaction (applied with it) rather than immediately.
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Prefix chosen by the emitter.
        prefix: String,
        /// Content.
        content: Bytes,
    },
    /// A block of a large in-progress transaction starts.
    StreamStart {
        /// Top-level transaction id.
        xid: u32,
        /// First block of this transaction.
        first_segment: bool,
    },
    /// The current block ends.
    StreamStop,
    /// A streamed transaction committed.
    StreamCommit {
        /// Top-level transaction id.
        xid: u32,
        /// Flags (unused, 0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past the commit record.
        end_lsn: Lsn,
        /// Commit time.
        commit_time: PgTimestamp,
    },
    /// A streamed transaction, or one of its subtransactions, aborted.
    StreamAbort {
        /// Top-level transaction id.
        xid: u32,
        /// The aborted subtransaction (equal to `xid` when the whole transaction aborted).
        subxid: u32,
        /// Abort LSN and time (`streaming 'parallel'` only).
        abort: Option<(Lsn, PgTimestamp)>,
    },
}

/// What the decoder needs to know beyond the bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// Between `Stream Start` and `Stream Stop`: data messages carry an xid.
    pub in_stream: bool,
    /// `streaming 'parallel'` (protocol v4): `Stream Abort` carries LSN and time.
    pub parallel_abort: bool,
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The message type byte (or 0 for an empty message).
    pub tag: u8,
    /// Offset where decoding failed.
    pub offset: usize,
    /// What was wrong.
    pub problem: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.tag.is_ascii_graphic() {
            (self.tag as char).to_string()
        } else {
            format!("0x{:02x}", self.tag)
        };
        write!(
            f,
            "malformed pgoutput message '{tag}' at byte {}: {}",
            self.offset, self.problem
        )
    }
}

impl std::error::Error for DecodeError {}

struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    tag: u8,
}

impl Reader<'_> {
    fn err(&self, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            tag: self.tag,
            offset: self.pos,
            problem: problem.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                self.err(format!(
                    "needs {n} more bytes, {} left",
                    self.data.len() - self.pos
                ))
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.i32()? as u32)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64()? as u64))
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.data.slice(start..start + n))
    }

    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("string without terminating NUL"))?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| self.err("string is not UTF-8"))?
            .to_string();
        self.pos += len + 1;
        Ok(s)
    }

    fn xid(&mut self, ctx: &Context) -> Result<Option<u32>, DecodeError> {
        if ctx.in_stream {
            Ok(Some(self.u32()?))
        } else {
            Ok(None)
        }
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.err(format!("negative column count {n}")));
        }
        // Each column takes at least one byte: cap the allocation by what is left.
        let mut values = Vec::with_capacity((n as usize).min(self.data.len() - self.pos));
        for _ in 0..n {
            let kind = self.u8()?;
            values.push(match kind {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(self.err(format!("negative value length {len}")));
                    }
                    let v = self.bytes(len as usize)?;
                    if kind == b't' {
                        Value::Text(v)
                    } else {
                        Value::Binary(v)
                    }
                }
                other => return Err(self.err(format!("unknown column kind 0x{other:02x}"))),
            });
        }
        Ok(Tuple(values))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.data.len() {
            Ok(())
        } else {
            Err(self.err(format!(
                "{} unexpected trailing bytes",
                self.data.len() - self.pos
            )))
        }
    }
}

/// Decode one pgoutput message.
pub fn decode(data: &Bytes, ctx: Context) -> Result<Message, DecodeError> {
    let tag = *data.first().ok_or(DecodeError {
        tag: 0,
        offset: 0,
        problem: "empty message".into(),
    })?;
    let mut r = Reader { data, pos: 1, tag };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        },
        b'O' => Message::Origin {
            lsn: r.lsn()?,
            name: r.string()?,
        },
        b'R' => {
            let xid = r.xid(&ctx)?;
            let oid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            if n < 0 {
                return Err(r.err(format!("negative column count {n}")));
            }
            let mut columns = Vec::with_capacity((n as usize).min(data.len()));
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation {
                xid,
                relation: Relation {
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                },
            }
        }
        b'Y' => Message::Type {
            xid: r.xid(&ctx)?,
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let xid = r.xid(&ctx)?;
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => {}
                other => {
                    return Err(r.err(format!(
                        "expected 'N' before the new tuple, got 0x{other:02x}"
                    )));
                }
            }
            Message::Insert {
                xid,
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let xid = r.xid(&ctx)?;
            let relation = r.u32()?;
            let mut old = None;
            let mut marker = r.u8()?;
            if marker == b'K' || marker == b'O' {
                let t = r.tuple()?;
                old = Some(if marker == b'K' {
                    OldTuple::Key(t)
                } else {
                    OldTuple::Full(t)
                });
                marker = r.u8()?;
            }
            if marker != b'N' {
                return Err(r.err(format!(
                    "expected 'N' before the new tuple, got 0x{marker:02x}"
                )));
            }
            Message::Update {
                xid,
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let xid = r.xid(&ctx)?;
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => {
                    return Err(r.err(format!(
                        "expected 'K' or 'O' before the old tuple, got 0x{other:02x}"
                    )));
                }
            };
            Message::Delete { xid, relation, old }
        }
        b'T' => {
            let xid = r.xid(&ctx)?;
            let n = r.i32()?;
            if n < 0 {
                return Err(r.err(format!("negative relation count {n}")));
            }
            let options = r.u8()?;
            let mut relations = Vec::with_capacity((n as usize).min(data.len() / 4));
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate {
                xid,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            }
        }
        b'M' => {
            let xid = r.xid(&ctx)?;
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.string()?;
            let len = r.i32()?;
            if len < 0 {
                return Err(r.err(format!("negative content length {len}")));
            }
            Message::LogicalMessage {
                xid,
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(len as usize)?,
            }
        }
        b'S' => Message::StreamStart {
            xid: r.u32()?,
            first_segment: r.u8()? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        },
        b'A' => {
            let xid = r.u32()?;
            let subxid = r.u32()?;
            let abort = if ctx.parallel_abort {
                Some((r.lsn()?, r.i64()?))
            } else {
                None
            };
            Message::StreamAbort { xid, subxid, abort }
        }
        b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(r.err("two-phase commit message, but pgtide does not request two_phase"));
        }
        other => {
            return Err(DecodeError {
                tag: other,
                offset: 0,
                problem: "unknown message type".into(),
            });
        }
    };
    r.finish()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lsn(v: u64) -> [u8; 8] {
        v.to_be_bytes()
    }

    fn build(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    #[test]
    fn begin_commit_and_relation() {
        let m = decode(
            &build(&[
                b"B",
                &lsn(0x1_0000_0010),
                &42i64.to_be_bytes(),
                &7u32.to_be_bytes(),
            ]),
            Context::default(),
        )
        .unwrap();
        assert_eq!(
            m,
            Message::Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: 42,
                xid: 7
            }
        );
        let m = decode(
            &build(&[b"C", &[0], &lsn(10), &lsn(20), &5i64.to_be_bytes()]),
            Context::default(),
        )
        .unwrap();
        assert_eq!(
            m,
            Message::Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_time: 5
            }
        );
        let rel = build(&[
            b"R",
            &16384u32.to_be_bytes(),
            b"public\0",
            b"My Table\0",
            b"d",
            &2i16.to_be_bytes(),
            &[1],
            b"id\0",
            &23u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &[0],
            b"v\0",
            &25u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
        ]);
        match decode(&rel, Context::default()).unwrap() {
            Message::Relation {
                xid: None,
                relation,
            } => {
                assert_eq!(relation.name, "My Table");
                assert!(relation.columns[0].key && !relation.columns[1].key);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tuples_with_null_unchanged_text_and_binary() {
        let upd = build(&[
            b"U",
            &9u32.to_be_bytes(),
            &99u32.to_be_bytes(),
            b"K",
            &1i16.to_be_bytes(),
            b"t",
            &1i32.to_be_bytes(),
            b"5",
            b"N",
            &4i16.to_be_bytes(),
            b"t",
            &1i32.to_be_bytes(),
            b"6",
            b"n",
            b"u",
            b"b",
            &2i32.to_be_bytes(),
            &[0, 1],
        ]);
        let m = decode(
            &upd,
            Context {
                in_stream: true,
                parallel_abort: false,
            },
        )
        .unwrap();
        assert_eq!(
            m,
            Message::Update {
                xid: Some(9),
                relation: 99,
                old: Some(OldTuple::Key(Tuple(vec![Value::Text(Bytes::from_static(
                    b"5"
                ))]))),
                new: Tuple(vec![
                    Value::Text(Bytes::from_static(b"6")),
                    Value::Null,
                    Value::UnchangedToast,
                    Value::Binary(Bytes::from_static(&[0, 1])),
                ]),
            }
        );
        // The same bytes outside a stream block do not parse as an update with an xid.
        assert!(decode(&upd, Context::default()).is_err());
    }

    #[test]
    fn truncate_message_and_stream_control() {
        let t = build(&[
            b"T",
            &2i32.to_be_bytes(),
            &[3],
            &1u32.to_be_bytes(),
            &2u32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&t, Context::default()).unwrap(),
            Message::Truncate {
                xid: None,
                cascade: true,
                restart_identity: true,
                relations: vec![1, 2]
            }
        );
        let m = build(&[b"M", &[1], &lsn(5), b"pgtide\0", &2i32.to_be_bytes(), b"hi"]);
        assert!(matches!(
            decode(&m, Context::default()).unwrap(),
            Message::LogicalMessage {
                transactional: true,
                ..
            }
        ));
        assert_eq!(
            decode(
                &build(&[b"S", &7u32.to_be_bytes(), &[1]]),
                Context::default()
            )
            .unwrap(),
            Message::StreamStart {
                xid: 7,
                first_segment: true
            }
        );
        assert_eq!(
            decode(&build(&[b"E"]), Context::default()).unwrap(),
            Message::StreamStop
        );
        let a = build(&[b"A", &7u32.to_be_bytes(), &8u32.to_be_bytes()]);
        assert_eq!(
            decode(&a, Context::default()).unwrap(),
            Message::StreamAbort {
                xid: 7,
                subxid: 8,
                abort: None
            }
        );
        let a4 = build(&[
            b"A",
            &7u32.to_be_bytes(),
            &8u32.to_be_bytes(),
            &lsn(3),
            &4i64.to_be_bytes(),
        ]);
        assert_eq!(
            decode(
                &a4,
                Context {
                    in_stream: false,
                    parallel_abort: true
                }
            )
            .unwrap(),
            Message::StreamAbort {
                xid: 7,
                subxid: 8,
                abort: Some((Lsn(3), 4))
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors_with_position() {
        assert!(decode(&Bytes::new(), Context::default()).is_err());
        let e = decode(&build(&[b"B", &[1, 2]]), Context::default()).unwrap_err();
        assert_eq!(e.tag, b'B');
        assert!(e.to_string().contains("'B'"), "{e}");
        assert!(
            decode(&build(&[b"E", b"x"]), Context::default()).is_err(),
            "trailing bytes"
        );
        assert!(decode(&build(&[b"Z"]), Context::default()).is_err());
        assert!(
            decode(&build(&[b"P"]), Context::default()).is_err(),
            "two-phase is refused"
        );
        let huge = build(&[
            b"I",
            &1u32.to_be_bytes(),
            b"N",
            &1i16.to_be_bytes(),
            b"t",
            &i32::MAX.to_be_bytes(),
        ]);
        assert!(decode(&huge, Context::default()).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_any_input(data in proptest::collection::vec(any::<u8>(), 0..512), in_stream in any::<bool>(), parallel in any::<bool>()) {
            let _ = decode(&Bytes::from(data), Context { in_stream, parallel_abort: parallel });
        }

        #[test]
        fn never_panics_on_mutated_valid_messages(
            pos in 0usize..64, byte in any::<u8>(), cut in 0usize..64, in_stream in any::<bool>()
        ) {
            let mut v = [&b"U"[..], &9u32.to_be_bytes(), &99u32.to_be_bytes(), b"O", &2i16.to_be_bytes(), b"t",
                &3i32.to_be_bytes(), b"abc", b"n", b"N", &2i16.to_be_bytes(), b"u", b"b", &1i32.to_be_bytes(), b"z"].concat();
            if pos < v.len() { v[pos] = byte; }
            v.truncate(v.len().saturating_sub(cut));
            let _ = decode(&Bytes::from(v), Context { in_stream, parallel_abort: false });
        }
    }
}
