//! `pgtide validate`: is the target really a copy of the source?
//!
//! # Method
//!
//! Per table, each side first computes on the server a row count and an order-independent
//! checksum of the whole table (the sum of the first 64 bits of each row's MD5 over its text
//! form, see [`pgtide_postgres::compare`]); an equal table costs this one scan. Where they
//! differ, each side computes the same for 1024 buckets of rows. A row's bucket comes from its
//! key (the low bits of a single integer key, else the MD5 of the key's text), so a row lands
//! in the same bucket on both sides whatever its physical position; a table without a key is
//! bucketed by the whole row. Only buckets whose count or checksum differ are read again, row
//! by row (key text and row hash), and compared as multisets, which names each difference: a
//! row missing on the target, a row only on the target, a changed value, a key present more
//! than once. No row content is read into pgtide except key values, which are printed because
//! the operator needs them to act; rows of keyless tables are only counted.
//!
//! # Consistency
//!
//! All workers on one side read from one exported snapshot, so each side is compared as of one
//! instant. While change data capture is running the two instants differ by the replication
//! lag, so buckets that differ are compared again, with fresh snapshots, until they agree or
//! the rounds run out: a real difference persists, a difference in flight settles. For an exact
//! answer on a busy source, stop the stream at an end LSN first (`pgtide run --end-lsn`).
//!
//! Both sessions pin the output settings that make value text server-independent (time zone,
//! date style, float digits, bytea format), so equal values hash equally across versions.

use crate::plan;
use pgtide_core::endpoint::ConnUrl;
use pgtide_core::ident::{QualifiedName, quote_ident};
use pgtide_core::selection::TablePattern;
use pgtide_core::task::Task;
use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::compare::pin_output_settings;
use pgtide_postgres::connect::{Side, classify, connect};
use pgtide_postgres::introspect;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Buckets per table.
const BUCKETS: i32 = 1024;

/// Options from the command line.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// Only these tables (`schema.table`, PostgreSQL identifier rules); empty = all selected.
    pub tables: Vec<String>,
    /// Parallel workers (each one connection per side).
    pub threads: usize,
    /// Differences named per table; the rest are counted.
    pub max_keys: usize,
    /// Extra comparison rounds for differing buckets while a run of the task is active.
    pub settle_rounds: u32,
    /// Pause between settle rounds.
    pub settle_pause: Duration,
    /// Re-copy the differing rows of keyed tables from the source.
    pub repair: bool,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            tables: Vec::new(),
            threads: 4,
            max_keys: 20,
            settle_rounds: 5,
            settle_pause: Duration::from_secs(2),
            repair: false,
        }
    }
}

/// One kind of row difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffKind {
    /// On the source, not on the target.
    MissingOnTarget,
    /// On the target, not on the source.
    ExtraOnTarget,
    /// Same key on both sides, different values.
    Changed,
    /// The key appears more times on the target than on the source.
    DuplicateOnTarget,
}

impl DiffKind {
    fn label(self) -> &'static str {
        match self {
            DiffKind::MissingOnTarget => "missing on target",
            DiffKind::ExtraOnTarget => "extra on target",
            DiffKind::Changed => "changed",
            DiffKind::DuplicateOnTarget => "duplicate on target",
        }
    }
}

/// One named difference.
#[derive(Debug, Clone, Serialize)]
pub struct RowDiff {
    /// What differs.
    pub kind: DiffKind,
    /// The key, as `(col1, col2)=(v1, v2)`; absent for tables without a key.
    pub key: Option<String>,
}

/// The result for one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableValidation {
    /// Source table.
    pub table: String,
    /// Target table.
    pub target: String,
    /// `equal` or `different`.
    pub equal: bool,
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target.
    pub target_rows: i64,
    /// Key columns used to bucket and name rows (empty: no key).
    pub key: Vec<String>,
    /// Differences, at most `max_keys`.
    pub differences: Vec<RowDiff>,
    /// Differences beyond those named.
    pub more_differences: u64,
    /// What `--repair` did, when asked.
    pub repair: Option<Repair>,
    /// The comparison of this table failed: why (the table counts as different).
    pub error: Option<String>,
    /// Seconds spent on this table.
    pub seconds: f64,
}

impl TableValidation {
    fn failed(job: &Job, e: &Error) -> Self {
        TableValidation {
            table: job.source.to_string(),
            target: job.target.to_string(),
            equal: false,
            source_rows: 0,
            target_rows: 0,
            key: job.key.clone(),
            differences: Vec::new(),
            more_differences: 0,
            repair: None,
            error: Some(e.report()),
            seconds: 0.0,
        }
    }
}

