//! Helpers shared by the end-to-end tests: real servers, task files, running the binary.
#![allow(dead_code)]

use pgtide::verify::{self, Verification};
use pgtide_core::endpoint::ConnUrl;
use pgtide_testkit::{PgOptions, PgServer};
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

/// Run the pgtide binary.
pub fn pgtide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(args)
        .env("PGTIDE_LOG", "info")
        .env_remove("PGPASSWORD")
        .output()
        .expect("run pgtide")
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
