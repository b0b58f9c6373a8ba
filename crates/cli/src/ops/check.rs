//! `pgtide check`: every prerequisite and risk of a task, before anything is created.
//!
//! Each finding has a severity, the object it is about, what is wrong, and the exact fix (an SQL
//! statement or a configuration line). `error` findings block the task: `pgtide run` performs
//! the same checks first and refuses to start on any of them, so an operator learns about every
//! problem at once instead of one per attempt. `warning` findings are risks the task can live
//! with; `info` findings describe how pgtide will treat something (partitions, an existing slot).
//!
//! Only reads: no slot, publication or state is created. The one active probe is a real
//! replication connection (`replication=database`, `IDENTIFY_SYSTEM`), because `pg_hba.conf`
//! rules for replication connections are separate from normal ones and a task that loads for
//! hours and then cannot stream is the worst way to find out.

use crate::plan;
use pgtide_core::Error;
use pgtide_core::endpoint::{EndpointKind, SslMode};
use pgtide_core::ident::QualifiedName;
use pgtide_core::schema::{ReplicaIdentity, Schema};
use pgtide_core::task::{CdcSettings, LoadMethod, Mode, TablePreparation, TablesWithoutKey, Task};
use pgtide_mysql::convert::{Status, quote as my_quote};
use pgtide_mysql::load::{MysqlSession, MysqlTarget};
use pgtide_postgres::connect::{Side, classify, connect};
use pgtide_postgres::introspect;
use pgtide_postgres::replication::ReplicationClient;
use serde::Serialize;
use std::collections::HashMap;
use tokio_postgres::Client;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The task cannot run (or would lose data) until this is fixed.
    Error,
    /// A risk: the task runs, but something may go wrong or is not replicated.
    Warning,
    /// How pgtide will handle something.
    Info,
    /// Checked and fine.
    Ok,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Info => "info",
            Severity::Ok => "ok",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// Short name of the check (`wal_level`, `select_privilege`, ...).
    pub check: &'static str,
    /// What it is about: a table, a setting, a server.
    pub subject: String,
    /// What was found.
    pub message: String,
    /// How to fix it, when there is something to fix.
    pub fix: Option<String>,
}

/// The result of `check`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Task name.
    pub task: String,
    /// Every finding, most severe first.
    pub findings: Vec<Finding>,
    /// Both servers could be reached (otherwise most checks did not run).
    pub connected: bool,
}

impl CheckReport {
    /// Findings that block the task.
    pub fn blocking(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// Human-readable report.
    pub fn render(&self, only_problems: bool) -> String {
        let mut out = String::new();
        for f in &self.findings {
            if only_problems && f.severity > Severity::Warning {
                continue;
            }
            out.push_str(&format!(
                "{:<7}  {:<22}  {}: {}\n",
                f.severity.label(),
                f.check,
                f.subject,
                f.message
            ));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("{:<33}fix: {fix}\n", ""));
            }
        }
        let count = |s| self.findings.iter().filter(|f| f.severity == s).count();
        out.push_str(&format!(
            "check of task {}: {} error(s), {} warning(s), {} passed\n",
            self.task,
            count(Severity::Error),
            count(Severity::Warning),
            count(Severity::Ok)
        ));
        out
    }
}

struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        severity: Severity,
        check: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Finding {
            severity,
            check,
            subject: subject.into(),
            message: message.into(),
            fix,
        });
    }

    fn ok(&mut self, check: &'static str, subject: impl Into<String>, message: impl Into<String>) {
        self.add(Severity::Ok, check, subject, message, None);
    }

    /// A query that failed is reported, never ignored, but does not block by itself.
    fn could_not(&mut self, check: &'static str, e: Error) {
        self.add(
            Severity::Warning,
            check,
            "-",
            format!("could not be checked: {}", e.report()),
            None,
        );
    }
}

