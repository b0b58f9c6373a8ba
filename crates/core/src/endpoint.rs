//! Connection URLs, parsed once and printable without their secrets.
//!
//! pgtide takes libpq-style URLs (`postgresql://user:pw@host:5432/db?sslmode=verify-full`) and
//! `mysql://` URLs. We parse them ourselves instead of handing the string to a driver because:
//! the password must never reach a log line, an error or a child process's command line (it goes
//! to `pg_dump` through the environment); `sslmode` values that the driver does not know
//! (`verify-ca`, `verify-full`) are implemented by pgtide's TLS setup; and an unknown parameter
//! must be a task-file error before anything connects, not a surprise at connect time.
//!
//! Password sources, first match wins: the URL, the endpoint's `password_env` variable, its
//! `password_file`, then libpq's own fallbacks `PGPASSWORD` and the `~/.pgpass` file (or
//! `PGPASSFILE`), so an operator's existing setup keeps working.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A password or other secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for handing to a driver. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Which database family an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// PostgreSQL (any version pgtide supports).
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointKind::Postgres => "PostgreSQL",
            EndpointKind::Mysql => "MySQL",
        })
    }
}

/// TLS policy, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate (libpq's default).
    Prefer,
    /// Require TLS; verify the chain only if a root certificate is configured (as libpq does).
    Require,
    /// Require TLS and a certificate chain that leads to the configured root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<Self> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::config(format!("unknown sslmode {other:?}"))
                    .with_hint("use one of disable, prefer, require, verify-ca, verify-full"));
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A TCP host name or address.
    Tcp(String),
    /// A Unix-domain socket directory (a host starting with `/`).
    Socket(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Socket(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A parsed connection URL with its password resolved.
#[derive(Debug, Clone)]
pub struct ConnUrl {
    /// PostgreSQL or MySQL.
    pub kind: EndpointKind,
    /// Host or socket directory.
    pub host: Host,
    /// TCP port (also names the socket file for PostgreSQL).
    pub port: u16,
    /// User name.
    pub user: String,
    /// Database name.
    pub database: String,
    /// TLS policy.
    pub sslmode: SslMode,
    /// CA certificate file for `verify-ca`/`verify-full`, or `system` for the OS trust store.
    pub sslrootcert: Option<String>,
    /// Client certificate file (PEM).
    pub sslcert: Option<PathBuf>,
    /// Client key file (PEM).
    pub sslkey: Option<PathBuf>,
    /// Connect timeout in seconds.
    pub connect_timeout: Option<u64>,
    /// `application_name` shown in `pg_stat_activity`.
    pub application_name: Option<String>,
    /// The password, from wherever it was found.
    pub password: Option<Secret>,
    /// Where the password came from, for messages ("from PGPASSWORD").
    pub password_source: Option<String>,
}

const PG_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "application_name",
    "host",
    "port",
    "user",
    "password",
    "dbname",
];

fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| Error::config(format!("bad percent-escape in the URL's {what}")))?;
            let b = u8::from_str_radix(hex, 16)
                .map_err(|_| Error::config(format!("bad percent-escape in the URL's {what}")))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::config(format!("the URL's {what} is not UTF-8")))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn default_socket_dir() -> Host {
    for d in ["/var/run/postgresql", "/tmp"] {
        if Path::new(d).is_dir() {
            return Host::Socket(PathBuf::from(d));
        }
    }
    Host::Tcp("localhost".into())
}

fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "postgres".into())
}

impl ConnUrl {
    /// Parse a URL. `field` names the task-file field for error messages. The password is
    /// not resolved yet; see [`ConnUrl::resolve_password`].
    pub fn parse(url: &str, field: &str) -> Result<Self> {
        let bad = |msg: String| {
            Error::config(format!("{field}: {msg}")).with_hint(
                "write postgresql://user@host:5432/dbname?sslmode=require or mysql://user@host:3306/dbname",
            )
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("is not a URL (no scheme://)".into()))?;
        let kind = match scheme {
            "postgres" | "postgresql" => EndpointKind::Postgres,
            "mysql" | "mariadb" => EndpointKind::Mysql,
            other => return Err(bad(format!("unsupported scheme {other:?}"))),
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, p),
            None => (before_query, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut user = None;
        let mut password = None;
        if let Some(ui) = userinfo {
            match ui.split_once(':') {
                Some((u, p)) => {
                    user = Some(percent_decode(u, "user")?);
                    password = Some(Secret(percent_decode(p, "password")?));
                }
                None => user = Some(percent_decode(ui, "user")?),
            }
        }
        if hostport.contains(',') {
            return Err(bad(
                "lists several hosts; pgtide connects to exactly one".into()
            ));
        }
        let (host_part, port_part) = if let Some(stripped) = hostport.strip_prefix('[') {
            // [ipv6]:port
            let (h, after) = stripped
                .split_once(']')
                .ok_or_else(|| bad("has an unterminated [IPv6] host".into()))?;
            (h.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.to_string())),
                None => (hostport.to_string(), None),
            }
        };
        let mut host = if host_part.is_empty() {
            None
        } else {
            Some(percent_decode(&host_part, "host")?)
        };
        let mut port: Option<u16> = match port_part.as_deref() {
            None | Some("") => None,
            Some(p) => Some(
                p.parse()
                    .map_err(|_| bad(format!("port {p:?} is not a number from 1 to 65535")))?,
            ),
        };
        let mut database = if path.is_empty() {
            None
        } else {
            Some(percent_decode(path, "database name")?)
        };

