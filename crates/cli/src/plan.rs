//! Planning the full load: which tables move, in which COPY format, split how.
//!
//! Planning reads only the schema model and the task; it touches no server, so every
//! selection mistake (a pattern that matches nothing, large objects that would be left behind)
//! is reported before anything is written anywhere.
//!
//! # Selection and partitions
//!
//! Patterns select ordinary tables and partition roots by their own names. A partition follows
//! its parent (selecting `public.payment` moves all of its partitions' rows) unless an exclude
//! pattern names the partition itself. Inheritance children are tables in their own right and
//! are matched by their own names; each table is copied with `ONLY` semantics, so no row is read
//! twice through a parent.
//!
//! # Splitting
//!
//! A table whose heap is larger than `split_threshold` is cut into at least `threads` chunks so
//! that one huge table keeps every worker busy. From PostgreSQL 14 the cut is by block ranges
//! (`ctid >= '(a,0)' AND ctid < '(b,0)'`, which a TID range scan reads without touching the rest
//! of the table); before 14, by ranges of a single-column integer primary key; otherwise the
//! table is copied whole, and the plan says so. The last chunk is open-ended, so rows in blocks
//! added after planning (a resumed load) are not missed.

use pgtide_core::ident::QualifiedName;
use pgtide_core::rules::{TableMapping, check_collisions};
use pgtide_core::schema::{Schema, Table, TypeKind};
use pgtide_core::task::{CopyFormat, LargeObjects, Mode, TablePreparation, Task};
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::copy_stream::WireFormat;
use pgtide_postgres::schema_copy::DumpFilter;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Most chunks one table is cut into.
pub const MAX_CHUNKS: u64 = 1024;

/// How a table is cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// One chunk: the whole table.
    None,
    /// Block ranges of the heap.
    Ctid,
    /// Ranges of an integer key column.
    Key(String),
}

impl Split {
    /// Stored spelling: `none`, `ctid`, `key:<column>`.
    pub fn encode(&self) -> String {
        match self {
            Split::None => "none".into(),
            Split::Ctid => "ctid".into(),
            Split::Key(c) => format!("key:{c}"),
        }
    }

    /// Parse the stored spelling.
    pub fn decode(s: &str) -> Self {
        match s {
            "ctid" => Split::Ctid,
            s if s.starts_with("key:") => Split::Key(s[4..].to_string()),
            _ => Split::None,
        }
    }
}

/// One chunk's range; `None` bounds are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    /// Inclusive start.
    pub start: Option<i64>,
    /// Exclusive end.
    pub end: Option<i64>,
}

/// A table that has rows to copy.
#[derive(Debug, Clone)]
pub struct PlannedTable {
    /// Source OID.
    pub oid: u32,
    /// Source name.
    pub source: QualifiedName,
    /// Target name.
    pub target: QualifiedName,
    /// Columns copied, in order (stored generated columns are left to the target).
    pub columns: Vec<String>,
    /// The target column each of `columns` is copied into, as named during the load.
    pub target_columns: Vec<String>,
    /// Row condition (source SQL) from the task's rules.
    pub condition: Option<String>,
    /// How this table's target is prepared.
    pub preparation: TablePreparation,
    /// COPY format.
    pub format: WireFormat,
    /// Why text was chosen, when it was.
    pub text_reason: Option<String>,
    /// How it is split.
    pub split: Split,
    /// Chunk ranges.
    pub chunks: Vec<ChunkRange>,
    /// Heap + TOAST bytes on the source (for ordering and progress).
    pub bytes: u64,
    /// Estimated rows (for progress).
    pub estimated_rows: u64,
    /// A view whose rows are copied into a table (`tables.views`).
    pub view: bool,
}