/// What `--repair` did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct Repair {
    /// Target rows deleted (every row with a differing key).
    pub deleted: u64,
    /// Source rows copied in their place.
    pub inserted: u64,
    /// The table compared equal afterwards.
    pub equal_after: bool,
    /// Why nothing was repaired, when nothing was.
    pub skipped: Option<String>,
}

/// The result of a validation.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// Task name.
    pub task: String,
    /// Per table, in name order.
    pub tables: Vec<TableValidation>,
    /// Rounds run again because a run of the task was active.
    pub settle_rounds_used: u32,
    /// Seconds in total.
    pub seconds: f64,
}

impl Validation {
    /// Every table equal.
    pub fn ok(&self) -> bool {
        self.tables
            .iter()
            .all(|t| t.equal || t.repair.as_ref().is_some_and(|r| r.equal_after))
    }

    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let equal = self.tables.iter().filter(|t| t.equal).count();
        out.push_str(&format!(
            "validation of task {}: {equal}/{} tables equal ({:.1} s)\n",
            self.task,
            self.tables.len(),
            self.seconds
        ));
        for t in &self.tables {
            if t.equal {
                out.push_str(&format!(
                    "  equal      {}  {} rows\n",
                    t.table, t.source_rows
                ));
                continue;
            }
            if let Some(e) = &t.error {
                out.push_str(&format!("  ERROR      {}  not compared: {e}\n", t.table));
                continue;
            }
            out.push_str(&format!(
                "  DIFFERENT  {}  source {} rows, target {} rows\n",
                t.table, t.source_rows, t.target_rows
            ));
            for d in &t.differences {
                match &d.key {
                    Some(k) => out.push_str(&format!("      {}: {k}\n", d.kind.label())),
                    None => out.push_str(&format!(
                        "      one row {} (the table has no key to name it by)\n",
                        d.kind.label()
                    )),
                }
            }
            if t.more_differences > 0 {
                out.push_str(&format!("      ... and {} more\n", t.more_differences));
            }
            match &t.repair {
                Some(Repair {
                    skipped: Some(why), ..
                }) => out.push_str(&format!("      not repaired: {why}\n")),
                Some(r) => out.push_str(&format!(
                    "      repaired: {} target rows deleted, {} copied from the source; {}\n",
                    r.deleted,
                    r.inserted,
                    if r.equal_after {
                        "now equal"
                    } else {
                        "STILL DIFFERENT"
                    }
                )),
                None => {}
            }
        }
        out
    }
}

/// What to compare for one table.
#[derive(Debug, Clone)]
struct Job {
    source: QualifiedName,
    target: QualifiedName,
    /// Compared columns (source names).
    columns: Vec<String>,
    /// Their names on the target.
    target_columns: Vec<String>,
    /// The target type of a column a rule retypes (the source value is cast to it).
    casts: Vec<Option<String>>,
    /// The task's row condition on the source.
    condition: Option<String>,
    key: Vec<String>,
    /// Columns the target computes itself (not inserted by a repair).
    generated: Vec<String>,
    /// Columns of type json/jsonb, with their type (carried as documents by a repair).
    json: Vec<(String, String)>,
    /// The key is one integer column: its value picks the bucket, no hashing needed.
    integer_key: bool,
    /// The target table is partitioned (its rows are in its partitions, so no `ONLY`).
    target_partitioned: bool,
    /// Why `--repair` cannot rewrite this table's rows, if it cannot.
    unrepairable: Option<String>,
}

impl Job {
    /// The rows of one side's table: `ONLY`, so inheritance children are not read twice,
    /// except for a partitioned target, whose rows all live in its partitions. On the source,
    /// only the rows the task's row condition selects.
    fn relation(&self, target: bool) -> String {
        if target {
            if self.target_partitioned {
                self.target.quoted()
            } else {
                format!("ONLY {}", self.target.quoted())
            }
        } else {
            match &self.condition {
                // Checked at plan time to be one closed expression the source accepts.
                Some(c) => format!(
                    "(SELECT * FROM ONLY {} WHERE ({c})) AS source_rows",
                    self.source.quoted()
                ),
                None => format!("ONLY {}", self.source.quoted()),
            }
        }
    }

