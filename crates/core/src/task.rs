//! The task file: what to move, from where, to where, and how.
//!
//! Two layers. The `Raw*` structs mirror the YAML exactly (`deny_unknown_fields`, so a typo
//! such as `thread: 4` is an error instead of a silently ignored setting). [`Task::load`] turns
//! them into a validated [`Task`]: names checked, patterns compiled, URLs parsed, passwords
//! resolved. All of that happens before anything connects, and every error names the field
//! path (`full_load.threads`) and the expected form. Values from the file are never echoed in
//! errors for the URL and password fields.
//!
//! ```yaml
//! name: shop
//! source: { url: postgresql://app@src:5432/shop }
//! target: { url: postgresql://app@dst:5432/shop, password_env: TARGET_PW }
//! mode: full-load
//! tables: { include: ["public.*"], exclude: ["public.tmp_*"] }
//! full_load: { threads: 4, split_threshold: 64MB, table_preparation: drop-and-create }
//! ```

use crate::endpoint::{ConnUrl, EndpointKind};
use crate::error::{Error, Result};
use crate::rules::{Action, RuleObject, Rules, TableSettings, Transform};
use crate::selection::{NamePattern, Selection, TablePattern, parse_ident};
use crate::size::ByteSize;
use serde::Deserialize;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// The longest task name; derived object names (`pgtide_<name>_slot`) must fit PostgreSQL's
/// 63-byte identifier limit.
pub const MAX_TASK_NAME: usize = 40;

/// What the task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Copy the tables once, from one consistent snapshot.
    #[default]
    FullLoad,
    /// Stream changes from a replication slot only.
    Cdc,
    /// Full load from the slot's snapshot, then stream changes from the slot.
    FullLoadAndCdc,
}

impl Mode {
    /// The task-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::FullLoad => "full-load",
            Mode::Cdc => "cdc",
            Mode::FullLoadAndCdc => "full-load-and-cdc",
        }
    }
}

/// What happens to target tables before the load (AWS DMS's `TargetTablePrepMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TablePreparation {
    /// Drop the target tables if they exist and create them from the source schema, with the
    /// source's types, functions, views and other objects; indexes and constraints after the load.
    #[default]
    DropAndCreate,
    /// Keep the target tables (they must exist) and empty them first.
    Truncate,
    /// Keep the target tables and their rows; they must exist and be empty.
    DoNothing,
}

impl TablePreparation {
    /// The task-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TablePreparation::DropAndCreate => "drop-and-create",
            TablePreparation::Truncate => "truncate",
            TablePreparation::DoNothing => "do-nothing",
        }
    }
}

/// Which COPY format the full load uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CopyFormat {
    /// Binary where it is portable, text per table where it is not (user-defined types inside
    /// arrays or composites, types without binary I/O, differing target column types).
    #[default]
    Auto,
    /// Text for every table.
    Text,
}

/// When primary keys are built on a PostgreSQL target.
///
/// The default is after the rows. Resuming never depends on a key (each chunk commits together
/// with the row that records it), and maintaining a key's b-tree during a parallel COPY made
/// the benchmark's data phase 36% slower and the whole load 14% slower on two cores. A
/// duplicate row, which cannot come from a source that has the key, still stops the load when
/// the key is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PrimaryKeyTiming {
    /// With the tables, before any row arrives: a duplicate row stops the load at once.
    BeforeLoad,
    /// With the other indexes, as soon as the table's rows are in.
    #[default]
    AfterLoad,
}

/// What to do when the source has large objects (`pg_largeobject`), which are not tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LargeObjects {
    /// Stop before loading, naming the count: nothing is left behind without the operator knowing.
    #[default]
    Fail,
    /// Load the tables and leave large objects behind, saying so in the report.
    Skip,
}

/// What to do with tables that have no replica identity (no primary key, identity DEFAULT, or
/// NOTHING): PostgreSQL makes UPDATE and DELETE on such a table fail *on the source* once it is in
/// a publication that publishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TablesWithoutKey {
    /// Refuse to start, listing each table and the fixes.
    #[default]
    Fail,
    /// Publish those tables for INSERT and TRUNCATE only: the source keeps working, their
    /// updates and deletes are not replicated (said at start, in the report and in status).
    InsertOnly,
    /// Set `REPLICA IDENTITY FULL` on them (needs ownership) and match rows on every column.
    ReplicaIdentityFull,
}

impl TablesWithoutKey {
    /// The task-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TablesWithoutKey::Fail => "fail",
            TablesWithoutKey::InsertOnly => "insert-only",
            TablesWithoutKey::ReplicaIdentityFull => "replica-identity-full",
        }
    }
}

/// What happens to a value a MySQL/MariaDB column cannot hold: a BC, infinite or
/// after-9999 date or timestamp, NaN or ±Infinity in a DECIMAL/FLOAT/DOUBLE column, a number
/// with more digits than the DECIMAL column it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OutOfRange {
    /// Stop, naming the table and column (the table's load is rolled back, or the change is
    /// not applied).
    #[default]
    Error,
    /// Write NULL instead (the column must be nullable); counted and reported per column.
    Null,
    /// Write the nearest value the column holds (NaN, which has none, becomes NULL); counted
    /// and reported per column.
    Clamp,
}

impl OutOfRange {
    /// The task-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OutOfRange::Error => "error",
            OutOfRange::Null => "null",
            OutOfRange::Clamp => "clamp",
        }
    }
}

