//! Framing of backend messages for the replication connection.
//!
//! Every backend message is a type byte, a 32-bit length (counting itself) and a body. We frame
//! and decode the few types a replication connection sees ourselves, because the protocol crate
//! we use for encoding does not know `CopyBothResponse` ('W'), the message that opens the
//! replication stream. Bodies are zero-copy slices of the read buffer. Like the pgoutput decoder,
//! nothing here panics on malformed input.

use bytes::{Buf, Bytes, BytesMut};
use pgtide_core::lsn::Lsn;

/// Largest message we accept (PostgreSQL's own limit for a message is 1 GB).
pub const MAX_MESSAGE: usize = 1 << 30;

/// A backend message, decoded as far as the replication connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Authentication request: the code and its payload.
    Auth(AuthRequest),
    /// `ErrorResponse`.
    Error(ServerError),
    /// `NoticeResponse`.
    Notice(ServerError),
    /// `ReadyForQuery`.
    ReadyForQuery,
    /// `RowDescription`: column names.
    RowDescription(Vec<String>),
    /// `DataRow`: values in text format.
    DataRow(Vec<Option<Bytes>>),
    /// `CommandComplete`.
    CommandComplete(String),
    /// `EmptyQueryResponse`.
    EmptyQuery,
    /// `CopyBothResponse`: the replication stream starts.
    CopyBoth,
    /// `CopyOutResponse` / `CopyInResponse` (unexpected here).
    CopyOther,
    /// `CopyData`.
    CopyData(Bytes),
    /// `CopyDone`.
    CopyDone,
    /// Anything else we skip (`ParameterStatus`, `BackendKeyData`, ...).
    Other(u8),
}

/// Authentication requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// Authenticated.
    Ok,
    /// Send the password in clear (over TLS, one hopes).
    Cleartext,
    /// Send `md5(md5(password || user) || salt)`.
    Md5([u8; 4]),
    /// SASL with these mechanisms.
    Sasl(Vec<String>),
    /// SASL continue with server data.
    SaslContinue(Bytes),
    /// SASL final with server data.
    SaslFinal(Bytes),
    /// A method pgtide does not implement (GSS, SSPI, Kerberos).
    Unsupported(i32),
}

/// The fields of an `ErrorResponse` or `NoticeResponse` that matter to us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    /// Severity (`ERROR`, `FATAL`, ...).
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Detail.
    pub detail: Option<String>,
    /// Hint.
    pub hint: Option<String>,
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed message from the server: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// Cut one message off the front of `buf`, if a whole one is there.
pub fn split_message(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(WireError(format!(
            "message '{}' has length {len}",
            tag as char
        )));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let mut msg = buf.split_to(len + 1);
    msg.advance(5);
    Ok(Some((tag, msg.freeze())))
}

struct Body {
    b: Bytes,
}

impl Body {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.b.remaining() < n {
            Err(WireError(format!(
                "body too short ({} < {n})",
                self.b.remaining()
            )))
        } else {
            Ok(())
        }
    }
    fn i16(&mut self) -> Result<i16, WireError> {
        self.need(2)?;
        Ok(self.b.get_i16())
    }
    fn i32(&mut self) -> Result<i32, WireError> {
        self.need(4)?;
        Ok(self.b.get_i32())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, WireError> {
        self.need(n)?;
        Ok(self.b.split_to(n))
    }
    fn cstr(&mut self) -> Result<String, WireError> {
        let end = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| WireError("string without NUL".into()))?;
        let s = String::from_utf8_lossy(&self.b[..end]).into_owned();
        self.b.advance(end + 1);
        Ok(s)
    }
}