    /// The compared columns as SQL on one side: target names on the target; source names on
    /// the source, cast to the target type where a rule changes it.
    fn column_exprs(&self, target: bool) -> Vec<String> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if target {
                    quote_ident(&self.target_columns[i])
                } else {
                    match &self.casts[i] {
                        Some(ty) => format!("{}::{ty}", quote_ident(c)),
                        None => quote_ident(c),
                    }
                }
            })
            .collect()
    }

    fn key_exprs(&self, target: bool) -> Vec<String> {
        self.key
            .iter()
            .map(|k| {
                let i = self.columns.iter().position(|c| c == k);
                match i {
                    Some(i) => self.column_exprs(target).swap_remove(i),
                    None => quote_ident(k),
                }
            })
            .collect()
    }

    fn row_text(&self, target: bool) -> String {
        if self.columns.is_empty() {
            return "''".into();
        }
        format!("ROW({})::text", self.column_exprs(target).join(", "))
    }

    fn key_text(&self, target: bool) -> String {
        if self.key.is_empty() {
            return self.row_text(target);
        }
        format!("ROW({})::text", self.key_exprs(target).join(", "))
    }

    fn bucket_expr(&self, target: bool) -> String {
        if self.integer_key {
            return format!(
                "(({})::int8 & {})::int4",
                self.key_exprs(target)[0],
                BUCKETS - 1
            );
        }
        format!(
            "(('x' || substr(md5(convert_to({}, 'UTF8')), 1, 8))::bit(32)::int4 & {})",
            self.key_text(target),
            BUCKETS - 1
        )
    }

    fn hash_expr(&self, target: bool) -> String {
        format!(
            "('x' || substr(md5(convert_to({}, 'UTF8')), 1, 16))::bit(64)::int8::numeric",
            self.row_text(target)
        )
    }

    /// Count and checksum per bucket (only `buckets` when given).
    fn bucket_sql(&self, target: bool, filtered: bool) -> String {
        format!(
            "SELECT b, count(*), sum(h)::text FROM (SELECT {} AS b, {} AS h FROM {}) s {} GROUP BY b",
            self.bucket_expr(target),
            self.hash_expr(target),
            self.relation(target),
            if filtered { "WHERE b = ANY($1)" } else { "" }
        )
    }

    /// Key text and row hash of the rows in `buckets`.
    fn rows_sql(&self, target: bool) -> String {
        format!(
            "SELECT k, md5(convert_to(r, 'UTF8')) FROM (SELECT {} AS b, {} AS k, {} AS r FROM {}) s WHERE b = ANY($1)",
            self.bucket_expr(target),
            self.key_text(target),
            self.row_text(target),
            self.relation(target)
        )
    }
}

type Buckets = HashMap<i32, (i64, String)>;

