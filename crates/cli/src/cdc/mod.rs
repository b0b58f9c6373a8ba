//! Change data capture: `full-load-and-cdc` and `cdc`.
//!
//! # No gap, no duplicate
//!
//! ```text
//!  CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT ──► consistent point C, snapshot S
//!        │ (replication connection held open and idle: S lives as long as it does)
//!        ├─► full load: every worker imports S; pg_dump uses S
//!        │     rows committed before C are in the copy
//!        └─► close; START_REPLICATION from C
//!              every transaction committing after C is streamed, exactly once
//! ```
//!
//! The snapshot and the slot's consistent point describe the same instant, so a transaction is
//! either in the copy or in the stream, never both, never neither.
//!
//! # Restarts
//!
//! - Streaming interrupted (crash, kill -9, lost server): the next run resumes from the checkpoint
//!   on the target (see `stream`).
//! - Full load interrupted in `full-load-and-cdc`: the snapshot is gone and a new one cannot be
//!   taken at the slot's consistent point, so the next run starts over — new slot, new snapshot,
//!   full load again — and says so. (Finishing the load from a later snapshot would let changes
//!   between the two instants be applied twice.)
//!
//! # Tables without a key
//!
//! PostgreSQL fails the *source application's* UPDATE and DELETE on a table that has no replica
//! identity once the table is in a publication that publishes them. `cdc.tables_without_key`
//! decides, before anything is created: `fail` lists the tables and the fixes; `insert-only`
//! puts them in a second publication that publishes only INSERT and TRUNCATE (the source keeps
//! working; their updates and deletes are not replicated, and pgtide says so at start, in the
//! report and in status); `replica-identity-full` sets `REPLICA IDENTITY FULL` on them and rows
//! are matched on all columns.

mod status;
mod stream;

pub use status::{CdcStatus, CdcView, spawn_display};
pub use stream::{ApplyTarget, Stop, StreamSetup};

use crate::fullload::{self, RunOptions};
use crate::plan;
use crate::progress::Progress;
use crate::report::LoadReport;
use crate::shutdown::Shutdown;
use pgtide_core::ident::QualifiedName;
use pgtide_core::lsn::Lsn;
use pgtide_core::schema::{ReplicaIdentity, Schema};
use pgtide_core::task::{CdcSettings, Mode, TablesWithoutKey, Task};
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::connect::{Side, classify, connect};
use pgtide_postgres::replication::ReplicationClient;
use pgtide_postgres::{introspect, slot, state};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::Client;

/// Options from the command line.
#[derive(Debug, Clone, Default)]
pub struct CdcOptions {
    /// Start over: new slot, new full load (`full-load-and-cdc`) or new slot (`cdc`).
    pub restart: bool,
    /// Stop once every transaction committed before this LSN is applied.
    pub end_lsn: Option<Lsn>,
}

/// How a CDC run ended.
#[derive(Debug, Clone)]
pub struct CdcOutcome {
    /// The full load's report, when this run did one.
    pub load: Option<LoadReport>,
    /// Why streaming stopped.
    pub stop: Stop,
    /// The status at the end.
    pub view: CdcView,
    /// Sequences set on the target at the stop.
    pub sequences: usize,
    /// Things the operator should know.
    pub warnings: Vec<String>,
}