/// Check everything the task needs.
pub async fn check(task: &Task) -> CheckReport {
    let mut f = Findings(Vec::new());
    let cdc = task.mode != Mode::FullLoad;
    let source = match connect(&task.source.url, Side::Source).await {
        Ok(c) => {
            f.ok(
                "connect",
                "source",
                format!("connected to {}", task.source.url),
            );
            Some(c)
        }
        Err(e) => {
            f.add(
                Severity::Error,
                "connect",
                "source",
                e.message().to_string(),
                e.hint().map(str::to_string),
            );
            None
        }
    };
    let connected_target = match task.target.kind() {
        EndpointKind::Mysql => match MysqlTarget::new(&task.target.url) {
            Ok(t) => t.dedicated().await.map(|s| Target::Mysql(t, s)),
            Err(e) => Err(e),
        },
        _ => connect(&task.target.url, Side::Target)
            .await
            .map(Target::Pg),
    };
    let mut target = match connected_target {
        Ok(t) => {
            f.ok(
                "connect",
                "target",
                format!("connected to {}", task.target.url),
            );
            Some(t)
        }
        Err(e) => {
            f.add(
                Severity::Error,
                "connect",
                "target",
                e.message().to_string(),
                e.hint().map(str::to_string),
            );
            None
        }
    };
    let connected = source.is_some() && target.is_some();
    if let (Some(source), Some(target)) = (&source, &mut target) {
        if let Err(e) = check_both(task, cdc, source, target, &mut f).await {
            f.could_not("catalog", e);
        }
    }
    if let Some(Target::Mysql(t, s)) = target {
        s.close().await;
        t.close().await;
    }
    let mut findings = f.0;
    findings.sort_by_key(|x| x.severity);
    CheckReport {
        task: task.name.clone(),
        findings,
        connected,
    }
}

/// The target's connection: PostgreSQL, or MySQL/MariaDB (a pool and a dedicated session).
enum Target {
    Pg(Client),
    Mysql(MysqlTarget, MysqlSession),
}

async fn check_both(
    task: &Task,
    cdc: bool,
    source: &Client,
    target: &mut Target,
    f: &mut Findings,
) -> pgtide_core::Result<()> {
    let sv = introspect::server_version(source).await?;
    if let Target::Pg(target) = target {
        check_versions(sv, target, f).await?;
    }
    let Some((schema, load_plan)) = check_source(task, cdc, source, sv, f).await? else {
        return Ok(());
    };
    match target {
        Target::Pg(c) => check_target(task, c, &schema, &load_plan, f).await?,
        Target::Mysql(_, session) => {
            check_mysql_target(task, cdc, session, &schema, &load_plan, f).await?
        }
    }
    if cdc {
        check_activity(task, source, f).await?;
    }
    Ok(())
}

/// Source and target versions (PostgreSQL targets).
async fn check_versions(sv: u32, target: &Client, f: &mut Findings) -> pgtide_core::Result<()> {
    let tv = introspect::server_version(target).await?;
    let major = |v: u32| if v >= 100000 { v / 10000 } else { v / 100 };
    if major(tv) < major(sv) {
        f.add(
            Severity::Warning,
            "versions",
            "target",
            format!("the target (PostgreSQL {}) is older than the source ({}): the schema may use features the target lacks", major(tv), major(sv)),
            Some("use a target at least as new as the source, or check the pre-data DDL with pg_dump --schema-only first".into()),
        );
    } else {
        f.ok(
            "versions",
            "servers",
            format!(
                "source PostgreSQL {}, target PostgreSQL {}",
                major(sv),
                major(tv)
            ),
        );
    }
    Ok(())
}

