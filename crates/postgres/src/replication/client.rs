//! A thin client for PostgreSQL's replication protocol.
//!
//! tokio-postgres cannot open a replication connection (a normal startup with
//! `replication=database` whose `START_REPLICATION` switches the connection into CopyBoth mode),
//! so pgtide speaks that part of the protocol itself: startup and authentication (cleartext,
//! MD5, SCRAM-SHA-256 from `postgres-protocol`), TLS through the same rustls configuration as
//! every other connection (so `sslmode`, `sslrootcert` and client certificates behave alike),
//! the simple query protocol for replication commands, and the stream itself.
//!
//! ```text
//!   client                                   server (walsender)
//!   StartupMessage(replication=database) ──►
//!                                        ◄── Authentication*, ParameterStatus*, ReadyForQuery
//!   Query(CREATE_REPLICATION_SLOT ...)   ──►
//!                                        ◄── RowDescription, DataRow, CommandComplete, ReadyForQuery
//!   Query(START_REPLICATION ...)         ──►
//!                                        ◄── CopyBothResponse
//!                                        ◄── CopyData('w' XLogData | 'k' keepalive) ...
//!   CopyData('r' standby status update)  ──►   (at least every wal_sender_timeout / 2)
//! ```
//!
//! Reading is cancel-safe (bytes go into our buffer before they are parsed), so the stream
//! loop can `select!` between the next message and its timers.

use super::wire::{self, AuthRequest, Backend, ServerError, StreamMessage};
use crate::connect::{Side, classify_server_error};
use bytes::{Bytes, BytesMut};
use pgtide_core::endpoint::{ConnUrl, Host, SslMode};
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, ErrorKind, Result};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open replication connection (before or during streaming).
pub struct ReplicationClient {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    what: String,
    server_version: u32,
}

/// A slot created with `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    /// Slot name.
    pub name: String,
    /// The LSN from which the slot streams: every transaction committing after it.
    pub consistent_point: Lsn,
    /// The exported snapshot, valid until this connection runs its next command.
    pub snapshot: Option<String>,
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Connection, format!("{what}: {e}"))
        .with_hint("check that the server is running and reachable; pgtide reconnects where it can")
}

fn wire_err(what: &str, e: wire::WireError) -> Error {
    Error::new(ErrorKind::Connection, format!("{what}: {e}"))
}

fn server_err(what: &str, e: &ServerError) -> Error {
    classify_server_error(
        &e.code,
        &e.message,
        e.detail.as_deref(),
        e.hint.as_deref(),
        what,
    )
}

impl ReplicationClient {
    /// Connect with `replication=database` and authenticate.
    pub async fn connect(url: &ConnUrl, side: Side) -> Result<Self> {
        Self::connect_with_options(url, side, "").await
    }