impl CdcOutcome {
    /// The end-of-run text.
    pub fn render(&self, task: &str) -> String {
        let mut out = String::new();
        if let Some(l) = &self.load {
            out.push_str(&l.render());
        }
        out.push_str(&self.view.render(task, &self.stop.describe()));
        out.push_str(&format!(
            "sequences set to at least the source's values: {}\n",
            self.sequences
        ));
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

/// What the target kind allows and what the task's rules publish.
pub(crate) struct PublishRules<'a> {
    /// `tables_without_key: replica-identity-full` can be applied (the target matches whole rows).
    pub(crate) full_identity_ok: bool,
    /// Column lists and row filters per table OID.
    pub(crate) shapes: &'a HashMap<u32, crate::rules_check::CdcShape>,
}

/// Decide how tables without a key are replicated, warn about what is not replicated, and
/// create or update the task's publications; returns their names.
pub(crate) async fn prepare_publications(
    source: &Client,
    task: &Task,
    schema: &Schema,
    load_plan: &plan::LoadPlan,
    status: &CdcStatus,
    warnings: &mut Vec<String>,
    rules: PublishRules<'_>,
) -> Result<Vec<String>> {
    let PublishRules {
        full_identity_ok,
        shapes,
    } = rules;
    let pub_name = CdcSettings::publication_name(&task.name);
    let insert_only_pub = CdcSettings::insert_only_publication_name(&task.name);
    let storage: Vec<u32> = load_plan.tables.iter().map(|t| t.oid).collect();
    let keyless = tables_without_key(schema, &storage);
    let mut insert_only: Vec<QualifiedName> = Vec::new();
    if !keyless.is_empty() {
        match task.cdc.tables_without_key {
            TablesWithoutKey::Fail => {
                let names: Vec<String> = keyless.iter().map(|n| n.to_string()).collect();
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "these tables have no primary key or replica identity, so their updates and deletes cannot be replicated (and would fail on the source once published): {}",
                        names.join(", ")
                    ),
                )
                .with_hint(
                    "for each table: add a primary key (ALTER TABLE t ADD PRIMARY KEY (...)), or set ALTER TABLE t REPLICA IDENTITY FULL, \
                     or choose in the task file cdc: { tables_without_key: insert-only } (inserts only) or replica-identity-full",
                ));
            }
            TablesWithoutKey::InsertOnly => {
                for n in &keyless {
                    warnings.push(format!(
                        "{n} has no key: it is replicated for INSERT and TRUNCATE only; its updates and deletes are not (cdc.tables_without_key: insert-only)"
                    ));
                }
                insert_only = keyless.clone();
            }
            TablesWithoutKey::ReplicaIdentityFull if !full_identity_ok => {
                let names: Vec<String> = keyless.iter().map(|n| n.to_string()).collect();
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "cdc.tables_without_key: replica-identity-full is not available for this target; these tables have no key: {}",
                        names.join(", ")
                    ),
                )
                .with_hint("add primary keys on the source, or use tables_without_key: insert-only"));
            }
            TablesWithoutKey::ReplicaIdentityFull => {
                for n in &keyless {
                    source
                        .batch_execute(&format!("ALTER TABLE {} REPLICA IDENTITY FULL", n.quoted()))
                        .await
                        .map_err(|e| {
                            classify(e, &format!("setting REPLICA IDENTITY FULL on {n}"))
                                .with_hint("the task's user must own the table; or set it yourself, or use tables_without_key: insert-only")
                        })?;
                    warnings.push(format!("{n} has no key: REPLICA IDENTITY FULL was set on the source and its rows are matched on every column"));
                }
            }
        }
    }
    for t in schema
        .tables
        .iter()
        .filter(|t| storage.contains(&t.oid) && t.unlogged)
    {
        warnings.push(format!(
            "{} is UNLOGGED: its changes are not written to the WAL and are not replicated",
            t.name
        ));
    }
    for w in warnings.iter() {
        tracing::warn!("{w}");
    }
    status.set_insert_only(insert_only.iter().map(|n| n.to_string()).collect());
    let published: Vec<(u32, QualifiedName)> = load_plan
        .tables
        .iter()
        .filter(|t| !insert_only.contains(&t.source))
        .map(|t| (t.oid, t.source.clone()))
        .collect();
    let published = crate::rules_check::published(&published, shapes);
    slot::ensure_publication(
        source,
        &pub_name,
        &published,
        "insert, update, delete, truncate",
    )
    .await?;
    let insert_only: Vec<(u32, QualifiedName)> = load_plan
        .tables
        .iter()
        .filter(|t| insert_only.contains(&t.source))
        .map(|t| (t.oid, t.source.clone()))
        .collect();
    let insert_only = crate::rules_check::published(&insert_only, shapes);
    let mut publications = vec![pub_name.clone()];
    if insert_only.is_empty() {
        slot::drop_publication(source, &insert_only_pub).await?;
    } else {
        slot::ensure_publication(source, &insert_only_pub, &insert_only, "insert, truncate")
            .await?;
        publications.push(insert_only_pub.clone());
    }
    Ok(publications)
}

