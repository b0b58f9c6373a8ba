//! Helpers shared by the end-to-end tests: real servers, task files, running the binary.
#![allow(dead_code)]

use pgtide::verify::{self, Verification};
use pgtide_core::endpoint::ConnUrl;
use pgtide_testkit::{MariaDbServer, PgOptions, PgServer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A source (logical WAL) and a target server.
pub struct Pair {
    pub source: PgServer,
    pub target: PgServer,
}

impl Pair {
    pub fn start() -> Pair {
        let source = PgServer::start_with(PgOptions {
            logical: true,
            ..Default::default()
        })
        .expect("source server");
        let target = PgServer::start_with(PgOptions {
            logical: false,
            ..Default::default()
        })
        .expect("target server");
        Pair { source, target }
    }
}

/// Write a task file into `dir`.
pub fn task_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

/// A full-load task between `source_url` and `target_url`, with extra YAML appended.
pub fn task_yaml(name: &str, source_url: &str, target_url: &str, extra: &str) -> String {
    format!(
        "name: {name}\nsource: {{ url: \"{source_url}\" }}\ntarget: {{ url: \"{target_url}\" }}\nmode: full-load\n{extra}"
    )
}

/// Run the pgtide binary; a run that takes longer than ten minutes is killed and fails the test.
pub fn pgtide(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(args)
        .env("PGTIDE_LOG", "info")
        .env_remove("PGPASSWORD")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run pgtide");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pgtide {args:?} did not finish in 10 minutes\nstderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

/// Run `pgtide run TASK` and assert success, returning stdout.
pub fn run_ok(task: &Path) -> String {
    let out = pgtide(&["--progress", "none", "run", task.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "pgtide run failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    stdout
}

/// Run `pgtide run TASK`, expect failure, return (exit code, stderr).
pub fn run_err(task: &Path) -> (i32, String) {
    let out = pgtide(&["--progress", "none", "run", task.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "pgtide run unexpectedly succeeded\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code().unwrap_or(-1), stderr)
}

/// Run pgtide with `args`, assert failure, return (exit code, stderr).
pub fn run_err_args(args: &[&str]) -> (i32, String) {
    let mut all = vec!["--progress", "none"];
    all.extend_from_slice(args);
    let out = pgtide(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "pgtide {args:?} unexpectedly succeeded\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code().unwrap_or(-1), stderr)
}

/// Compare source and target databases with pgtide's verifier.
pub fn compare(source_url: &str, target_url: &str, schemas: &[&str]) -> Verification {
    let s = ConnUrl::parse(source_url, "source").unwrap();
    let t = ConnUrl::parse(target_url, "target").unwrap();
    let schemas: Vec<String> = schemas.iter().map(|s| s.to_string()).collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(verify::verify(&s, &t, &schemas))
        .expect("verify")
}

/// A `pgtide run` in the background, with its output captured to files.
pub struct Running {
    pub child: std::process::Child,
    pub out: PathBuf,
    pub err: PathBuf,
    peak_kb: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Start `pgtide run` with `args` and extra environment variables.
    pub fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtide"));
        cmd.args(["--progress", "lines"])
            .args(args)
            .env("PGTIDE_LOG", "info")
            .env_remove("PGPASSWORD");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn pgtide");
        // VmHWM is the process's peak resident set so far; sample it until the process ends.
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (p, pid) = (peak.clone(), child.id());
        let sampler = std::thread::spawn(move || {
            loop {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    return;
                };
                if let Some(kb) = status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    p.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                }
                if status.contains("State:\tZ") {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Running {
            child,
            out,
            err,
            peak_kb: peak,
            sampler: Some(sampler),
        }
    }

    /// Send SIGTERM (a graceful stop for change data capture).
    pub fn terminate(&self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Wait for the process; returns (exit code, stdout, stderr).
    pub fn wait(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().unwrap();
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        (
            status.code(),
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default(),
        )
    }

    /// Peak resident memory seen, in MiB.
    pub fn peak_mib(&self) -> u64 {
        self.peak_kb.load(std::sync::atomic::Ordering::Relaxed) / 1024
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Wait until `cond` holds, polling; panics with `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The source's current WAL insert position: past every commit record written so far. (The
/// test servers commit asynchronously, so `pg_current_wal_lsn()`, the *write* position, can
/// still be before a transaction that just committed.)
pub fn current_lsn(server: &PgServer, db: &str) -> String {
    server
        .psql(db, "SELECT pg_current_wal_insert_lsn()")
        .unwrap()
}

/// The task's phase on the target, if recorded.
pub fn phase(target: &PgServer, db: &str, task: &str) -> Option<String> {
    target
        .psql(
            db,
            &format!("SELECT phase FROM pgtide.task WHERE name = '{task}'"),
        )
        .ok()
        .filter(|s| !s.is_empty())
}

/// Run pgtide with `args`, assert success, return stdout.
pub fn run_ok_args(args: &[&str]) -> String {
    run_ok_args_both(args).0
}

/// Run pgtide with `args`, assert success, return (stdout, stderr).
pub fn run_ok_args_both(args: &[&str]) -> (String, String) {
    let mut all = vec!["--progress", "none"];
    all.extend_from_slice(args);
    let out = pgtide(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "pgtide {args:?} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    (stdout, stderr)
}

/// Canonical text of every row of `table`, ordered by its key, as an md5 on each side.
pub fn digests(
    source: &PgServer,
    src_db: &str,
    maria: &MariaDbServer,
    my_db: &str,
    table: &str,
) -> (String, String) {
    let cols = source
        .psql(
            src_db,
            &format!(
                "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) \
                 FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}'"
            ),
        )
        .unwrap();
    let key = source
        .psql(
            src_db,
            &format!(
                "SELECT string_agg(a.attname, ',' ORDER BY array_position(i.indkey::int2[], a.attnum)) \
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = 'public.{table}'::regclass AND i.indisprimary"
            ),
        )
        .unwrap();
    assert!(!key.is_empty(), "{table} has a primary key");
    let (mut pg, mut my) = (Vec::new(), Vec::new());
    for c in cols.split(',') {
        let (raw, ty) = c.split_once(':').unwrap();
        let (pname, mname) = (format!("\"{raw}\""), format!("`{raw}`"));
        let (p, m) = match ty {
            "boolean" => (
                format!("{pname}::int::text"),
                format!("CAST({mname} AS CHAR)"),
            ),
            "timestamp with time zone" => (
                format!("to_char({pname} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
                format!("DATE_FORMAT({mname}, '%Y-%m-%d %H:%i:%s.%f')"),
            ),
            "timestamp without time zone" => (
                format!("to_char({pname}, 'YYYY-MM-DD HH24:MI:SS.US')"),
                format!("DATE_FORMAT({mname}, '%Y-%m-%d %H:%i:%s.%f')"),
            ),
            "time with time zone" | "time without time zone" => (
                format!("to_char({pname}::time::interval, 'HH24:MI:SS.US')"),
                format!("TIME_FORMAT({mname}, '%H:%i:%s.%f')"),
            ),
            "ARRAY" => (
                format!("to_json({pname})::text"),
                format!("JSON_COMPACT({mname})"),
            ),
            "bytea" => (
                format!("encode({pname}, 'hex')"),
                format!("LOWER(HEX({mname}))"),
            ),
            "bit" => (
                format!("{pname}::bigint::text"),
                format!("CAST({mname} + 0 AS CHAR)"),
            ),
            "real" | "double precision" => (
                format!("{pname}::numeric(65,6)::text"),
                format!("CAST({mname} AS DECIMAL(65,6))"),
            ),
            "numeric" | "money" => (
                format!("trim_scale({pname}::numeric)::text"),
                format!(
                    "IF(LOCATE('.', CAST({mname} AS CHAR)) > 0, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST({mname} AS CHAR))), CAST({mname} AS CHAR))"
                ),
            ),
            _ => (format!("{pname}::text"), format!("CAST({mname} AS CHAR)")),
        };
        pg.push(format!("coalesce({p}, '<null>')"));
        my.push(format!("COALESCE({m}, '<null>')"));
    }
    let (pg_rows, my_rows) = (
        format!(
            "SELECT string_agg(concat_ws('|', {}), E'\\n' ORDER BY {key}) FROM (SELECT * FROM public.{table} ORDER BY {key} LIMIT 20) t",
            pg.join(", ")
        ),
        format!(
            "SELECT GROUP_CONCAT(CONCAT_WS('|', {}) ORDER BY {key} SEPARATOR '\\n') FROM (SELECT * FROM `{table}` ORDER BY {key} LIMIT 20) t",
            my.join(", ")
        ),
    );
    let a = source
        .psql(
            src_db,
            &format!(
                "SELECT md5(coalesce(string_agg(concat_ws('|', {}), E'\\n' ORDER BY {key}), '')) || ' ' || count(*) FROM public.{table}",
                pg.join(", ")
            ),
        )
        .unwrap();
    let b = maria
        .sql(
            my_db,
            &format!(
                "SELECT CONCAT(MD5(COALESCE(GROUP_CONCAT(CONCAT_WS('|', {}) ORDER BY {key} SEPARATOR '\\n'), '')), ' ', COUNT(*)) FROM `{table}`",
                my.join(", ")
            ),
        )
        .unwrap();
    if a != b {
        eprintln!(
            "{table} first rows\nsource:\n{}\nmariadb:\n{}",
            source.psql(src_db, &pg_rows).unwrap_or_default(),
            maria.sql(my_db, &my_rows).unwrap_or_default()
        );
    }
    (a, b)
}

pub fn maria_phase(maria: &MariaDbServer, my_db: &str, task: &str) -> Option<String> {
    maria
        .sql(
            my_db,
            &format!("SELECT phase FROM _pgtide_cdc WHERE task = '{task}'"),
        )
        .ok()
        .filter(|s| !s.is_empty())
}