/// Compare source and target for the task's tables.
pub async fn validate(task: &Task, opts: &ValidateOptions) -> Result<Validation> {
    let started = Instant::now();
    let (src_snap, src_name) = export(&task.source.url, Side::Source).await?;
    let (dst_snap, dst_name) = export(&task.target.url, Side::Target).await?;
    let schema = introspect::introspect(&src_snap).await?;
    let (load_plan, _) = plan::plan(&schema, task)?;
    let by_oid: HashMap<u32, &pgtide_core::schema::Table> =
        schema.tables.iter().map(|t| (t.oid, t)).collect();
    let wanted: Vec<TablePattern> = opts
        .tables
        .iter()
        .map(|p| {
            TablePattern::parse(p)
                .map_err(|e| Error::config(format!("--table {p}: {}", e.message())))
        })
        .collect::<Result<_>>()?;
    let mut jobs = Vec::new();
    for t in &load_plan.tables {
        if !wanted.is_empty()
            && !wanted
                .iter()
                .any(|p| p.matches(&t.source.schema, &t.source.name))
        {
            continue;
        }
        let key = by_oid
            .get(&t.oid)
            .and_then(|s| s.primary_key.as_ref())
            .map(|k| k.columns.clone())
            .unwrap_or_default();
        let cols = |f: &dyn Fn(&pgtide_core::schema::Column) -> bool| -> Vec<String> {
            by_oid
                .get(&t.oid)
                .map(|s| {
                    s.columns
                        .iter()
                        .filter(|c| f(c))
                        .map(|c| c.name.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut columns = cols(&|_| true);
        if columns.is_empty() {
            columns = t.columns.clone();
        }
        // The task's rules: removed columns are not compared, renamed ones are compared under
        // their target name, retyped ones after a cast to the target type.
        let mapping = load_plan.mappings.get(&t.oid);
        if let Some(m) = mapping {
            columns.retain(|c| !m.removed.contains(c));
        }
        let target_columns: Vec<String> = columns
            .iter()
            .map(|c| {
                mapping
                    .and_then(|m| m.target_column(c))
                    .unwrap_or(c)
                    .to_string()
            })
            .collect();
        let casts: Vec<Option<String>> = columns
            .iter()
            .map(|c| {
                mapping
                    .and_then(|m| m.columns.iter().find(|x| &x.source == c))
                    .and_then(|x| x.target_type.clone())
            })
            .collect();
        let key = if key.iter().all(|k| columns.contains(k)) {
            key
        } else {
            Vec::new()
        };
        let integer_key = key.len() == 1
            && by_oid
                .get(&t.oid)
                .and_then(|s| s.column(&key[0]))
                .is_some_and(|c| matches!(c.type_name.as_str(), "smallint" | "integer" | "bigint"));
        jobs.push(Job {
            source: t.source.clone(),
            target: load_plan.final_target(t.oid, &t.source),
            columns,
            target_columns,
            casts,
            condition: t.condition.clone(),
            key,
            integer_key,
            target_partitioned: false,
            unrepairable: by_oid.get(&t.oid).and_then(|s| unrepairable(&schema, s)),
            generated: cols(&|c| c.generated),
            json: by_oid
                .get(&t.oid)
                .map(|s| {
                    s.columns
                        .iter()
                        .filter(|c| c.type_name == "json" || c.type_name == "jsonb")
                        .map(|c| (c.name.clone(), c.type_name.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    for job in &mut jobs {
        let kind: Option<String> = dst_snap
            .query_one(
                "SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1))",
                &[&job.target.quoted()],
            )
            .await
            .map_err(|e| classify(e, "reading the target's tables"))?
            .get(0);
        match kind.as_deref() {
            Some("p") => job.target_partitioned = true,
            Some(_) => {}
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("table {} is missing on the target", job.target),
                )
                .with_hint(
                    "load it first (pgtide run), or validate the other tables with --table",
                ));
            }
        }
    }
    if !wanted.is_empty() && jobs.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "--table {} matches none of the task's tables",
                opts.tables.join(", ")
            ),
        )
        .with_hint("give schema.table as on the source; unquoted names fold to lower case"));
    }
    let active = super::status::run_active(&dst_snap, &task.name).await?;
    if active && opts.repair {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("a run of task {:?} is applying changes to the target", task.name),
        )
        .with_hint("stop it first (at an end LSN, or with Ctrl-C/SIGTERM), then validate --repair; a repair racing the applier could undo its changes"));
    }
    // While repairing, hold the task's lock so that no run starts applying meanwhile.
    let _repair_lock = if opts.repair {
        let c = connect(&task.target.url, Side::Target).await?;
        pgtide_postgres::state::lock_task(&c, &task.name).await?;
        Some(c)
    } else {
        None
    };

    // The plan lists tables largest first and workers pop from the end: reverse, so the
    // biggest table starts first and does not finish alone at the end.
    jobs.reverse();
    let queue = Arc::new(Mutex::new(jobs));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..opts.threads.max(1) {
        let queue = queue.clone();
        let results = results.clone();
        let (src_url, dst_url) = (task.source.url.clone(), task.target.url.clone());
        let (src_name, dst_name) = (src_name.clone(), dst_name.clone());
        let opts = opts.clone();
        workers.push(tokio::spawn(async move {
            let src = session(&src_url, Side::Source, &src_name).await?;
            let dst = session(&dst_url, Side::Target, &dst_name).await?;
            loop {
                let Some(job) = queue.lock().expect("queue").pop() else {
                    break;
                };
                // A failure on one table is reported with that table; the others go on. The
                // savepoint keeps each session's snapshot usable after an error.
                let _ = src.batch_execute("SAVEPOINT pgtide_table").await;
                let _ = dst.batch_execute("SAVEPOINT pgtide_table").await;
                let r = match compare_table(&src, &dst, &job, &opts, active, (&src_url, &dst_url))
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = src
                            .batch_execute("ROLLBACK TO SAVEPOINT pgtide_table")
                            .await;
                        let _ = dst
                            .batch_execute("ROLLBACK TO SAVEPOINT pgtide_table")
                            .await;
                        (TableValidation::failed(&job, &e), 0)
                    }
                };
                results.lock().expect("results").push(r);
            }
            let _ = src.batch_execute("COMMIT").await;
            let _ = dst.batch_execute("COMMIT").await;
            Ok::<_, Error>(())
        }));
    }
    let joined = crate::join_workers(workers, "validation worker").await;
    let _ = src_snap.batch_execute("COMMIT").await;
    let _ = dst_snap.batch_execute("COMMIT").await;
    joined?;
    let mut tables: Vec<(TableValidation, u32)> =
        std::mem::take(&mut *results.lock().expect("results"));
    tables.sort_by(|a, b| a.0.table.cmp(&b.0.table));
    let settle_rounds_used = tables.iter().map(|t| t.1).max().unwrap_or(0);
    let validation = Validation {
        task: task.name.clone(),
        tables: tables.into_iter().map(|t| t.0).collect(),
        settle_rounds_used,
        seconds: started.elapsed().as_secs_f64(),
    };
    record(&task.target.url, &task.name, &validation).await;
    Ok(validation)
}