/// The source's side: version, role, replication, the selection, privileges and tables.
/// Returns the catalog and the plan, or `None` when the selection itself failed (reported).
async fn check_source(
    task: &Task,
    cdc: bool,
    source: &Client,
    sv: u32,
    f: &mut Findings,
) -> pgtide_core::Result<Option<(Schema, plan::LoadPlan)>> {
    if cdc && sv < 100000 {
        f.add(
            Severity::Error,
            "versions",
            "source",
            "change data capture needs PostgreSQL 10 or newer on the source (pgoutput)",
            Some("use mode: full-load, or upgrade the source".into()),
        );
    }

    let role = source
        .query_one(
            "SELECT current_user::text, r.rolsuper, \
                    r.rolreplication OR CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') \
                                         THEN pg_has_role('rds_replication', 'MEMBER') ELSE false END, \
                    r.rolbypassrls \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| classify(e, "reading the source role"))?;
    let (user, superuser, replication, bypassrls): (String, bool, bool, bool) =
        (role.get(0), role.get(1), role.get(2), role.get(3));

    if cdc {
        check_replication_settings(task, source, &user, superuser || replication, f).await?;
        match ReplicationClient::connect(&task.source.url, Side::Source).await {
            Ok(mut rc) => match rc.simple_query("IDENTIFY_SYSTEM").await {
                Ok(_) => f.ok(
                    "replication_connection",
                    "source",
                    "a replication connection (replication=database) was accepted",
                ),
                Err(e) => f.add(
                    Severity::Error,
                    "replication_connection",
                    "source",
                    e.report(),
                    None,
                ),
            },
            Err(e) => {
                let fix = if e.message().contains("pg_hba.conf") {
                    Some(format!(
                        "allow it in pg_hba.conf with a line for the database (not the `replication` keyword, which is for physical replication), e.g. `host {} {user} <client address>/32 scram-sha-256`, then SELECT pg_reload_conf();",
                        task.source.url.database
                    ))
                } else {
                    e.hint().map(str::to_string)
                };
                f.add(
                    Severity::Error,
                    "replication_connection",
                    "source",
                    e.message().to_string(),
                    fix,
                )
            }
        }
    }

    // The tables the task would move.
    let schema = introspect::introspect(source).await?;
    let load_plan = match plan::plan(&schema, task) {
        Ok((p, _)) => p,
        Err(e) => {
            f.add(
                Severity::Error,
                "selection",
                "tables",
                e.message().to_string(),
                e.hint().map(str::to_string),
            );
            return Ok(None);
        }
    };
    for w in &load_plan.warnings {
        f.add(Severity::Warning, "selection", "tables", w.clone(), None);
    }
    f.ok(
        "selection",
        "tables",
        format!("{} tables selected", load_plan.tables.len()),
    );
    let by_oid: HashMap<u32, &pgtide_core::schema::Table> =
        schema.tables.iter().map(|t| (t.oid, t)).collect();
    let selected: Vec<&pgtide_core::schema::Table> = load_plan
        .tables
        .iter()
        .filter_map(|t| by_oid.get(&t.oid).copied())
        .collect();

    check_privileges(source, &selected, superuser, bypassrls, cdc, f).await?;
    check_tables(task, &schema, &selected, cdc, f);
    Ok(Some((schema, load_plan)))
}

async fn check_replication_settings(
    task: &Task,
    source: &Client,
    user: &str,
    can_replicate: bool,
    f: &mut Findings,
) -> pgtide_core::Result<()> {
    let err = |e| classify(e, "reading replication settings on the source");
    let row = source
        .query_one(
            "SELECT current_setting('wal_level'), \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots)::int, \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*) FROM pg_stat_replication)::int, \
                    current_setting('wal_sender_timeout'), \
                    (SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'), \
                    pg_database_size(current_database())",
            &[],
        )
        .await
        .map_err(err)?;
    let wal_level: String = row.get(0);
    if wal_level == "logical" {
        f.ok("wal_level", "source", "wal_level = logical");
    } else {
        f.add(
            Severity::Error,
            "wal_level",
            "source",
            format!("wal_level = {wal_level}; change data capture needs logical"),
            Some("ALTER SYSTEM SET wal_level = logical; then restart the source (on RDS/Aurora: rds.logical_replication = 1 in the parameter group)".into()),
        );
    }
    let slot_name = CdcSettings::slot_name(&task.name);
    let existing: Option<bool> = source
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot_name],
        )
        .await
        .map_err(err)?
        .map(|r| r.get(0));
    let (max_slots, slots, max_senders, senders): (i32, i32, i32, i32) =
        (row.get(1), row.get(2), row.get(3), row.get(4));
    match existing {
        Some(true) => f.add(
            Severity::Error,
            "slot",
            slot_name.clone(),
            "the task's replication slot is in use by another process",
            Some("stop the other consumer (or the other pgtide run) first; see pg_stat_replication".into()),
        ),
        Some(false) => f.add(
            Severity::Info,
            "slot",
            slot_name.clone(),
            "the task's replication slot exists: a run resumes from it when the target's state matches, and otherwise replaces it",
            None,
        ),
        None if slots >= max_slots => f.add(
            Severity::Error,
            "max_replication_slots",
            "source",
            format!("no free replication slot ({slots} of max_replication_slots = {max_slots} in use)"),
            Some(format!("ALTER SYSTEM SET max_replication_slots = {}; then restart the source, or drop an unused slot with SELECT pg_drop_replication_slot('name')", max_slots + 2)),
        ),
        None => f.ok("max_replication_slots", "source", format!("{} of {max_slots} slots free", max_slots - slots)),
    }
    if senders >= max_senders {
        f.add(
            Severity::Error,
            "max_wal_senders",
            "source",
            format!("no free WAL sender ({senders} of max_wal_senders = {max_senders} in use)"),
            Some(format!(
                "ALTER SYSTEM SET max_wal_senders = {}; then restart the source",
                max_senders + 2
            )),
        );
    } else {
        f.ok(
            "max_wal_senders",
            "source",
            format!(
                "{} of {max_senders} WAL senders free",
                max_senders - senders
            ),
        );
    }
    let timeout: String = row.get(5);
    if timeout == "0" {
        f.add(
            Severity::Warning,
            "wal_sender_timeout",
            "source",
            "wal_sender_timeout = 0: a dead pgtide connection keeps the slot busy until TCP gives up",
            Some("ALTER SYSTEM SET wal_sender_timeout = '60s'; SELECT pg_reload_conf();".into()),
        );
    } else {
        f.ok(
            "wal_sender_timeout",
            "source",
            format!("wal_sender_timeout = {timeout}"),
        );
    }
    // The slot keeps WAL from the snapshot until the target catches up: at least as much as is
    // written during the full load. The database size is the scale of that: a load takes
    // minutes per gigabyte, and a busy source can write its own size in WAL in that time.
    let keep: Option<String> = row.get(6);
    let db_bytes: i64 = row.get(7);
    if let Some(mb) = keep.and_then(|k| k.parse::<i64>().ok()) {
        if mb >= 0 && mb * 1024 * 1024 < db_bytes {
            f.add(
                Severity::Warning,
                "max_slot_wal_keep_size",
                "source",
                format!(
                    "max_slot_wal_keep_size = {mb}MB is smaller than the database ({} MB): if the full load and catch-up produce more WAL than that, the server invalidates the slot and the task must start over",
                    db_bytes / (1024 * 1024)
                ),
                Some(format!("ALTER SYSTEM SET max_slot_wal_keep_size = '{}MB'; SELECT pg_reload_conf(); (or -1 for no limit, watching disk space)", (db_bytes / (1024 * 1024)).max(1024) * 2)),
            );
        } else {
            f.ok(
                "max_slot_wal_keep_size",
                "source",
                if mb < 0 {
                    "no limit".to_string()
                } else {
                    format!("{mb}MB")
                },
            );
        }
    }
    if can_replicate {
        f.ok(
            "replication_privilege",
            user,
            "may stream from a replication slot",
        );
    } else {
        f.add(
            Severity::Error,
            "replication_privilege",
            user,
            "the source user has neither REPLICATION nor superuser",
            Some(format!(
                "ALTER ROLE {} WITH REPLICATION; (on RDS/Aurora: GRANT rds_replication TO {};)",
                pgtide_core::ident::quote_ident(user),
                pgtide_core::ident::quote_ident(user)
            )),
        );
    }
    Ok(())
}