/// How rows are written into a MySQL/MariaDB target during a full load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMethod {
    /// `LOAD DATA LOCAL INFILE` when the server allows it (`local_infile`), else multi-row
    /// INSERT; the report says which.
    #[default]
    Auto,
    /// `LOAD DATA LOCAL INFILE` only (an error when the server refuses it).
    LoadData,
    /// Multi-row INSERT statements.
    Insert,
}

impl LoadMethod {
    /// The task-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadMethod::Auto => "auto",
            LoadMethod::LoadData => "load-data",
            LoadMethod::Insert => "insert",
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMysql {
    #[serde(default, deserialize_with = "no_yaml_null")]
    out_of_range: OutOfRange,
    load_method: Option<LoadMethod>,
}

/// `out_of_range: null` unquoted is YAML's null (as are `~` and an empty value), not the
/// policy's name. Left to serde it would read as "not set" (`error`); read as the `null`
/// policy, a forgotten value would turn data changes on. Either way the operator would not get
/// what they wrote, so it is refused with the spelling that works.
fn no_yaml_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<OutOfRange, D::Error> {
    Option::<OutOfRange>::deserialize(d)?.ok_or_else(|| {
        serde::de::Error::custom(
            "mysql.out_of_range has no value (YAML reads null, ~ and an empty value as none): write error, clamp, or \"null\" in quotes",
        )
    })
}

/// Settings for MySQL/MariaDB targets (the task file's `mysql:` section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MysqlSettings {
    /// Values the target column cannot hold.
    pub out_of_range: OutOfRange,
    /// How the full load writes rows.
    pub load_method: LoadMethod,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCdc {
    tables_without_key: Option<TablesWithoutKey>,
    start_lsn: Option<String>,
    heartbeat_interval: Option<u64>,
    spill_dir: Option<PathBuf>,
    max_batch_changes: Option<usize>,
    max_batch_delay_ms: Option<u64>,
    catch_up: Option<bool>,
    catch_up_from_mb: Option<u64>,
    catch_up_chunk_mb: Option<u64>,
}

/// Change data capture settings.
#[derive(Debug, Clone)]
pub struct CdcSettings {
    /// Policy for tables without a replica identity.
    pub tables_without_key: TablesWithoutKey,
    /// Mode `cdc`: stream from this LSN (Arcion's `start-lsn`) instead of the slot's position.
    pub start_lsn: Option<crate::lsn::Lsn>,
    /// Seconds between heartbeat messages written on the source (0 = off).
    pub heartbeat_interval: u64,
    /// Where streamed in-progress transactions are spooled.
    pub spill_dir: PathBuf,
    /// Changes per target transaction.
    pub max_batch_changes: usize,
    /// Longest a target transaction stays open.
    pub max_batch_delay_ms: u64,
    /// Drain a backlog through the SQL decoding interface before streaming (see
    /// `pgtide_postgres::replication::peek`), when it is at least `catch_up_from` bytes of WAL.
    pub catch_up: Option<CatchUp>,
}

/// When and how a backlog is read through the SQL decoding interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Backlog (bytes of WAL) from which catching up starts; below it the walsender streams.
    pub from: u64,
    /// WAL bytes decoded per chunk.
    pub chunk: u64,
}

impl CdcSettings {
    /// The replication slot's name.
    pub fn slot_name(task: &str) -> String {
        format!("pgtide_{task}")
    }

    /// The publication's name.
    pub fn publication_name(task: &str) -> String {
        format!("pgtide_{task}")
    }

