//! A throwaway MariaDB server: `mariadb-install-db` and `mariadbd` from the machine's MariaDB
//! programs (Debian package `mariadb-server`), on a free port and a private socket in a
//! temporary directory, as an unprivileged user when the caller is root, stopped when dropped
//! and by a watchdog if the test process dies.
//!
//! Programs are looked up in `PGTIDE_MARIADB_BIN` (a directory), then `/usr/sbin`, `/usr/bin`
//! and `PATH`. Clients connect as `pgtide`/`pgtide` over TCP ([`MariaDbServer::url`]); the test
//! helpers use the `mariadb` client as root over the socket.

use pgtide_core::{Error, ErrorKind, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running throwaway MariaDB server.
pub struct MariaDbServer {
    root: tempfile::TempDir,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    watchdog: Option<Child>,
    server: PathBuf,
    client: PathBuf,
    /// Extra `mariadbd` options (e.g. TLS certificates).
    extra: Vec<String>,
}

fn find_program(names: &[&str]) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("PGTIDE_MARIADB_BIN") {
        dirs.push(d.into());
    }
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    if let Ok(path) = std::env::var("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for d in &dirs {
        for n in names {
            let p = d.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::new(
        ErrorKind::Prerequisite,
        format!("MariaDB program {} not found", names.join(" or ")),
    )
    .with_hint("install MariaDB (apt-get install mariadb-server), or set PGTIDE_MARIADB_BIN to the directory holding mariadbd and mariadb-install-db"))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl MariaDbServer {
    /// Install a data directory and start the server.
    pub fn start() -> Result<Self> {
        Self::start_with_args(&[])
    }

    /// As [`MariaDbServer::start`], with extra `mariadbd` options (e.g. `--ssl-cert=...`,
    /// `--require-secure-transport=ON`).
    pub fn start_with_args(extra: &[String]) -> Result<Self> {
        let install = find_program(&["mariadb-install-db", "mysql_install_db"])?;
        let server = find_program(&["mariadbd", "mysqld"])?;
        let client = find_program(&["mariadb", "mysql"])?;
        let run_as = crate::pg::unprivileged_user()?;
        let root = tempfile::Builder::new()
            .prefix("pgtide-mariadb-")
            .tempdir()?;
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid))?;
        }
        let mut db = MariaDbServer {
            root,
            port: 0,
            run_as,
            child: None,
            watchdog: None,
            server,
            client,
            extra: extra.to_vec(),
        };
        // A temporary directory of its own: bootstraps running at the same time in a shared
        // /tmp collided on MariaDB's internal temporary table files (seen as "Could not
        // remove temporary table" and a failed install).
        let tmp = db.tmp_dir();
        fs::create_dir(&tmp)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
        }
        let mut c = db.command(&install);
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", db.data_dir().display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if run_as.is_some() {
            // mariadb-install-db refuses to run as root without a --user; we already are that user.
            c.arg(format!("--user={}", crate::pg::unprivileged_user_name()));
        }
        let out = c.stdin(Stdio::null()).output().map_err(|e| {
            Error::new(ErrorKind::Prerequisite, "cannot run mariadb-install-db").with_source(e)
        })?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Prerequisite,
                format!(
                    "mariadb-install-db failed: {}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let mut last = None;
        for _ in 0..5 {
            db.port = free_port()?;
            match db.launch() {
                Ok(()) => {
                    db.sql(
                        "",
                        "CREATE USER 'pgtide'@'%' IDENTIFIED BY 'pgtide'; \
                         GRANT ALL PRIVILEGES ON *.* TO 'pgtide'@'%' WITH GRANT OPTION; \
                         CREATE USER 'pgtide'@'localhost' IDENTIFIED BY 'pgtide'; \
                         GRANT ALL PRIVILEGES ON *.* TO 'pgtide'@'localhost' WITH GRANT OPTION;",
                    )?;
                    return Ok(db);
                }
                Err(e) if e.message().contains("in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::internal("could not start MariaDB")))
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.current_dir(self.root.path());
        c
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.path().join("tmp")
    }

    /// The server's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.root.path().join("mariadb.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    fn launch(&mut self) -> Result<()> {
        let mut c = self.command(&self.server.clone());
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--tmpdir={}", self.tmp_dir().display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--pid-file={}",
                self.root.path().join("mariadb.pid").display()
            ))
            .arg(format!("--log-error={}", self.log_path().display()))
            .args([
                "--skip-log-bin",
                "--local-infile=1",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_bin",
                "--innodb-buffer-pool-size=128M",
                "--innodb-flush-log-at-trx-commit=2",
                "--skip-name-resolve",
                "--max-connections=200",
            ])
            .args(&self.extra);
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::new(ErrorKind::Prerequisite, "cannot start mariadbd").with_source(e)
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
                let tail: Vec<&str> = log.lines().rev().take(6).collect();
                let text = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
                let in_use = text.contains("Address already in use");
                return Err(Error::new(
                    ErrorKind::Prerequisite,
                    format!(
                        "mariadbd exited at start ({status}){}: {text}",
                        if in_use { ", port in use" } else { "" }
                    ),
                ));
            }
            if self.socket().exists() && self.sql("", "SELECT 1").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Prerequisite,
                    "mariadbd did not become ready in 60 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_watchdog(&mut self, server: u32) -> Result<()> {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let script = format!(
            "while [ -d /proc/{me} ] && [ -d /proc/{pid} ]; do sleep 1; done; \
             if [ -d /proc/{pid} ]; then kill -KILL {pid} 2>/dev/null; rm -rf '{dir}'; fi",
            me = std::process::id(),
            pid = server,
            dir = self.root.path().display()
        );
        self.watchdog = Some(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()?,
        );
        Ok(())
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://pgtide:pgtide@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://pgtide:pgtide@127.0.0.1:{}/{db}", self.port)
    }

    /// Run SQL as root over the socket (in `db` unless empty); tab-separated rows, no header.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let mut c = Command::new(&self.client);
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args([
                "-uroot",
                "-N",
                "-B",
                "--local-infile=1",
                "--default-character-set=utf8mb4",
                "-e",
                sql,
            ]);
        if !db.is_empty() {
            c.arg(db);
        }
        let out = c.stdin(Stdio::null()).output().map_err(|e| {
            Error::new(ErrorKind::Io, "cannot run the mariadb client").with_source(e)
        })?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "mariadb client failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Run a file of SQL statements in `db`.
    pub fn sql_file(&self, db: &str, file: &Path) -> Result<()> {
        let input = fs::File::open(file)?;
        let out = Command::new(&self.client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-N", "-B", db])
            .stdin(input)
            .output()
            .map_err(|e| {
                Error::new(ErrorKind::Io, "cannot run the mariadb client").with_source(e)
            })?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "mariadb client failed on {}: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }

    /// `CREATE DATABASE` with utf8mb4.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.sql(
            "",
            &format!(
                "CREATE DATABASE `{}` CHARACTER SET utf8mb4",
                name.replace('`', "``")
            ),
        )
        .map(|_| ())
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The data is thrown away: no need for a clean shutdown.
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}