async fn check_privileges(
    source: &Client,
    selected: &[&pgtide_core::schema::Table],
    superuser: bool,
    bypassrls: bool,
    cdc: bool,
    f: &mut Findings,
) -> pgtide_core::Result<()> {
    let oids: Vec<u32> = selected.iter().map(|t| t.oid).collect();
    let rows = source
        .query(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE'), \
                    c.relrowsecurity, c.relforcerowsecurity \
             FROM pg_class c WHERE c.oid = ANY($1)",
            &[&oids],
        )
        .await
        .map_err(|e| classify(e, "reading table privileges on the source"))?;
    let name: HashMap<u32, &QualifiedName> = selected.iter().map(|t| (t.oid, &t.name)).collect();
    let (mut no_select, mut not_owner, mut rls) = (Vec::new(), Vec::new(), Vec::new());
    let mut grant = Vec::new();
    for r in rows {
        let oid: u32 = r.get(0);
        let Some(n) = name.get(&oid) else { continue };
        let (select, owner, row_security, forced): (bool, bool, bool, bool) =
            (r.get(1), r.get(2), r.get(3), r.get(4));
        if !select {
            no_select.push(n.to_string());
            grant.push(n.quoted());
        }
        if !owner && !superuser {
            not_owner.push(n.to_string());
        }
        if row_security && !superuser && !bypassrls && (!owner || forced) {
            rls.push(n.to_string());
        }
    }
    if no_select.is_empty() {
        f.ok(
            "select_privilege",
            "source",
            "SELECT on every selected table",
        );
    } else {
        f.add(
            Severity::Error,
            "select_privilege",
            no_select.join(", "),
            "the source user cannot read these tables",
            Some(format!("GRANT SELECT ON {} TO <user>;", grant.join(", "))),
        );
    }
    if !rls.is_empty() {
        f.add(
            Severity::Error,
            "row_level_security",
            rls.join(", "),
            "row-level security would hide rows from the source user: the copy would be a subset",
            Some("ALTER ROLE <user> BYPASSRLS; or use a superuser, or exclude these tables".into()),
        );
    }
    if cdc && !not_owner.is_empty() {
        f.add(
            Severity::Error,
            "publication_privilege",
            not_owner.join(", "),
            "only a table's owner (or a superuser) can add it to a publication",
            Some("run the task as the tables' owner or a superuser, or GRANT <owner role> TO <user>;".into()),
        );
    }
    Ok(())
}