/// Tables with no way to identify a row in the WAL.
fn tables_without_key(schema: &Schema, selected: &[u32]) -> Vec<QualifiedName> {
    schema
        .tables
        .iter()
        .filter(|t| selected.contains(&t.oid) && t.has_storage())
        .filter(|t| match &t.replica_identity {
            ReplicaIdentity::Default => t.primary_key.is_none(),
            ReplicaIdentity::Nothing => true,
            ReplicaIdentity::Full | ReplicaIdentity::Index(_) => false,
        })
        .map(|t| t.name.clone())
        .collect()
}

/// Run a `cdc` or `full-load-and-cdc` task.
pub async fn run(
    task: &Task,
    opts: &CdcOptions,
    progress: Arc<Progress>,
    status: Arc<CdcStatus>,
    shutdown: &Shutdown,
) -> Result<CdcOutcome> {
    let source = connect(&task.source.url, Side::Source).await?;
    let target = connect(&task.target.url, Side::Target).await?;
    state::lock_task(&target, &task.name).await?;
    let slot_name = CdcSettings::slot_name(&task.name);
    let existing_slot = slot::slot_info(&source, &slot_name).await?;
    slot::check_source(&source, existing_slot.is_none() || opts.restart).await?;

    // What is replicated: the same selection as the full load.
    let schema = read_schema(&source).await?;
    let (load_plan, _) = plan::plan(&schema, task)?;
    let mut warnings = load_plan.warnings.clone();
    // Load or resume?
    let state_exists: bool = target
        .query_one("SELECT to_regclass('pgtide.task') IS NOT NULL", &[])
        .await
        .map_err(|e| classify(e, "looking for pgtide state on the target"))?
        .get(0);
    let previous = if state_exists {
        state::task_row(&target, &task.name).await?
    } else {
        None
    };
    let fingerprint = plan::task_fingerprint(task);
    if let Some(p) = &previous
        && p.phase == "cdc"
        && p.fingerprint != fingerprint
        && !opts.restart
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("task {:?} is streaming into this target with a different configuration (source, mode or table selection changed)", task.name),
        )
        .with_hint("run with the original task file, or add --restart to start over with a new slot"));
    }
    // Publications change only once the run is known to continue with this configuration.
    let (shapes, rule_warnings) =
        crate::rules_check::check(&source, task, &schema, &load_plan).await?;
    warnings.extend(rule_warnings);
    let publications = prepare_publications(
        &source,
        task,
        &schema,
        &load_plan,
        &status,
        &mut warnings,
        PublishRules {
            full_identity_ok: true,
            shapes: &shapes,
        },
    )
    .await?;

    let streaming_before =
        previous.as_ref().map(|p| p.phase == "cdc").unwrap_or(false) && !opts.restart;
    let mut load = None;
    match task.mode {
        Mode::FullLoadAndCdc if !streaming_before => {
            if let Some(p) = &previous
                && p.phase != "cdc"
                && !opts.restart
            {
                tracing::warn!(
                    "the full load of task {} did not finish (phase {}); its snapshot is gone, so it starts over with a new slot",
                    task.name,
                    p.phase
                );
            }
            if slot::drop_slot(&source, &slot_name).await? {
                tracing::info!(slot = %slot_name, "dropped the previous replication slot");
            }
            let mut repl = ReplicationClient::connect(&task.source.url, Side::Source).await?;
            let created = repl.create_slot(&slot_name, true).await?;
            let snapshot = created
                .snapshot
                .clone()
                .ok_or_else(|| Error::internal("the slot was created without a snapshot"))?;
            tracing::info!(slot = %slot_name, consistent_point = %created.consistent_point, "replication slot created; loading from its snapshot");
            let load_opts = RunOptions {
                restart: true,
                snapshot: Some(snapshot),
                final_phase: Some("cdc"),
                lock_held: true,
            };
            let report = tokio::select! {
                r = fullload::run(task, &load_opts, progress) => r?,
                _ = shutdown.wait() => {
                    return Err(Error::new(ErrorKind::Interrupted, "interrupted during the full load")
                        .with_hint("run the same command again: the load starts over with a new slot"));
                }
            };
            drop(repl); // the snapshot is no longer needed
            record_start(&target, &task.name, created.consistent_point).await?;
            load = Some(report);
        }
        Mode::FullLoadAndCdc => {}
        Mode::Cdc if streaming_before => {
            if existing_slot.is_none() {
                return Err(Error::new(ErrorKind::NotFound, format!("replication slot {slot_name} is missing on the source"))
                    .with_hint("changes since the last checkpoint cannot be recovered; reload the target and run with --restart"));
            }
        }
        Mode::Cdc => {
            // A new cdc task: use the slot if it exists (created by an operator, say), else create
            // one; streaming starts at cdc.start_lsn or where the slot stands.
            let mut start = existing_slot.as_ref().and_then(|s| s.confirmed_flush);
            if opts.restart && slot::drop_slot(&source, &slot_name).await? {
                start = None;
            }
            if start.is_none() {
                let mut repl = ReplicationClient::connect(&task.source.url, Side::Source).await?;
                let created = repl.create_slot(&slot_name, false).await?;
                tracing::info!(slot = %slot_name, consistent_point = %created.consistent_point, "replication slot created");
                start = Some(created.consistent_point);
            }
            state::ensure_schema(&target).await?;
            state::start_task(
                &target,
                &task.name,
                &fingerprint,
                task.mode.as_str(),
                &task.source.url.redacted(),
            )
            .await?;
            state::set_phase(&target, &task.name, "cdc").await?;
            record_start(
                &target,
                &task.name,
                task.cdc.start_lsn.or(start).unwrap_or(Lsn::ZERO),
            )
            .await?;
        }
        Mode::FullLoad => return Err(Error::internal("cdc::run called for a full-load task")),
    }
    drop(source);
    // The apply connection takes the task's lock from here on.
    state::unlock_task(&target, &task.name).await?;
    drop(target);

    let setup = StreamSetup {
        slot: slot_name,
        publications,
        end_lsn: opts.end_lsn,
        source_keys: crate::rules_check::target_keys(&schema, &load_plan),
        routes: crate::rules_check::routes(&load_plan),
        target: ApplyTarget::Postgres,
    };
    let stop = run_stream_thread(task, setup, shutdown, &status).await?;
    status.set_phase("stopped");
    let sequences: Vec<(QualifiedName, QualifiedName)> = load_plan
        .sequences
        .iter()
        .map(|s| {
            let t = load_plan.sequence_targets.get(s).unwrap_or(s).clone();
            (s.clone(), t)
        })
        .collect();
    let sequences = sync_sequences(task, &sequences).await?;
    let mut view = status.view();
    let target = connect(&task.target.url, Side::Target).await?;
    view.counts = read_totals(&target, &task.name).await?;
    Ok(CdcOutcome {
        load,
        stop,
        view,
        sequences,
        warnings,
    })
}