/// Columns whose values the repair's JSON round trip cannot carry exactly: arrays,
/// composites, and domains over those or over json/jsonb (their text would be stored as a
/// JSON string). Such tables are reported, not repaired.
fn unrepairable(
    schema: &pgtide_core::schema::Schema,
    t: &pgtide_core::schema::Table,
) -> Option<String> {
    use pgtide_core::schema::TypeKind;
    for c in &t.columns {
        let mut oid = c.type_oid;
        let mut name = c.type_name.clone();
        let mut domain = false;
        for _ in 0..8 {
            match schema.types.get(&oid).map(|ty| &ty.kind) {
                Some(TypeKind::Domain { base }) => {
                    domain = true;
                    oid = *base;
                    name = schema
                        .types
                        .get(base)
                        .map(|b| b.name.name.clone())
                        .unwrap_or_default();
                }
                _ => break,
            }
        }
        let kind = schema.types.get(&oid).map(|ty| &ty.kind);
        let bad = name.ends_with("[]")
            || matches!(
                kind,
                Some(TypeKind::Array { .. }) | Some(TypeKind::Composite(_))
            )
            || (domain && (name == "json" || name == "jsonb"));
        if bad {
            return Some(format!(
                "column {} ({}) cannot be repaired row by row: reload the table (a full load with it selected)",
                pgtide_core::ident::display_ident(&c.name),
                c.type_name
            ));
        }
    }
    None
}

/// Open a connection, start a repeatable-read transaction and export its snapshot.
async fn export(url: &ConnUrl, side: Side) -> Result<(Client, String)> {
    let client = open(url, side).await?;
    client
        .batch_execute(
            "SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0; \
             BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )
        .await
        .map_err(|e| {
            classify(
                e,
                &format!("starting the validation snapshot on the {side}"),
            )
        })?;
    let name: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| classify(e, &format!("exporting a snapshot on the {side}")))?
        .get(0);
    Ok((client, name))
}

/// A worker's connection inside the exported snapshot.
async fn session(url: &ConnUrl, side: Side, snapshot: &str) -> Result<Client> {
    let client = open(url, side).await?;
    pgtide_postgres::snapshot::begin_in_snapshot(&client, snapshot).await?;
    Ok(client)
}

/// Row count and checksum of the whole table.
async fn whole(
    client: &Client,
    job: &Job,
    table: &QualifiedName,
    side: Side,
) -> Result<(i64, String)> {
    let sql = format!(
        "SELECT count(*), coalesce(sum({}), 0)::text FROM {}",
        job.hash_expr(side == Side::Target),
        job.relation(side == Side::Target)
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| classify(e, &format!("checksumming {table} on the {side}")))?;
    Ok((row.get(0), row.get(1)))
}

async fn buckets(
    client: &Client,
    job: &Job,
    table: &QualifiedName,
    only: Option<&[i32]>,
    side: Side,
) -> Result<Buckets> {
    let sql = job.bucket_sql(side == Side::Target, only.is_some());
    let rows = match only {
        Some(b) => client.query(&sql, &[&b]).await,
        None => client.query(&sql, &[]).await,
    }
    .map_err(|e| classify(e, &format!("checksumming {table} on the {side}")))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0),
                (r.get::<_, i64>(1), r.get::<_, String>(2)),
            )
        })
        .collect())
}

fn differing(a: &Buckets, b: &Buckets) -> Vec<i32> {
    let mut out: Vec<i32> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(k) != b.get(k))
        .copied()
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