fn check_tables(
    task: &Task,
    schema: &Schema,
    selected: &[&pgtide_core::schema::Table],
    cdc: bool,
    f: &mut Findings,
) {
    if cdc {
        for t in selected {
            let keyless = match &t.replica_identity {
                ReplicaIdentity::Default => t.primary_key.is_none(),
                ReplicaIdentity::Nothing => true,
                _ => false,
            };
            if keyless {
                let q = t.name.quoted();
                match task.cdc.tables_without_key {
                    TablesWithoutKey::Fail => f.add(
                        Severity::Error,
                        "table_without_key",
                        t.name.to_string(),
                        "no primary key and no replica identity: its updates and deletes cannot be replicated, and they would fail on the source once the table is published",
                        Some(format!("ALTER TABLE {q} ADD PRIMARY KEY (...); or ALTER TABLE {q} REPLICA IDENTITY FULL; or in the task file cdc: {{ tables_without_key: insert-only }} or replica-identity-full")),
                    ),
                    TablesWithoutKey::InsertOnly => f.add(
                        Severity::Warning,
                        "table_without_key",
                        t.name.to_string(),
                        "no key: only its INSERTs and TRUNCATEs will be replicated (tables_without_key: insert-only)",
                        Some(format!("ALTER TABLE {q} ADD PRIMARY KEY (...); to replicate everything")),
                    ),
                    TablesWithoutKey::ReplicaIdentityFull => f.add(
                        Severity::Info,
                        "table_without_key",
                        t.name.to_string(),
                        "no key: pgtide will set REPLICA IDENTITY FULL and match rows on every column (slower apply, more WAL)",
                        None,
                    ),
                }
            }
            if t.unlogged {
                f.add(
                    Severity::Warning,
                    "unlogged_table",
                    t.name.to_string(),
                    "UNLOGGED: copied by the full load, but its changes are not in the WAL and are not replicated",
                    Some(format!("ALTER TABLE {} SET LOGGED; or exclude it", t.name.quoted())),
                );
            }
        }
    }
    let partitioned: Vec<String> = schema
        .tables
        .iter()
        .filter(|t| t.kind == pgtide_core::schema::TableKind::Partitioned)
        .filter(|t| selected.iter().any(|s| s.partition_of == Some(t.oid)))
        .map(|t| t.name.to_string())
        .collect();
    if !partitioned.is_empty() {
        f.add(
            Severity::Info,
            "partitioned_table",
            partitioned.join(", "),
            "loaded and replicated partition by partition; partitions keep their names on the target",
            None,
        );
    }
    // Names equal but for case are distinct in PostgreSQL, but they are a trap for every tool
    // and target that folds case (MySQL with lower_case_table_names, scripts that do not quote).
    let mut seen: HashMap<String, &QualifiedName> = HashMap::new();
    for t in selected {
        let folded = format!(
            "{}.{}",
            t.name.schema.to_lowercase(),
            t.name.name.to_lowercase()
        );
        if let Some(other) = seen.get(&folded) {
            let (a, b) = if **other < t.name {
                (*other, &t.name)
            } else {
                (&t.name, *other)
            };
            f.add(
                Severity::Warning,
                "name_collision",
                format!("{a} and {b}"),
                "these names differ only by case: PostgreSQL keeps them apart (pgtide quotes every name), but targets or scripts that fold case will mix them up",
                Some(format!("rename one of them (ALTER TABLE {} RENAME TO ...), or quote the names everywhere they are used", t.name.quoted())),
            );
        } else {
            seen.insert(folded, &t.name);
        }
    }
    if schema.large_objects > 0 {
        let sev = match task.full_load.large_objects {
            pgtide_core::task::LargeObjects::Fail => Severity::Error,
            pgtide_core::task::LargeObjects::Skip => Severity::Warning,
        };
        f.add(
            sev,
            "large_objects",
            "source",
            format!("{} large objects (pg_largeobject) are not copied or replicated", schema.large_objects),
            Some("set full_load.large_objects: skip and move them with pg_dump --large-objects --data-only".into()),
        );
    }
}