    /// The insert-only publication's name (tables without a key under `insert-only`).
    pub fn insert_only_publication_name(task: &str) -> String {
        format!("pgtide_{task}_insert_only")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: String,
    source: RawEndpoint,
    target: RawEndpoint,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    tables: RawTables,
    #[serde(default)]
    full_load: RawFullLoad,
    #[serde(default)]
    schema: RawSchema,
    #[serde(default)]
    cdc: RawCdc,
    #[serde(default)]
    mysql: Option<RawMysql>,
    #[serde(default)]
    transform: Vec<RawTransform>,
    #[serde(default)]
    dms_table_mapping: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableSettings {
    table: String,
    #[serde(default)]
    columns: Option<RawColumns>,
    #[serde(default, rename = "where")]
    condition: Option<String>,
    #[serde(default)]
    split_key: Option<String>,
    #[serde(default)]
    chunks: Option<u64>,
    #[serde(default)]
    row_count_estimate: Option<u64>,
    #[serde(default)]
    row_identifier_key: Option<Vec<String>>,
    #[serde(default)]
    preparation: Option<TablePreparation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumns {
    #[serde(default)]
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawCase {
    Lower,
    Upper,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    column: Option<String>,
    #[serde(default)]
    rename: Option<String>,
    #[serde(default)]
    add_prefix: Option<String>,
    #[serde(default)]
    remove_prefix: Option<String>,
    #[serde(default)]
    replace_prefix: Option<RawReplace>,
    #[serde(default)]
    add_suffix: Option<String>,
    #[serde(default)]
    remove_suffix: Option<String>,
    #[serde(default)]
    replace_suffix: Option<RawReplace>,
    #[serde(default)]
    case: Option<RawCase>,
    #[serde(default)]
    remove: Option<bool>,
    #[serde(default, rename = "type")]
    new_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    url: String,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTables {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    settings: Vec<RawTableSettings>,
    #[serde(default)]
    views: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFullLoad {
    threads: Option<u32>,
    split_threshold: Option<ByteSize>,
    fetch_size: Option<u32>,
    table_preparation: Option<TablePreparation>,
    copy_format: Option<CopyFormat>,
    primary_keys: Option<PrimaryKeyTiming>,
    large_objects: Option<LargeObjects>,
    index_memory: Option<ByteSize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    pg_dump: Option<PathBuf>,
    #[serde(default)]
    owners: bool,
    #[serde(default)]
    privileges: bool,
}

/// One end of the task.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The parsed URL with its password resolved.
    pub url: ConnUrl,
}

impl Endpoint {
    /// PostgreSQL or MySQL.
    pub fn kind(&self) -> EndpointKind {
        self.url.kind
    }
}

/// Full-load settings.
#[derive(Debug, Clone)]
pub struct FullLoadSettings {
    /// Parallel workers; each holds one source and one target connection.
    pub threads: usize,
    /// Tables larger than this are split into chunks of about this size (and into at least
    /// `threads` chunks), so one huge table uses every worker.
    pub split_threshold: u64,
    /// Rows per batch where rows are decoded rather than streamed (row-transforming targets).
    pub fetch_size: usize,
    /// What happens to target tables first.
    pub table_preparation: TablePreparation,
    /// COPY format policy.
    pub copy_format: CopyFormat,
    /// When primary keys are built.
    pub primary_keys: PrimaryKeyTiming,
    /// Large-object policy.
    pub large_objects: LargeObjects,
    /// `maintenance_work_mem` for index builds on the target.
    pub index_memory: u64,
}

/// Schema-copy settings (PostgreSQL targets).
#[derive(Debug, Clone)]
pub struct SchemaSettings {
    /// Explicit `pg_dump` (file or directory holding `pg_dump` and `pg_restore`).
    pub pg_dump: Option<PathBuf>,
    /// Keep object owners (the roles must exist on the target).
    pub owners: bool,
    /// Keep GRANTs (the roles must exist on the target).
    pub privileges: bool,
}

/// A validated task.
#[derive(Debug, Clone)]
pub struct Task {
    /// Task name; state, slot and publication names derive from it.
    pub name: String,
    /// Where rows come from (always PostgreSQL).
    pub source: Endpoint,
    /// Where rows go.
    pub target: Endpoint,
    /// What the task does.
    pub mode: Mode,
    /// Which tables.
    pub tables: Selection,
    /// Per-table settings and transformations (from the task file and its DMS document).
    pub rules: Rules,
    /// Views (and materialized views) whose rows are copied into a table of the same name
    /// (full load only: a view has no changes to stream).
    pub views_as_tables: Vec<TablePattern>,
    /// Full-load settings.
    pub full_load: FullLoadSettings,
    /// Schema settings.
    pub schema: SchemaSettings,
    /// Change data capture settings.
    pub cdc: CdcSettings,
    /// MySQL/MariaDB target settings.
    pub mysql: MysqlSettings,
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TASK_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!("name: {name:?} is not a valid task name")).with_hint(format!(
            "use 1 to {MAX_TASK_NAME} characters: lower-case letters, digits and _, starting with a letter \
             (slot, publication and state names are derived from it)"
        )))
    }
}

impl Task {
    /// Refuse a MySQL/MariaDB target for a command that only works with PostgreSQL targets.
    pub fn require_postgres_target(&self, command: &str) -> Result<()> {
        if self.target.kind() == EndpointKind::Mysql {
            return Err(Error::config(format!(
                "target.url: `pgtide {command}` does not support MySQL/MariaDB targets yet"
            ))
            .with_hint("for MySQL targets: `pgtide convert` writes the schema and the assessment report, and `pgtide run` performs full-load, cdc and full-load-and-cdc; compare the tables with your own queries until validate supports MySQL"));
        }
        Ok(())
    }

    /// Refuse per-table settings and transformations where they are not implemented yet
    /// (MySQL/MariaDB targets): silently ignoring a column exclusion or a row condition would
    /// move data the operator meant to keep back.
    pub fn refuse_rules(&self, what: &str) -> Result<()> {
        if let Some(v) = self.views_as_tables.first() {
            return Err(Error::new(
                crate::error::ErrorKind::Unsupported,
                format!("tables.views: {what} does not support copying views as tables yet ({v})"),
            )
            .with_hint("remove tables.views (or the DMS view selection) for this target"));
        }
        if let Some(s) = self.rules.settings.first() {
            return Err(Error::new(
                crate::error::ErrorKind::Unsupported,
                format!("{}: {what} does not support per-table settings yet", s.origin),
            )
            .with_hint("remove tables.settings (and the filters of a DMS mapping) for this target; tables.include/exclude work"));
        }
        if let Some(t) = self.rules.transforms.first() {
            return Err(Error::new(
                crate::error::ErrorKind::Unsupported,
                format!(
                    "{}: {what} does not support transformation rules yet",
                    t.origin
                ),
            )
            .with_hint("remove the transform rules for this target; tables.include/exclude work"));
        }
        Ok(())
    }

    /// Read and validate a task file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read task file {}", path.display())).with_source(e)
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        parse_raw(&text)
            .and_then(|raw| Self::validate(raw, base))
            .map_err(|e| e.context(format!("task file {}", path.display())))
    }

    /// Validate task YAML; relative paths in it are taken from the current directory.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let raw = parse_raw(text)?;
        Self::validate(raw, Path::new("."))
    }

