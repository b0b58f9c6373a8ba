//! A throwaway PostgreSQL cluster.

use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::programs::{BinDir, find_server_bin};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to set up a server.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `wal_level = logical` with room for slots and senders (for sources).
    pub logical: bool,
    /// Trade durability for speed (`fsync = off`, ...): fine for throwaway data.
    pub fast: bool,
    /// Require this password for TCP connections of user `postgres` (scram-sha-256).
    pub password: Option<String>,
    /// Extra `postgresql.conf` lines.
    pub settings: Vec<(String, String)>,
    /// Use this program directory instead of the newest one found.
    pub bin: Option<BinDir>,
    /// Serve TLS with this certificate and key (PEM files; copied into the server's directory).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Replace `pg_hba.conf` with these lines.
    pub hba: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            logical: true,
            fast: true,
            password: None,
            settings: Vec::new(),
            bin: None,
            tls: None,
            hba: None,
        }
    }
}

/// A running throwaway cluster. Dropping it stops the server and deletes its files.
pub struct PgServer {
    bin: BinDir,
    /// `psql` for the helpers: the server's own, or the machine's (embedded builds have none).
    psql: PathBuf,
    root: tempfile::TempDir,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    watchdog: Option<Child>,
    options: PgOptions,
}

/// The name of the user servers run as when we are root.
pub(crate) fn unprivileged_user_name() -> String {
    std::env::var("PGTIDE_TEST_USER").unwrap_or_else(|_| "postgres".into())
}

