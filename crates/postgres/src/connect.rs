//! Opening connections and turning driver errors into pgtide errors.
//!
//! [`classify`] is the single place that maps a PostgreSQL failure to an [`ErrorKind`] (retry
//! or stop) and a hint for the operator, from the SQLSTATE when the server sent one and from
//! the I/O cause when it did not. Every other module calls it instead of inspecting errors.

use futures::StreamExt;
use pgtide_core::endpoint::{ConnUrl, Host, SslMode};
use pgtide_core::{Error, ErrorKind, Result};
use std::time::Duration;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

/// Which end of the task a connection belongs to; used in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source database.
    Source,
    /// The target database.
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// The driver configuration for `url`. The password goes into the driver only.
pub fn driver_config(url: &ConnUrl) -> Config {
    let mut c = Config::new();
    match &url.host {
        Host::Tcp(h) => c.host(h),
        Host::Socket(p) => c.host_path(p),
    };
    c.port(url.port)
        .user(&url.user)
        .dbname(&url.database)
        .application_name(url.application_name.as_deref().unwrap_or("pgtide"))
        .connect_timeout(Duration::from_secs(url.connect_timeout.unwrap_or(15)))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if let Some(pw) = &url.password {
        c.password(pw.expose());
    }
    c.ssl_mode(match url.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    c
}

/// Open a connection and run its I/O on a background task. Server notices are logged at
/// debug level (they can quote user data, e.g. `RAISE NOTICE` in a trigger).
pub async fn connect(url: &ConnUrl, side: Side) -> Result<Client> {
    connect_with_options(url, side, "").await
}

/// [`connect`] with extra server settings for the session (`-c name=value ...`, constants of
/// ours, never user input).
pub async fn connect_with_options(url: &ConnUrl, side: Side, options: &str) -> Result<Client> {
    let mut config = driver_config(url);
    let mut all = String::new();
    if matches!(side, Side::Source) {
        // Row-level security would make COPY and SELECT on the source silently return only the
        // rows its policies let the task's user see. With `row_security = off` (as pg_dump does)
        // such a read fails instead, and the error says how to get every row.
        all.push_str("-c row_security=off");
    }
    if !options.is_empty() {
        if !all.is_empty() {
            all.push(' ');
        }
        all.push_str(options);
    }
    if !all.is_empty() {
        config.options(&all);
    }
    let what = format!("cannot connect to the {side} {url}");
    let tls = crate::tls::client_config(url)?;
    let is_socket = matches!(url.host, Host::Socket(_));
    let client = match tls {
        Some(tls) if !is_socket => {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, conn) = config
                .connect(connector)
                .await
                .map_err(|e| classify(e, &what))?;
            spawn_connection(conn, side);
            client
        }
        _ => {
            let (client, conn) = config
                .connect(NoTls)
                .await
                .map_err(|e| classify(e, &what))?;
            spawn_connection(conn, side);
            client
        }
    };
    Ok(client)
}

fn spawn_connection<S, T>(mut conn: tokio_postgres::Connection<S, T>, side: Side)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notice(n)) => {
                    tracing::debug!(%side, severity = n.severity(), "server notice: {}", n.message());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%side, error = %e, "connection ended");
                    break;
                }
            }
        }
    });
}

/// Map a driver error to a pgtide error: kind from the SQLSTATE (or the I/O cause), message
/// `what: server message`, hint from the server or from what the code means.
pub fn classify(e: tokio_postgres::Error, what: &str) -> Error {
    if let Some(db) = e.as_db_error() {
        return classify_server_error(db.code().code(), db.message(), db.detail(), db.hint(), what);
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    let io_kind = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(|io| io.kind());
    let (kind, hint) = if e.is_closed() {
        (
            ErrorKind::Connection,
            "the server closed the connection; pgtide will reconnect where it can",
        )
    } else if text.contains("password missing") {
        (
            ErrorKind::Auth,
            "the server asks for a password: put it in password_env, password_file, PGPASSWORD or ~/.pgpass",
        )
    } else if text.contains("SCRAM") || text.contains("authentication") {
        (
            ErrorKind::Auth,
            "check the user and password and pg_hba.conf",
        )
    } else if text.contains("timed out") || io_kind == Some(std::io::ErrorKind::TimedOut) {
        (
            ErrorKind::Connection,
            "check that the host is reachable and the port is open (firewall, security group)",
        )
    } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused) || text.contains("refused") {
        (
            ErrorKind::Connection,
            "check that the server is running and listens on that host and port (listen_addresses, port)",
        )
    } else if text.contains("TLS")
        || text.contains("tls")
        || text.contains("certificate")
        || text.contains("ssl")
    {
        (
            ErrorKind::Prerequisite,
            "check sslmode and the certificates (sslrootcert, sslcert, sslkey)",
        )
    } else if text.contains("lookup")
        || text.contains("resolve")
        || text.contains("Name or service")
    {
        (ErrorKind::Connection, "check the host name in the URL")
    } else {
        (
            ErrorKind::Connection,
            "check the server address and that it accepts connections",
        )
    };
    Error::new(kind, format!("{what}: {text}"))
        .with_source(e)
        .with_hint(hint)
}