    fn validate(raw: RawTask, base: &Path) -> Result<Self> {
        validate_name(&raw.name)?;
        let endpoint = |r: &RawEndpoint, field: &str| -> Result<Endpoint> {
            let mut url = ConnUrl::parse(&r.url, &format!("{field}.url"))?;
            url.resolve_password(r.password_env.as_deref(), r.password_file.as_deref(), field)?;
            Ok(Endpoint { url })
        };
        let source = endpoint(&raw.source, "source")?;
        let target = endpoint(&raw.target, "target")?;
        if source.kind() != EndpointKind::Postgres {
            return Err(Error::config("source.url: the source must be PostgreSQL")
                .with_hint("write postgresql://user@host:5432/dbname"));
        }
        let mut tables = Selection::parse(&raw.tables.include, &raw.tables.exclude)?;
        let mut rules = Rules {
            settings: raw
                .tables
                .settings
                .iter()
                .enumerate()
                .map(|(i, s)| table_settings(i, s))
                .collect::<Result<_>>()?,
            transforms: raw
                .transform
                .iter()
                .enumerate()
                .map(|(i, t)| transform(i, t))
                .collect::<Result<_>>()?,
        };
        let mut views_as_tables: Vec<TablePattern> = raw
            .tables
            .views
            .iter()
            .enumerate()
            .map(|(i, p)| {
                TablePattern::parse(p).map_err(|e| e.context(format!("tables.views[{i}]")))
            })
            .collect::<Result<_>>()?;
        if let Some(path) = &raw.dms_table_mapping {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                base.join(path)
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::config(format!("dms_table_mapping: cannot read {}", path.display()))
                    .with_source(e)
                    .with_hint("the path is relative to the task file's directory")
            })?;
            let dms = crate::dms::parse(&text)
                .map_err(|e| e.context(format!("dms_table_mapping {}", path.display())))?;
            // DMS moves only what its selection rules name: a document that selects only views
            // selects no table.
            if !dms.views.is_empty() || !dms.include.is_empty() {
                tables.explicit = true;
            }
            tables.include.extend(dms.include);
            views_as_tables.extend(dms.views);
            tables.exclude.extend(dms.exclude);
            rules.settings.extend(dms.settings);
            rules.transforms.extend(dms.transforms);
        }

        let f = raw.full_load;
        let threads = f.threads.unwrap_or(4);
        if !(1..=64).contains(&threads) {
            return Err(
                Error::config(format!("full_load.threads: {threads} is out of range"))
                    .with_hint("use a number from 1 to 64"),
            );
        }
        let split_threshold = f.split_threshold.unwrap_or(ByteSize(64 << 20)).0;
        if split_threshold < (1 << 20) {
            return Err(Error::config(format!(
                "full_load.split_threshold: {} is too small",
                ByteSize(split_threshold)
            ))
            .with_hint("use at least 1MB; the default 64MB suits most tables"));
        }
        let fetch_size = f.fetch_size.unwrap_or(10_000) as usize;
        if !(1..=1_000_000).contains(&fetch_size) {
            return Err(Error::config(format!(
                "full_load.fetch_size: {fetch_size} is out of range"
            ))
            .with_hint("use a number of rows from 1 to 1000000"));
        }
        let index_memory = f.index_memory.unwrap_or(ByteSize(256 << 20)).0;
        if !((1 << 20)..=(1 << 40)).contains(&index_memory) {
            return Err(Error::config(format!(
                "full_load.index_memory: {} is out of range",
                ByteSize(index_memory)
            ))
            .with_hint("use a size from 1MB to 1TB, e.g. 256MB"));
        }
        let c = raw.cdc;
        let start_lsn = match &c.start_lsn {
            Some(s) => Some(
                s.parse::<crate::lsn::Lsn>()
                    .map_err(|e| Error::config(format!("cdc.start_lsn: {e}")))?,
            ),
            None => None,
        };
        if start_lsn.is_some() && raw.mode != Mode::Cdc {
            return Err(Error::config("cdc.start_lsn: only mode cdc starts at a given LSN")
                .with_hint("full-load-and-cdc starts at the slot's consistent point, which the full load's snapshot matches"));
        }
        let max_batch_changes = c.max_batch_changes.unwrap_or(50_000);
        if !(1..=10_000_000).contains(&max_batch_changes) {
            return Err(Error::config(format!(
                "cdc.max_batch_changes: {max_batch_changes} is out of range"
            ))
            .with_hint("use a number from 1 to 10000000"));
        }
        let max_batch_delay_ms = c.max_batch_delay_ms.unwrap_or(500);
        if !(1..=600_000).contains(&max_batch_delay_ms) {
            return Err(Error::config(format!(
                "cdc.max_batch_delay_ms: {max_batch_delay_ms} is out of range"
            ))
            .with_hint("use a number of milliseconds from 1 to 600000"));
        }
        let catch_up_chunk_mb = c.catch_up_chunk_mb.unwrap_or(32);
        if !(1..=65_536).contains(&catch_up_chunk_mb) {
            return Err(Error::config(format!(
                "cdc.catch_up_chunk_mb: {catch_up_chunk_mb} is out of range"
            ))
            .with_hint("use a number of megabytes from 1 to 65536"));
        }
        let catch_up = c.catch_up.unwrap_or(true).then(|| CatchUp {
            from: c.catch_up_from_mb.unwrap_or(16).saturating_mul(1 << 20),
            chunk: catch_up_chunk_mb << 20,
        });
        if c.catch_up == Some(false)
            && (c.catch_up_from_mb.is_some() || c.catch_up_chunk_mb.is_some())
        {
            return Err(Error::config(
                "cdc.catch_up is false, so cdc.catch_up_from_mb and cdc.catch_up_chunk_mb have no effect",
            )
            .with_hint("remove them, or set cdc.catch_up: true"));
        }
        let mysql = match raw.mysql {
            Some(_) if target.kind() != EndpointKind::Mysql => {
                return Err(Error::config(
                    "mysql: these settings apply to MySQL/MariaDB targets, and target.url is PostgreSQL",
                )
                .with_hint("remove the mysql section, or point target.url at mysql://..."));
            }
            Some(m) => MysqlSettings {
                out_of_range: m.out_of_range,
                load_method: m.load_method.unwrap_or_default(),
            },
            None => MysqlSettings::default(),
        };
        let spill_dir = c
            .spill_dir
            .unwrap_or_else(|| std::env::temp_dir().join(format!("pgtide-{}", raw.name)));
        Ok(Task {
            name: raw.name,
            source,
            target,
            mode: raw.mode,
            tables,
            rules,
            views_as_tables,
            full_load: FullLoadSettings {
                threads: threads as usize,
                split_threshold,
                fetch_size,
                table_preparation: f.table_preparation.unwrap_or_default(),
                copy_format: f.copy_format.unwrap_or_default(),
                primary_keys: f.primary_keys.unwrap_or_default(),
                large_objects: f.large_objects.unwrap_or_default(),
                index_memory,
            },
            schema: SchemaSettings {
                pg_dump: raw.schema.pg_dump,
                owners: raw.schema.owners,
                privileges: raw.schema.privileges,
            },
            cdc: CdcSettings {
                tables_without_key: c.tables_without_key.unwrap_or_default(),
                start_lsn,
                heartbeat_interval: c.heartbeat_interval.unwrap_or(0),
                spill_dir,
                max_batch_changes,
                max_batch_delay_ms,
                catch_up,
            },
            mysql,
        })
    }
}