/// The user to run servers as when we are root: `PGTIDE_TEST_USER` or `postgres`.
pub(crate) fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    let me = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    if me != 0 {
        return Ok(None);
    }
    let name = unprivileged_user_name();
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3
            && f[0] == name
            && let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse())
        {
            return Ok(Some((uid, gid)));
        }
    }
    Err(Error::new(
        ErrorKind::Prerequisite,
        format!("running as root, and there is no user {name:?} to run PostgreSQL servers as"),
    )
    .with_hint("install the postgresql package (it creates the postgres user), or set PGTIDE_TEST_USER to an existing unprivileged user"))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl PgServer {
    /// Start a server with default options (logical WAL, fast).
    pub fn start() -> Result<Self> {
        Self::start_with(PgOptions::default())
    }

    /// Start a server.
    pub fn start_with(options: PgOptions) -> Result<Self> {
        let bin = match &options.bin {
            Some(b) => b.clone(),
            None => find_server_bin(&["initdb", "postgres", "psql"])?,
        };
        let run_as = unprivileged_user()?;
        let root = tempfile::Builder::new().prefix("pgtide-pg-").tempdir()?;
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid))?;
        }
        let psql = if bin.program("psql").is_file() {
            bin.program("psql")
        } else {
            find_server_bin(&["psql"])?.program("psql")
        };
        let mut server = PgServer {
            bin,
            psql,
            root,
            port: 0,
            run_as,
            child: None,
            watchdog: None,
            options,
        };
        server.initdb()?;
        let mut last_err = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e)
                    if e.message().contains("could not bind")
                        || e.message().contains("already in use") =>
                {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::internal("could not start PostgreSQL")))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.program(program));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.current_dir(self.root.path());
        c
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    fn initdb(&self) -> Result<()> {
        let mut c = self.command("initdb");
        c.arg("-D").arg(self.data_dir()).args([
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        if let Some(pw) = &self.options.password {
            let pwfile = self.root.path().join("pwfile");
            fs::write(&pwfile, pw)?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
            }
            c.arg(format!("--pwfile={}", pwfile.display()))
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        } else {
            c.args(["--auth=trust"]);
        }
        let out = c
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::new(ErrorKind::Prerequisite, "cannot run initdb").with_source(e))?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Prerequisite,
                format!(
                    "initdb failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let mut conf = String::from("\n# pgtide testkit\nlisten_addresses = '127.0.0.1'\n");
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.socket_dir().display()
        ));
        conf.push_str("max_connections = 100\nshared_buffers = 64MB\nlog_min_messages = warning\n");
        if self.options.logical {
            conf.push_str(
                "wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n",
            );
        }
        if self.options.fast {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        for (k, v) in &self.options.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        if let Some((cert, key)) = &self.options.tls {
            for (src, name) in [(cert, "server.crt"), (key, "server.key")] {
                let dst = self.data_dir().join(name);
                fs::copy(src, &dst)?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(0o600))?;
                if let Some((uid, gid)) = self.run_as {
                    std::os::unix::fs::chown(&dst, Some(uid), Some(gid))?;
                }
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        if let Some(hba) = &self.options.hba {
            fs::write(self.data_dir().join("pg_hba.conf"), hba)?;
        }
        fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))?
            .write_all(conf.as_bytes())?;
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid))?;
        }
        let mut c = self.command("postgres");
        c.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string());
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::new(ErrorKind::Prerequisite, "cannot start postgres").with_source(e)
            })?;
        let pid = child.id();
        self.child = Some(child);
        self.start_watchdog(pid)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                return Err(Error::new(
                    ErrorKind::Prerequisite,
                    format!(
                        "postgres exited at start ({status}): {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    ),
                ));
            }
            let pidfile =
                fs::read_to_string(self.data_dir().join("postmaster.pid")).unwrap_or_default();
            if pidfile
                .lines()
                .nth(7)
                .map(|l| l.trim() == "ready")
                .unwrap_or(false)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Prerequisite,
                    "postgres did not become ready in 60 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A separate process that stops the server and removes its files if this process dies
    /// without dropping the server (killed test, panic with abort).
    fn start_watchdog(&mut self, postmaster: u32) -> Result<()> {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let script = format!(
            "while [ -d /proc/{me} ] && [ -d /proc/{pm} ]; do sleep 1; done; \
             if [ -d /proc/{pm} ]; then kill -QUIT {pm} 2>/dev/null; sleep 2; kill -KILL {pm} 2>/dev/null; rm -rf '{dir}'; fi",
            me = std::process::id(),
            pm = postmaster,
            dir = self.root.path().display()
        );
        let w = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        self.watchdog = Some(w);
        Ok(())
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Program directory in use.
    pub fn bin(&self) -> &BinDir {
        &self.bin
    }

    /// A URL for `db` as superuser `postgres` over TCP (password included when set).
    pub fn url(&self, db: &str) -> String {
        match &self.options.password {
            Some(pw) => format!(
                "postgresql://postgres:{pw}@127.0.0.1:{}/{db}?sslmode=disable",
                self.port
            ),
            None => format!(
                "postgresql://postgres@127.0.0.1:{}/{db}?sslmode=disable",
                self.port
            ),
        }
    }

    /// A URL without the password.
    pub fn url_without_password(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Run SQL through psql over the Unix socket; returns unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(&self.psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "psql failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string())
    }

    /// Run a SQL file through psql.
    pub fn psql_file(&self, db: &str, file: &Path) -> Result<()> {
        let out = Command::new(&self.psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-f",
            ])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "psql -f {} failed: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }

    /// `CREATE DATABASE`.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", pgtide_core::ident::quote_ident(name)),
        )
        .map(|_| ())
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    return true;
                }
                Ok(None) if Instant::now() > deadline => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        true
    }

    /// Fast shutdown (as `pg_ctl stop -m fast`).
    pub fn stop(&mut self) {
        self.signal("INT");
        if !self.wait_exit(Duration::from_secs(30)) {
            self.signal("QUIT");
            if !self.wait_exit(Duration::from_secs(10))
                && let Some(mut c) = self.child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Immediate shutdown, like a crash (as `pg_ctl stop -m immediate`).
    pub fn crash(&mut self) {
        self.signal("QUIT");
        if !self.wait_exit(Duration::from_secs(10))
            && let Some(mut c) = self.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again after [`stop`](Self::stop) or [`crash`](Self::crash), on the same port.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop();
        }
        self.launch()
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Immediate: the data is thrown away anyway.
            self.crash();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}
