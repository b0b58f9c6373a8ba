//! `pgtide run` with a MySQL/MariaDB target, mode `full-load`.
//!
//! 1. Export one snapshot on the source, read the catalog in it, plan the selection, and
//!    convert the schema ([`pgtide_mysql::convert`]). Columns whose type has no MySQL mapping
//!    stop the task here, before anything is written.
//! 2. Prepare the target under the task's preparation mode: drop and create the converted
//!    tables, or truncate them, or check that they exist and are empty.
//! 3. Load tables in parallel, largest first, every worker reading from the same snapshot, each
//!    table in one MySQL transaction ([`pgtide_mysql::load`]): the source's rows or none.
//! 4. Add the foreign keys with checks on, so MySQL validates them against the loaded rows.
//!
//! Unlike the PostgreSQL target, no per-chunk state is kept on a MySQL target yet: a run that
//! dies is re-run from the start (drop-and-create empties the tables again).
//!
//! `full-load-and-cdc` calls [`load`] with its replication slot's snapshot (see `mysql_cdc`).

use crate::plan;
use pgtide_core::endpoint::ConnUrl;
use pgtide_core::task::{LoadMethod, Mode, OutOfRange, TablePreparation, Task};
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_mysql::convert::{Conversion, ConvertedTable, Status, convert, quote};
use pgtide_mysql::load::{MysqlTarget, copy_sql, load_sql, transfer};
use pgtide_mysql::rows::{Altered, RowShaper};
use pgtide_postgres::connect::{Side, classify, connect};
use pgtide_postgres::introspect;
use pgtide_postgres::snapshot::{ExportedSnapshot, begin_in_snapshot};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One loaded table.
#[derive(Debug, Clone)]
pub struct LoadedTable {
    /// Source table.
    pub source: String,
    /// Target table.
    pub target: String,
    /// Rows loaded.
    pub rows: u64,
    /// Seconds.
    pub seconds: f64,
    /// Values outside MySQL's range that the task's `mysql.out_of_range` policy changed.
    pub altered: Vec<Altered>,
}

/// The result of a full load into MySQL.
#[derive(Debug, Clone)]
pub struct MysqlLoadReport {
    /// Target database.
    pub database: String,
    /// Per table.
    pub tables: Vec<LoadedTable>,
    /// Foreign keys added.
    pub foreign_keys: usize,
    /// `LOAD DATA LOCAL INFILE` (true) or multi-row INSERT.
    pub load_data: bool,
    /// The policy for values outside MySQL's range.
    pub out_of_range: OutOfRange,
    /// Seconds in total.
    pub seconds: f64,
}

impl MysqlLoadReport {
    /// Human-readable summary.
    pub fn render(&self) -> String {
        let mut out = format!(
            "full load into MySQL/MariaDB database {} ({}, one transaction per table)\n{:<40} {:>12} {:>9}\n",
            self.database,
            if self.load_data {
                "LOAD DATA LOCAL INFILE"
            } else {
                "multi-row INSERT: the server has local_infile off"
            },
            "table",
            "rows",
            "seconds"
        );
        for t in &self.tables {
            out.push_str(&format!(
                "{:<40} {:>12} {:>9.1}\n",
                t.target, t.rows, t.seconds
            ));
        }
        let rows: u64 = self.tables.iter().map(|t| t.rows).sum();
        out.push_str(&format!(
            "total: {} tables, {rows} rows, {} foreign keys, {:.1} s\n",
            self.tables.len(),
            self.foreign_keys,
            self.seconds
        ));
        let altered: Vec<String> = self
            .tables
            .iter()
            .flat_map(|t| {
                t.altered
                    .iter()
                    .map(move |a| format!("  {}.{}: {} values", t.source, a.column, a.values))
            })
            .collect();
        if !altered.is_empty() {
            out.push_str(&format!(
                "values outside MySQL's range written as {} (mysql.out_of_range: {}):\n{}\n",
                pgtide_mysql::range::written_as(self.out_of_range),
                self.out_of_range.as_str(),
                altered.join("\n")
            ));
        }
        out
    }
}

/// Run a full load (mode `full-load`) into the task's MySQL target.
pub async fn run(task: &Task) -> Result<MysqlLoadReport> {
    if task.mode != Mode::FullLoad {
        return Err(Error::internal("mysql_load::run called for a CDC task"));
    }
    Ok(load(task, None).await?.0)
}

/// The selected columns that have no MySQL type mapping (`schema.table.column`).
pub(crate) fn unsupported_columns(conversion: &Conversion) -> Vec<String> {
    conversion
        .items
        .iter()
        .filter(|i| i.kind == "column" && matches!(i.status, Status::ActionRequired(_)))
        .map(|i| i.source.clone())
        .collect()
}