/// A row condition is pasted into `WHERE (...)` of the load's queries and the publication's row
/// filter, so it must be one closed expression: parentheses balanced and no `;`, `--` or `/*`
/// outside quotes (which could end the statement or comment out its closing parenthesis). The
/// server checks the rest at plan time.
pub fn condition_shape(w: &str) -> Result<()> {
    let bad = |what: &str| {
        Err(Error::config(format!("the condition {what}"))
            .with_hint("write one SQL boolean expression on the table's columns, e.g. status <> 'void' AND created >= '2024-01-01'"))
    };
    let b = w.as_bytes();
    let (mut i, mut depth) = (0usize, 0i32);
    while i < b.len() {
        match b[i] {
            b'\''
                if i > 0
                    && matches!(b[i - 1], b'e' | b'E')
                    && (i == 1 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'_')) =>
            {
                // In E'...' a backslash escapes a quote, which this check does not follow.
                return bad("uses an E'...' string; write the value as a standard '...' literal");
            }
            q @ (b'\'' | b'"') => {
                i += 1;
                loop {
                    if i >= b.len() {
                        return bad("has an unterminated quote");
                    }
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'$' => return bad("uses dollar quoting or parameters; use '...' literals"),
            b';' => return bad("contains a semicolon"),
            b'-' if b.get(i + 1) == Some(&b'-') => return bad("contains a comment"),
            b'/' if b.get(i + 1) == Some(&b'*') => return bad("contains a comment"),
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return bad("closes a parenthesis it did not open");
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return bad("leaves a parenthesis open");
    }
    Ok(())
}

fn names(list: &[String], field: &str) -> Result<Vec<String>> {
    list.iter()
        .enumerate()
        .map(|(i, n)| parse_ident(n).map_err(|e| e.context(format!("{field}[{i}]"))))
        .collect()
}

fn table_settings(i: usize, raw: &RawTableSettings) -> Result<TableSettings> {
    let at = format!("tables.settings[{i}]");
    let pattern = TablePattern::parse(&raw.table).map_err(|e| e.context(format!("{at}.table")))?;
    let mut s = TableSettings::new(at.clone(), pattern);
    if let Some(c) = &raw.columns {
        if c.include.is_some() && c.exclude.is_some() {
            return Err(
                Error::config(format!("{at}.columns: give include or exclude, not both"))
                    .with_hint(
                        "include lists the columns that move; exclude lists those that do not",
                    ),
            );
        }
        if let Some(list) = &c.include {
            if list.is_empty() {
                return Err(
                    Error::config(format!("{at}.columns.include is empty")).with_hint(
                        "list at least one column, or exclude the table in tables.exclude",
                    ),
                );
            }
            s.columns_include = Some(names(list, &format!("{at}.columns.include"))?);
        }
        if let Some(list) = &c.exclude {
            s.columns_exclude = names(list, &format!("{at}.columns.exclude"))?;
        }
    }
    if let Some(w) = &raw.condition {
        if w.trim().is_empty() {
            return Err(Error::config(format!("{at}.where is empty")).with_hint(
                "write an SQL boolean expression on the table's columns, e.g. status <> 'void'",
            ));
        }
        condition_shape(w).map_err(|e| e.context(format!("{at}.where")))?;
        s.condition = Some(w.trim().to_string());
    }
    if let Some(k) = &raw.split_key {
        s.split_key = Some(parse_ident(k).map_err(|e| e.context(format!("{at}.split_key")))?);
    }
    if let Some(n) = raw.chunks {
        if !(1..=1024).contains(&n) {
            return Err(Error::config(format!("{at}.chunks: {n} is out of range"))
                .with_hint("use a number from 1 to 1024"));
        }
        s.chunks = Some(n);
    }
    s.row_count_estimate = raw.row_count_estimate;
    if let Some(k) = &raw.row_identifier_key {
        if k.is_empty() {
            return Err(Error::config(format!("{at}.row_identifier_key is empty"))
                .with_hint("list the columns that identify a row, e.g. [order_id, line_no]"));
        }
        s.row_identifier_key = Some(names(k, &format!("{at}.row_identifier_key"))?);
    }
    s.preparation = raw.preparation;
    Ok(s)
}

fn transform(i: usize, raw: &RawTransform) -> Result<Transform> {
    let at = format!("transform[{i}]");
    let objects = [
        (RuleObject::Schema, &raw.schema, "schema"),
        (RuleObject::Table, &raw.table, "schema.table"),
        (RuleObject::Column, &raw.column, "schema.table.column"),
    ];
    let named: Vec<_> = objects.iter().filter(|(_, v, _)| v.is_some()).collect();
    let [(object, Some(text), form)] = named.as_slice() else {
        return Err(Error::config(format!(
            "{at}: name exactly one of schema, table or column"
        ))
        .with_hint("e.g. { table: public.orders, rename: orders_v2 } or { column: \"public.*.secret\", remove: true }"));
    };
    let pattern = NamePattern::parse(text, form)
        .map_err(|e| e.context(format!("{at}.{}", object.as_str())))?;
    let ident = |v: &str, key: &str| -> Result<String> {
        parse_ident(v).map_err(|e| e.context(format!("{at}.{key}")))
    };
    let mut actions = Vec::new();
    if let Some(v) = &raw.rename {
        actions.push(Action::Rename(ident(v, "rename")?));
    }
    if let Some(v) = &raw.add_prefix {
        actions.push(Action::AddPrefix(v.clone()));
    }
    if let Some(v) = &raw.remove_prefix {
        actions.push(Action::RemovePrefix(v.clone()));
    }
    if let Some(r) = &raw.replace_prefix {
        actions.push(Action::ReplacePrefix(r.from.clone(), r.to.clone()));
    }
    if let Some(v) = &raw.add_suffix {
        actions.push(Action::AddSuffix(v.clone()));
    }
    if let Some(v) = &raw.remove_suffix {
        actions.push(Action::RemoveSuffix(v.clone()));
    }
    if let Some(r) = &raw.replace_suffix {
        actions.push(Action::ReplaceSuffix(r.from.clone(), r.to.clone()));
    }
    match raw.case {
        Some(RawCase::Lower) => actions.push(Action::Lowercase),
        Some(RawCase::Upper) => actions.push(Action::Uppercase),
        None => {}
    }
    match raw.remove {
        Some(true) => actions.push(Action::RemoveColumn),
        Some(false) => {
            return Err(Error::config(format!("{at}.remove: false does nothing"))
                .with_hint("delete the rule, or write remove: true"));
        }
        None => {}
    }
    if let Some(t) = &raw.new_type {
        if t.trim().is_empty() || t.contains(';') {
            return Err(Error::config(format!("{at}.type is not a type name"))
                .with_hint("write a PostgreSQL type, e.g. bigint or numeric(14,2)"));
        }
        actions.push(Action::ChangeType(t.trim().to_string()));
    }
    if actions.len() != 1 {
        return Err(Error::config(format!(
            "{at}: give exactly one action ({} given)",
            actions.len()
        ))
        .with_hint("one of rename, add_prefix, remove_prefix, replace_prefix, add_suffix, remove_suffix, replace_suffix, case, remove, type; write several rules for several actions"));
    }
    let t = Transform {
        origin: at,
        object: *object,
        pattern,
        action: actions.pop().expect("one"),
    };
    t.validate()?;
    Ok(t)
}

/// Parse YAML into the raw structs, turning the parser's error into one that names the field
/// path and the line, and never quotes the surrounding text (it could hold a password).
fn parse_raw(text: &str) -> Result<RawTask> {
    let path = RefCell::new(String::new());
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            *path.borrow_mut() = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let inner = e.without_snippet();
        let location = inner
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        let mut msg = inner.to_string();
        // The parser prefixes "error: line L column C: "; we print the location ourselves.
        if let Some(idx) = msg.find(": ")
            && msg.starts_with("error: line")
        {
            msg = msg[idx + 2..].to_string();
            if let Some(idx) = msg.find(": ")
                && msg.starts_with("line ")
            {
                msg = msg[idx + 2..].to_string();
            }
        }
        let mut msg = msg.lines().next().unwrap_or("").to_string();
        // The location is printed once, below.
        if let Some(idx) = msg.rfind(" at line ") {
            msg.truncate(idx);
        }
        let path = path.into_inner();
        let at = if path.is_empty() || path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        Error::config(format!("{at}{msg}{location}")).with_hint(hint_for(&path, &msg))
    })
}