fn error_fields(body: Bytes) -> Result<ServerError, WireError> {
    let mut b = Body { b: body };
    let mut e = ServerError::default();
    loop {
        b.need(1)?;
        let kind = b.b.get_u8();
        if kind == 0 {
            break;
        }
        let v = b.cstr()?;
        match kind {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    Ok(e)
}

/// Decode a framed message.
pub fn decode(tag: u8, body: Bytes) -> Result<Backend, WireError> {
    let mut b = Body { b: body };
    Ok(match tag {
        b'R' => {
            let code = b.i32()?;
            Backend::Auth(match code {
                0 => AuthRequest::Ok,
                3 => AuthRequest::Cleartext,
                5 => {
                    let s = b.bytes(4)?;
                    AuthRequest::Md5([s[0], s[1], s[2], s[3]])
                }
                10 => {
                    let mut mechs = Vec::new();
                    while b.b.remaining() > 0 && b.b[0] != 0 {
                        mechs.push(b.cstr()?);
                    }
                    AuthRequest::Sasl(mechs)
                }
                11 => AuthRequest::SaslContinue(b.b.clone()),
                12 => AuthRequest::SaslFinal(b.b.clone()),
                other => AuthRequest::Unsupported(other),
            })
        }
        b'E' => Backend::Error(error_fields(b.b)?),
        b'N' => Backend::Notice(error_fields(b.b)?),
        b'Z' => Backend::ReadyForQuery,
        b'T' => {
            let n = b.i16()?;
            let mut names = Vec::new();
            for _ in 0..n.max(0) {
                names.push(b.cstr()?);
                b.bytes(18)?; // table oid, attnum, type oid, typlen, typmod, format
            }
            Backend::RowDescription(names)
        }
        b'D' => {
            let n = b.i16()?;
            let mut values = Vec::new();
            for _ in 0..n.max(0) {
                let len = b.i32()?;
                values.push(if len < 0 {
                    None
                } else {
                    Some(b.bytes(len as usize)?)
                });
            }
            Backend::DataRow(values)
        }
        b'C' => Backend::CommandComplete(b.cstr()?),
        b'I' => Backend::EmptyQuery,
        b'W' => Backend::CopyBoth,
        b'H' | b'G' => Backend::CopyOther,
        b'd' => Backend::CopyData(b.b),
        b'c' => Backend::CopyDone,
        other => Backend::Other(other),
    })
}

/// What arrives inside the replication stream (`CopyData` payloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// `XLogData` ('w'): a piece of decoded WAL (one pgoutput message).
    XLogData {
        /// WAL position of the start of this data.
        wal_start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock (µs since 2000-01-01).
        send_time: i64,
        /// The pgoutput message.
        data: Bytes,
    },
    /// Primary keepalive ('k').
    Keepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock.
        send_time: i64,
        /// The server wants a status update now.
        reply_requested: bool,
    },
}

/// Decode a `CopyData` payload of the replication stream.
pub fn decode_stream(mut data: Bytes) -> Result<StreamMessage, WireError> {
    if data.is_empty() {
        return Err(WireError("empty CopyData in the replication stream".into()));
    }
    let kind = data.get_u8();
    match kind {
        b'w' => {
            if data.remaining() < 24 {
                return Err(WireError("XLogData header too short".into()));
            }
            Ok(StreamMessage::XLogData {
                wal_start: Lsn(data.get_u64()),
                wal_end: Lsn(data.get_u64()),
                send_time: data.get_i64(),
                data,
            })
        }
        b'k' => {
            if data.remaining() < 17 {
                return Err(WireError("keepalive too short".into()));
            }
            Ok(StreamMessage::Keepalive {
                wal_end: Lsn(data.get_u64()),
                send_time: data.get_i64(),
                reply_requested: data.get_u8() == 1,
            })
        }
        other => Err(WireError(format!(
            "unknown replication message 0x{other:02x}"
        ))),
    }
}

/// Encode a standby status update ('r') for the server.
pub fn status_update(write: Lsn, flush: Lsn, apply: Lsn, now: i64, reply: bool) -> Bytes {
    let mut v = Vec::with_capacity(34);
    v.push(b'r');
    v.extend_from_slice(&write.0.to_be_bytes());
    v.extend_from_slice(&flush.0.to_be_bytes());
    v.extend_from_slice(&apply.0.to_be_bytes());
    v.extend_from_slice(&now.to_be_bytes());
    v.push(reply as u8);
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_and_decodes_messages() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        buf.extend_from_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        buf.extend_from_slice(&[b'd', 0, 0]);
        let (t, b) = split_message(&mut buf).unwrap().unwrap();
        assert_eq!(decode(t, b).unwrap(), Backend::ReadyForQuery);
        let (t, b) = split_message(&mut buf).unwrap().unwrap();
        assert_eq!(decode(t, b).unwrap(), Backend::CopyBoth);
        assert_eq!(
            split_message(&mut buf).unwrap(),
            None,
            "a partial message waits for more bytes"
        );
    }

    #[test]
    fn errors_keep_code_message_and_hint() {
        let body = Bytes::from_static(
            b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0Htry again\0\0",
        );
        let Backend::Error(e) = decode(b'E', body).unwrap() else {
            panic!()
        };
        assert_eq!((e.code.as_str(), e.severity.as_str()), ("28P01", "FATAL"));
        assert_eq!(e.hint.as_deref(), Some("try again"));
    }

    #[test]
    fn stream_messages() {
        let mut v = vec![b'w'];
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&2u64.to_be_bytes());
        v.extend_from_slice(&3i64.to_be_bytes());
        v.extend_from_slice(b"B...");
        match decode_stream(Bytes::from(v)).unwrap() {
            StreamMessage::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => {
                assert_eq!((wal_start, wal_end), (Lsn(1), Lsn(2)));
                assert_eq!(&data[..], b"B...");
            }
            other => panic!("{other:?}"),
        }
        let s = status_update(Lsn(1), Lsn(2), Lsn(3), 4, true);
        assert_eq!(s.len(), 34);
        assert_eq!(s[0], b'r');
        assert!(split_message(&mut BytesMut::from(&[b'X', 0, 0, 0, 1][..])).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some((t, b))) = split_message(&mut buf) {
                let _ = decode(t, b);
            }
            let _ = decode_stream(Bytes::from(data));
        }
    }
}
