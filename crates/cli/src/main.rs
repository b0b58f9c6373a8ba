//! The `pgtide` command line.

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of the system allocator: the change stream allocates and frees small
/// values on one thread and drops them on another (the applier's executor), where glibc's
/// malloc spent a fifth of pgtide's CPU time in a backlog drain (and musl's, for the static
/// build, is slower still).
///
/// Built with `no_thp`: mimalloc otherwise marks its larger OS allocations for transparent
/// huge pages, and on a kernel that grants them on request (`madvise`, Debian's default) every
/// fresh region then costs a 2 MB page to be zeroed at its first touch. In a backlog drain that
/// zeroing was 17–22% of pgtide's CPU time in profiles; without it pgtide used ~6% less CPU
/// (median of six interleaved drains) and its peak RSS fell from 128 to 94 MB. On a kernel
/// set to `always` this changes nothing (the kernel then gives huge pages unasked).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use pgtide::cdc::{self, CdcOptions, CdcStatus};
use pgtide::demo::{self, DemoOptions};
use pgtide::fullload::{self, RunOptions};
use pgtide::logging::{self, LogFormat};
use pgtide::ops;
use pgtide::progress::{Display, DisplayMode, Progress};
use pgtide::shutdown::Shutdown;
use pgtide_core::lsn::Lsn;
use pgtide_core::task::{Mode, Task};
use pgtide_core::{Error, ErrorKind};
use std::path::PathBuf;
use std::sync::Arc;

