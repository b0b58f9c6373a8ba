//! Streaming COPY data from a source connection into a target connection.
//!
//! The bytes of `COPY ... TO STDOUT` go into `COPY ... FROM STDIN` unchanged: no row is
//! decoded, and at most one buffer (`FLUSH_BYTES`) per worker is held in memory, whatever the
//! table size. The server sends one CopyData message per row; writing each as its own message
//! would cost a channel hop and a protocol frame per row, so rows are gathered into buffers of
//! about 256 kB before they go to the target.
//!
//! Rows are counted on the way through, for progress and as a cross-check against the row
//! count the target reports at the end of the COPY. Text format ends every row with a newline
//! byte (newlines inside values are escaped as `\n`), so counting is a byte scan. Binary format
//! is a sequence of tuples, each a 16-bit field count followed by (32-bit length, bytes) per
//! field, after a 19-byte header, and ended by a field count of -1; [`BinaryRowCounter`] walks
//! those lengths without looking at values, across arbitrary message boundaries.

use crate::connect::classify;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use pgtide_core::{Error, ErrorKind, Result};
use tokio_postgres::Client;

/// Size at which gathered rows are handed to the target connection.
pub const FLUSH_BYTES: usize = 256 * 1024;

/// COPY wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `FORMAT binary`.
    Binary,
    /// `FORMAT text`.
    Text,
}

impl WireFormat {
    /// The COPY option text.
    pub fn copy_option(self) -> &'static str {
        match self {
            WireFormat::Binary => "FORMAT binary",
            WireFormat::Text => "FORMAT text",
        }
    }

    /// `binary` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            WireFormat::Binary => "binary",
            WireFormat::Text => "text",
        }
    }
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinState {
    /// Collecting the 19 header bytes.
    Header,
    /// Skipping the header extension area.
    SkipExtension(u64),
    /// Collecting a tuple's 2-byte field count.
    TupleStart,
    /// Collecting a field's 4-byte length; `u16` fields remain including this one.
    FieldLength(u16),
    /// Skipping a field's bytes; then `u16` fields remain after this one.
    FieldData(u64, u16),
    /// Trailer seen.
    Done,
}

/// Counts rows in a binary COPY stream without decoding values.
#[derive(Debug)]
pub struct BinaryRowCounter {
    state: BinState,
    acc: [u8; 19],
    have: usize,
    rows: u64,
}

impl Default for BinaryRowCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl BinaryRowCounter {
    /// A counter at the start of a stream.
    pub fn new() -> Self {
        BinaryRowCounter {
            state: BinState::Header,
            acc: [0; 19],
            have: 0,
            rows: 0,
        }
    }

    /// Rows seen so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// True once the trailer was seen.
    pub fn finished(&self) -> bool {
        self.state == BinState::Done
    }

    /// Gather up to `n` bytes into `acc`; true when `n` are there.
    fn gather(&mut self, data: &[u8], pos: &mut usize, n: usize) -> bool {
        let take = (n - self.have).min(data.len() - *pos);
        self.acc[self.have..self.have + take].copy_from_slice(&data[*pos..*pos + take]);
        self.have += take;
        *pos += take;
        if self.have == n {
            self.have = 0;
            true
        } else {
            false
        }
    }

    /// Walk whole tuples that lie entirely inside `data[pos..]` without going through the
    /// state machine; returns the position of the first tuple that is cut off (or the trailer).
    fn fast_tuples(&mut self, data: &[u8], mut pos: usize) -> std::result::Result<usize, String> {
        loop {
            let Some(head) = data.get(pos..pos + 2) else {
                return Ok(pos);
            };
            let n = i16::from_be_bytes([head[0], head[1]]);
            if n < 0 {
                return Ok(pos);
            }
            let mut p = pos + 2;
            for _ in 0..n {
                let Some(len) = data.get(p..p + 4) else {
                    return Ok(pos);
                };
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                if len < -1 {
                    return Err(format!("binary COPY field has length {len}"));
                }
                p += 4 + len.max(0) as usize;
                if p > data.len() {
                    return Ok(pos);
                }
            }
            self.rows += 1;
            pos = p;
        }
    }