/// The selected tables and what goes with them.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Tables with storage, largest first.
    pub tables: Vec<PlannedTable>,
    /// Every selected table, including partitioned roots (no storage).
    pub selected: HashSet<u32>,
    /// What `pg_dump` leaves out.
    pub dump_filter: DumpFilter,
    /// Things the operator should know; printed at start and in the report.
    pub warnings: Vec<String>,
    /// Sequences whose values are carried over (owned by selected tables, or standalone in a
    /// schema in scope).
    pub sequences: Vec<QualifiedName>,
    /// Materialized views populated on the source, in dependency order (refreshed at the end).
    pub materialized_views: Vec<QualifiedName>,
    /// What the task's rules make of every selected table (partition roots included), with
    /// final target names.
    pub mappings: HashMap<u32, TableMapping>,
    /// Sequences whose target name differs from the source's (owned sequences move with their
    /// table to a renamed schema).
    pub sequence_targets: HashMap<QualifiedName, QualifiedName>,
}

impl LoadPlan {
    /// True when some rule renames, moves, removes or retypes something in this plan.
    pub fn has_renames(&self) -> bool {
        self.tables.iter().any(|t| {
            self.mappings
                .get(&t.oid)
                .is_some_and(|m| m.renames(&t.source))
        }) || self
            .mappings
            .values()
            .any(|m| !m.removed.is_empty() || m.columns.iter().any(|c| c.target_type.is_some()))
    }

    /// The final target name of a source table (after every rename step).
    pub fn final_target(&self, oid: u32, source: &QualifiedName) -> QualifiedName {
        self.mappings
            .get(&oid)
            .map(|m| m.target.clone())
            .unwrap_or_else(|| source.clone())
    }
}

/// Decide the COPY format of a table.
pub fn choose_format(
    schema: &Schema,
    table: &Table,
    policy: CopyFormat,
) -> (WireFormat, Option<String>) {
    if policy == CopyFormat::Text {
        return (WireFormat::Text, Some("copy_format: text".into()));
    }
    choose_format_columns(schema, table, &|_| true)
}

/// Like [`choose_format`] for the columns `keep` accepts.
fn choose_format_columns(
    schema: &Schema,
    table: &Table,
    keep: &dyn Fn(&str) -> bool,
) -> (WireFormat, Option<String>) {
    for c in table.copy_columns().filter(|c| keep(&c.name)) {
        if let Some(why) = schema.binary_copy_obstacle(c.type_oid) {
            return (WireFormat::Text, Some(format!("column {}: {why}", c.name)));
        }
    }
    (WireFormat::Binary, None)
}

fn is_integer_type(schema: &Schema, oid: u32) -> bool {
    match schema.types.get(&oid) {
        Some(t) if t.name.schema == "pg_catalog" => {
            matches!(t.name.name.as_str(), "int2" | "int4" | "int8")
        }
        Some(t) => matches!(t.kind, TypeKind::Domain { base } if is_integer_type(schema, base)),
        None => false,
    }
}

/// Even block ranges; the last one open-ended.
pub fn ctid_chunks(heap_bytes: u64, block_size: u64, n: u64) -> Vec<ChunkRange> {
    let blocks = heap_bytes.div_ceil(block_size.max(1)).max(1);
    let n = n.clamp(1, blocks);
    (0..n)
        .map(|i| ChunkRange {
            start: (i > 0).then(|| (blocks * i / n) as i64),
            end: (i + 1 < n).then(|| (blocks * (i + 1) / n) as i64),
        })
        .collect()
}

/// Even key ranges between `min` and `max`; the first and last open-ended.
pub fn key_chunks(min: i64, max: i64, n: u64) -> Vec<ChunkRange> {
    let span = (max as i128 - min as i128 + 1).max(1);
    let n = (n as i128).clamp(1, span) as u64;
    (0..n)
        .map(|i| ChunkRange {
            start: (i > 0).then(|| (min as i128 + span * i as i128 / n as i128) as i64),
            end: (i + 1 < n).then(|| (min as i128 + span * (i + 1) as i128 / n as i128) as i64),
        })
        .collect()
}

/// What the splitter decided before key bounds are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitDecision {
    /// Whole table.
    Whole,
    /// Block ranges, `n` chunks.
    Ctid(u64),
    /// Key ranges over this column, `n` chunks (needs min/max from the source).
    Key(String, u64),
}

