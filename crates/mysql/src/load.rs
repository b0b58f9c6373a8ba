//! Loading rows into MySQL/MariaDB with `LOAD DATA LOCAL INFILE`, streamed from memory.
//!
//! # The pipe
//!
//! The source runs `COPY (SELECT <expressions>) TO STDOUT` in text format inside the load's
//! snapshot; each row arrives as one CopyData message, tab-separated, `\N` for NULL, with
//! backslash escapes. That is almost MySQL's default `LOAD DATA` format (fields terminated by
//! tab, escaped by backslash, lines by newline, `\N` for NULL), so rows go to the server as
//! they come, through the driver's LOCAL INFILE stream, without being parsed. Two escapes
//! differ: PostgreSQL writes form feed and vertical tab as `\f` and `\v`, which MySQL would read
//! as the letters `f` and `v`; [`pg_text_to_mysql`] turns them back into the raw bytes.
//!
//! Values are put into MySQL's input forms on the source, by the `SELECT` expressions of
//! [`transfer`]: booleans as 0/1, bytea as hex (unhexed on the server), timestamps with time
//! zone in UTC, arrays and composites as JSON, money as numeric, bit strings through `CONV`.
//!
//! # Nothing altered silently
//!
//! `LOAD DATA LOCAL` turns data errors (a value out of range, a truncated string, a duplicate
//! key) into warnings and loads the row anyway. Each table is therefore loaded inside a
//! transaction, with strict SQL mode and `NO_AUTO_VALUE_ON_ZERO` (a 0 in an `AUTO_INCREMENT`
//! column stays 0): if the server reports any warning, the transaction is rolled back and the
//! load stops, naming the table, the column and the row from the warning (with quoted values
//! removed: warnings can quote row contents). The row count the server reports must equal the
//! rows the source sent.

use crate::convert::{ConvertedColumn, ConvertedTable, quote};
use bytes::Bytes;
use futures::Stream;
use mysql_async::prelude::Queryable;
use pgtide_core::endpoint::{ConnUrl, Host, SslMode};
use pgtide_core::{Error, ErrorKind, Result};

/// How one column travels: the source expression, and how the target receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Expression in the source `SELECT`.
    pub select: String,
    /// The column in the `LOAD DATA` column list: the target column, or a user variable.
    pub load_as: String,
    /// `SET` clause when the value goes through a variable.
    pub set: Option<String>,
    /// The value's expression in a multi-row INSERT, `?` standing for the source's text.
    pub insert: String,
}

fn pg_ident(s: &str) -> String {
    pgtide_core::ident::quote_ident(s)
}

/// The transfer of column `c` (`i` numbers user variables).
pub fn transfer(c: &ConvertedColumn, i: usize) -> Transfer {
    let src = pg_ident(&c.source);
    let tgt = quote(&c.target);
    let t = c.type_name.as_str();
    let var = format!("@v{i}");
    let direct = |select: String| Transfer {
        select,
        load_as: tgt.clone(),
        set: None,
        insert: "?".into(),
    };
    if c.mysql == "BOOLEAN" {
        return direct(format!("{src}::int"));
    }
    if c.mysql == "LONGBLOB" || c.mysql.starts_with("VARBINARY") {
        return Transfer {
            select: format!("encode({src}, 'hex')"),
            load_as: var.clone(),
            set: Some(format!("{tgt} = UNHEX({var})")),
            insert: "UNHEX(?)".into(),
        };
    }
    if c.mysql.starts_with("BIT(") {
        return Transfer {
            select: format!("{src}::text"),
            load_as: var.clone(),
            set: Some(format!("{tgt} = CONV({var}, 2, 10) + 0")),
            insert: "CONV(?, 2, 10) + 0".into(),
        };
    }
    if t.starts_with("timestamp") && t.contains("with time zone") {
        // The session's TimeZone is UTC: the wall-clock time in UTC, without an offset.
        return direct(format!("({src} AT TIME ZONE 'UTC')::text"));
    }
    if t.starts_with("time") && t.contains("with time zone") {
        return direct(format!("{src}::time::text"));
    }
    if t == "money" {
        return direct(format!("{src}::numeric::text"));
    }
    if c.mysql == "JSON" && !(t == "json" || t == "jsonb" || t == "hstore") {
        return direct(format!("to_json({src})::text"));
    }
    if t == "hstore" {
        return direct(format!("hstore_to_json({src})::text"));
    }
    direct(format!("{src}::text"))
}