async fn compare_table(
    src: &Client,
    dst: &Client,
    job: &Job,
    opts: &ValidateOptions,
    active: bool,
    urls: (&ConnUrl, &ConnUrl),
) -> Result<(TableValidation, u32)> {
    let started = Instant::now();
    // First the whole table, on both servers at the same time: for an equal table (the common
    // case) this one scan is all it costs.
    let (ws, wd) = tokio::try_join!(
        whole(src, job, &job.source, Side::Source),
        whole(dst, job, &job.target, Side::Target)
    )?;
    if ws == wd {
        return Ok((
            TableValidation {
                table: job.source.to_string(),
                target: job.target.to_string(),
                equal: true,
                source_rows: ws.0,
                target_rows: wd.0,
                key: job.key.clone(),
                differences: Vec::new(),
                more_differences: 0,
                repair: None,
                error: None,
                seconds: started.elapsed().as_secs_f64(),
            },
            0,
        ));
    }
    // Different (or in flight): per bucket, to find where.
    let (s, d) = tokio::try_join!(
        buckets(src, job, &job.source, None, Side::Source),
        buckets(dst, job, &job.target, None, Side::Target)
    )?;
    let source_rows: i64 = s.values().map(|v| v.0).sum();
    let target_rows: i64 = d.values().map(|v| v.0).sum();
    let mut diff = differing(&s, &d);
    let mut rounds = 0;
    let mut result = TableValidation {
        table: job.source.to_string(),
        target: job.target.to_string(),
        equal: diff.is_empty(),
        source_rows,
        target_rows,
        key: job.key.clone(),
        differences: Vec::new(),
        more_differences: 0,
        repair: None,
        error: None,
        seconds: 0.0,
    };
    if diff.is_empty() {
        result.seconds = started.elapsed().as_secs_f64();
        return Ok((result, 0));
    }
    // While a run applies changes, the two snapshots are apart by the lag: compare what
    // differs again with fresh reads until it settles.
    let (fresh_src, fresh_dst);
    let (mut rs, mut rd) = (src, dst);
    if active && opts.settle_rounds > 0 {
        fresh_src = fresh(urls.0, Side::Source).await?;
        fresh_dst = fresh(urls.1, Side::Target).await?;
        rs = &fresh_src;
        rd = &fresh_dst;
        while !diff.is_empty() && rounds < opts.settle_rounds {
            rounds += 1;
            tokio::time::sleep(opts.settle_pause).await;
            let (s2, d2) = tokio::try_join!(
                buckets(rs, job, &job.source, Some(&diff), Side::Source),
                buckets(rd, job, &job.target, Some(&diff), Side::Target)
            )?;
            diff = differing(&s2, &d2);
        }
        if diff.is_empty() {
            result.equal = true;
            result.seconds = started.elapsed().as_secs_f64();
            return Ok((result, rounds));
        }
    }
    let keys = name_differences(rs, rd, job, &diff, opts.max_keys, &mut result, active).await?;
    if opts.repair {
        result.repair = Some(if job.key.is_empty() {
            Repair {
                deleted: 0,
                inserted: 0,
                equal_after: false,
                skipped: Some("the table has no key to repair rows by: reload it (a full load with this table selected)".into()),
            }
        } else if let Some(why) = &job.unrepairable {
            Repair {
                deleted: 0,
                inserted: 0,
                equal_after: false,
                skipped: Some(why.clone()),
            }
        } else {
            let src = fresh(urls.0, Side::Source).await?;
            let dst = fresh(urls.1, Side::Target).await?;
            match repair(&src, &dst, job, &keys, &diff).await {
                Ok(Some((deleted, inserted))) => Repair {
                    deleted,
                    inserted,
                    equal_after: true,
                    skipped: None,
                },
                Ok(None) => Repair {
                    deleted: 0,
                    inserted: 0,
                    equal_after: false,
                    skipped: Some("the repaired rows still differed from the source, so the repair was rolled back: nothing was changed".into()),
                },
                Err(e) => Repair {
                    deleted: 0,
                    inserted: 0,
                    equal_after: false,
                    skipped: Some(format!("the repair failed and was rolled back, nothing was changed: {}", e.report())),
                },
            }
        });
    }
    result.seconds = started.elapsed().as_secs_f64();
    Ok((result, rounds))
}

/// A connection outside the snapshot, for settle rounds: each statement sees the latest data.
/// (The worker's own sessions stay in the snapshot for the tables that come next.)
async fn fresh(url: &ConnUrl, side: Side) -> Result<Client> {
    open(url, side).await
}

/// A connection with the settings every validation session needs: value text pinned
/// ([`pin_output_settings`]), `reg*` values printed schema-qualified on both sides (an empty
/// search path), and no statement timeout from the role (a checksum scan of a big table is
/// one long statement).
async fn open(url: &ConnUrl, side: Side) -> Result<Client> {
    let client = connect(url, side).await?;
    pin_output_settings(&client).await?;
    client
        .batch_execute("SET search_path = ''; SET statement_timeout = 0")
        .await
        .map_err(|e| classify(e, &format!("setting up a validation session on the {side}")))?;
    Ok(client)
}