    /// Connect with session settings (`-c name=value ...`, the startup packet's `options`).
    pub async fn connect_with_options(url: &ConnUrl, side: Side, options: &str) -> Result<Self> {
        let what = format!("cannot open a replication connection to the {side} {url}");
        let timeout = Duration::from_secs(url.connect_timeout.unwrap_or(15));
        let io: Box<dyn Io> = match &url.host {
            Host::Socket(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", url.port));
                let s = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(&path))
                    .await
                    .map_err(|_| Error::new(ErrorKind::Connection, format!("{what}: timed out")))?
                    .map_err(|e| io_err(&what, e))?;
                Box::new(s)
            }
            Host::Tcp(host) => {
                let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), url.port)))
                    .await
                    .map_err(|_| {
                        Error::new(ErrorKind::Connection, format!("{what}: timed out after {}s", timeout.as_secs()))
                            .with_hint("check that the host is reachable and the port is open (firewall, security group)")
                    })?
                    .map_err(|e| io_err(&what, e))?;
                let _ = tcp.set_nodelay(true);
                Self::maybe_tls(tcp, url, host, &what).await?
            }
        };
        let mut c = ReplicationClient {
            io,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::new(),
            what,
            server_version: 0,
        };
        c.startup(url, options).await?;
        Ok(c)
    }

    async fn maybe_tls(
        mut tcp: tokio::net::TcpStream,
        url: &ConnUrl,
        host: &str,
        what: &str,
    ) -> Result<Box<dyn Io>> {
        let Some(config) = crate::tls::client_config(url)? else {
            return Ok(Box::new(tcp));
        };
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await.map_err(|e| io_err(what, e))?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| io_err(what, e))?;
        match answer[0] {
            b'S' => {
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                        Error::new(
                            ErrorKind::Config,
                            format!("{what}: host {host:?} is not a valid TLS server name: {e}"),
                        )
                    })?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Prerequisite,
                            format!("{what}: TLS handshake failed: {e}"),
                        )
                        .with_hint(
                            "check sslmode and the certificates (sslrootcert, sslcert, sslkey)",
                        )
                    })?;
                Ok(Box::new(tls))
            }
            b'N' if url.sslmode == SslMode::Prefer => Ok(Box::new(tcp)),
            b'N' => Err(Error::new(
                ErrorKind::Prerequisite,
                format!("{what}: the server does not accept TLS connections"),
            )
            .with_hint("enable ssl on the server, or use sslmode=prefer or disable")),
            other => Err(Error::new(
                ErrorKind::Connection,
                format!("{what}: unexpected answer 0x{other:02x} to the TLS request"),
            )),
        }
    }

    async fn startup(&mut self, url: &ConnUrl, options: &str) -> Result<()> {
        let app = url
            .application_name
            .clone()
            .unwrap_or_else(|| "pgtide".into());
        let mut params = vec![
            ("user", url.user.as_str()),
            ("database", url.database.as_str()),
            ("replication", "database"),
            ("application_name", app.as_str()),
            ("client_encoding", "UTF8"),
        ];
        if !options.is_empty() {
            params.push(("options", options));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| io_err(&self.what, e))?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_backend().await? {
                Backend::Auth(AuthRequest::Ok) => {}
                Backend::Auth(AuthRequest::Cleartext) => {
                    let pw = self.password(url)?;
                    frontend::password_message(pw.as_bytes(), &mut self.wbuf)
                        .map_err(|e| io_err(&self.what, e))?;
                    self.flush().await?;
                }
                Backend::Auth(AuthRequest::Md5(salt)) => {
                    let pw = self.password(url)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        url.user.as_bytes(),
                        pw.as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| io_err(&self.what, e))?;
                    self.flush().await?;
                }
                Backend::Auth(AuthRequest::Sasl(mechanisms)) => {
                    if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(Error::new(
                            ErrorKind::Auth,
                            format!(
                                "{}: the server offers only SASL mechanisms {mechanisms:?}",
                                self.what
                            ),
                        )
                        .with_hint("allow scram-sha-256 for this user in pg_hba.conf"));
                    }
                    let pw = self.password(url)?;
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut self.wbuf)
                        .map_err(|e| io_err(&self.what, e))?;
                    scram = Some(s);
                    self.flush().await?;
                }
                Backend::Auth(AuthRequest::SaslContinue(data)) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        Error::new(
                            ErrorKind::Auth,
                            format!("{}: unexpected SASL message", self.what),
                        )
                    })?;
                    s.update(&data).map_err(|e| {
                        Error::new(ErrorKind::Auth, format!("{}: SCRAM failed: {e}", self.what))
                    })?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)
                        .map_err(|e| io_err(&self.what, e))?;
                    self.flush().await?;
                }
                Backend::Auth(AuthRequest::SaslFinal(data)) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        Error::new(
                            ErrorKind::Auth,
                            format!("{}: unexpected SASL message", self.what),
                        )
                    })?;
                    s.finish(&data).map_err(|e| {
                        Error::new(
                            ErrorKind::Auth,
                            format!("{}: the server's SCRAM proof is wrong: {e}", self.what),
                        )
                    })?;
                }
                Backend::Auth(AuthRequest::Unsupported(code)) => {
                    return Err(Error::new(ErrorKind::Auth, format!("{}: authentication method {code} is not supported", self.what))
                        .with_hint("use password, md5 or scram-sha-256 authentication for this user in pg_hba.conf"));
                }
                Backend::Error(e) => return Err(server_err(&self.what, &e)),
                Backend::ReadyForQuery => return Ok(()),
                _ => {}
            }
        }
    }

    fn password(&self, url: &ConnUrl) -> Result<String> {
        url.password
            .as_ref()
            .map(|p| p.expose().to_string())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Auth,
                    format!(
                        "{}: the server asks for a password and none is configured",
                        self.what
                    ),
                )
                .with_hint("put it in password_env, password_file, PGPASSWORD or ~/.pgpass")
            })
    }

    async fn flush(&mut self) -> Result<()> {
        let what = self.what.clone();
        self.io
            .write_all(&self.wbuf)
            .await
            .map_err(|e| io_err(&what, e))?;
        self.io.flush().await.map_err(|e| io_err(&what, e))?;
        self.wbuf.clear();
        Ok(())
    }

    /// The next backend message. Cancel-safe.
    async fn next_backend(&mut self) -> Result<Backend> {
        read_backend(&mut self.io, &mut self.rbuf, &self.what).await
    }

    /// Run a replication or SQL command with the simple query protocol; rows in text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| io_err(&self.what, e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_backend().await? {
                Backend::DataRow(values) => rows.push(
                    values
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect(),
                ),
                Backend::Error(e) => error = Some(e),
                Backend::ReadyForQuery => break,
                Backend::Notice(n) => {
                    tracing::debug!(code = %n.code, "replication notice: {}", n.message)
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(server_err(&format!("running {}", first_words(sql)), &e)),
            None => Ok(rows),
        }
    }

    /// `server_version_num` of the server.
    pub async fn server_version(&mut self) -> Result<u32> {
        if self.server_version == 0 {
            let rows = self.simple_query("SHOW server_version_num").await?;
            self.server_version = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::internal("SHOW server_version_num returned nothing"))?;
        }
        Ok(self.server_version)
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput`, exporting a snapshot when asked.
    pub async fn create_slot(&mut self, name: &str, export_snapshot: bool) -> Result<CreatedSlot> {
        let version = self.server_version().await?;
        let ident = pgtide_core::ident::quote_ident(name);
        let sql = match (version >= 150000, export_snapshot) {
            (true, true) => {
                format!("CREATE_REPLICATION_SLOT {ident} LOGICAL pgoutput (SNAPSHOT 'export')")
            }
            (true, false) => {
                format!("CREATE_REPLICATION_SLOT {ident} LOGICAL pgoutput (SNAPSHOT 'nothing')")
            }
            (false, true) => {
                format!("CREATE_REPLICATION_SLOT {ident} LOGICAL pgoutput EXPORT_SNAPSHOT")
            }
            (false, false) => {
                format!("CREATE_REPLICATION_SLOT {ident} LOGICAL pgoutput NOEXPORT_SNAPSHOT")
            }
        };
        let rows = self.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::internal("CREATE_REPLICATION_SLOT returned no row"))?;
        let lsn: Lsn = row
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::internal("CREATE_REPLICATION_SLOT returned no consistent point"))?
            .parse()
            .map_err(Error::internal)?;
        Ok(CreatedSlot {
            name: name.to_string(),
            consistent_point: lsn,
            snapshot: row.get(2).cloned().flatten(),
        })
    }

    /// `START_REPLICATION SLOT ... LOGICAL start (options)`; the connection becomes a stream.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, String)],
    ) -> Result<LogicalStream> {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} {}",
                    pgtide_core::ident::quote_ident(k),
                    pgtide_core::ident::quote_literal(v)
                )
            })
            .collect();
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({})",
            pgtide_core::ident::quote_ident(slot),
            opts.join(", ")
        );
        frontend::query(&sql, &mut self.wbuf).map_err(|e| io_err(&self.what, e))?;
        self.flush().await?;
        loop {
            match self.next_backend().await? {
                Backend::CopyBoth => return Ok(LogicalStream { client: self }),
                Backend::Error(e) => {
                    // Drain to ReadyForQuery so the error is complete, then report it.
                    let err = server_err(&format!("starting replication from slot {slot}"), &e);
                    return Err(err);
                }
                Backend::Notice(n) => tracing::debug!("replication notice: {}", n.message),
                _ => {}
            }
        }
    }
}

/// Read the next backend message from `io`, buffering in `rbuf`. Cancel-safe: bytes are in the
/// buffer before they are parsed. `ParameterStatus` messages are skipped.
async fn read_backend<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    rbuf: &mut BytesMut,
    what: &str,
) -> Result<Backend> {
    loop {
        if let Some((tag, body)) = wire::split_message(rbuf).map_err(|e| wire_err(what, e))? {
            let msg = wire::decode(tag, body).map_err(|e| wire_err(what, e))?;
            if let Backend::Other(b'S') = msg {
                continue;
            }
            return Ok(msg);
        }
        if rbuf.capacity() - rbuf.len() < 64 * 1024 {
            rbuf.reserve(256 * 1024);
        }
        let n = io.read_buf(rbuf).await.map_err(|e| io_err(what, e))?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Connection,
                format!("{what}: the server closed the connection"),
            ));
        }
    }
}

/// Turn a backend message inside the replication stream into a stream message.
fn stream_item(msg: Backend, what: &str) -> Result<Option<StreamMessage>> {
    match msg {
        Backend::CopyData(data) => wire::decode_stream(data)
            .map(Some)
            .map_err(|e| wire_err(what, e)),
        Backend::CopyDone | Backend::ReadyForQuery | Backend::CommandComplete(_) => Ok(None),
        Backend::Error(e) => Err(server_err("streaming from the replication slot", &e)),
        other => Err(Error::new(
            ErrorKind::Connection,
            format!("{what}: unexpected message in the replication stream: {other:?}"),
        )),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// The replication stream: XLogData and keepalives in, status updates out.
pub struct LogicalStream {
    client: ReplicationClient,
}

/// The narrow interface the change-data-capture loop needs from a replication stream.
pub trait WalStream {
    /// The next message; `None` when the server ended the stream. Cancel-safe.
    fn next_message(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<StreamMessage>>> + Send;
    /// Tell the server what is durably applied (`flush`), and that everything before `write`
    /// was received.
    fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply: bool,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
pub fn pg_now() -> i64 {
    const EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    now - EPOCH_OFFSET_US
}

impl WalStream for LogicalStream {
    async fn next_message(&mut self) -> Result<Option<StreamMessage>> {
        loop {
            match self.client.next_backend().await? {
                Backend::Notice(n) => tracing::debug!("replication notice: {}", n.message),
                other => return stream_item(other, &self.client.what),
            }
        }
    }

    async fn send_status(&mut self, write: Lsn, flush: Lsn, reply: bool) -> Result<()> {
        let body: Bytes = wire::status_update(write, flush, flush, pg_now(), reply);
        frontend::CopyData::new(body)
            .map_err(|e| io_err(&self.client.what, e))?
            .write(&mut self.client.wbuf);
        self.client.flush().await
    }
}

impl LogicalStream {
    /// Confirm `flush` and end the stream, returning once the server has taken the position
    /// and released the slot.
    ///
    /// The walsender sets the slot's confirmed position to what a status update says without
    /// decoding the WAL up to it (unlike `pg_replication_slot_advance`, which decodes from the
    /// slot's `restart_lsn`), and the update is read before the `CopyDone` that follows it,
    /// so once the server's `ReadyForQuery` arrives the position is in place. It is kept in
    /// the server's memory (written out with the slot's next save), as for every consumer of
    /// the replication protocol: a crash of the source, or before PostgreSQL 17 any restart,
    /// can move it back, never forward.
    pub async fn confirm_and_end(mut self, flush: Lsn) -> Result<()> {
        self.send_status(flush, flush, false).await?;
        frontend::copy_done(&mut self.client.wbuf);
        self.client.flush().await?;
        loop {
            match self.client.next_backend().await? {
                Backend::ReadyForQuery => return Ok(()),
                Backend::Error(e) => {
                    return Err(server_err("ending the replication stream", &e));
                }
                // What the server sent before it read the end (changes after `flush`,
                // keepalives), its own CopyDone, CommandComplete, notices.
                _ => {}
            }
        }
    }

    /// Keep reading in a background task while the caller applies: the server's decoding of
    /// later changes overlaps with the target's work on earlier ones, instead of waiting behind
    /// it. Up to `budget` bytes of received messages wait in the queue; past that the reader
    /// stops reading and the server waits (TCP flow control), so memory stays bounded.
    pub fn pipelined(self, budget: usize) -> PipelinedStream {
        let ReplicationClient {
            io,
            mut rbuf,
            wbuf,
            what,
            ..
        } = self.client;
        let (mut read, write) = tokio::io::split(io);
        let budget = budget.clamp(1, u32::MAX as usize);
        let permits = Arc::new(tokio::sync::Semaphore::new(budget));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reader_what = what.clone();
        let reader_permits = permits.clone();
        let reader = tokio::spawn(async move {
            loop {
                let item = match read_backend(&mut read, &mut rbuf, &reader_what).await {
                    Ok(Backend::Notice(n)) => {
                        tracing::debug!("replication notice: {}", n.message);
                        continue;
                    }
                    Ok(m) => stream_item(m, &reader_what),
                    Err(e) => Err(e),
                };
                let size = match &item {
                    Ok(Some(StreamMessage::XLogData { data, .. })) => data.len().clamp(1, budget),
                    _ => 1,
                };
                let Ok(permit) = reader_permits.clone().acquire_many_owned(size as u32).await
                else {
                    return;
                };
                let end = !matches!(item, Ok(Some(_)));
                if tx.send((item, permit)).is_err() || end {
                    return;
                }
            }
        });
        PipelinedStream {
            rx,
            write,
            wbuf,
            what,
            reader,
        }
    }
}

/// A replication stream read ahead by a background task (see [`LogicalStream::pipelined`]).
pub struct PipelinedStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<(
        Result<Option<StreamMessage>>,
        tokio::sync::OwnedSemaphorePermit,
    )>,
    write: tokio::io::WriteHalf<Box<dyn Io>>,
    wbuf: BytesMut,
    what: String,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for PipelinedStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl WalStream for PipelinedStream {
    async fn next_message(&mut self) -> Result<Option<StreamMessage>> {
        match self.rx.recv().await {
            // The permit goes with the message: its bytes no longer count once handed over.
            Some((item, _permit)) => item,
            None => Err(Error::new(
                ErrorKind::Connection,
                format!("{}: the replication stream reader stopped", self.what),
            )),
        }
    }

    async fn send_status(&mut self, write: Lsn, flush: Lsn, reply: bool) -> Result<()> {
        let body: Bytes = wire::status_update(write, flush, flush, pg_now(), reply);
        frontend::CopyData::new(body)
            .map_err(|e| io_err(&self.what, e))?
            .write(&mut self.wbuf);
        self.write
            .write_all(&self.wbuf)
            .await
            .map_err(|e| io_err(&self.what, e))?;
        self.write
            .flush()
            .await
            .map_err(|e| io_err(&self.what, e))?;
        self.wbuf.clear();
        Ok(())
    }
}
