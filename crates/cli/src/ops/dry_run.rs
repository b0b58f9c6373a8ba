//! `pgtide plan`: what a run would move, resolved against the source, before anything moves.
//!
//! It reads the source's catalog (nothing is written anywhere, the target is not contacted)
//! and prints, per selected table: source and target name, columns, the key that identifies
//! rows (primary key or replica identity), how change data capture will treat it, the COPY
//! format and why, how the full load splits it, and its size; then the sequences and
//! materialized views carried over and every warning the plan raised. Selection mistakes (a
//! pattern that matches nothing) fail here exactly as they would fail `run`.

use crate::plan::{self, SplitDecision};
use pgtide_core::Result;
use pgtide_core::schema::ReplicaIdentity;
use pgtide_core::task::{CdcSettings, Mode, TablesWithoutKey, Task};
use pgtide_postgres::connect::{Side, connect};
use pgtide_postgres::introspect;
use serde::Serialize;
use std::collections::HashMap;

/// One planned table.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTableView {
    /// Source table.
    pub source: String,
    /// Target table.
    pub target: String,
    /// Columns copied, in order (stored generated columns are computed by the target), with
    /// their target name and type where a rule changes them: `note -> remark`,
    /// `amount (type numeric(14,2))`.
    pub columns: Vec<String>,
    /// Source columns that do not move.
    pub removed_columns: Vec<String>,
    /// Row condition and the rule it came from.
    pub condition: Option<String>,
    /// `row_identifier_key` and the rule it came from.
    pub row_identifier_key: Option<String>,
    /// Preparation of the target table.
    pub preparation: String,
    /// What identifies a row: `primary key (a, b)`, `replica identity index NAME`, or `none`.
    pub key: String,
    /// What CDC does with the table: `full` (inserts, updates, deletes, truncates),
    /// `insert-only`, `whole-row match`, `refused` (no key under `tables_without_key: fail`),
    /// `not replicated` (unlogged); absent for full-load tasks.
    pub cdc: Option<String>,
    /// `binary` or `text`.
    pub copy_format: String,
    /// Why text was chosen.
    pub text_reason: Option<String>,
    /// `whole`, `ctid ranges (N chunks)` or `key ranges on COL (N chunks)`.
    pub split: String,
    /// Heap + TOAST bytes on the source.
    pub bytes: u64,
    /// Estimated rows.
    pub estimated_rows: u64,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    /// Task name.
    pub task: String,
    /// Task mode.
    pub mode: String,
    /// Replication slot and publication (CDC modes).
    pub slot: Option<String>,
    /// Tables, largest first.
    pub tables: Vec<PlannedTableView>,
    /// Sequences whose values are carried over.
    pub sequences: Vec<String>,
    /// Materialized views refreshed on the target.
    pub materialized_views: Vec<String>,
    /// Things the operator should know.
    pub warnings: Vec<String>,
}