/// Key text → row hashes of the rows in `buckets`.
async fn read_rows(
    client: &Client,
    job: &Job,
    table: &QualifiedName,
    buckets: &[i32],
    side: Side,
) -> Result<BTreeMap<String, Vec<String>>> {
    let rows = client
        .query(&job.rows_sql(side == Side::Target), &[&buckets])
        .await
        .map_err(|e| {
            classify(
                e,
                &format!("reading differing rows of {table} on the {side}"),
            )
        })?;
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        m.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(m)
}

async fn name_differences(
    src: &Client,
    dst: &Client,
    job: &Job,
    diff: &[i32],
    max_keys: usize,
    result: &mut TableValidation,
    settling: bool,
) -> Result<Vec<String>> {
    let (s, d) = tokio::try_join!(
        read_rows(src, job, &job.source, diff, Side::Source),
        read_rows(dst, job, &job.target, diff, Side::Target)
    )?;
    let keyed = !job.key.is_empty();
    let key_label = |k: &str| {
        let cols: Vec<String> = job.key.iter().map(|c| quote_ident(c)).collect();
        format!("({})={}", cols.join(", "), k)
    };
    let mut found: Vec<RowDiff> = Vec::new();
    let mut differing_keys: Vec<String> = Vec::new();
    let mut keys: Vec<&String> = s.keys().chain(d.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let empty = Vec::new();
        let (a, b) = (s.get(k).unwrap_or(&empty), d.get(k).unwrap_or(&empty));
        let key = keyed.then(|| key_label(k));
        let before = found.len();
        if keyed {
            if b.is_empty() {
                found.push(RowDiff {
                    kind: DiffKind::MissingOnTarget,
                    key,
                });
            } else if a.is_empty() {
                found.push(RowDiff {
                    kind: DiffKind::ExtraOnTarget,
                    key,
                });
            } else if b.len() > a.len() {
                found.push(RowDiff {
                    kind: DiffKind::DuplicateOnTarget,
                    key,
                });
            } else if b.len() < a.len() {
                found.push(RowDiff {
                    kind: DiffKind::MissingOnTarget,
                    key,
                });
            } else {
                let (mut x, mut y) = (a.clone(), b.clone());
                x.sort();
                y.sort();
                if x != y {
                    found.push(RowDiff {
                        kind: DiffKind::Changed,
                        key,
                    });
                }
            }
        } else {
            // Keyless: the "key" is the whole row; only the counts can be reported.
            for _ in b.len()..a.len() {
                found.push(RowDiff {
                    kind: DiffKind::MissingOnTarget,
                    key: None,
                });
            }
            for _ in a.len()..b.len() {
                found.push(RowDiff {
                    kind: DiffKind::ExtraOnTarget,
                    key: None,
                });
            }
        }
        if found.len() > before {
            differing_keys.push(k.clone());
        }
    }
    if found.is_empty() && settling {
        // The difference was in flight and settled between the bucket pass and this read.
        result.equal = true;
        return Ok(Vec::new());
    }
    if found.is_empty() {
        // Same rows, same hashes, different bucket sums cannot happen; report rather than hide.
        return Err(Error::internal(format!(
            "{}: bucket checksums differ but no row differs",
            job.source
        )));
    }
    if found.len() > max_keys {
        result.more_differences = (found.len() - max_keys) as u64;
        found.truncate(max_keys);
    }
    result.differences = found;
    Ok(differing_keys)
}

/// Rows per repair statement.
const REPAIR_BATCH: usize = 1000;