fn hint_for(path: &str, msg: &str) -> String {
    if msg.contains("unknown field") {
        return "remove or correct the key; see the README's task file reference for every key"
            .into();
    }
    match path.rsplit('.').next().unwrap_or("") {
        "mode" => "use full-load, cdc or full-load-and-cdc".into(),
        "table_preparation" => "use drop-and-create, truncate or do-nothing".into(),
        "copy_format" => "use auto or text".into(),
        "primary_keys" => "use before-load or after-load".into(),
        "large_objects" => "use fail or skip".into(),
        "tables_without_key" => "use fail, insert-only or replica-identity-full".into(),
        "threads" | "fetch_size" => "use a positive whole number".into(),
        "split_threshold" | "index_memory" => "use a size such as 256MB or 1GB".into(),
        "include" | "exclude" => "use a list of patterns: [\"public.*\", \"sales.orders\"]".into(),
        "preparation" => "use drop-and-create, truncate or do-nothing".into(),
        "case" => "use lower or upper".into(),
        _ if msg.contains("missing field") => {
            "a task needs at least name, source.url and target.url".into()
        }
        _ => "see the README's task file reference".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "name: shop\nsource: { url: postgresql://u@src:5432/db }\ntarget: { url: postgresql://u:pw@dst/db }\n";

    #[test]
    fn minimal_task_gets_defaults() {
        let t = Task::from_yaml(MIN).unwrap();
        assert_eq!(t.name, "shop");
        assert_eq!(t.mode, Mode::FullLoad);
        assert_eq!(t.full_load.threads, 4);
        assert_eq!(
            t.full_load.table_preparation,
            TablePreparation::DropAndCreate
        );
        assert!(t.tables.include.is_empty());
    }

    #[test]
    fn full_task_parses() {
        let y = format!(
            "{MIN}mode: full-load\ntables: {{ include: [\"public.*\"], exclude: [\"public.\\\"Tmp\\\"\"] }}\n\
             full_load:\n  threads: 2\n  split_threshold: 64MB\n  table_preparation: truncate\n  copy_format: text\n"
        );
        let t = Task::from_yaml(&y).unwrap();
        assert_eq!(t.full_load.threads, 2);
        assert_eq!(t.full_load.split_threshold, 64 << 20);
        assert_eq!(t.full_load.table_preparation, TablePreparation::Truncate);
        assert_eq!(t.full_load.copy_format, CopyFormat::Text);
        assert!(t.tables.selects("public", "x"));
        assert!(!t.tables.selects("public", "Tmp"));
    }

    #[test]
    fn catch_up_settings() {
        let t = Task::from_yaml(MIN).unwrap();
        assert_eq!(
            t.cdc.catch_up,
            Some(CatchUp {
                from: 16 << 20,
                chunk: 32 << 20
            })
        );
        let t = Task::from_yaml(&format!(
            "{MIN}cdc: {{ catch_up_from_mb: 0, catch_up_chunk_mb: 1 }}\n"
        ))
        .unwrap();
        assert_eq!(
            t.cdc.catch_up,
            Some(CatchUp {
                from: 0,
                chunk: 1 << 20
            })
        );
        let t = Task::from_yaml(&format!("{MIN}cdc: {{ catch_up: false }}\n")).unwrap();
        assert_eq!(t.cdc.catch_up, None);
        let e = Task::from_yaml(&format!(
            "{MIN}cdc: {{ catch_up: false, catch_up_chunk_mb: 8 }}\n"
        ))
        .unwrap_err();
        assert!(e.message().contains("no effect"), "{}", e.report());
        let e = Task::from_yaml(&format!("{MIN}cdc: {{ catch_up_chunk_mb: 0 }}\n")).unwrap_err();
        assert!(e.message().contains("out of range"), "{}", e.report());
    }

    #[test]
    fn mysql_settings_need_a_mysql_target() {
        let t = Task::from_yaml(MIN).unwrap();
        assert_eq!(t.mysql, MysqlSettings::default());
        assert_eq!(t.mysql.out_of_range, OutOfRange::Error);
        let e = Task::from_yaml(&format!("{MIN}mysql: {{ out_of_range: clamp }}\n")).unwrap_err();
        assert!(e.message().contains("PostgreSQL"), "{}", e.report());
        let my = MIN.replace("postgresql://u:pw@dst/db", "mysql://u:pw@dst:3306/db");
        assert_ne!(my, MIN);
        let t = Task::from_yaml(&format!(
            "{my}mysql: {{ out_of_range: clamp, load_method: insert }}\n"
        ))
        .unwrap();
        assert_eq!(t.mysql.out_of_range, OutOfRange::Clamp);
        assert_eq!(t.mysql.load_method, LoadMethod::Insert);
        let t = Task::from_yaml(&format!("{my}mysql: {{ out_of_range: \"null\" }}\n")).unwrap();
        assert_eq!(t.mysql.out_of_range, OutOfRange::Null);
        for none in ["null", "~", ""] {
            let e =
                Task::from_yaml(&format!("{my}mysql: {{ out_of_range: {none} }}\n")).unwrap_err();
            assert!(
                e.message().contains("in quotes"),
                "{none:?}: {}",
                e.report()
            );
        }
        let t = Task::from_yaml(&format!("{my}mysql: {{ load_method: auto }}\n")).unwrap();
        assert_eq!(t.mysql.out_of_range, OutOfRange::Error);
        let e = Task::from_yaml(&format!("{my}mysql: {{ out_of_range: zero }}\n")).unwrap_err();
        assert!(e.message().contains("out_of_range"), "{}", e.report());
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e = Task::from_yaml(&format!("{MIN}full_load:\n  thread: 4\n")).unwrap_err();
        assert!(e.message().contains("full_load"), "{}", e.report());
        assert!(e.message().contains("thread"), "{}", e.report());
        assert!(e.message().contains("line 5"), "{}", e.report());
    }

    #[test]
    fn wrong_type_names_path_and_form() {
        let e = Task::from_yaml(&format!("{MIN}full_load:\n  threads: many\n")).unwrap_err();
        assert!(
            e.message().starts_with("full_load.threads"),
            "{}",
            e.report()
        );
        assert!(e.report().contains("whole number"), "{}", e.report());
        let e = Task::from_yaml(&format!("{MIN}mode: fullload\n")).unwrap_err();
        assert!(e.message().starts_with("mode"), "{}", e.report());
        assert!(e.report().contains("full-load-and-cdc"), "{}", e.report());
    }

    #[test]
    fn secrets_are_not_echoed_in_errors() {
        let y = "name: shop\nsource: { url: postgresql://u:TOPSECRET@src/db, bogus: 1 }\ntarget: { url: postgresql://u@dst/db }\n";
        let e = Task::from_yaml(y).unwrap_err();
        assert!(!e.report().contains("TOPSECRET"), "{}", e.report());
        let y = "name: shop\nsource: { url: \"postgresql://u:TOPSECRET@src/db?sslmode=bad\" }\ntarget: { url: postgresql://u@dst/db }\n";
        let e = Task::from_yaml(y).unwrap_err();
        assert!(!e.report().contains("TOPSECRET"), "{}", e.report());
    }

    #[test]
    fn invalid_yaml_and_missing_fields() {
        assert!(Task::from_yaml("name: [oops\n").is_err());
        let e = Task::from_yaml("name: shop\n").unwrap_err();
        assert!(e.report().contains("source"), "{}", e.report());
    }

    #[test]
    fn invalid_values() {
        for (y, field) in [
            (
                format!("{MIN}full_load: {{ threads: 0 }}\n"),
                "full_load.threads",
            ),
            (
                format!("{MIN}full_load: {{ split_threshold: 1kB }}\n"),
                "full_load.split_threshold",
            ),
            (MIN.replace("shop", "Shop!"), "name"),
            (
                format!("{MIN}tables: {{ include: [orders] }}\n"),
                "tables.include[0]",
            ),
        ] {
            let e = Task::from_yaml(&y).unwrap_err();
            assert!(e.message().starts_with(field), "{field}: {}", e.report());
            assert!(e.hint().is_some(), "{field}");
        }
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;

    const MIN: &str = "name: shop\nsource: { url: postgresql://u@src:5432/db }\ntarget: { url: postgresql://u:pw@dst/db }\n";

    #[test]
    fn settings_and_transforms_parse() {
        let y = format!(
            "{MIN}tables:\n  include: [\"public.*\"]\n  settings:\n    - table: public.\"Orders\"\n      columns: {{ exclude: [Secret, '\"Note\"'] }}\n      where: \"status <> 'void;' AND (id > 3)\"\n      split_key: id\n      chunks: 4\n      row_identifier_key: [id]\n      preparation: truncate\n\
             transform:\n  - {{ schema: public, rename: App }}\n  - {{ table: \"public.*\", add_prefix: x_ }}\n  - {{ column: public.orders.\"Amount\", type: \"numeric(14,2)\" }}\n  - {{ column: \"public.*.secret\", remove: true }}\n  - {{ table: \"*.*\", case: upper }}\n"
        );
        let t = Task::from_yaml(&y).unwrap();
        let s = &t.rules.settings[0];
        assert!(s.pattern.matches("public", "Orders"));
        assert_eq!(
            s.columns_exclude,
            vec!["secret".to_string(), "Note".to_string()]
        );
        assert_eq!(
            s.condition.as_deref(),
            Some("status <> 'void;' AND (id > 3)")
        );
        assert_eq!(s.preparation, Some(TablePreparation::Truncate));
        assert_eq!(t.rules.transforms.len(), 5);
        assert_eq!(t.rules.transforms[0].action, Action::Rename("app".into()));
    }

    #[test]
    fn bad_rules_name_their_place() {
        for (rule, at) in [
            (
                "transform:\n  - { table: public.t, rename: a, add_prefix: b }\n",
                "transform[0]",
            ),
            (
                "transform:\n  - { schema: public, table: public.t, rename: a }\n",
                "transform[0]",
            ),
            (
                "transform:\n  - { table: public.t, remove: true }\n",
                "transform[0]",
            ),
            (
                "transform:\n  - { column: public.t, rename: a }\n",
                "transform[0].column",
            ),
            (
                "transform:\n  - { table: public.t, rename: \"a*\" }\n",
                "transform[0].rename",
            ),
            (
                "tables:\n  settings:\n    - { table: public.t, where: \"a = 1; DROP TABLE x\" }\n",
                "tables.settings[0].where",
            ),
            (
                "tables:\n  settings:\n    - { table: public.t, where: \"a = 1) OR (true\" }\n",
                "tables.settings[0].where",
            ),
            (
                "tables:\n  settings:\n    - { table: public.t, where: \"a = 1 -- x\" }\n",
                "tables.settings[0].where",
            ),
            (
                "tables:\n  settings:\n    - { table: public.t, columns: { include: [a], exclude: [b] } }\n",
                "tables.settings[0].columns",
            ),
            (
                "tables:\n  settings:\n    - { table: t }\n",
                "tables.settings[0].table",
            ),
        ] {
            let e = Task::from_yaml(&format!("{MIN}{rule}")).unwrap_err();
            assert!(e.message().starts_with(at), "{at}: {}", e.report());
            assert!(e.hint().is_some(), "{at}");
        }
    }

    #[test]
    fn dms_document_is_read_next_to_the_task_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.json"),
            r#"{"rules": [{"rule-type": "selection", "rule-id": "1", "rule-name": "1", "object-locator": {"schema-name": "public", "table-name": "Orders"}, "rule-action": "include"}]}"#,
        )
        .unwrap();
        let path = dir.path().join("task.yaml");
        std::fs::write(&path, format!("{MIN}dms_table_mapping: m.json\n")).unwrap();
        let t = Task::load(&path).unwrap();
        assert!(t.tables.selects("public", "Orders"));
        assert!(!t.tables.selects("public", "orders"));
        std::fs::write(&path, format!("{MIN}dms_table_mapping: missing.json\n")).unwrap();
        assert!(Task::load(&path).is_err());
    }
}