/// Where the load reads from: a snapshot it exported, or one it was given (a replication
/// slot's, held open by the caller).
enum Snapshot {
    Exported(ExportedSnapshot),
    Given(String, tokio_postgres::Client),
}

impl Snapshot {
    fn name(&self) -> &str {
        match self {
            Snapshot::Exported(s) => s.name(),
            Snapshot::Given(n, _) => n,
        }
    }

    fn client(&self) -> &tokio_postgres::Client {
        match self {
            Snapshot::Exported(s) => s.client(),
            Snapshot::Given(_, c) => c,
        }
    }
}

/// Convert, prepare and load, from `snapshot` when given (else from a snapshot of its own).
/// Returns the report and the conversion the tables were created from.
pub async fn load(task: &Task, snapshot: Option<&str>) -> Result<(MysqlLoadReport, Conversion)> {
    task.refuse_rules("a MySQL/MariaDB target")?;
    let started = Instant::now();
    let target = MysqlTarget::new(&task.target.url)?;
    let mut control = target.session().await?;
    let snapshot = match snapshot {
        None => Snapshot::Exported(ExportedSnapshot::export(&task.source.url).await?),
        Some(name) => {
            let client = connect(&task.source.url, Side::Source).await?;
            begin_in_snapshot(&client, name).await?;
            Snapshot::Given(name.to_string(), client)
        }
    };
    let schema = introspect::introspect(snapshot.client()).await?;
    let (load_plan, _) = plan::plan(&schema, task)?;
    let conversion = convert(&schema, &load_plan.selected, &[], &task.target.url.database);
    let locked: Vec<(&pgtide_core::ident::QualifiedName, bool)> = conversion
        .tables
        .iter()
        .map(|t| (&t.source, t.partitioned))
        .collect();
    pgtide_postgres::snapshot::lock_for_load(snapshot.client(), &locked).await?;
    let unsupported = unsupported_columns(&conversion);
    if !unsupported.is_empty() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "these columns have no MySQL type mapping: {}",
                unsupported.join(", ")
            ),
        )
        .with_hint("run pgtide convert to see why; change their type on the source, or exclude their tables"));
    }

    // Prepare.
    for t in &conversion.tables {
        let what = format!("preparing {} on the target", quote(&t.target));
        match task.full_load.table_preparation {
            TablePreparation::DropAndCreate => {
                control
                    .exec(&format!("DROP TABLE IF EXISTS {}", quote(&t.target)), &what)
                    .await?;
                control.exec(&t.create, &what).await?;
            }
            TablePreparation::Truncate | TablePreparation::DoNothing => {
                if !control.table_exists(&t.target).await? {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("table {} does not exist on the target", quote(&t.target)),
                    )
                    .with_hint("create it (pgtide convert writes the DDL), or use table_preparation: drop-and-create"));
                }
                if task.full_load.table_preparation == TablePreparation::Truncate {
                    control
                        .exec(&format!("TRUNCATE TABLE {}", quote(&t.target)), &what)
                        .await?;
                } else {
                    let any = control
                        .query_text(
                            &format!("SELECT EXISTS (SELECT 1 FROM {})", quote(&t.target)),
                            &what,
                        )
                        .await?;
                    if any.as_deref() == Some("1") {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "table {} on the target already holds rows",
                                quote(&t.target)
                            ),
                        )
                        .with_hint(
                            "empty it, or use table_preparation: truncate or drop-and-create",
                        ));
                    }
                }
            }
        }
    }

    // Load.
    let local_infile = control.local_infile().await?;
    let load_data = match task.mysql.load_method {
        LoadMethod::Auto => local_infile,
        LoadMethod::Insert => false,
        LoadMethod::LoadData if local_infile => true,
        LoadMethod::LoadData => {
            return Err(Error::new(
                ErrorKind::Prerequisite,
                "mysql.load_method is load-data, but the target server has local_infile off",
            )
            .with_hint("SET GLOBAL local_infile = 1 on the server, or set mysql.load_method: auto (multi-row INSERT)"));
        }
    };
    if load_data {
        tracing::info!("loading with LOAD DATA LOCAL INFILE");
    } else if local_infile {
        tracing::info!(
            "loading with multi-row INSERT (mysql.load_method: {})",
            task.mysql.load_method.as_str()
        );
    } else {
        tracing::info!(
            "the target server has local_infile off: loading with multi-row INSERT statements instead of LOAD DATA LOCAL INFILE"
        );
    }
    let policy = task.mysql.out_of_range;
    let queue: Arc<Mutex<Vec<ConvertedTable>>> = Arc::new(Mutex::new(
        conversion.tables.iter().rev().cloned().collect(),
    ));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..task
        .full_load
        .threads
        .clamp(1, conversion.tables.len().max(1))
    {
        let queue = queue.clone();
        let results = results.clone();
        let target = target.clone();
        let url = task.source.url.clone();
        let name = snapshot.name().to_string();
        workers.push(tokio::spawn(async move {
            let how = How { load_data, policy };
            worker(&url, &name, &target, how, &queue, &results).await
        }));
    }
    let joined = crate::join_workers(workers, "load worker").await;
    if let Snapshot::Exported(s) = snapshot {
        let _ = s.release().await;
    }
    joined?;

    // Foreign keys, validated against the rows.
    control
        .exec("SET FOREIGN_KEY_CHECKS = 1", "enabling foreign key checks")
        .await?;
    for fk in &conversion.foreign_keys {
        control
            .exec(fk, "adding a foreign key on the target")
            .await?;
    }
    control.close().await;
    target.close().await;
    let mut tables: Vec<LoadedTable> = std::mem::take(&mut *results.lock().expect("results"));
    tables.sort_by(|a, b| a.target.cmp(&b.target));
    let report = MysqlLoadReport {
        database: conversion.database.clone(),
        tables,
        foreign_keys: conversion.foreign_keys.len(),
        load_data,
        out_of_range: policy,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((report, conversion))
}