/// The `COPY (SELECT ...) TO STDOUT` of a converted table: partitioned sources are read through
/// their root (all partitions), others with `ONLY`.
pub fn copy_sql(table: &ConvertedTable, transfers: &[Transfer]) -> String {
    let list: Vec<&str> = transfers.iter().map(|t| t.select.as_str()).collect();
    format!(
        "COPY (SELECT {} FROM {}{}) TO STDOUT",
        list.join(", "),
        if table.partitioned { "" } else { "ONLY " },
        table.source.quoted()
    )
}

/// The `LOAD DATA LOCAL INFILE` statement for a converted table.
///
/// When any column needs a `SET` clause, every column goes through a variable: MariaDB
/// ignores `NO_AUTO_VALUE_ON_ZERO` for a column loaded directly alongside a `SET` clause, and
/// would turn a key of 0 into a new `AUTO_INCREMENT` value (found with Pagila's `staff`).
pub fn load_sql(table: &ConvertedTable, transfers: &[Transfer]) -> String {
    let any_set = transfers.iter().any(|t| t.set.is_some());
    let routed: Vec<Transfer> = transfers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if any_set && t.set.is_none() {
                let var = format!("@v{i}");
                Transfer {
                    select: t.select.clone(),
                    load_as: var.clone(),
                    set: Some(format!("{} = {var}", t.load_as)),
                    insert: t.insert.clone(),
                }
            } else {
                t.clone()
            }
        })
        .collect();
    let cols: Vec<&str> = routed.iter().map(|t| t.load_as.as_str()).collect();
    let sets: Vec<&str> = routed.iter().filter_map(|t| t.set.as_deref()).collect();
    let mut sql = format!(
        "LOAD DATA LOCAL INFILE 'pgtide-stream' INTO TABLE {} CHARACTER SET utf8mb4 \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        quote(&table.target),
        cols.join(", ")
    );
    if !sets.is_empty() {
        sql.push_str(" SET ");
        sql.push_str(&sets.join(", "));
    }
    sql
}

/// A multi-row `INSERT` of `rows` rows into a converted table, one `?` per value.
pub fn insert_sql(table: &ConvertedTable, transfers: &[Transfer], rows: usize) -> String {
    let cols: Vec<String> = table.columns.iter().map(|c| quote(&c.target)).collect();
    let exprs: Vec<&str> = transfers.iter().map(|t| t.insert.as_str()).collect();
    let one = format!("({})", exprs.join(", "));
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(&table.target),
        cols.join(", ")
    );
    sql.reserve(rows * (one.len() + 2));
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&one);
    }
    sql
}

/// Rows per multi-row INSERT: at most 1000, and under MySQL's 65,535 placeholders.
pub fn insert_batch_rows(columns: usize) -> usize {
    (65_535 / columns.max(1)).clamp(1, 1000)
}

/// Bytes of values after which a multi-row INSERT is sent even if it has fewer rows (well
/// under the 16 MB `max_allowed_packet` of MariaDB's default configuration).
pub const INSERT_BATCH_BYTES: usize = 4 << 20;