/// Replace the target's rows for `keys` (key texts) by the source's, in one target transaction.
///
/// Values travel as JSON objects of text values (json/jsonb columns as JSON), built on the
/// source by the types' output functions and turned back into typed values on the target by
/// `json_populate_record`, which feeds each text to the column type's input function: an exact
/// round trip under the pinned output settings, with every value passed as a parameter.
async fn repair(
    src: &Client,
    dst: &Client,
    job: &Job,
    keys: &[String],
    diff: &[i32],
) -> Result<Option<(u64, u64)>> {
    // (source expression, target name, source name) of the columns a repair writes.
    let exprs = job.column_exprs(false);
    let cols: Vec<(&String, &String, &String)> = job
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !job.generated.contains(c))
        .map(|(i, c)| (&exprs[i], &job.target_columns[i], c))
        .collect();
    let names: Vec<String> = cols.iter().map(|(_, t, _)| t.to_string()).collect();
    let values: Vec<String> = cols.iter().map(|(e, _, _)| format!("{e}::text")).collect();
    let read = format!(
        "SELECT json_object($2::text[], ARRAY[{}]::text[])::text FROM {} WHERE {} = ANY($1)",
        values.join(", "),
        job.relation(false),
        job.key_text(false)
    );
    let select: Vec<String> = cols
        .iter()
        .map(|(_, t, c)| match job.json.iter().find(|(n, _)| n == *c) {
            // json_populate_record would store the text as a JSON string; the text is the
            // document itself.
            Some((_, ty)) => format!("(j.v ->> {})::{ty}", pgtide_core::ident::quote_literal(t)),
            None => format!("r.{}", quote_ident(t)),
        })
        .collect();
    let write = format!(
        "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {select}          FROM json_array_elements($1::text::json) j(v), json_populate_record(NULL::{t}, j.v) r",
        t = job.target.quoted(),
        cols = cols
            .iter()
            .map(|(_, t, _)| quote_ident(t))
            .collect::<Vec<_>>()
            .join(", "),
        select = select.join(", ")
    );
    let delete = format!(
        "DELETE FROM {} WHERE {} = ANY($1)",
        job.relation(true),
        job.key_text(true)
    );
    let err_t = |e| classify(e, &format!("repairing {} on the target", job.target));
    dst.batch_execute("SET session_replication_role = replica; BEGIN")
        .await
        .map_err(err_t)?;
    let result = async {
        let mut deleted = 0;
        let mut inserted = 0;
        for chunk in keys.chunks(REPAIR_BATCH) {
            let chunk: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
            let rows = src
                .query(&read, &[&chunk, &names])
                .await
                .map_err(|e| classify(e, &format!("reading rows of {} to repair", job.source)))?;
            let docs: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            deleted += dst.execute(&delete, &[&chunk]).await.map_err(err_t)?;
            if !docs.is_empty() {
                let array = format!("[{}]", docs.join(","));
                inserted += dst.execute(&write, &[&array]).await.map_err(err_t)?;
            }
        }
        Ok::<_, Error>((deleted, inserted))
    }
    .await;
    // Check inside the transaction, before anything is committed: the repaired buckets must
    // now equal the source's, or nothing is kept.
    let checked = match result {
        Ok(n) => tokio::try_join!(
            buckets(src, job, &job.source, Some(diff), Side::Source),
            buckets(dst, job, &job.target, Some(diff), Side::Target)
        )
        .map(|(a, b)| differing(&a, &b).is_empty().then_some(n)),
        Err(e) => Err(e),
    };
    match checked {
        Ok(Some(n)) => {
            dst.batch_execute("COMMIT").await.map_err(err_t)?;
            Ok(Some(n))
        }
        Ok(None) => {
            let _ = dst.batch_execute("ROLLBACK").await;
            Ok(None)
        }
        Err(e) => {
            let _ = dst.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Record the outcome per table on the target, for `status`. Best effort: validation's answer
/// is what it prints; a target without pgtide's state (or read-only) does not make it fail.
async fn record(url: &ConnUrl, task: &str, v: &Validation) {
    let result = async {
        let client = connect(url, Side::Target).await?;
        let exists: bool = client
            .query_one("SELECT to_regclass('pgtide.task') IS NOT NULL", &[])
            .await
            .map_err(|e| classify(e, "looking for pgtide state"))?
            .get(0);
        if !exists {
            return Ok(());
        }
        pgtide_postgres::state::ensure_schema(&client).await?;
        for t in &v.tables {
            let state = if t.equal {
                "equal"
            } else if t.error.is_some() {
                "error"
            } else if t.repair.as_ref().is_some_and(|r| r.equal_after) {
                "repaired"
            } else {
                "different"
            };
            let detail = if t.equal {
                format!("{} rows", t.source_rows)
            } else {
                format!(
                    "{} differences; source {} rows, target {} rows",
                    t.differences.len() as u64 + t.more_differences,
                    t.source_rows,
                    t.target_rows
                )
            };
            client
                .execute(
                    "INSERT INTO pgtide.validation (task, table_name, state, detail, checked_at) \
                     VALUES ($1, $2, $3, $4, now()) \
                     ON CONFLICT (task, table_name) DO UPDATE SET state = excluded.state, \
                     detail = excluded.detail, checked_at = excluded.checked_at",
                    &[&task, &t.table, &state, &detail],
                )
                .await
                .map_err(|e| classify(e, "recording the validation on the target"))?;
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(
            "validation result not recorded on the target: {}",
            e.report()
        );
    }
}
