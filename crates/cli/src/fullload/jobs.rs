//! The load's units of work and the SQL they run, built from the plan, the recorded state and
//! the schema jobs; dependencies are expressed as [`DdlWait`]s for the scheduler.

use super::*;

/// One chunk to copy.
#[derive(Debug, Clone)]
pub(super) struct CopyJob {
    pub(super) table: Arc<PlannedTable>,
    pub(super) chunk: i32,
    pub(super) range: ChunkRange,
    /// Truncate and copy with FREEZE in the same transaction: only for the single chunk of a
    /// table created by this load (under truncate, another table's foreign key may reference
    /// it, and TRUNCATE of one table would fail).
    pub(super) freeze: bool,
}

/// One DDL job.
#[derive(Debug, Clone)]
pub(super) struct DdlJob {
    /// State step key (`ddl:<oid>`, `analyze:<oid>`).
    pub(super) key: String,
    pub(super) table: u32,
    /// Runs once the table is built (foreign keys, ANALYZE); see [`Scheduler`].
    pub(super) late: bool,
    /// For messages: `INDEX public.idx_title`.
    pub(super) label: String,
    pub(super) sql: String,
}

pub(super) fn sql_copy_out(t: &PlannedTable, range: &ChunkRange) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
    let opt = t.format.copy_option();
    let bound = |col: &str, start: Option<i64>, end: Option<i64>, tid: bool| -> Vec<String> {
        let lit = |v: i64| {
            if tid {
                format!("'({v},0)'::tid")
            } else {
                v.to_string()
            }
        };
        let mut w = Vec::new();
        if let Some(s) = start {
            w.push(format!("{col} >= {}", lit(s)));
        }
        if let Some(e) = end {
            w.push(format!("{col} < {}", lit(e)));
        }
        w
    };
    let mut conds = match &t.split {
        Split::None => Vec::new(),
        Split::Ctid => bound("ctid", range.start, range.end, true),
        Split::Key(c) => bound(&quote_ident(c), range.start, range.end, false),
    };
    // The task's row condition: checked at plan time to be one closed expression that the
    // source accepts (see `rules_check`).
    if let Some(c) = &t.condition {
        conds.push(format!("({c})"));
    }
    if conds.is_empty() && !t.view {
        // COPY of a table reads only that table, never its children: ONLY semantics.
        format!(
            "COPY {} ({}) TO STDOUT ({opt})",
            t.source.quoted(),
            cols.join(", ")
        )
    } else {
        // A view cannot be COPY's relation; it is read through a query like a filtered table.
        format!(
            "COPY (SELECT {} FROM ONLY {}{}) TO STDOUT ({opt})",
            cols.join(", "),
            t.source.quoted(),
            if conds.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conds.join(" AND "))
            }
        )
    }
}

pub(super) fn sql_copy_in(t: &PlannedTable, freeze: bool) -> String {
    let cols: Vec<String> = t.target_columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "COPY {} ({}) FROM STDIN ({}{})",
        t.target.quoted(),
        cols.join(", "),
        t.format.copy_option(),
        if freeze { ", FREEZE" } else { "" }
    )
}

pub(super) type Jobs = (
    Vec<(u32, CopyJob)>,
    Vec<(String, u32, bool, Vec<DdlWait>, DdlJob)>,
    HashMap<u32, QualifiedName>,
);

/// All tables below `oid` in the partition and inheritance trees, with `oid` itself.
pub(super) fn with_descendants(schema: &Schema, oid: u32) -> Vec<u32> {
    let mut out = vec![oid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        for t in &schema.tables {
            if (t.partition_of == Some(cur) || t.inherits.contains(&cur)) && !out.contains(&t.oid) {
                out.push(t.oid);
            }
        }
        i += 1;
    }
    out
}