/// Decide how to split `table`, and warn when a large table cannot be split. A `split_key` or
/// `chunks` setting from the task's rules overrides the size rule.
pub fn split_decision(
    schema: &Schema,
    table: &Table,
    task: &Task,
    mapping: Option<&TableMapping>,
    warnings: &mut Vec<String>,
) -> Result<SplitDecision> {
    let threshold = task.full_load.split_threshold;
    let wanted = mapping.and_then(|m| m.chunks);
    let n = wanted
        .unwrap_or_else(|| {
            table
                .heap_bytes
                .div_ceil(threshold)
                .max(task.full_load.threads as u64)
        })
        .clamp(1, MAX_CHUNKS);
    if let Some(key) = mapping.and_then(|m| m.split_key.as_ref()) {
        let col = table.column(key).expect("checked by the rules");
        if !is_integer_type(schema, col.type_oid) {
            return Err(Error::config(format!(
                "split_key {} of {} is not an integer column",
                pgtide_core::ident::display_ident(key),
                table.name
            ))
            .with_hint("choose a smallint, integer or bigint column (or leave split_key out: large tables are split by block ranges)"));
        }
        return Ok(SplitDecision::Key(col.name.clone(), n));
    }
    if wanted.is_none() && table.heap_bytes <= threshold {
        return Ok(SplitDecision::Whole);
    }
    if n <= 1 {
        return Ok(SplitDecision::Whole);
    }
    if schema.server_version >= 140000 {
        return Ok(SplitDecision::Ctid(n));
    }
    if let Some(pk) = &table.primary_key
        && pk.columns.len() == 1
        && let Some(col) = table.column(&pk.columns[0])
        && is_integer_type(schema, col.type_oid)
    {
        return Ok(SplitDecision::Key(col.name.clone(), n));
    }
    warnings.push(format!(
        "{} ({}) is copied by one worker: the source is older than PostgreSQL 14 and the table has no single integer primary key to split on (set split_key in tables.settings)",
        table.name,
        pgtide_core::size::human_bytes(table.heap_bytes)
    ));
    Ok(SplitDecision::Whole)
}

/// The partition root above `t` (itself when it is not a partition).
fn partition_root<'a>(t: &'a Table, by_oid: &HashMap<u32, &'a Table>) -> &'a Table {
    let mut cur = t;
    for _ in 0..64 {
        match cur.partition_of.and_then(|p| by_oid.get(&p)) {
            Some(parent) => cur = parent,
            None => break,
        }
    }
    cur
}