/// Move a live PostgreSQL database to a new server with minutes of downtime.
#[derive(Debug, Parser)]
#[command(name = "pgtide", version, about, long_about = None)]
struct Cli {
    /// More output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
    /// Progress display: bars on a terminal, log lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = ProgressArg::Auto)]
    progress: ProgressArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProgressArg {
    Auto,
    Bars,
    Lines,
    None,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the task described by a task file: a full load, change data capture, or both.
    Run {
        /// The task file (YAML).
        task: PathBuf,
        /// Discard the progress of an earlier run of this task and start over (for change data
        /// capture: a new slot, and a new full load in full-load-and-cdc).
        #[arg(long)]
        restart: bool,
        /// Change data capture: stop once every source transaction committed before this LSN
        /// is applied (the cutover point), e.g. the result of pg_current_wal_lsn() on the source.
        #[arg(long, value_name = "LSN")]
        end_lsn: Option<String>,
        /// Serve Prometheus metrics (/metrics) and a JSON status (/status) on HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
    },
    /// Show what a run would move (tables, target names, columns, keys, CDC treatment, COPY
    /// format, split) resolved against the source, without moving anything.
    Plan {
        /// The task file (YAML).
        task: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// For a MySQL/MariaDB target: write the converted schema (schema.sql) and an assessment
    /// report of every source object (assessment.md, assessment.html) into a directory.
    Convert {
        /// The task file (YAML).
        task: PathBuf,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check every prerequisite and risk of the task, each with its fix. Exits non-zero when
    /// anything blocks the task.
    Check {
        /// The task file (YAML).
        task: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Where a task stands: phase, per-table statistics, slot, applied position and lag.
    Status {
        /// The task file (YAML).
        task: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compare source and target table by table (counts and checksums per key range), naming
    /// the keys of differing rows. Exits 0 only when everything is equal.
    Validate {
        /// The task file (YAML).
        task: PathBuf,
        /// Only this table (schema.table, repeatable; unquoted names fold to lower case).
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Parallel comparisons.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
        /// Differing rows to name per table (the rest are counted).
        #[arg(long, default_value_t = 20)]
        max_keys: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Re-copy differing rows of keyed tables from the source (the task must not be running).
        #[arg(long)]
        repair: bool,
    },
    /// Remove what the task created: replication slot, publications, state on the target,
    /// spill files. Safe to run twice.
    Cleanup {
        /// The task file (YAML).
        task: PathBuf,
        /// Keep the state schema on the target.
        #[arg(long)]
        keep_state: bool,
    },
    /// Start two throwaway servers, build a sample database, load it, verify it, stop them.
    Demo {
        /// Data multiplier; 1 is about 400,000 rows.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        scale: u32,
        /// Load workers.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
    },
}

fn display_mode(p: ProgressArg) -> DisplayMode {
    match p {
        ProgressArg::Auto => DisplayMode::detect(),
        ProgressArg::Bars => DisplayMode::Bars,
        ProgressArg::Lines => DisplayMode::Lines(10),
        ProgressArg::None => DisplayMode::Quiet,
    }
}

async fn interrupted() -> Error {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    Error::new(ErrorKind::Interrupted, "interrupted")
        .with_hint("work that committed is kept; run the same command again to resume")
}

async fn run(cli: Cli) -> Result<(), Error> {
    let display = display_mode(cli.progress);
    match cli.command {
        Command::Run {
            task,
            restart,
            end_lsn,
            metrics_addr,
        } => {
            let task = Task::load(&task)?;
            if task.target.kind() == pgtide_core::endpoint::EndpointKind::Mysql {
                if metrics_addr.is_some() {
                    return Err(Error::config(
                        "--metrics-addr is not available for MySQL targets yet",
                    )
                    .with_hint("run without it; the progress lines show the state"));
                }
                if task.mode == Mode::FullLoad {
                    if end_lsn.is_some() || restart {
                        return Err(Error::config(
                            "--end-lsn and --restart apply to change data capture; this task's mode is full-load",
                        )
                        .with_hint("set mode: full-load-and-cdc or cdc in the task file"));
                    }
                    let report = tokio::select! {
                        r = pgtide::mysql_load::run(&task) => r?,
                        e = interrupted() => return Err(e),
                    };
                    print!("{}", report.render());
                    return Ok(());
                }
                let end_lsn: Option<Lsn> = match end_lsn {
                    Some(s) => Some(
                        s.parse()
                            .map_err(|e: String| Error::config(format!("--end-lsn: {e}")))?,
                    ),
                    None => None,
                };
                let shutdown = Shutdown::new();
                shutdown.install_signal_handlers();
                let status = Arc::new(CdcStatus::default());
                let stop_display = Arc::new(tokio::sync::Notify::new());
                let cdc_display = cdc::spawn_display(status.clone(), display, stop_display.clone());
                let result = pgtide::mysql_cdc::run(
                    &task,
                    &CdcOptions { restart, end_lsn },
                    status,
                    &shutdown,
                )
                .await;
                stop_display.notify_one();
                if let Some(h) = cdc_display {
                    let _ = h.await;
                }
                let outcome = result?;
                print!("{}", outcome.render(&task.name));
                return Ok(());
            }
            preflight(&task).await?;
            let end_lsn: Option<Lsn> = match end_lsn {
                Some(s) => Some(
                    s.parse()
                        .map_err(|e: String| Error::config(format!("--end-lsn: {e}")))?,
                ),
                None => None,
            };
            if task.mode == Mode::FullLoad {
                if end_lsn.is_some() {
                    return Err(Error::config(
                        "--end-lsn applies to change data capture; this task's mode is full-load",
                    )
                    .with_hint("set mode: full-load-and-cdc or cdc in the task file"));
                }
                let progress = Arc::new(Progress::new());
                if let Some(addr) = &metrics_addr {
                    pgtide::metrics::serve(
                        addr,
                        pgtide::metrics::Sources {
                            task: task.name.clone(),
                            progress: progress.clone(),
                            cdc: None,
                        },
                    )
                    .await?;
                }
                let shown = Display::start(progress.clone(), display);
                let options = RunOptions {
                    restart,
                    ..RunOptions::default()
                };
                let result = tokio::select! {
                    r = fullload::run(&task, &options, progress) => r,
                    e = interrupted() => Err(e),
                };
                shown.finish().await;
                ops::record_outcome(&task, result.as_ref().err()).await;
                let report = result?;
                print!("{}", report.render());
                return Ok(());
            }
            let shutdown = Shutdown::new();
            shutdown.install_signal_handlers();
            let progress = Arc::new(Progress::new());
            let shown = Display::start(progress.clone(), display);
            let status = Arc::new(CdcStatus::default());
            if let Some(addr) = &metrics_addr {
                pgtide::metrics::serve(
                    addr,
                    pgtide::metrics::Sources {
                        task: task.name.clone(),
                        progress: progress.clone(),
                        cdc: Some(status.clone()),
                    },
                )
                .await?;
            }
            let stop_display = Arc::new(tokio::sync::Notify::new());
            let cdc_display = cdc::spawn_display(status.clone(), display, stop_display.clone());
            let result = cdc::run(
                &task,
                &CdcOptions { restart, end_lsn },
                progress,
                status,
                &shutdown,
            )
            .await;
            shown.finish().await;
            stop_display.notify_one();
            if let Some(h) = cdc_display {
                let _ = h.await;
            }
            ops::record_outcome(&task, result.as_ref().err()).await;
            let outcome = result?;
            print!("{}", outcome.render(&task.name));
            Ok(())
        }
        Command::Plan { task, json } => {
            let task = Task::load(&task)?;
            let plan = ops::dry_run::dry_run(&task).await?;
            if json {
                println!("{}", to_json(&plan)?);
            } else {
                print!("{}", plan.render());
            }
            Ok(())
        }
        Command::Convert { task, out } => {
            let task = Task::load(&task)?;
            let converted = ops::convert::run(&task, &out).await?;
            print!("{}", converted.render());
            Ok(())
        }
        Command::Check { task, json } => {
            let task = Task::load(&task)?;
            let report = ops::check::check(&task).await;
            if json {
                println!("{}", to_json(&report)?);
            } else {
                print!("{}", report.render(false));
            }
            let blocking = report.blocking().count();
            if blocking > 0 {
                return Err(Error::new(
                    ErrorKind::Prerequisite,
                    format!("{blocking} problem(s) block task {}", task.name),
                )
                .with_hint("apply the fixes listed above and run pgtide check again"));
            }
            Ok(())
        }
        Command::Status { task, json } => {
            let task = Task::load(&task)?;
            task.require_postgres_target("status")?;
            let st = ops::status::status(&task).await?;
            if json {
                println!("{}", to_json(&st)?);
            } else {
                print!("{}", st.render());
            }
            Ok(())
        }
        Command::Validate {
            task,
            tables,
            threads,
            max_keys,
            json,
            repair,
        } => {
            let task = Task::load(&task)?;
            task.require_postgres_target("validate")?;
            let opts = ops::validate::ValidateOptions {
                tables,
                threads: threads as usize,
                max_keys,
                repair,
                ..Default::default()
            };
            let v = tokio::select! {
                r = ops::validate::validate(&task, &opts) => r?,
                e = interrupted() => return Err(e),
            };
            if json {
                println!("{}", to_json(&v)?);
            } else {
                print!("{}", v.render());
            }
            if v.ok() {
                Ok(())
            } else {
                let n = v.tables.iter().filter(|t| !t.equal).count();
                Err(Error::new(
                    ErrorKind::Conflict,
                    format!("the target differs from the source in {n} table(s)"),
                )
                .with_hint("the differing keys are listed above; while change data capture runs, stop it at an end LSN and validate again for an exact answer"))
            }
        }
        Command::Cleanup { task, keep_state } => {
            let task = Task::load(&task)?;
            task.require_postgres_target("cleanup")?;
            let report = ops::cleanup::cleanup(&task, keep_state).await?;
            print!("{}", report.render(&task.name));
            Ok(())
        }
        Command::Demo { scale, threads } => {
            let opts = DemoOptions {
                scale,
                threads: threads as usize,
                display,
            };
            tokio::select! {
                r = demo::run(&opts) => r.map(|_| ()),
                e = interrupted() => Err(e),
            }
        }
    }
}

/// The blocking part of `pgtide check`, before `run` creates anything: every blocking problem
/// is listed at once. When a server cannot be reached, the run's own connection error (with
/// its retry classification) is what the operator sees.
async fn preflight(task: &Task) -> Result<(), Error> {
    let report = ops::check::check(task).await;
    if !report.connected {
        return Ok(());
    }
    let blocking: Vec<&ops::check::Finding> = report.blocking().collect();
    if blocking.is_empty() {
        return Ok(());
    }
    let mut text = format!("{} problem(s) block task {}:", blocking.len(), task.name);
    for b in &blocking {
        text.push_str(&format!("\n  - {}: {}", b.subject, b.message));
        if let Some(fix) = &b.fix {
            text.push_str(&format!("\n    fix: {fix}"));
        }
    }
    Err(Error::new(ErrorKind::Prerequisite, text).with_hint(format!(
        "apply the fixes, then run again (pgtide check {} lists every finding)",
        task.name
    )))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string_pretty(value).map_err(|e| Error::internal(format!("writing JSON: {e}")))
}

fn main() {
    let cli = Cli::parse();
    let verbosity = if cli.quiet { -1 } else { cli.verbose as i8 };
    logging::init(
        match cli.log_format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        },
        verbosity,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(cli));
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Err(e) = result {
        eprintln!("error: {}", e.report());
        std::process::exit(e.kind().exit_code());
    }
}