/// Map a server error (SQLSTATE, message, detail, hint) to a pgtide error. Shared by driver
/// connections and the replication client.
pub fn classify_server_error(
    code: &str,
    message: &str,
    detail: Option<&str>,
    server_hint: Option<&str>,
    what: &str,
) -> Error {
    let (kind, hint): (ErrorKind, Option<&str>) = match code {
        "28P01" | "28000" => (
            ErrorKind::Auth,
            Some(
                "check the user and password (URL, password_env, password_file, PGPASSWORD or ~/.pgpass) and pg_hba.conf",
            ),
        ),
        "42501" if message.contains("row-level security") => (
            ErrorKind::Auth,
            Some(
                "the task's user is subject to row-level security on this table and would not read every row: use a superuser or a role with BYPASSRLS (ALTER ROLE ... BYPASSRLS), or exclude the table",
            ),
        ),
        "42501" => (
            ErrorKind::Auth,
            Some("grant the missing privilege to the task's user, or use a user that has it"),
        ),
        "3D000" => (
            ErrorKind::NotFound,
            Some(
                "create the database first (CREATE DATABASE ...) or fix the database name in the URL",
            ),
        ),
        // pgoutput looks publications up in the snapshot of the WAL it decodes: a slot created
        // before its publication cannot decode the changes in between.
        "42704" if message.starts_with("publication") && message.contains("does not exist") => (
            ErrorKind::NotFound,
            Some(
                "the replication slot was created before this publication existed, so pgoutput cannot decode the changes in between; \
                 the publication must exist before the slot: run with --restart for a new slot that starts now (changes committed \
                 before it are not streamed: load them first, or use mode full-load-and-cdc, which creates both in the right order)",
            ),
        ),
        "42P01" | "42704" | "42883" | "3F000" => (ErrorKind::NotFound, None),
        "53300" => (
            ErrorKind::Transient,
            Some(
                "the server has too many connections; lower full_load.threads or raise max_connections",
            ),
        ),
        "57P01" | "57P02" | "57P03" | "57P05" => (ErrorKind::Connection, None),
        "40001" | "40P01" | "55P03" => (ErrorKind::Transient, None),
        "0A000" => (ErrorKind::Unsupported, None),
        "23505" | "23503" | "23514" | "23P01" | "42P07" | "42710" => (ErrorKind::Conflict, None),
        "55000" => (ErrorKind::Prerequisite, None),
        "55006" => (ErrorKind::Conflict, None),
        c if c.starts_with("08") => (ErrorKind::Connection, None),
        c if c.starts_with("53") => (ErrorKind::Transient, None),
        _ => (ErrorKind::Database, None),
    };
    let mut msg = format!("{what}: {message} (SQLSTATE {code})");
    // Data exceptions (22) and integrity violations (23) put row values in DETAIL ("Key
    // (id)=(5) already exists", "Failing row contains (...)"): those never reach output, logs
    // or the state on the target. The message names the constraint or the problem.
    if let Some(d) = detail.filter(|_| !code.starts_with("22") && !code.starts_with("23")) {
        msg.push_str(&format!("; {d}"));
    }
    let mut err = Error::new(kind, msg);
    if let Some(h) = server_hint.or(hint) {
        err = err.with_hint(h);
    }
    err
}

/// Run `f` with retries while it fails with a retryable error, waiting 1, 2, 4, ... up to 30
/// seconds between attempts, for at most `attempts` tries.
pub async fn with_retries<T, F, Fut>(attempts: u32, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_secs(1);
    let mut n = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && n < attempts => {
                tracing::warn!(
                    attempt = n,
                    retry_in_s = delay.as_secs(),
                    "{what}: {}",
                    e.message()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_values_in_detail_never_reach_the_message() {
        let e = classify_server_error(
            "23505",
            "duplicate key value violates unique constraint \"t_pkey\"",
            Some("Key (id)=(secret-value) already exists."),
            None,
            "applying changes",
        );
        assert!(e.message().contains("t_pkey"));
        assert!(!e.message().contains("secret-value"), "{}", e.message());
        let e = classify_server_error(
            "55006",
            "replication slot \"s\" is active for PID 42",
            Some("some detail"),
            None,
            "dropping",
        );
        assert!(e.message().contains("some detail"));
        assert_eq!(e.kind(), ErrorKind::Conflict);
    }
}