/// Resolve the task's rules for every selected table; rule mistakes are errors here, before
/// anything moves.
fn map_tables(
    schema: &Schema,
    task: &Task,
    selected: &HashSet<u32>,
    by_oid: &HashMap<u32, &Table>,
    warnings: &mut Vec<String>,
) -> Result<HashMap<u32, TableMapping>> {
    let rules = &task.rules;
    let mut mappings = HashMap::new();
    let (mut used_s, mut used_t) = (Vec::new(), Vec::new());
    let global = task.full_load.table_preparation;
    for t in schema.tables.iter().filter(|t| selected.contains(&t.oid)) {
        let cols: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        let mut m = rules.map_table(&t.name.schema, &t.name.name, &cols)?;
        used_s.extend(m.used_settings.iter().copied());
        used_t.extend(m.used_transforms.iter().copied());
        let root = partition_root(t, by_oid);
        if root.oid != t.oid {
            // A partition has its root's columns on the target (a column is renamed, dropped
            // or retyped on the partitioned table, never on one partition).
            let rcols: Vec<&str> = root.columns.iter().map(|c| c.name.as_str()).collect();
            let rm = rules.map_table(&root.name.schema, &root.name.name, &rcols)?;
            // The partition's own column rules, if any, must say what its root's say.
            let own_column_rules = !m.removed.is_empty()
                || m.columns
                    .iter()
                    .any(|c| c.source != c.target || c.target_type.is_some());
            if own_column_rules && m.columns != rm.columns {
                return Err(Error::config(format!(
                    "the rules change columns of {}, a partition of {}: a partition's columns follow its partitioned table",
                    t.name, root.name
                ))
                .with_hint(format!("write the column rule or column list for {} instead", root.name)));
            }
            m.columns = rm.columns;
            m.removed = rm.removed;
            if m.condition.is_none() {
                m.condition = rm.condition;
            }
            if m.row_identifier_key.is_none() {
                m.row_identifier_key = rm.row_identifier_key;
            }
            if m.preparation.is_none() {
                m.preparation = rm.preparation;
            }
            if m.split_key.is_none() {
                m.split_key = rm.split_key;
            }
            if m.chunks.is_none() {
                m.chunks = rm.chunks;
            }
        }
        if m.row_count_estimate.is_some() && !t.has_storage() {
            return Err(Error::config(format!(
                "tables.settings: row_count_estimate for {}, which holds no rows of its own (a partitioned table)",
                t.name
            ))
            .with_hint("set row_count_estimate on its partitions"));
        }
        if let Some(p) = m.preparation
            && (p == TablePreparation::DropAndCreate) != (global == TablePreparation::DropAndCreate)
        {
            return Err(Error::config(format!(
                "preparation {} for {} cannot be mixed with full_load.table_preparation: {}",
                p.as_str(),
                t.name,
                global.as_str()
            ))
            .with_hint("under drop-and-create every table is re-created from the source schema; truncate and do-nothing mix freely with each other"));
        }
        if let Some(c) = m.columns.iter().find(|c| c.target_type.is_some())
            && (global != TablePreparation::DropAndCreate || task.mode == Mode::Cdc)
        {
            if task.mode == Mode::Cdc {
                warnings.push(format!(
                    "the type rule for {}.{} has no effect in mode cdc: the target table exists and keeps its column types",
                    t.name, c.source
                ));
            } else {
                return Err(Error::config(format!(
                    "a rule changes the type of {}.{}, which needs full_load.table_preparation: drop-and-create",
                    t.name, c.source
                ))
                .with_hint("with truncate or do-nothing the target tables exist and keep their own column types; change them there, or drop the rule"));
            }
        }
        mappings.insert(t.oid, m);
    }
    used_s.sort_unstable();
    used_s.dedup();
    used_t.sort_unstable();
    used_t.dedup();
    rules.unused(&used_s, &used_t)?;
    let pairs: Vec<(&QualifiedName, &QualifiedName)> = schema
        .tables
        .iter()
        .filter_map(|t| mappings.get(&t.oid).map(|m| (&t.name, &m.target)))
        .collect();
    check_collisions(pairs)?;
    Ok(mappings)
}