/// A MySQL/MariaDB target: its server, the full load's method, TLS, whether every selected
/// column converts (and streams, for CDC), and the tables a truncate/do-nothing preparation
/// expects.
async fn check_mysql_target(
    task: &Task,
    cdc: bool,
    session: &mut MysqlSession,
    schema: &Schema,
    load_plan: &plan::LoadPlan,
    f: &mut Findings,
) -> pgtide_core::Result<()> {
    let version = session
        .query_text("SELECT VERSION()", "reading the target's version")
        .await?
        .unwrap_or_default();
    f.ok(
        "versions",
        "target",
        format!("target MySQL/MariaDB {version}"),
    );

    let local_infile = session.local_infile().await?;
    match (task.mysql.load_method, local_infile) {
        (LoadMethod::LoadData, false) => f.add(
            Severity::Error,
            "load_method",
            "target",
            "mysql.load_method is load-data, but the server has local_infile off",
            Some("SET GLOBAL local_infile = 1 on the server, or set mysql.load_method: auto (multi-row INSERT)".into()),
        ),
        (LoadMethod::Insert, _) => f.add(
            Severity::Info,
            "load_method",
            "target",
            "the full load uses multi-row INSERT (mysql.load_method: insert)",
            None,
        ),
        (LoadMethod::Auto, false) => f.add(
            Severity::Info,
            "load_method",
            "target",
            "the server has local_infile off: the full load uses multi-row INSERT",
            None,
        ),
        _ => f.ok(
            "load_method",
            "target",
            "the full load uses LOAD DATA LOCAL INFILE (local_infile is on)",
        ),
    }

    match session.tls_cipher().await? {
        Some(cipher) => f.ok("tls", "target", format!("encrypted ({cipher})")),
        None if matches!(task.target.url.sslmode, SslMode::Disable | SslMode::Prefer) => f.add(
            Severity::Info,
            "tls",
            "target",
            format!(
                "not encrypted (sslmode={})",
                task.target.url.sslmode.as_str()
            ),
            Some("add sslmode=require or verify-full to the target URL to encrypt".into()),
        ),
        None => f.add(
            Severity::Error,
            "tls",
            "target",
            "sslmode asks for TLS but the session is not encrypted",
            None,
        ),
    }

    let conversion =
        pgtide_mysql::convert::convert(schema, &load_plan.selected, &[], &task.target.url.database);
    let unsupported = crate::mysql_load::unsupported_columns(&conversion);
    if !unsupported.is_empty() {
        f.add(
            Severity::Error,
            "types",
            "columns",
            format!(
                "these columns have no MySQL type mapping: {}",
                unsupported.join(", ")
            ),
            Some("run pgtide convert to see why; change their type on the source, or exclude their tables".into()),
        );
    }
    let lossy: Vec<&str> = conversion
        .items
        .iter()
        .filter(|i| i.kind == "column" && matches!(i.status, Status::ConvertedWithLoss(_)))
        .map(|i| i.source.as_str())
        .collect();
    if lossy.is_empty() {
        f.ok("types", "columns", "every selected column converts as is");
    } else {
        f.add(
            Severity::Warning,
            "types",
            "columns",
            format!(
                "{} columns convert with a caveat (first: {}); values MySQL cannot hold follow mysql.out_of_range: {}",
                lossy.len(),
                lossy.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                task.mysql.out_of_range.as_str()
            ),
            Some("read each caveat in the assessment report of pgtide convert".into()),
        );
    }
    if cdc {
        let not_streamed: Vec<String> = conversion
            .tables
            .iter()
            .flat_map(|t| {
                t.columns
                    .iter()
                    .filter(|c| pgtide_mysql::values::shape(c).is_err())
                    .map(move |c| format!("{}.{}", t.source, c.source))
            })
            .collect();
        if !not_streamed.is_empty() {
            f.add(
                Severity::Error,
                "types",
                "columns",
                format!(
                    "change data capture into MySQL cannot convert these columns yet (composite, hstore): {}",
                    not_streamed.join(", ")
                ),
                Some("exclude their tables from the task, or use mode: full-load".into()),
            );
        }
    }

    if task.full_load.table_preparation != TablePreparation::DropAndCreate && task.mode != Mode::Cdc
    {
        for t in &conversion.tables {
            if !session.table_exists(&t.target).await? {
                f.add(
                    Severity::Error,
                    "target_tables",
                    my_quote(&t.target),
                    "the table does not exist on the target",
                    Some("create it (pgtide convert writes the DDL), or use table_preparation: drop-and-create".into()),
                );
            }
        }
    }
    Ok(())
}

