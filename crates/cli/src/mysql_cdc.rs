//! `pgtide run` with a MySQL/MariaDB target in `full-load-and-cdc` and `cdc` modes.
//!
//! The same guarantees as for PostgreSQL targets (see `cdc`): the replication slot's exported
//! snapshot feeds the full load, so each source transaction lands either in the copy or in the
//! stream; the stream is applied in commit order with the checkpoint in the same MySQL
//! transaction (`_pgtide_cdc` in the target database), so a restart neither loses nor repeats
//! a transaction.
//!
//! What differs:
//! - State lives in one table of the target database (MySQL has no schemas inside a
//!   database), and the task's lock is `GET_LOCK` on the apply connection.
//! - Partitions of a partitioned source table share one MySQL table: their rows and changes
//!   are routed to it; a `TRUNCATE` of a single partition cannot be applied and stops the task.
//! - `tables_without_key: replica-identity-full` is refused: rows of a keyless table cannot
//!   be found reliably on MySQL.
//! - Values arrive in text form and are converted in `pgtide_mysql::values`; the few types
//!   whose stream form is not converted (composites, hstore) are refused at start.

use crate::cdc::{self, ApplyTarget, CdcOptions, CdcStatus, Stop, StreamSetup};
use crate::mysql_load::{self, MysqlLoadReport};
use crate::plan;
use crate::shutdown::Shutdown;
use pgtide_core::ident::QualifiedName;
use pgtide_core::lsn::Lsn;
use pgtide_core::schema::Schema;
use pgtide_core::task::{CdcSettings, Mode, Task};
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_mysql::apply::{self, MysqlApplyConfig, Route};
use pgtide_mysql::convert::{Conversion, convert};
use pgtide_mysql::load::MysqlTarget;
use pgtide_postgres::connect::{Side, connect};
use pgtide_postgres::replication::ReplicationClient;
use pgtide_postgres::slot;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How a CDC run into MySQL ended.
#[derive(Debug, Clone)]
pub struct MysqlCdcOutcome {
    /// The full load's report, when this run did one.
    pub load: Option<MysqlLoadReport>,
    /// Why streaming stopped.
    pub stop: Stop,
    /// The status at the end.
    pub view: cdc::CdcView,
    /// Things the operator should know.
    pub warnings: Vec<String>,
}