/// Select tables and build the plan. Key-range chunks are filled in later by the caller (they
/// need the key's min and max from the source); see [`key_chunks`].
pub fn plan(schema: &Schema, task: &Task) -> Result<(LoadPlan, HashMap<u32, SplitDecision>)> {
    let sel = &task.tables;
    let mut warnings = Vec::new();

    // Include patterns that match nothing are errors; excludes that match nothing, warnings.
    for (i, p) in sel.include.iter().enumerate() {
        if !schema
            .tables
            .iter()
            .any(|t| p.matches(&t.name.schema, &t.name.name))
        {
            let schemas = if schema.schemas.is_empty() {
                "none".to_string()
            } else {
                schema.schemas.join(", ")
            };
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("tables.include[{i}]: pattern {p} matches no table in the source"),
            )
            .with_hint(format!(
                "check the spelling and the quoting: unquoted names fold to lower case, \"Quoted\" names match exactly; the source's schemas are: {schemas}"
            )));
        }
    }
    for (i, p) in sel.exclude.iter().enumerate() {
        if !schema
            .tables
            .iter()
            .any(|t| p.matches(&t.name.schema, &t.name.name))
        {
            warnings.push(format!("tables.exclude[{i}]: pattern {p} matches no table"));
        }
    }

    // Roots and ordinary tables by their own names; partitions follow their parent, or are
    // named by an include pattern themselves (then their partitioned table is created for them,
    // with only the named partitions).
    let by_oid: HashMap<u32, &Table> = schema.tables.iter().map(|t| (t.oid, t)).collect();
    let mut selected: HashSet<u32> = HashSet::new();
    fn is_selected(t: &Table, by_oid: &HashMap<u32, &Table>, task: &Task, depth: u32) -> bool {
        match t.partition_of.and_then(|p| by_oid.get(&p)) {
            Some(parent) if depth < 64 => {
                let (schema, name) = (&t.name.schema, &t.name.name);
                let excluded = task.tables.exclude.iter().any(|p| p.matches(schema, name));
                // Named: an include pattern matches the partition but not its parent (so
                // `public.*` does not bring back partitions of an excluded root), and no
                // ancestor is excluded.
                let named = task.tables.include.iter().any(|p| {
                    p.matches(schema, name) && !p.matches(&parent.name.schema, &parent.name.name)
                }) && !ancestor_excluded(parent, by_oid, task);
                !excluded && (named || is_selected(parent, by_oid, task, depth + 1))
            }
            _ => task.tables.selects(&t.name.schema, &t.name.name),
        }
    }
    fn ancestor_excluded(t: &Table, by_oid: &HashMap<u32, &Table>, task: &Task) -> bool {
        let mut cur = Some(t);
        for _ in 0..64 {
            let Some(x) = cur else { break };
            if task
                .tables
                .exclude
                .iter()
                .any(|p| p.matches(&x.name.schema, &x.name.name))
            {
                return true;
            }
            cur = x.partition_of.and_then(|p| by_oid.get(&p).copied());
        }
        false
    }
    for t in &schema.tables {
        if is_selected(t, &by_oid, task, 0) {
            selected.insert(t.oid);
        }
    }
    // Partitioned tables above partitions selected by name.
    let mut structure: Vec<u32> = Vec::new();
    for t in &schema.tables {
        if !selected.contains(&t.oid) {
            continue;
        }
        let mut cur = t.partition_of;
        let mut depth = 0;
        while let Some(p) = cur
            && depth < 64
        {
            if selected.insert(p) {
                structure.push(p);
            }
            cur = by_oid.get(&p).and_then(|x| x.partition_of);
            depth += 1;
        }
    }
    for oid in structure {
        if let Some(t) = by_oid.get(&oid) {
            warnings.push(format!(
                "{} is created on the target for the partitions selected by name; its other partitions are not moved",
                t.name
            ));
        }
    }
    // Views copied as tables (full load only).
    let mut view_tables: Vec<&pgtide_core::schema::View> = Vec::new();
    for (i, p) in task.views_as_tables.iter().enumerate() {
        let before = view_tables.len();
        for v in schema
            .views
            .iter()
            .filter(|v| p.matches(&v.name.schema, &v.name.name))
        {
            if !view_tables.iter().any(|x| x.oid == v.oid) {
                view_tables.push(v);
            }
        }
        if view_tables.len() == before
            && !schema
                .views
                .iter()
                .any(|v| p.matches(&v.name.schema, &v.name.name))
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("tables.views[{i}]: pattern {p} matches no view in the source"),
            )
            .with_hint("check the spelling and the quoting: unquoted names fold to lower case, \"Quoted\" names match exactly"));
        }
    }
    if !view_tables.is_empty() && task.mode != Mode::FullLoad {
        let names: Vec<String> = view_tables.iter().map(|v| v.name.to_string()).collect();
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "views copied as tables have no changes to stream (a view writes no WAL of its own): {}",
                names.join(", ")
            ),
        )
        .with_hint("copy them in a separate task with mode: full-load (run it again at cutover), or select the tables they read"));
    }
    if let Some(v) = view_tables.iter().find(|v| {
        selected
            .iter()
            .any(|o| by_oid.get(o).is_some_and(|t| t.name == v.name))
    }) {
        return Err(Error::config(format!(
            "{} is selected both as a view and as a table",
            v.name
        )));
    }
    if selected.is_empty() && view_tables.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            "the table selection matches no table in the source",
        )
        .with_hint("check tables.include and tables.exclude"));
    }

    let mappings = map_tables(schema, task, &selected, &by_oid, &mut warnings)?;

    if schema.large_objects > 0 {
        match task.full_load.large_objects {
            LargeObjects::Fail => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("the source holds {} large objects (pg_largeobject), which pgtide does not copy", schema.large_objects),
                )
                .with_hint("set full_load.large_objects: skip to load the tables without them (and move them with pg_dump --large-objects --data-only), or remove them"));
            }
            LargeObjects::Skip => warnings.push(format!(
                "{} large objects are not copied (full_load.large_objects: skip)",
                schema.large_objects
            )),
        }
    }

    // pg_dump filter: tables not selected, views that read them, sequences they own, and
    // schemas nothing selected lives in or needs.
    let mut filter = DumpFilter::default();
    let mut excluded_rel: BTreeSet<u32> = BTreeSet::new();
    for t in &schema.tables {
        if !selected.contains(&t.oid) {
            excluded_rel.insert(t.oid);
        }
    }
    let mut needed_schemas: BTreeSet<String> = BTreeSet::new();
    for t in schema.tables.iter().filter(|t| selected.contains(&t.oid)) {
        needed_schemas.insert(t.name.schema.clone());
        for c in &t.columns {
            collect_type_schemas(schema, c.type_oid, &mut needed_schemas, 0);
        }
    }
    for v in &view_tables {
        needed_schemas.insert(v.name.schema.clone());
        for c in &v.columns {
            collect_type_schemas(schema, c.type_oid, &mut needed_schemas, 0);
        }
    }
    let excluded_schemas: BTreeSet<String> = schema
        .schemas
        .iter()
        .filter(|s| !sel.may_select_schema(s) && !needed_schemas.contains(*s))
        .cloned()
        .collect();
    // A view copied as a table is not created as a view; views that read it are left out.
    for v in &view_tables {
        excluded_rel.insert(v.oid);
    }
    // Views that read excluded relations (transitively) are left out too, with a warning.
    loop {
        let mut changed = false;
        for v in &schema.views {
            if excluded_rel.contains(&v.oid) || excluded_schemas.contains(&v.name.schema) {
                continue;
            }
            if let Some(dep) = v.depends_on.iter().find(|d| excluded_rel.contains(d)) {
                excluded_rel.insert(v.oid);
                changed = true;
                let dep_name = schema
                    .table(*dep)
                    .map(|t| t.name.to_string())
                    .or_else(|| {
                        schema
                            .views
                            .iter()
                            .find(|x| x.oid == *dep)
                            .map(|x| x.name.to_string())
                    })
                    .unwrap_or_else(|| dep.to_string());
                let why = if view_tables.iter().any(|x| x.oid == *dep) {
                    "which is copied as a table"
                } else {
                    "which is not selected"
                };
                warnings.push(format!(
                    "{} {} is not created on the target: it reads {dep_name}, {why}",
                    if v.materialized {
                        "materialized view"
                    } else {
                        "view"
                    },
                    v.name
                ));
            }
        }
        if !changed {
            break;
        }
    }
    for s in &schema.sequences {
        if let Some((owner, _)) = &s.owned_by
            && excluded_rel.contains(owner)
        {
            excluded_rel.insert(s.oid);
        }
    }
    for oid in &excluded_rel {
        let name = schema
            .table(*oid)
            .map(|t| &t.name)
            .or_else(|| schema.views.iter().find(|v| v.oid == *oid).map(|v| &v.name))
            .or_else(|| {
                schema
                    .sequences
                    .iter()
                    .find(|s| s.oid == *oid)
                    .map(|s| &s.name)
            });
        if let Some(n) = name
            && !excluded_schemas.contains(&n.schema)
        {
            filter
                .exclude_relations
                .push((n.schema.clone(), n.name.clone()));
        }
    }
    let sequences: Vec<QualifiedName> = schema
        .sequences
        .iter()
        .filter(|s| !excluded_rel.contains(&s.oid) && !excluded_schemas.contains(&s.name.schema))
        .filter(|s| s.owned_by.is_some() || sel.may_select_schema(&s.name.schema))
        .map(|s| s.name.clone())
        .collect();
    let materialized_views = matview_order(schema, &excluded_rel, &excluded_schemas);
    filter.exclude_schemas = excluded_schemas.into_iter().collect();

    let mut tables = Vec::new();
    let mut decisions = HashMap::new();
    for t in schema
        .tables
        .iter()
        .filter(|t| selected.contains(&t.oid) && t.has_storage())
    {
        let m = mappings
            .get(&t.oid)
            .expect("every selected table is mapped");
        let keep = |c: &str| m.columns.iter().any(|x| x.source == c);
        let (format, text_reason) = if task.full_load.copy_format == CopyFormat::Text {
            (WireFormat::Text, Some("copy_format: text".to_string()))
        } else if let Some(c) = m.columns.iter().find(|c| c.target_type.is_some()) {
            (
                WireFormat::Text,
                Some(format!(
                    "column {} changes type on the target",
                    pgtide_core::ident::display_ident(&c.source)
                )),
            )
        } else {
            choose_format_columns(schema, t, &keep)
        };
        let decision = split_decision(schema, t, task, Some(m), &mut warnings)?;
        let (split, chunks) = match &decision {
            SplitDecision::Whole => (
                Split::None,
                vec![ChunkRange {
                    start: None,
                    end: None,
                }],
            ),
            SplitDecision::Ctid(n) => (
                Split::Ctid,
                ctid_chunks(t.heap_bytes, schema.block_size, *n),
            ),
            SplitDecision::Key(col, _) => (Split::Key(col.clone()), Vec::new()),
        };
        if t.unlogged {
            warnings.push(format!(
                "{} is UNLOGGED: it is copied, but its rows are lost on a target crash",
                t.name
            ));
        }
        decisions.insert(t.oid, decision);
        let preparation = m.preparation.unwrap_or(task.full_load.table_preparation);
        let columns: Vec<String> = t
            .copy_columns()
            .filter(|c| keep(&c.name))
            .map(|c| c.name.clone())
            .collect();
        // Tables created by this load carry source names until the rename step at the end
        // (see `fullload::rules`); existing target tables already have the final names.
        let (target, target_columns) = if preparation == TablePreparation::DropAndCreate {
            (t.name.clone(), columns.clone())
        } else {
            (
                m.target.clone(),
                columns
                    .iter()
                    .map(|c| m.target_column(c).expect("kept").to_string())
                    .collect(),
            )
        };
        tables.push(PlannedTable {
            oid: t.oid,
            source: t.name.clone(),
            target,
            target_columns,
            condition: m.condition.as_ref().map(|(c, _)| c.clone()),
            preparation,
            columns,
            format,
            text_reason,
            split,
            chunks,
            view: false,
            bytes: t.total_bytes,
            estimated_rows: m
                .row_count_estimate
                .unwrap_or(t.estimated_rows.max(0) as u64),
        });
    }
    for v in &view_tables {
        let columns: Vec<String> = v.columns.iter().map(|c| c.name.clone()).collect();
        let (format, text_reason) = if task.full_load.copy_format == CopyFormat::Text {
            (WireFormat::Text, Some("copy_format: text".to_string()))
        } else {
            v.columns
                .iter()
                .find_map(|c| {
                    schema
                        .binary_copy_obstacle(c.type_oid)
                        .map(|why| (WireFormat::Text, Some(format!("column {}: {why}", c.name))))
                })
                .unwrap_or((WireFormat::Binary, None))
        };
        tables.push(PlannedTable {
            oid: v.oid,
            source: v.name.clone(),
            target: v.name.clone(),
            target_columns: columns.clone(),
            condition: None,
            preparation: task.full_load.table_preparation,
            columns,
            format,
            text_reason,
            split: Split::None,
            chunks: vec![ChunkRange {
                start: None,
                end: None,
            }],
            bytes: 0,
            estimated_rows: 0,
            view: true,
        });
    }
    tables.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.source.cmp(&b.source)));
    let mut sequence_targets = HashMap::new();
    for s in &schema.sequences {
        if let Some((owner, _)) = &s.owned_by
            && let Some(m) = mappings.get(owner)
            && m.target.schema != s.name.schema
        {
            sequence_targets.insert(
                s.name.clone(),
                QualifiedName::new(m.target.schema.clone(), s.name.name.clone()),
            );
        }
    }
    Ok((
        LoadPlan {
            tables,
            selected,
            dump_filter: filter,
            warnings,
            sequences,
            materialized_views,
            mappings,
            sequence_targets,
        },
        decisions,
    ))
}