async fn check_target(
    task: &Task,
    target: &Client,
    schema: &Schema,
    load_plan: &plan::LoadPlan,
    f: &mut Findings,
) -> pgtide_core::Result<()> {
    let err = |e| classify(e, "reading the target");
    let can_create: bool = target
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    if can_create {
        f.ok(
            "target_privilege",
            "target",
            "may create schemas in the target database",
        );
    } else {
        f.add(
            Severity::Error,
            "target_privilege",
            "target",
            "the target user cannot create schemas (pgtide keeps its state in schema pgtide, and drop-and-create creates the source's schemas)",
            Some(format!("GRANT CREATE ON DATABASE {} TO <user>;", pgtide_core::ident::quote_ident(&task.target.url.database))),
        );
    }
    // Extensions the source uses must be installable on the target.
    let available: Vec<String> = target
        .query("SELECT name FROM pg_available_extensions", &[])
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Only drop-and-create builds the source's schema (and so its extensions) on the target.
    let ext_severity = if task.full_load.table_preparation == TablePreparation::DropAndCreate
        && task.mode != Mode::Cdc
    {
        Severity::Error
    } else {
        Severity::Warning
    };
    for e in &schema.extensions {
        if !available.contains(&e.name) {
            f.add(
                ext_severity,
                "extension",
                e.name.clone(),
                "the source uses this extension and the target server does not have it: its types and functions cannot be created",
                Some(format!("install the extension's package on the target server (e.g. apt-get install postgresql-<version>-{}), or exclude what depends on it", e.name)),
            );
        }
    }
    // Target tables that already hold rows.
    let mut busy = Vec::new();
    for t in &load_plan.tables {
        let n = &t.target.quoted();
        let exists: bool = target
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[n])
            .await
            .map_err(err)?
            .get(0);
        if exists {
            let has_rows: bool = target
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {n})"), &[])
                .await
                .map_err(err)?
                .get(0);
            if has_rows {
                busy.push(t.target.to_string());
            }
        }
    }
    let has_state: bool = target
        .query_one("SELECT to_regclass('pgtide.task') IS NOT NULL", &[])
        .await
        .map_err(err)?
        .get(0);
    let resuming = has_state
        && target
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pgtide.task WHERE name = $1)",
                &[&task.name],
            )
            .await
            .map_err(err)?
            .get::<_, bool>(0);
    if task.mode == Mode::Cdc {
        // Mode cdc streams into a target the operator loaded: rows there are expected.
    } else if !busy.is_empty() && !resuming {
        let list = busy.join(", ");
        match task.full_load.table_preparation {
            TablePreparation::DoNothing => f.add(
                Severity::Error,
                "target_not_empty",
                list,
                "these target tables already hold rows, and table_preparation: do-nothing loads into empty tables only",
                Some("empty them (TRUNCATE ...) or use table_preparation: truncate or drop-and-create".into()),
            ),
            TablePreparation::Truncate => f.add(
                Severity::Warning,
                "target_not_empty",
                list,
                "these target tables hold rows that table_preparation: truncate will delete",
                None,
            ),
            TablePreparation::DropAndCreate => f.add(
                Severity::Warning,
                "target_not_empty",
                list,
                "these target tables hold rows; table_preparation: drop-and-create will drop them",
                None,
            ),
        }
    } else if resuming {
        f.add(Severity::Info, "target_state", "target", format!("task {} ran against this target before: a run resumes it (or --restart starts over)", task.name), None);
    } else {
        f.ok(
            "target_not_empty",
            "target",
            "no selected table holds rows on the target",
        );
    }
    Ok(())
}