/// Rewrite one row of PostgreSQL COPY text for MySQL: `\f` and `\v` become the raw bytes;
/// every other escape means the same to both.
pub fn pg_text_to_mysql(row: &[u8]) -> Bytes {
    if !row
        .windows(2)
        .any(|w| w[0] == b'\\' && (w[1] == b'f' || w[1] == b'v'))
    {
        return Bytes::copy_from_slice(row);
    }
    let mut out = Vec::with_capacity(row.len());
    let mut i = 0;
    while i < row.len() {
        if row[i] == b'\\' && i + 1 < row.len() {
            match row[i + 1] {
                b'f' => out.push(0x0c),
                b'v' => out.push(0x0b),
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
            i += 2;
        } else {
            out.push(row[i]);
            i += 1;
        }
    }
    Bytes::from(out)
}

/// Remove quoted parts (which can be row values) from a server message.
pub fn redact_values(msg: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for ch in msg.chars() {
        if ch == '\'' {
            if !quoted {
                out.push_str("'…'");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(ch);
        }
    }
    out
}

pub(crate) fn my_err(what: &str, e: mysql_async::Error) -> Error {
    let (kind, hint) = match &e {
        mysql_async::Error::Server(s) => match s.code {
            1045 | 1044 => (
                ErrorKind::Auth,
                Some(
                    "check the user and password in the target URL (or MYSQL_PWD) and the user's host grants",
                ),
            ),
            1049 => (
                ErrorKind::NotFound,
                Some(
                    "create the database first (CREATE DATABASE ... CHARACTER SET utf8mb4) or fix its name in the URL",
                ),
            ),
            1142 | 1227 | 1370 => (
                ErrorKind::Auth,
                Some("grant the missing privilege to the target user"),
            ),
            1148 | 3948 | 2068 | 4166 => (
                ErrorKind::Prerequisite,
                Some(
                    "the server refuses LOAD DATA LOCAL INFILE: set mysql.load_method: insert (or auto) in the task file to load with multi-row INSERT, or SET GLOBAL local_infile = 1 on the server",
                ),
            ),
            1205 | 1213 => (ErrorKind::Transient, None),
            _ => (ErrorKind::Database, None),
        },
        // A certificate the TLS handshake rejected: retrying cannot help.
        mysql_async::Error::Io(io) if io.to_string().contains("certificate") => (
            ErrorKind::Prerequisite,
            Some(
                "the server's TLS certificate was not accepted: check sslrootcert (the CA that signed it) and that the URL's host is a name in the certificate",
            ),
        ),
        mysql_async::Error::Io(_) => (
            ErrorKind::Connection,
            Some("check that the MySQL server is running and reachable"),
        ),
        _ => (ErrorKind::Database, None),
    };
    let text = match &e {
        mysql_async::Error::Server(s) => {
            format!("{} (error {})", redact_values(&s.message), s.code)
        }
        other => other.to_string(),
    };
    let mut err = Error::new(kind, format!("{what}: {text}"));
    if let Some(h) = hint {
        err = err.with_hint(h);
    }
    err
}

/// TLS for a MySQL target, with the URL's libpq-style `sslmode` (rustls, as for PostgreSQL):
///
/// | sslmode       | encrypted | chain verified                      | host name verified |
/// |---------------|-----------|-------------------------------------|--------------------|
/// | `disable`, `prefer` | no  | -                                   | -                  |
/// | `require`     | yes       | no (refused with `sslrootcert`)     | no                 |
/// | `verify-ca`   | refused: use `verify-full`                      |||
/// | `verify-full` | yes       | yes                                 | yes                |
///
/// Checking the chain without the name (`verify-ca`, or libpq's `require` with a root
/// certificate) is refused: the driver cannot do it (see the code).
/// `prefer` does not try TLS first as libpq does (the driver cannot fall back): it means
/// plain text, and a server that requires TLS says so. `sslrootcert` is a PEM file (then only
/// its CAs are trusted) or `system` (the Mozilla root set built into the driver).
/// `sslcert`/`sslkey` give a client certificate.
pub fn ssl_opts(url: &ConnUrl) -> Result<Option<mysql_async::SslOpts>> {
    use mysql_async::{ClientIdentity, SslOpts};
    if matches!(url.sslmode, SslMode::Disable | SslMode::Prefer) {
        return Ok(None);
    }
    let mut ssl = SslOpts::default();
    match url.sslrootcert.as_deref() {
        Some("system") => {}
        Some(path) => {
            if !std::path::Path::new(path).is_file() {
                return Err(Error::config(format!(
                    "target.url: sslrootcert {path} is not a readable file"
                ))
                .with_hint(
                    "give the PEM file with the server's CA certificate(s), or sslrootcert=system",
                ));
            }
            ssl = ssl
                .with_root_certs(vec![std::path::PathBuf::from(path).into()])
                .with_disable_built_in_roots(true);
        }
        None if url.sslmode == SslMode::Require => {
            // Encrypted, nothing judged: libpq's `require` without a root certificate.
            ssl = ssl
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true);
        }
        None => {
            return Err(Error::config(format!(
                "target.url: sslmode={} needs a root certificate",
                url.sslmode.as_str()
            ))
            .with_hint("add sslrootcert=/path/to/ca.pem (or sslrootcert=system) to the URL"));
        }
    }
    if url.sslmode == SslMode::VerifyCa
        || (url.sslmode == SslMode::Require && url.sslrootcert.is_some())
    {
        // Judging the chain but not the name needs the driver's "skip domain validation",
        // which mysql_async 0.37 implements by matching rustls error text that rustls 0.23 no
        // longer produces: it would verify the name anyway. Refuse rather than pretend.
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "target.url: sslmode={}{} (certificate chain checked, host name not) is not available for MySQL targets",
                url.sslmode.as_str(),
                if url.sslmode == SslMode::Require { " with sslrootcert" } else { "" }
            ),
        )
        .with_hint("use sslmode=verify-full with sslrootcert (the URL's host must be a name in the server's certificate), or sslmode=require without sslrootcert (encrypted, certificate not judged)"));
    }
    match (&url.sslcert, &url.sslkey) {
        (Some(cert), Some(key)) => {
            ssl = ssl.with_client_identity(Some(ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            )));
        }
        (None, None) => {}
        _ => {
            return Err(Error::config("target.url: sslcert and sslkey go together")
                .with_hint("give both, or neither"));
        }
    }
    Ok(Some(ssl))
}