/// Populated materialized views that are copied, ordered so that one reading another is
/// refreshed after it.
fn matview_order(
    schema: &Schema,
    excluded: &BTreeSet<u32>,
    excluded_schemas: &BTreeSet<String>,
) -> Vec<QualifiedName> {
    let mvs: Vec<&pgtide_core::schema::View> = schema
        .views
        .iter()
        .filter(|v| {
            v.materialized
                && v.populated
                && !excluded.contains(&v.oid)
                && !excluded_schemas.contains(&v.name.schema)
        })
        .collect();
    let oids: HashSet<u32> = mvs.iter().map(|v| v.oid).collect();
    let mut done: HashSet<u32> = HashSet::new();
    let mut out = Vec::new();
    while out.len() < mvs.len() {
        let before = out.len();
        for v in &mvs {
            if !done.contains(&v.oid)
                && v.depends_on
                    .iter()
                    .all(|d| !oids.contains(d) || done.contains(d))
            {
                done.insert(v.oid);
                out.push(v.name.clone());
            }
        }
        if out.len() == before {
            // A cycle cannot exist between materialized views; keep the rest in catalog order.
            for v in &mvs {
                if done.insert(v.oid) {
                    out.push(v.name.clone());
                }
            }
        }
    }
    out
}

fn collect_type_schemas(schema: &Schema, oid: u32, out: &mut BTreeSet<String>, depth: u32) {
    let Some(t) = schema.types.get(&oid) else {
        return;
    };
    if depth > 32 {
        return;
    }
    if t.is_user_defined() {
        out.insert(t.name.schema.clone());
    }
    match &t.kind {
        TypeKind::Domain { base } => collect_type_schemas(schema, *base, out, depth + 1),
        TypeKind::Array { element } => collect_type_schemas(schema, *element, out, depth + 1),
        TypeKind::Range { subtype } => collect_type_schemas(schema, *subtype, out, depth + 1),
        TypeKind::Multirange { range } => collect_type_schemas(schema, *range, out, depth + 1),
        TypeKind::Composite(attrs) => {
            for a in attrs {
                collect_type_schemas(schema, *a, out, depth + 1)
            }
        }
        TypeKind::Base | TypeKind::Enum(_) | TypeKind::Pseudo => {}
    }
}