async fn check_activity(task: &Task, source: &Client, f: &mut Findings) -> pgtide_core::Result<()> {
    // Creating a slot waits until every transaction running at that moment has finished.
    let rows = source
        .query(
            "SELECT pid, usename::text, extract(epoch FROM now() - xact_start)::int8 \
             FROM pg_stat_activity \
             WHERE xact_start < now() - interval '60 seconds' AND pid <> pg_backend_pid() \
               AND backend_xid IS NOT NULL ORDER BY xact_start",
            &[],
        )
        .await
        .map_err(|e| classify(e, "reading sessions on the source"))?;
    if task.mode == Mode::FullLoadAndCdc || task.mode == Mode::Cdc {
        for r in rows {
            let (pid, user, secs): (i32, Option<String>, i64) = (r.get(0), r.get(1), r.get(2));
            f.add(
                Severity::Warning,
                "long_transaction",
                format!("pid {pid} ({})", user.unwrap_or_default()),
                format!("a transaction open for {secs} s: creating the replication slot waits until it ends"),
                Some(format!("let it finish, or SELECT pg_cancel_backend({pid});")),
            );
        }
    }
    // Other inactive slots keep WAL on the source: the disk pgtide's own slot will need.
    let idle: Vec<String> = source
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE NOT active AND slot_name <> $1",
            &[&CdcSettings::slot_name(&task.name)],
        )
        .await
        .map_err(|e| classify(e, "reading replication slots on the source"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !idle.is_empty() {
        f.add(
            Severity::Warning,
            "inactive_slots",
            idle.join(", "),
            "inactive replication slots hold WAL on the source",
            Some("drop the ones nobody uses: SELECT pg_drop_replication_slot('name');".into()),
        );
    }
    Ok(())
}