/// A MySQL/MariaDB target (the `mysql_async` driver, pinned, stays behind this type).
#[derive(Clone)]
pub struct MysqlTarget {
    pool: mysql_async::Pool,
    opts: mysql_async::Opts,
    what: String,
    tls: bool,
}

impl MysqlTarget {
    /// A pool of connections to the target URL's database.
    pub fn new(url: &ConnUrl) -> Result<Self> {
        let mut b = mysql_async::OptsBuilder::default()
            .ssl_opts(ssl_opts(url)?)
            .user(Some(url.user.clone()))
            .pass(url.password.as_ref().map(|p| p.expose().to_string()))
            .db_name(Some(url.database.clone()))
            .prefer_socket(false)
            // UPDATE and DELETE report matched rows, which the applier checks.
            .client_found_rows(true);
        b = match &url.host {
            Host::Tcp(h) => b.ip_or_hostname(h.clone()).tcp_port(url.port),
            Host::Socket(dir) => b.socket(Some(dir.join("mysqld.sock").display().to_string())),
        };
        let opts: mysql_async::Opts = b.into();
        Ok(MysqlTarget {
            pool: mysql_async::Pool::new(opts.clone()),
            opts,
            what: format!("the target {url}"),
            tls: !matches!(url.sslmode, SslMode::Disable | SslMode::Prefer),
        })
    }

    fn connect_err(&self, e: mysql_async::Error) -> Error {
        let err = my_err(&format!("cannot connect to {}", self.what), e);
        // A server with require_secure_transport answers a plain connection with "access
        // denied" (MariaDB), like a wrong password.
        match (err.kind(), err.hint()) {
            (ErrorKind::Auth, Some(h)) if !self.tls => {
                let h = format!(
                    "{h}; if the server requires TLS (require_secure_transport), add sslmode=require (or verify-full with sslrootcert) to the URL"
                );
                err.with_hint(h)
            }
            _ => err,
        }
    }

    /// A session set up for loading: UTC, strict, no key checks during the load, utf8mb4.
    pub async fn session(&self) -> Result<MysqlSession> {
        let conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| self.connect_err(e))?;
        Self::setup(conn).await
    }

    /// A connection of its own, outside the pool: when it is dropped the socket closes, so
    /// the server rolls back its open transaction and releases its locks (a pooled connection
    /// would be reused with them).
    pub async fn dedicated(&self) -> Result<MysqlSession> {
        let conn = mysql_async::Conn::new(self.opts.clone())
            .await
            .map_err(|e| self.connect_err(e))?;
        Self::setup(conn).await
    }

    async fn setup(mut conn: mysql_async::Conn) -> Result<MysqlSession> {
        conn.query_drop(
            "SET NAMES utf8mb4, time_zone = '+00:00', FOREIGN_KEY_CHECKS = 0, UNIQUE_CHECKS = 1, \
             sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'",
        )
        .await
        .map_err(|e| my_err("setting up a MySQL session", e))?;
        Ok(MysqlSession { conn })
    }

    /// Close the pool.
    pub async fn close(self) {
        let _ = self.pool.disconnect().await;
    }
}

/// One MySQL connection.
pub struct MysqlSession {
    pub(crate) conn: mysql_async::Conn,
}

impl MysqlSession {
    /// Close the connection. A pool's [`MysqlTarget::close`] waits for every connection taken
    /// from it, so sessions are closed (or dropped) first.
    pub async fn close(self) {
        let _ = self.conn.disconnect().await;
    }

    /// Run a statement (DDL); `what` names it in errors.
    pub async fn exec(&mut self, sql: &str, what: &str) -> Result<()> {
        self.conn.query_drop(sql).await.map_err(|e| my_err(what, e))
    }