/// Resolve the task's plan against the source.
pub async fn dry_run(task: &Task) -> Result<PlanView> {
    let source = connect(&task.source.url, Side::Source).await?;
    let schema = introspect::introspect(&source).await?;
    let (load_plan, decisions) = plan::plan(&schema, task)?;
    // Conditions, identities and column lists judged by the source, as `run` will.
    let (_, rule_warnings) = crate::rules_check::check(&source, task, &schema, &load_plan).await?;
    let by_oid: HashMap<u32, &pgtide_core::schema::Table> =
        schema.tables.iter().map(|t| (t.oid, t)).collect();
    let cdc = task.mode != Mode::FullLoad;
    let mut warnings = load_plan.warnings.clone();
    warnings.extend(rule_warnings);
    let mut tables = Vec::new();
    for t in &load_plan.tables {
        let Some(src) = by_oid.get(&t.oid) else {
            if t.view {
                tables.push(PlannedTableView {
                    source: format!("{} (view)", t.source),
                    target: format!("{} (table)", t.target),
                    columns: t.columns.clone(),
                    removed_columns: Vec::new(),
                    condition: None,
                    row_identifier_key: None,
                    preparation: t.preparation.as_str().to_string(),
                    key: "none (the view's rows are copied into a table once)".into(),
                    cdc: None,
                    copy_format: t.format.as_str().to_string(),
                    text_reason: t.text_reason.clone(),
                    split: "whole".into(),
                    bytes: 0,
                    estimated_rows: 0,
                });
            }
            continue;
        };
        let key = match (&src.replica_identity, &src.primary_key) {
            (ReplicaIdentity::Index(idx), _) => format!("replica identity index {idx}"),
            (_, Some(pk)) => format!("primary key ({})", pk.columns.join(", ")),
            _ => "none".to_string(),
        };
        let keyless = match &src.replica_identity {
            ReplicaIdentity::Default => src.primary_key.is_none(),
            ReplicaIdentity::Nothing => true,
            _ => false,
        };
        let cdc_view = cdc.then(|| {
            if src.unlogged {
                "not replicated (UNLOGGED)".to_string()
            } else if src.replica_identity == ReplicaIdentity::Full {
                "full, rows matched on every column (REPLICA IDENTITY FULL)".to_string()
            } else if keyless {
                match task.cdc.tables_without_key {
                    TablesWithoutKey::Fail => {
                        warnings.push(format!(
                            "{} has no key: the run will refuse to start (cdc.tables_without_key: fail)",
                            t.source
                        ));
                        "refused: no key (tables_without_key: fail)".to_string()
                    }
                    TablesWithoutKey::InsertOnly => "insert-only (no key)".to_string(),
                    TablesWithoutKey::ReplicaIdentityFull => {
                        "full, rows matched on every column (REPLICA IDENTITY FULL will be set)"
                            .to_string()
                    }
                }
            } else {
                "full".to_string()
            }
        });
        let split = match decisions.get(&t.oid) {
            Some(SplitDecision::Ctid(n)) => format!("ctid ranges ({n} chunks)"),
            Some(SplitDecision::Key(c, n)) => format!("key ranges on {c} ({n} chunks)"),
            _ => "whole".to_string(),
        };
        let m = load_plan.mappings.get(&t.oid);
        let columns = match m {
            Some(m) => t
                .columns
                .iter()
                .map(|c| {
                    let cm = m.columns.iter().find(|x| &x.source == c);
                    let mut s = pgtide_core::ident::display_ident(c);
                    if let Some(cm) = cm {
                        if cm.target != *c {
                            s.push_str(&format!(
                                " -> {}",
                                pgtide_core::ident::display_ident(&cm.target)
                            ));
                        }
                        if let Some(ty) = &cm.target_type {
                            s.push_str(&format!(" (type {ty})"));
                        }
                    }
                    s
                })
                .collect(),
            None => t.columns.clone(),
        };
        tables.push(PlannedTableView {
            source: t.source.to_string(),
            target: load_plan.final_target(t.oid, &t.source).to_string(),
            columns,
            removed_columns: m.map(|m| m.removed.clone()).unwrap_or_default(),
            condition: m
                .and_then(|m| m.condition.as_ref())
                .map(|(c, o)| format!("{c}   [{o}]")),
            row_identifier_key: m
                .and_then(|m| m.row_identifier_key.as_ref())
                .map(|(k, o)| format!("({})   [{o}]", k.join(", "))),
            preparation: t.preparation.as_str().to_string(),
            key,
            cdc: cdc_view,
            copy_format: t.format.as_str().to_string(),
            text_reason: t.text_reason.clone(),
            split,
            bytes: t.bytes,
            estimated_rows: t.estimated_rows,
        });
    }
    Ok(PlanView {
        task: task.name.clone(),
        mode: task.mode.as_str().to_string(),
        slot: cdc.then(|| CdcSettings::slot_name(&task.name)),
        tables,
        sequences: load_plan.sequences.iter().map(|s| s.to_string()).collect(),
        materialized_views: load_plan
            .materialized_views
            .iter()
            .map(|s| s.to_string())
            .collect(),
        warnings,
    })
}

impl PlanView {
    /// Human-readable plan.
    pub fn render(&self) -> String {
        let mut out = format!(
            "plan of task {} (mode {}): {} tables, {}\n",
            self.task,
            self.mode,
            self.tables.len(),
            pgtide_core::size::human_bytes(self.tables.iter().map(|t| t.bytes).sum())
        );
        if let Some(slot) = &self.slot {
            out.push_str(&format!("slot and publication: {slot}\n"));
        }
        for t in &self.tables {
            let arrow = if t.source == t.target {
                t.source.clone()
            } else {
                format!("{} -> {}", t.source, t.target)
            };
            out.push_str(&format!(
                "\n{arrow}\n    ~{} rows, {}; COPY {}{}; split: {}\n    key: {}\n    columns: {}\n",
                t.estimated_rows,
                pgtide_core::size::human_bytes(t.bytes),
                t.copy_format,
                t.text_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                t.split,
                t.key,
                t.columns.join(", ")
            ));
            if !t.removed_columns.is_empty() {
                out.push_str(&format!(
                    "    removed columns: {}\n",
                    t.removed_columns.join(", ")
                ));
            }
            if let Some(c) = &t.condition {
                out.push_str(&format!("    rows where: {c}\n"));
            }
            if let Some(k) = &t.row_identifier_key {
                out.push_str(&format!("    row identifier key: {k}\n"));
            }
            out.push_str(&format!("    target preparation: {}\n", t.preparation));
            if let Some(c) = &t.cdc {
                out.push_str(&format!("    cdc: {c}\n"));
            }
        }
        if !self.sequences.is_empty() {
            out.push_str(&format!("\nsequences: {}\n", self.sequences.join(", ")));
        }
        if !self.materialized_views.is_empty() {
            out.push_str(&format!(
                "materialized views refreshed: {}\n",
                self.materialized_views.join(", ")
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}