        let mut params = BTreeMap::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = percent_decode(k, "query")?;
                let v = percent_decode(v, "query")?;
                if kind == EndpointKind::Postgres && !PG_PARAMS.contains(&k.as_str()) {
                    return Err(Error::config(format!(
                        "{field}: unknown connection parameter {k:?}"
                    ))
                    .with_hint(format!("pgtide understands: {}", PG_PARAMS.join(", "))));
                }
                params.insert(k, v);
            }
        }
        if let Some(h) = params.remove("host") {
            host = Some(h);
        }
        if let Some(p) = params.remove("port") {
            port = Some(
                p.parse()
                    .map_err(|_| bad(format!("port {p:?} is not a number from 1 to 65535")))?,
            );
        }
        if let Some(u) = params.remove("user") {
            user = Some(u);
        }
        if let Some(p) = params.remove("password") {
            password = Some(Secret(p));
        }
        if let Some(d) = params.remove("dbname") {
            database = Some(d);
        }
        let host = match host {
            Some(h) if h.starts_with('/') => Host::Socket(PathBuf::from(h)),
            Some(h) => Host::Tcp(h),
            None if kind == EndpointKind::Postgres => default_socket_dir(),
            None => Host::Tcp("localhost".into()),
        };
        let user = user.unwrap_or_else(os_user);
        let database = database.unwrap_or_else(|| user.clone());
        let sslmode = match params.remove("sslmode") {
            Some(m) => SslMode::parse(&m).map_err(|e| e.context(field))?,
            None => SslMode::Prefer,
        };
        let connect_timeout =
            match params.remove("connect_timeout") {
                Some(t) => Some(t.parse().map_err(|_| {
                    bad(format!("connect_timeout {t:?} is not a number of seconds"))
                })?),
                None => None,
            };
        let password_source = password.as_ref().map(|_| "the URL".to_string());
        Ok(ConnUrl {
            kind,
            host,
            port: port.unwrap_or(match kind {
                EndpointKind::Postgres => 5432,
                EndpointKind::Mysql => 3306,
            }),
            user,
            database,
            sslmode,
            sslrootcert: params.remove("sslrootcert"),
            sslcert: params.remove("sslcert").map(PathBuf::from),
            sslkey: params.remove("sslkey").map(PathBuf::from),
            connect_timeout,
            application_name: params.remove("application_name"),
            password,
            password_source,
        })
    }

    /// Fill in the password when the URL had none, from (in order) the named environment
    /// variable, the named file, `PGPASSWORD`, and the pgpass file.
    pub fn resolve_password(
        &mut self,
        password_env: Option<&str>,
        password_file: Option<&Path>,
        field: &str,
    ) -> Result<()> {
        if self.password.is_some() {
            if password_env.is_some() || password_file.is_some() {
                return Err(Error::config(format!(
                    "{field}: the URL has a password and password_env/password_file is also set"
                ))
                .with_hint("keep the password in one place, preferably out of the task file"));
            }
            return Ok(());
        }
        if let Some(var) = password_env {
            match std::env::var(var) {
                Ok(v) => {
                    self.password = Some(Secret(v));
                    self.password_source = Some(format!("environment variable {var}"));
                    return Ok(());
                }
                Err(_) => {
                    return Err(Error::config(format!(
                        "{field}.password_env: environment variable {var} is not set"
                    ))
                    .with_hint(format!("export {var}=... before running pgtide")));
                }
            }
        }
        if let Some(path) = password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config(format!(
                    "{field}.password_file: cannot read {}",
                    path.display()
                ))
                .with_source(e)
            })?;
            let pw = text.trim_end_matches(['\n', '\r']).to_string();
            self.password = Some(Secret(pw));
            self.password_source = Some(format!("file {}", path.display()));
            return Ok(());
        }
        let env_var = match self.kind {
            EndpointKind::Postgres => "PGPASSWORD",
            EndpointKind::Mysql => "MYSQL_PWD",
        };
        if let Ok(v) = std::env::var(env_var) {
            self.password = Some(Secret(v));
            self.password_source = Some(format!("environment variable {env_var}"));
            return Ok(());
        }
        if self.kind == EndpointKind::Postgres
            && let Some(pw) = self.pgpass_lookup()
        {
            self.password = Some(Secret(pw));
            self.password_source = Some("the pgpass file".into());
        }
        Ok(())
    }

    /// libpq's pgpass lookup: `hostname:port:database:username:password`, `*` wildcards,
    /// `\:` and `\\` escapes; the first matching line wins.
    fn pgpass_lookup(&self) -> Option<String> {
        let path = match std::env::var_os("PGPASSFILE") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
        };
        let text = std::fs::read_to_string(path).ok()?;
        let host = match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Socket(_) => "localhost".into(),
        };
        let port = self.port.to_string();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let fields = split_pgpass(line);
            if fields.len() < 5 {
                continue;
            }
            let m = |pat: &str, v: &str| pat == "*" || pat == v;
            if m(&fields[0], &host)
                && m(&fields[1], &port)
                && m(&fields[2], &self.database)
                && m(&fields[3], &self.user)
            {
                return Some(fields[4..].join(":"));
            }
        }
        None
    }

    /// The URL without the password, for messages and logs.
    pub fn redacted(&self) -> String {
        let scheme = match self.kind {
            EndpointKind::Postgres => "postgresql",
            EndpointKind::Mysql => "mysql",
        };
        let host = match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
            Host::Tcp(h) => h.clone(),
            Host::Socket(p) => percent_encode(&p.display().to_string()),
        };
        let mut s = format!(
            "{scheme}://{}@{host}:{}/{}",
            percent_encode(&self.user),
            self.port,
            percent_encode(&self.database)
        );
        if self.kind == EndpointKind::Postgres {
            s.push_str("?sslmode=");
            s.push_str(self.sslmode.as_str());
        }
        s
    }
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("non-empty").push(n);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields
}