/// Run the stream loop to its stop on a thread of its own.
pub(crate) async fn run_stream_thread(
    task: &Task,
    setup: StreamSetup,
    shutdown: &Shutdown,
    status: &Arc<CdcStatus>,
) -> Result<Stop> {
    // The stream loop and its two connections run on one dedicated thread with a
    // single-threaded runtime, like the load workers: a message never hops threads between the
    // socket and the applier. (A catch-up's read-ahead receives on a thread of its own, see
    // `peek::Prefetch`.)
    let stop = {
        let (task, shutdown, status) = (task.clone(), shutdown.clone(), status.clone());
        let handle = std::thread::Builder::new()
            .name("pgtide-stream".into())
            .spawn(move || -> Result<Stop> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        Error::internal(format!("cannot start the stream's runtime: {e}"))
                    })?;
                rt.block_on(stream::stream(&task, &setup, &shutdown, &status))
            })
            .map_err(|e| Error::internal(format!("cannot start the stream thread: {e}")))?;
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .map_err(|e| Error::internal(format!("joining the stream thread: {e}")))?
            .map_err(|_| Error::internal("the stream thread panicked"))??
    };
    Ok(stop)
}

pub(crate) async fn read_schema(source: &Client) -> Result<Schema> {
    source
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| classify(e, "reading the source catalog"))?;
    let schema = introspect::introspect(source).await;
    let _ = source.batch_execute("COMMIT").await;
    schema
}