    /// The first column of the first row of a query, as text.
    pub async fn query_text(&mut self, sql: &str, what: &str) -> Result<Option<String>> {
        let v: Option<Option<String>> = self
            .conn
            .query_first(sql)
            .await
            .map_err(|e| my_err(what, e))?;
        Ok(v.flatten())
    }

    /// Load `rows` (MySQL LOAD DATA text) into `table` in one transaction; returns the rows
    /// the server loaded. Any warning rolls the transaction back and is an error.
    pub async fn load<S>(&mut self, table: &ConvertedTable, sql: &str, rows: S) -> Result<u64>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let what = format!("loading {}", quote(&table.target));
        self.exec("START TRANSACTION", &what).await?;
        // The driver wants a Sync future; the stream is only Send, so it waits in a mutex.
        let rows = std::sync::Mutex::new(Some(rows));
        self.conn.set_infile_handler(async move {
            let rows = rows
                .lock()
                .map_err(|_| std::io::Error::other("LOCAL INFILE stream lock poisoned"))?
                .take()
                .ok_or_else(|| std::io::Error::other("LOCAL INFILE stream requested twice"))?;
            Ok(Box::pin(rows) as mysql_async::InfileData)
        });
        let result = self.conn.query_drop(sql).await;
        let loaded = self.conn.affected_rows();
        let warnings = self.conn.get_warnings();
        if let Err(e) = result {
            let _ = self.conn.query_drop("ROLLBACK").await;
            return Err(my_err(&what, e));
        }
        self.refuse_warnings(&what, warnings).await?;
        self.exec("COMMIT", &what).await?;
        Ok(loaded)
    }

    /// After a statement that reported `warnings`: none is fine; any rolls the transaction
    /// back and is an error quoting the first (its values removed).
    async fn refuse_warnings(&mut self, what: &str, warnings: u16) -> Result<()> {
        if warnings == 0 {
            return Ok(());
        }
        let first: Option<(String, u32, String)> = self
            .conn
            .query_first("SHOW WARNINGS LIMIT 1")
            .await
            .map_err(|e| my_err(what, e))?;
        let _ = self.conn.query_drop("ROLLBACK").await;
        let detail = first
            .map(|(level, code, msg)| format!("{level} {code}: {}", redact_values(&msg)))
            .unwrap_or_default();
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{what}: MySQL would have altered or dropped values ({warnings} warnings; first: {detail}); the table's load was rolled back"
            ),
        )
        .with_hint("a value does not fit the converted column type (see the assessment report for the column's caveat): fix or exclude the value on the source, or change the column's type on the target"))
    }

    /// Whether `table` exists in the session's database.
    pub async fn table_exists(&mut self, table: &str) -> Result<bool> {
        let n: Option<i64> = self
            .conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                (table,),
            )
            .await
            .map_err(|e| my_err(&format!("looking for table {} on the target", quote(table)), e))?;
        Ok(n == Some(1))
    }

    /// The session's TLS cipher, `None` when the connection is not encrypted.
    pub async fn tls_cipher(&mut self) -> Result<Option<String>> {
        let row: Option<(String, String)> = self
            .conn
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .await
            .map_err(|e| my_err("reading the session's TLS status", e))?;
        Ok(row.map(|(_, v)| v).filter(|v| !v.is_empty()))
    }

    /// Whether the server accepts `LOAD DATA LOCAL INFILE` (`@@GLOBAL.local_infile`).
    pub async fn local_infile(&mut self) -> Result<bool> {
        let v = self
            .query_text(
                "SELECT @@GLOBAL.local_infile",
                "reading the server's local_infile setting",
            )
            .await?;
        Ok(matches!(v.as_deref(), Some("1") | Some("ON")))
    }

    /// Insert `rows` (one parameter per column, in the table's column order) into `table` in
    /// one transaction with multi-row INSERT statements; returns the rows inserted. Any
    /// warning rolls the transaction back and is an error, as for [`MysqlSession::load`].
    pub async fn insert<S>(
        &mut self,
        table: &ConvertedTable,
        transfers: &[Transfer],
        rows: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::io::Result<Vec<mysql_async::Value>>> + Unpin,
    {
        use futures::StreamExt;
        let what = format!("inserting into {}", quote(&table.target));
        let per_statement = insert_batch_rows(table.columns.len());
        let full_sql = insert_sql(table, transfers, per_statement);
        self.exec("START TRANSACTION", &what).await?;
        let mut rows = rows;
        let mut inserted = 0u64;
        let mut batch: Vec<mysql_async::Value> = Vec::new();
        let mut batch_rows = 0usize;
        let mut batch_bytes = 0usize;
        loop {
            let next = rows.next().await;
            let done = next.is_none();
            if let Some(row) = next {
                let row = match row {
                    Ok(r) => r,
                    Err(e) => {
                        // The rows' stream failed (reading the source), as LOAD DATA reports it.
                        let _ = self.conn.query_drop("ROLLBACK").await;
                        return Err(Error::new(ErrorKind::Connection, format!("{what}: {e}")));
                    }
                };
                batch_bytes += row
                    .iter()
                    .map(|v| match v {
                        mysql_async::Value::Bytes(b) => b.len(),
                        _ => 8,
                    })
                    .sum::<usize>();
                batch.extend(row);
                batch_rows += 1;
            }
            let full = batch_rows == per_statement || batch_bytes >= INSERT_BATCH_BYTES;
            if batch_rows > 0 && (full || done) {
                let sql = if batch_rows == per_statement {
                    std::borrow::Cow::Borrowed(full_sql.as_str())
                } else {
                    std::borrow::Cow::Owned(insert_sql(table, transfers, batch_rows))
                };
                let params = mysql_async::Params::Positional(std::mem::take(&mut batch));
                let result = self.conn.exec_drop(sql.as_ref(), params).await;
                if let Err(e) = result {
                    let _ = self.conn.query_drop("ROLLBACK").await;
                    return Err(my_err(&what, e));
                }
                let warnings = self.conn.get_warnings();
                self.refuse_warnings(&what, warnings).await?;
                inserted += self.conn.affected_rows();
                batch_rows = 0;
                batch_bytes = 0;
            }
            if done {
                break;
            }
        }
        self.exec("COMMIT", &what).await?;
        Ok(inserted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(source: &str, mysql: &str, type_name: &str) -> ConvertedColumn {
        ConvertedColumn {
            source: source.into(),
            target: source.into(),
            mysql: mysql.into(),
            type_oid: 0,
            type_name: type_name.into(),
            not_null: false,
        }
    }

    #[test]
    fn escapes_mysql_does_not_know_become_bytes() {
        assert_eq!(
            &pg_text_to_mysql(b"a\\fb\\vc\\\\f\\n\n")[..],
            b"a\x0cb\x0bc\\\\f\\n\n"
        );
        assert_eq!(&pg_text_to_mysql(b"plain\t\\N\n")[..], b"plain\t\\N\n");
    }

    #[test]
    fn transfers_put_values_into_mysql_input_forms() {
        let b = transfer(&col("Flag", "BOOLEAN", "boolean"), 0);
        assert_eq!(b.select, "\"Flag\"::int");
        let x = transfer(&col("pic", "LONGBLOB", "bytea"), 3);
        assert_eq!(x.load_as, "@v3");
        assert_eq!(x.set.as_deref(), Some("`pic` = UNHEX(@v3)"));
        let t = transfer(&col("at", "DATETIME(6)", "timestamp with time zone"), 0);
        assert_eq!(t.select, "(\"at\" AT TIME ZONE 'UTC')::text");
        let a = transfer(&col("tags", "JSON", "text[]"), 0);
        assert_eq!(a.select, "to_json(\"tags\")::text");
        let j = transfer(&col("doc", "JSON", "jsonb"), 0);
        assert_eq!(j.select, "\"doc\"::text");
    }

    #[test]
    fn with_any_set_clause_every_column_goes_through_a_variable() {
        let cols = [col("id", "INT", "integer"), col("pic", "LONGBLOB", "bytea")];
        let transfers: Vec<Transfer> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| transfer(c, i))
            .collect();
        let table = ConvertedTable {
            oid: 1,
            source: pgtide_core::ident::QualifiedName::new("public", "t"),
            partitioned: false,
            target: "t".into(),
            columns: cols.to_vec(),
            create: String::new(),
        };
        let sql = load_sql(&table, &transfers);
        assert!(
            sql.ends_with("(@v0, @v1) SET `id` = @v0, `pic` = UNHEX(@v1)"),
            "{sql}"
        );
    }

    #[test]
    fn warnings_lose_their_values() {
        assert_eq!(
            redact_values("Incorrect datetime value: '0044-03-15 BC' for column `t`.`d` at row 5"),
            "Incorrect datetime value: '…' for column `t`.`d` at row 5"
        );
    }
}