impl MysqlCdcOutcome {
    /// The end-of-run text.
    pub fn render(&self, task: &str) -> String {
        let mut out = String::new();
        if let Some(l) = &self.load {
            out.push_str(&l.render());
        }
        out.push_str(&self.view.render(task, &self.stop.describe()));
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

/// Source table → route, for every selected table with storage: converted tables route to
/// themselves, partitions to their converted root.
fn routes(schema: &Schema, conversion: &Conversion) -> HashMap<QualifiedName, Route> {
    let by_oid: HashMap<u32, &pgtide_core::schema::Table> =
        schema.tables.iter().map(|t| (t.oid, t)).collect();
    let key_of = |oid: u32| -> Vec<String> {
        by_oid
            .get(&oid)
            .and_then(|t| t.primary_key.as_ref())
            .map(|k| k.columns.clone())
            .unwrap_or_default()
    };
    let mut out = HashMap::new();
    for ct in &conversion.tables {
        let table = Arc::new(ct.clone());
        out.insert(
            ct.source.clone(),
            Route {
                table: table.clone(),
                partition: false,
                primary_key: key_of(ct.oid),
            },
        );
        if !ct.partitioned {
            continue;
        }
        for t in &schema.tables {
            let mut up = t.partition_of;
            while let Some(p) = up {
                if p == ct.oid {
                    out.insert(
                        t.name.clone(),
                        Route {
                            table: table.clone(),
                            partition: true,
                            primary_key: key_of(t.oid),
                        },
                    );
                    break;
                }
                up = by_oid.get(&p).and_then(|x| x.partition_of);
            }
        }
    }
    out
}

/// Run a `full-load-and-cdc` or `cdc` task into MySQL.
pub async fn run(
    task: &Task,
    opts: &CdcOptions,
    status: Arc<CdcStatus>,
    shutdown: &Shutdown,
) -> Result<MysqlCdcOutcome> {
    task.refuse_rules("a MySQL/MariaDB target")?;
    let source = connect(&task.source.url, Side::Source).await?;
    let target = MysqlTarget::new(&task.target.url)?;
    let slot_name = CdcSettings::slot_name(&task.name);
    let existing_slot = slot::slot_info(&source, &slot_name).await?;
    slot::check_source(&source, existing_slot.is_none() || opts.restart).await?;

    let schema = cdc::read_schema(&source).await?;
    let (load_plan, _) = plan::plan(&schema, task)?;
    let mut warnings = load_plan.warnings.clone();
    // Refuse types whose stream form is not converted before anything is created.
    let preview = convert(&schema, &load_plan.selected, &[], &task.target.url.database);
    for t in &preview.tables {
        for c in &t.columns {
            if let Err(e) = pgtide_mysql::values::shape(c) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("{}: {}", t.source, e.0),
                )
                .with_hint("exclude the table from the task, or change the column's type on the source"));
            }
        }
    }

    let publications = cdc::prepare_publications(
        &source,
        task,
        &schema,
        &load_plan,
        &status,
        &mut warnings,
        cdc::PublishRules {
            full_identity_ok: false,
            shapes: &HashMap::new(),
        },
    )
    .await?;

    apply::ensure_state(&target).await?;
    let previous = apply::read_state(&target, &task.name).await?;
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
    let streaming_before =
        previous.as_ref().map(|p| p.phase == "cdc").unwrap_or(false) && !opts.restart;
    let mut load = None;
    let conversion = match task.mode {
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
            apply::set_state(&target, &task.name, "full-load", &fingerprint, None).await?;
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
            let (report, conversion) = tokio::select! {
                r = mysql_load::load(task, Some(&snapshot)) => r?,
                _ = shutdown.wait() => {
                    return Err(Error::new(ErrorKind::Interrupted, "interrupted during the full load")
                        .with_hint("run the same command again: the load starts over with a new slot"));
                }
            };
            drop(repl);
            apply::set_state(
                &target,
                &task.name,
                "cdc",
                &fingerprint,
                Some(created.consistent_point),
            )
            .await?;
            load = Some(report);
            conversion
        }
        Mode::FullLoadAndCdc | Mode::Cdc => {
            if streaming_before && existing_slot.is_none() {
                return Err(Error::new(ErrorKind::NotFound, format!("replication slot {slot_name} is missing on the source"))
                    .with_hint("changes since the last checkpoint cannot be recovered; run the task again with --restart"));
            }
            if !streaming_before {
                // A new cdc task: the target tables must exist (pgtide convert writes them);
                // streaming starts at cdc.start_lsn or where the slot stands.
                let mut start = existing_slot.as_ref().and_then(|s| s.confirmed_flush);
                if opts.restart && slot::drop_slot(&source, &slot_name).await? {
                    start = None;
                }
                if start.is_none() {
                    let mut repl =
                        ReplicationClient::connect(&task.source.url, Side::Source).await?;
                    let created = repl.create_slot(&slot_name, false).await?;
                    tracing::info!(slot = %slot_name, consistent_point = %created.consistent_point, "replication slot created");
                    start = Some(created.consistent_point);
                }
                apply::set_state(
                    &target,
                    &task.name,
                    "cdc",
                    &fingerprint,
                    Some(task.cdc.start_lsn.or(start).unwrap_or(Lsn::ZERO)),
                )
                .await?;
            }
            preview
        }
        Mode::FullLoad => {
            return Err(Error::internal(
                "mysql_cdc::run called for a full-load task",
            ));
        }
    };
    drop(source);
    target.close().await;

    let config = MysqlApplyConfig {
        routes: routes(&schema, &conversion),
        max_batch_changes: task.cdc.max_batch_changes,
        max_batch_age: Duration::from_millis(task.cdc.max_batch_delay_ms),
        out_of_range: task.mysql.out_of_range,
    };
    let setup = StreamSetup {
        slot: slot_name,
        publications,
        end_lsn: opts.end_lsn,
        source_keys: HashMap::new(),
        routes: Default::default(),
        target: ApplyTarget::Mysql(Arc::new(config)),
    };
    let stop = cdc::run_stream_thread(task, setup, shutdown, &status).await?;
    status.set_phase("stopped");
    Ok(MysqlCdcOutcome {
        load,
        stop,
        view: status.view(),
        warnings,
    })
}