/// Record where streaming starts for a task that has applied nothing yet.
async fn record_start(target: &Client, task: &str, lsn: Lsn) -> Result<()> {
    state::ensure_schema(target).await?;
    target
        .execute(
            "INSERT INTO pgtide.cdc_progress (task, commit_lsn, end_lsn, commit_time, confirmed_lsn, applied_at) \
             VALUES ($1, '0/0', '0/0', NULL, $2::text::pg_lsn, now()) \
             ON CONFLICT (task) DO UPDATE SET commit_lsn = '0/0', end_lsn = '0/0', commit_time = NULL, confirmed_lsn = EXCLUDED.confirmed_lsn",
            &[&task, &lsn.to_string()],
        )
        .await
        .map_err(|e| classify(e, "recording the start position on the target"))?;
    Ok(())
}

/// Per-table totals recorded on the target for this task.
async fn read_totals(
    target: &Client,
    task: &str,
) -> Result<std::collections::BTreeMap<QualifiedName, pgtide_postgres::apply::TableCounts>> {
    let rows = target
        .query(
            "SELECT schema_name, table_name, inserts, updates, deletes, truncates FROM pgtide.cdc_table_stats WHERE task = $1",
            &[&task],
        )
        .await
        .map_err(|e| classify(e, "reading change counts on the target"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                pgtide_postgres::apply::TableCounts {
                    inserts: r.get::<_, i64>(2) as u64,
                    updates: r.get::<_, i64>(3) as u64,
                    deletes: r.get::<_, i64>(4) as u64,
                    truncates: r.get::<_, i64>(5) as u64,
                },
            )
        })
        .collect())
}

/// Logical decoding carries no sequence values: at a stop, every target sequence is set to at
/// least the source's current value, so the target never hands out a value the source used.
async fn sync_sequences(
    task: &Task,
    sequences: &[(QualifiedName, QualifiedName)],
) -> Result<usize> {
    if sequences.is_empty() {
        return Ok(0);
    }
    let source = connect(&task.source.url, Side::Source).await?;
    let target = connect(&task.target.url, Side::Target).await?;
    let mut set = 0;
    for (s, ts) in sequences {
        let sql = format!("SELECT last_value, is_called FROM {}", s.quoted());
        let row = source
            .query_one(&sql, &[])
            .await
            .map_err(|e| classify(e, &format!("reading sequence {s} on the source")))?;
        let (last, called): (i64, bool) = (row.get(0), row.get(1));
        let tsql = format!("SELECT last_value, is_called FROM {}", ts.quoted());
        let t = match target.query_one(&tsql, &[]).await {
            Ok(r) => (r.get::<_, i64>(0), r.get::<_, bool>(1)),
            Err(_) => continue,
        };
        // Compare "next value to be handed out".
        let next = |v: i64, c: bool| if c { v as i128 + 1 } else { v as i128 };
        if next(last, called) > next(t.0, t.1) {
            target
                .execute(
                    "SELECT setval(to_regclass($1), $2, $3)",
                    &[&ts.quoted(), &last, &called],
                )
                .await
                .map_err(|e| classify(e, &format!("setting sequence {s} on the target")))?;
        }
        set += 1;
    }
    Ok(set)
}