impl fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url_and_never_prints_the_password() {
        let u = ConnUrl::parse(
            "postgresql://alice:s3cr%40t@db.example.com:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem",
            "source.url",
        )
        .unwrap();
        assert_eq!(u.kind, EndpointKind::Postgres);
        assert_eq!(u.host, Host::Tcp("db.example.com".into()));
        assert_eq!(u.port, 6543);
        assert_eq!(u.user, "alice");
        assert_eq!(u.database, "shop");
        assert_eq!(u.password.as_ref().unwrap().expose(), "s3cr@t");
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
    }

    #[test]
    fn socket_hosts_ipv6_and_defaults() {
        let u = ConnUrl::parse("postgresql://bob@%2Ftmp%2Fsock:5499/x", "f").unwrap();
        assert_eq!(u.host, Host::Socket("/tmp/sock".into()));
        let u = ConnUrl::parse("postgres://u@[::1]:5433/d", "f").unwrap();
        assert_eq!(u.host, Host::Tcp("::1".into()));
        assert_eq!(u.port, 5433);
        let u = ConnUrl::parse("postgresql://u@h/", "f").unwrap();
        assert_eq!(u.database, "u");
        assert_eq!(u.port, 5432);
        let m = ConnUrl::parse("mysql://root@127.0.0.1/db", "f").unwrap();
        assert_eq!(m.port, 3306);
    }

    #[test]
    fn rejects_unknown_parameters_and_modes() {
        let e = ConnUrl::parse("postgresql://u@h/d?sslmod=require", "target.url").unwrap_err();
        assert!(e.message().contains("target.url"), "{}", e.report());
        assert!(e.message().contains("sslmod"));
        let e = ConnUrl::parse("postgresql://u@h/d?sslmode=maybe", "target.url").unwrap_err();
        assert!(e.report().contains("verify-full"));
        assert!(ConnUrl::parse("oracle://x", "f").is_err());
        assert!(ConnUrl::parse("localhost:5432", "f").is_err());
        assert!(ConnUrl::parse("postgresql://u@h1,h2/d", "f").is_err());
    }

    #[test]
    fn password_from_file_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        let mut u = ConnUrl::parse("postgresql://u@h/d", "source.url").unwrap();
        u.resolve_password(None, Some(&f), "source").unwrap();
        assert_eq!(u.password.unwrap().expose(), "hunter2");
        let mut u = ConnUrl::parse("postgresql://u:x@h/d", "source.url").unwrap();
        assert!(u.resolve_password(None, Some(&f), "source").is_err());
        let mut u = ConnUrl::parse("postgresql://u@h/d", "source.url").unwrap();
        let e = u
            .resolve_password(Some("PGTIDE_TEST_SURELY_UNSET_VAR"), None, "source")
            .unwrap_err();
        assert!(e.message().contains("PGTIDE_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn pgpass_escapes() {
        assert_eq!(
            split_pgpass(r"h:5432:d:u:pa\:ss\\w"),
            vec!["h", "5432", "d", "u", r"pa:ss\w"]
        );
    }
}
