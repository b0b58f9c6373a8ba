//! `pgtide demo`: the whole job on throwaway servers.
//!
//! Starts two PostgreSQL servers from this machine's programs (as an unprivileged user when run
//! as root), builds the sample shop on the source, writes a task file like a user would, runs
//! the full load with progress, verifies every table, sequence and schema object, prints the
//! report, and stops both servers. Nothing is left running or on disk, also on Ctrl-C.

use crate::demo_data;
use crate::fullload::{self, RunOptions};
use crate::progress::{Display, DisplayMode, Progress};
use crate::verify;
use pgtide_core::task::Task;
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::connect::{Side, classify, connect};
use pgtide_testkit::{PgOptions, PgServer};
use std::sync::Arc;
use std::time::Instant;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Data multiplier: 1 is about 400,000 rows.
    pub scale: u32,
    /// Load workers.
    pub threads: usize,
    /// Progress display.
    pub display: DisplayMode,
}

async fn start_server(logical: bool) -> Result<PgServer> {
    tokio::task::spawn_blocking(move || {
        PgServer::start_with(PgOptions {
            logical,
            ..PgOptions::default()
        })
    })
    .await
    .map_err(|e| Error::internal(format!("server start task failed: {e}")))?
}

/// Run the demo; `Ok(true)` when the target verified identical.
pub async fn run(opts: &DemoOptions) -> Result<bool> {
    println!("pgtide demo: starting two throwaway PostgreSQL servers");
    let source = start_server(true).await?;
    let target = start_server(false).await?;
    println!(
        "  source: {} (PostgreSQL {})\n  target: {}",
        source.url_without_password("shop"),
        source.bin().major,
        target.url_without_password("shop")
    );
    let result = run_with(&source, &target, opts).await;
    tokio::task::spawn_blocking(move || {
        drop(source);
        drop(target);
    })
    .await
    .map_err(|e| Error::internal(format!("server stop task failed: {e}")))?;
    println!("pgtide demo: servers stopped");
    result
}

async fn run_with(source: &PgServer, target: &PgServer, opts: &DemoOptions) -> Result<bool> {
    for s in [source, target] {
        let s_create = s.url("postgres");
        let url = pgtide_core::endpoint::ConnUrl::parse(&s_create, "demo")?;
        let c = connect(&url, Side::Source).await?;
        c.batch_execute("CREATE DATABASE shop")
            .await
            .map_err(|e| classify(e, "creating the demo database"))?;
    }
    let t = Instant::now();
    println!(
        "pgtide demo: building the sample shop on the source (scale {})",
        opts.scale
    );
    let url = pgtide_core::endpoint::ConnUrl::parse(&source.url("shop"), "demo")?;
    let c = connect(&url, Side::Source).await?;
    c.batch_execute(demo_data::SCHEMA)
        .await
        .map_err(|e| classify(e, "creating the demo schema"))?;
    c.batch_execute(&demo_data::DATA.replace("{scale}", &opts.scale.to_string()))
        .await
        .map_err(|e| classify(e, "generating the demo data"))?;
    let rows: i64 = c
        .query_one("SELECT sum(n_live_tup)::int8 FROM pg_stat_user_tables", &[])
        .await
        .map_err(|e| classify(e, "counting demo rows"))?
        .get(0);
    println!("  {rows} rows in {:.1} s", t.elapsed().as_secs_f64());

    let yaml = format!(
        "name: demo\n\
         source: {{ url: \"{}\" }}\n\
         target: {{ url: \"{}\" }}\n\
         mode: full-load\n\
         full_load:\n  threads: {}\n  split_threshold: 16MB\n  table_preparation: drop-and-create\n",
        source.url("shop"),
        target.url("shop"),
        opts.threads
    );
    println!("pgtide demo: task file\n{}", indent(&yaml));
    let task = Task::from_yaml(&yaml)?;
    let progress = Arc::new(Progress::new());
    let display = Display::start(progress.clone(), opts.display);
    let report = fullload::run(&task, &RunOptions::default(), progress).await;
    display.finish().await;
    let report = report?;
    print!("{}", report.render());

    let v = verify::verify(
        &task.source.url,
        &task.target.url,
        &["shop".to_string(), "public".to_string()],
    )
    .await?;
    print!("{}", v.render());
    if !v.ok() {
        return Err(Error::new(
            ErrorKind::Internal,
            "the demo's target differs from its source",
        )
        .with_hint("this is a pgtide bug; please report it with the output above"));
    }
    Ok(true)
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