    /// Feed the next piece of the stream.
    pub fn feed(&mut self, data: &[u8]) -> std::result::Result<(), String> {
        let mut pos = 0;
        while pos < data.len() {
            if self.state == BinState::TupleStart && self.have == 0 {
                pos = self.fast_tuples(data, pos)?;
                if pos >= data.len() {
                    break;
                }
            }
            match self.state {
                BinState::Header => {
                    if self.gather(data, &mut pos, 19) {
                        if &self.acc[..11] != SIGNATURE {
                            return Err(
                                "binary COPY data does not start with the PGCOPY signature".into(),
                            );
                        }
                        let ext = u32::from_be_bytes([
                            self.acc[15],
                            self.acc[16],
                            self.acc[17],
                            self.acc[18],
                        ]);
                        self.state = if ext == 0 {
                            BinState::TupleStart
                        } else {
                            BinState::SkipExtension(ext as u64)
                        };
                    }
                }
                BinState::SkipExtension(left) => {
                    let take = left.min((data.len() - pos) as u64);
                    pos += take as usize;
                    self.state = if take == left {
                        BinState::TupleStart
                    } else {
                        BinState::SkipExtension(left - take)
                    };
                }
                BinState::TupleStart => {
                    if self.gather(data, &mut pos, 2) {
                        let n = i16::from_be_bytes([self.acc[0], self.acc[1]]);
                        if n == -1 {
                            self.state = BinState::Done;
                        } else if n < 0 {
                            return Err(format!("binary COPY tuple has field count {n}"));
                        } else {
                            self.rows += 1;
                            self.state = if n == 0 {
                                BinState::TupleStart
                            } else {
                                BinState::FieldLength(n as u16)
                            };
                        }
                    }
                }
                BinState::FieldLength(left) => {
                    if self.gather(data, &mut pos, 4) {
                        let len = i32::from_be_bytes([
                            self.acc[0],
                            self.acc[1],
                            self.acc[2],
                            self.acc[3],
                        ]);
                        let after = left - 1;
                        self.state = if len == -1 {
                            if after == 0 {
                                BinState::TupleStart
                            } else {
                                BinState::FieldLength(after)
                            }
                        } else if len < 0 {
                            return Err(format!("binary COPY field has length {len}"));
                        } else if len == 0 {
                            if after == 0 {
                                BinState::TupleStart
                            } else {
                                BinState::FieldLength(after)
                            }
                        } else {
                            BinState::FieldData(len as u64, after)
                        };
                    }
                }
                BinState::FieldData(left, after) => {
                    let take = left.min((data.len() - pos) as u64);
                    pos += take as usize;
                    self.state = if take < left {
                        BinState::FieldData(left - take, after)
                    } else if after == 0 {
                        BinState::TupleStart
                    } else {
                        BinState::FieldLength(after)
                    };
                }
                BinState::Done => return Err("binary COPY data continues after the trailer".into()),
            }
        }
        Ok(())
    }
}

/// Counts rows of either format.
#[derive(Debug)]
pub enum RowCounter {
    /// Binary: walk the tuple framing.
    Binary(BinaryRowCounter),
    /// Text: count newline bytes.
    Text(u64),
}

impl RowCounter {
    /// A counter for `format`.
    pub fn new(format: WireFormat) -> Self {
        match format {
            WireFormat::Binary => RowCounter::Binary(BinaryRowCounter::new()),
            WireFormat::Text => RowCounter::Text(0),
        }
    }

    /// Feed bytes; errors on a malformed binary stream.
    pub fn feed(&mut self, data: &[u8]) -> std::result::Result<(), String> {
        match self {
            RowCounter::Binary(b) => b.feed(data),
            RowCounter::Text(n) => {
                *n += data.iter().filter(|&&b| b == b'\n').count() as u64;
                Ok(())
            }
        }
    }

    /// Rows seen so far.
    pub fn rows(&self) -> u64 {
        match self {
            RowCounter::Binary(b) => b.rows(),
            RowCounter::Text(n) => *n,
        }
    }

    /// True when the stream ended where a stream may end.
    pub fn complete(&self) -> bool {
        match self {
            RowCounter::Binary(b) => b.finished(),
            RowCounter::Text(_) => true,
        }
    }
}