/// The settings that decide what an unfinished load's recorded state means: a resume with
/// different ones would mix two tasks' results, so it is refused.
pub fn task_fingerprint(task: &Task) -> String {
    let patterns = |ps: &[pgtide_core::selection::TablePattern]| {
        ps.iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\u{1}")
    };
    fingerprint(&[
        &task.source.url.redacted(),
        task.mode.as_str(),
        task.full_load.table_preparation.as_str(),
        &format!("{:?}", task.full_load.copy_format),
        &patterns(&task.tables.include),
        &patterns(&task.tables.exclude),
        &format!("{:?}", task.rules),
    ])
}

/// A stable 64-bit FNV-1a hash, printed as hex.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctid_chunks_cover_everything_once() {
        let c = ctid_chunks(100 * 8192, 8192, 4);
        assert_eq!(c.len(), 4);
        assert_eq!(c[0].start, None);
        assert_eq!(c[3].end, None);
        for w in c.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(ctid_chunks(8192, 8192, 8).len(), 1);
    }

    #[test]
    fn key_chunks_cover_everything_once() {
        let c = key_chunks(1, 1000, 4);
        assert_eq!(c.len(), 4);
        assert_eq!(c[0].start, None);
        assert_eq!(c[3].end, None);
        for w in c.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(key_chunks(5, 5, 4).len(), 1);
        assert_eq!(key_chunks(i64::MIN, i64::MAX, 3).len(), 3);
    }

    #[test]
    fn fingerprints_are_stable_and_sensitive() {
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_ne!(fingerprint(&["a", "b"]), fingerprint(&["ab", ""]));
    }
}