pub(super) fn build_jobs(
    schema: &Schema,
    plan: &LoadPlan,
    recorded: &[TablePlanRow],
    schema_work: Option<&SchemaWork>,
    done_steps: &HashSet<String>,
    prep: TablePreparation,
    progress: &Progress,
) -> Jobs {
    let recorded: HashMap<(String, String), &TablePlanRow> = recorded
        .iter()
        .map(|r| ((r.source_schema.clone(), r.source_table.clone()), r))
        .collect();
    let mut copies = Vec::new();
    let mut names: HashMap<u32, QualifiedName> = HashMap::new();
    for t in &plan.tables {
        let t = Arc::new(t.clone());
        let done: HashSet<i32> = recorded
            .get(&(t.source.schema.clone(), t.source.name.clone()))
            .map(|r| {
                r.chunks
                    .iter()
                    .filter(|c| c.done)
                    .map(|c| c.chunk)
                    .collect()
            })
            .unwrap_or_default();
        progress.register(
            t.oid,
            t.source.to_string(),
            t.bytes,
            t.estimated_rows,
            t.chunks.len(),
            done.len(),
        );
        let single = t.chunks.len() == 1;
        for (i, range) in t.chunks.iter().enumerate() {
            if done.contains(&(i as i32)) {
                continue;
            }
            copies.push((
                t.oid,
                CopyJob {
                    table: t.clone(),
                    chunk: i as i32,
                    range: *range,
                    freeze: single && prep == TablePreparation::DropAndCreate,
                },
            ));
        }
        names.insert(t.oid, t.source.clone());
    }
    // Largest tables first; within a table, chunk order.
    let size: HashMap<u32, u64> = plan.tables.iter().map(|t| (t.oid, t.bytes)).collect();
    copies.sort_by(|a, b| {
        size[&b.0]
            .cmp(&size[&a.0])
            .then(a.0.cmp(&b.0))
            .then(a.1.chunk.cmp(&b.1.chunk))
    });

    let mut ddl = Vec::new();
    if let Some(sw) = schema_work {
        for j in &sw.jobs {
            let key = j.key.clone();
            if let Some(t) = schema.table(j.table) {
                names.entry(j.table).or_insert_with(|| t.name.clone());
            }
            if done_steps.contains(&key) {
                continue;
            }
            let mut waits: Vec<DdlWait> = if j.foreign_key {
                let mut w: Vec<DdlWait> = with_descendants(schema, j.table)
                    .into_iter()
                    .map(DdlWait::Built)
                    .collect();
                if let Some(r) = j.references {
                    w.extend(with_descendants(schema, r).into_iter().map(DdlWait::Built));
                }
                w
            } else {
                with_descendants(schema, j.table)
                    .into_iter()
                    .map(DdlWait::Copied)
                    .collect()
            };
            for w in &waits {
                if let DdlWait::Copied(o) | DdlWait::Built(o) = w
                    && let Some(t) = schema.table(*o)
                {
                    names.entry(*o).or_insert_with(|| t.name.clone());
                }
            }
            waits.extend(j.after.iter().cloned().map(DdlWait::Job));
            ddl.push((
                key.clone(),
                j.table,
                j.foreign_key,
                waits,
                DdlJob {
                    key,
                    table: j.table,
                    late: j.foreign_key,
                    label: j.label.clone(),
                    sql: j.sql.clone(),
                },
            ));
        }
    }
    for t in &plan.tables {
        if schema
            .table(t.oid)
            .map(|x| x.kind == TableKind::Ordinary)
            .unwrap_or(false)
        {
            let key = format!("analyze:{}", t.oid);
            if done_steps.contains(&key) {
                continue;
            }
            // After the table's indexes (CREATE INDEX and ANALYZE lock each other out, and
            // expression indexes get statistics too); "late" like a foreign key.
            ddl.push((
                key.clone(),
                t.oid,
                true,
                vec![DdlWait::Built(t.oid)],
                DdlJob {
                    key,
                    table: t.oid,
                    late: true,
                    label: format!("ANALYZE {}", t.target),
                    sql: format!("ANALYZE {}", t.target.quoted()),
                },
            ));
        }
    }
    (copies, ddl, names)
}