/// What one piped COPY moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Rows (as counted in the stream and confirmed by the target).
    pub rows: u64,
    /// Bytes of COPY data.
    pub bytes: u64,
}

/// Pipe one COPY from `source` to `target`. `progress(bytes, rows)` is called with deltas after
/// each flush. `what` names the table/chunk in errors. The target COPY runs in whatever
/// transaction the caller opened; on error the caller must roll it back.
pub async fn pipe(
    source: &Client,
    target: &Client,
    source_sql: &str,
    target_sql: &str,
    format: WireFormat,
    what: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<CopyStats> {
    let sink = target
        .copy_in::<_, Bytes>(target_sql)
        .await
        .map_err(|e| classify(e, &format!("starting the COPY into the target for {what}")))?;
    let stream = source
        .copy_out(source_sql)
        .await
        .map_err(|e| classify(e, &format!("starting the COPY from the source for {what}")))?;
    futures::pin_mut!(sink);
    futures::pin_mut!(stream);
    let mut counter = RowCounter::new(format);
    let mut buf = BytesMut::with_capacity(FLUSH_BYTES + 64 * 1024);
    let (mut bytes, mut reported_rows) = (0u64, 0u64);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| classify(e, &format!("reading {what} from the source")))?;
        counter.feed(&piece).map_err(|m| {
            Error::new(
                ErrorKind::Internal,
                format!("reading {what} from the source: {m}"),
            )
        })?;
        buf.extend_from_slice(&piece);
        if buf.len() >= FLUSH_BYTES {
            let n = buf.len() as u64;
            sink.send(buf.split().freeze())
                .await
                .map_err(|e| classify(e, &format!("writing {what} to the target")))?;
            bytes += n;
            let rows = counter.rows();
            progress(n, rows - reported_rows);
            reported_rows = rows;
        }
    }
    if !counter.complete() {
        return Err(Error::new(
            ErrorKind::Connection,
            format!("the source's COPY stream for {what} ended before its trailer"),
        ));
    }
    let mut tail = 0;
    if !buf.is_empty() {
        tail = buf.len() as u64;
        sink.send(buf.split().freeze())
            .await
            .map_err(|e| classify(e, &format!("writing {what} to the target")))?;
        bytes += tail;
    }
    let loaded = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| classify(e, &format!("finishing the COPY of {what} into the target")))?;
    let rows = counter.rows();
    progress(tail, rows - reported_rows);
    if loaded != rows {
        return Err(Error::new(
            ErrorKind::Internal,
            format!("{what}: the source sent {rows} rows but the target loaded {loaded}"),
        ));
    }
    Ok(CopyStats { rows, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn binary_stream(rows: &[Vec<Option<Vec<u8>>>], ext: &[u8]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&(ext.len() as u32).to_be_bytes());
        v.extend_from_slice(ext);
        for r in rows {
            v.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        v.extend_from_slice(b);
                    }
                }
            }
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    #[test]
    fn counts_rows_with_nulls_and_empty_values() {
        let rows = vec![
            vec![Some(b"abc".to_vec()), None],
            vec![Some(vec![]), Some(vec![0xff; 300])],
            vec![],
        ];
        let s = binary_stream(&rows, b"");
        let mut c = BinaryRowCounter::new();
        c.feed(&s).unwrap();
        assert_eq!(c.rows(), 3);
        assert!(c.finished());
        assert!(c.feed(b"x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        let mut c = BinaryRowCounter::new();
        assert!(c.feed(b"not a copy stream at all").is_err());
    }

    proptest! {
        #[test]
        fn counting_is_independent_of_message_boundaries(
            rows in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 0..5),
                0..30),
            ext in proptest::collection::vec(any::<u8>(), 0..8),
            cuts in proptest::collection::vec(1usize..50, 0..40),
        ) {
            let s = binary_stream(&rows, &ext);
            let mut c = BinaryRowCounter::new();
            let mut pos = 0;
            for cut in cuts {
                let end = (pos + cut).min(s.len());
                c.feed(&s[pos..end]).unwrap();
                pos = end;
            }
            c.feed(&s[pos..]).unwrap();
            prop_assert_eq!(c.rows(), rows.len() as u64);
            prop_assert!(c.finished());
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut c = BinaryRowCounter::new();
            let _ = c.feed(&data);
        }
    }
}