/// How rows are written.
#[derive(Clone, Copy)]
struct How {
    load_data: bool,
    policy: OutOfRange,
}

async fn worker(
    url: &ConnUrl,
    snapshot: &str,
    target: &MysqlTarget,
    how: How,
    queue: &Mutex<Vec<ConvertedTable>>,
    results: &Mutex<Vec<LoadedTable>>,
) -> Result<()> {
    let source = connect(url, Side::Source).await?;
    // The text forms MySQL reads: ISO dates in UTC, shortest exact floats, hex bytea.
    source
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
             SET extra_float_digits = 1; SET bytea_output = 'hex'",
        )
        .await
        .map_err(|e| classify(e, "setting up a source session"))?;
    begin_in_snapshot(&source, snapshot).await?;
    let mut session = target.session().await?;
    loop {
        let Some(table) = queue.lock().expect("queue").pop() else {
            break;
        };
        let started = Instant::now();
        let transfers: Vec<_> = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| transfer(c, i))
            .collect();
        let copy = copy_sql(&table, &transfers);
        let load = load_sql(&table, &transfers);
        let stream = source
            .copy_out(copy.as_str())
            .await
            .map_err(|e| classify(e, &format!("reading {} on the source", table.source)))?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let shaper = RowShaper::new(&table, how.policy);
        use futures::StreamExt;
        let result = if how.load_data {
            let shape = shaper.clone();
            let rows = stream.map(move |r| {
                counter.fetch_add(1, Ordering::Relaxed);
                r.map_err(std::io::Error::other)
                    .and_then(|row| shape.load_data(&row))
            });
            session.load(&table, &load, rows).await
        } else {
            let shape = shaper.clone();
            let rows = Box::pin(stream.map(move |r| {
                counter.fetch_add(1, Ordering::Relaxed);
                r.map_err(std::io::Error::other)
                    .and_then(|row| shape.insert_values(&row))
            }));
            session.insert(&table, &transfers, rows).await
        };
        let loaded = match (result, shaper.failure()) {
            (Err(e), Some(why)) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{why}; the load of {} was rolled back",
                        quote(&table.target)
                    ),
                )
                .with_hint(pgtide_mysql::range::HINT)
                .with_source(e));
            }
            (result, _) => result?,
        };
        let sent = sent.load(Ordering::Relaxed);
        if loaded != sent {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "{}: the source sent {sent} rows but MySQL loaded {loaded}",
                    table.source
                ),
            ));
        }
        tracing::info!(table = %table.target, rows = loaded, "loaded");
        let altered = shaper.altered();
        for a in &altered {
            tracing::warn!(
                "{}.{}: {} values outside MySQL's range were written as {} (mysql.out_of_range: {})",
                table.source,
                a.column,
                a.values,
                pgtide_mysql::range::written_as(how.policy),
                how.policy.as_str()
            );
        }
        results.lock().expect("results").push(LoadedTable {
            source: table.source.to_string(),
            target: table.target.clone(),
            rows: loaded,
            seconds: started.elapsed().as_secs_f64(),
            altered,
        });
    }
    let _ = source.batch_execute("COMMIT").await;
    session.close().await;
    Ok(())
}
