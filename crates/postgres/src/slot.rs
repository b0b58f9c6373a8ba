//! The source's side of change data capture: prerequisites, publications, replication slots.
//!
//! pgtide's objects on the source are named after the task: the slot and the publication
//! `pgtide_<task>`, and `pgtide_<task>_insert_only` for tables without a key under
//! `tables_without_key: insert-only`. Tables are listed with `ONLY`, one by one (leaf partitions
//! and inheritance children included by name), so a publication carries exactly the tables the
//! full load copied and changes arrive under the same table the rows were loaded into.

use crate::connect::classify;
use pgtide_core::ident::{QualifiedName, quote_ident, quote_literal};
use pgtide_core::lsn::Lsn;
use pgtide_core::{Error, ErrorKind, Result};
use tokio_postgres::Client;

/// What `pg_replication_slots` says about a slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Output plugin (`pgoutput` for ours).
    pub plugin: Option<String>,
    /// Database the slot belongs to.
    pub database: Option<String>,
    /// A walsender is streaming from it now.
    pub active: bool,
    /// Everything before this was confirmed by the consumer.
    pub confirmed_flush: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
}

fn parse_lsn(s: Option<String>) -> Result<Option<Lsn>> {
    s.map(|v| v.parse::<Lsn>().map_err(Error::internal))
        .transpose()
}

/// The slot named `name`, if it exists.
pub async fn slot_info(client: &Client, name: &str) -> Result<Option<SlotInfo>> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(|e| classify(e, "reading the server version"))?
        .get(0);
    let wal_status = if version >= 130000 {
        "wal_status::text"
    } else {
        "NULL::text"
    };
    let row = client
        .query_opt(
            &format!(
                "SELECT plugin::text, database::text, active, confirmed_flush_lsn::text, {wal_status} \
                 FROM pg_replication_slots WHERE slot_name = $1"
            ),
            &[&name],
        )
        .await
        .map_err(|e| classify(e, "reading replication slots on the source"))?;
    row.map(|r| {
        Ok(SlotInfo {
            plugin: r.get(0),
            database: r.get(1),
            active: r.get(2),
            confirmed_flush: parse_lsn(r.get(3))?,
            wal_status: r.get(4),
        })
    })
    .transpose()
}

/// Check that a slot can be streamed from by this task; the errors say what to do.
pub fn check_slot(name: &str, info: &SlotInfo, database: &str) -> Result<()> {
    if info.plugin.as_deref() != Some("pgoutput") {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "replication slot {name} uses plugin {:?}, not pgoutput",
                info.plugin.as_deref().unwrap_or("none")
            ),
        )
        .with_hint(format!(
            "drop it (SELECT pg_drop_replication_slot('{name}')) or choose another task name"
        )));
    }
    if info.database.as_deref() != Some(database) {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "replication slot {name} belongs to database {:?}, not {database:?}",
                info.database.as_deref().unwrap_or("")
            ),
        )
        .with_hint("use another task name for this database"));
    }
    if info.wal_status.as_deref() == Some("lost") {
        return Err(Error::new(
            ErrorKind::Prerequisite,
            format!("replication slot {name} is invalidated (wal_status = lost): the source removed WAL it still needed, so changes are missing"),
        )
        .with_hint(format!(
            "the target cannot be brought up to date from this slot; drop it (SELECT pg_drop_replication_slot('{name}')) and run the task again with --restart for a new full load; raise max_slot_wal_keep_size to avoid it"
        )));
    }
    Ok(())
}

/// Drop a slot if it exists. True when one was dropped.
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool> {
    let n = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| classify(e, &format!("dropping replication slot {name} on the source")))?;
    Ok(n > 0)
}

/// A table in a publication, with the column list and row filter of PostgreSQL 15+.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTable {
    /// The table.
    pub name: QualifiedName,
    /// Only these columns leave the source (None: all).
    pub columns: Option<Vec<String>>,
    /// Only rows where this expression holds leave the source; an update that makes a row
    /// match arrives as an INSERT, one that makes it stop matching as a DELETE.
    pub filter: Option<String>,
}

impl PublishedTable {
    /// A whole table.
    pub fn whole(name: QualifiedName) -> Self {
        PublishedTable {
            name,
            columns: None,
            filter: None,
        }
    }

    fn sql(&self) -> String {
        let mut s = format!("ONLY {}", self.name.quoted());
        if let Some(cols) = &self.columns {
            let cols: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            s.push_str(&format!(" ({})", cols.join(", ")));
        }
        if let Some(f) = &self.filter {
            // Checked at plan time: one closed expression the server accepts as a row filter.
            s.push_str(&format!(" WHERE ({f})"));
        }
        s
    }
}

/// Create or update a publication so that it holds exactly `tables` and publishes `publish`
/// (`insert, update, delete, truncate` or `insert, truncate`).
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[PublishedTable],
    publish: &str,
) -> Result<()> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .map_err(|e| classify(e, "reading publications on the source"))?
        .get(0);
    let list: Vec<String> = tables.iter().map(PublishedTable::sql).collect();
    let what = format!("setting up publication {name} on the source");
    let hint = "the task's user must own the published tables (or be a superuser) and have CREATE on the database";
    let sql = if exists {
        let mut s = format!(
            "ALTER PUBLICATION {} SET (publish = {});",
            quote_ident(name),
            quote_literal(publish)
        );
        if list.is_empty() {
            // A publication cannot SET an empty list; drop what it has.
            s.push_str(&format!(
                "DO $$ DECLARE r record; BEGIN FOR r IN SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_publication_tables WHERE pubname = {} \
                 LOOP EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', {}, r.t); END LOOP; END $$;",
                quote_literal(name),
                quote_literal(name)
            ));
        } else {
            s.push_str(&format!(
                "ALTER PUBLICATION {} SET TABLE {}",
                quote_ident(name),
                list.join(", ")
            ));
        }
        s
    } else if list.is_empty() {
        format!(
            "CREATE PUBLICATION {} WITH (publish = {})",
            quote_ident(name),
            quote_literal(publish)
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})",
            quote_ident(name),
            list.join(", "),
            quote_literal(publish)
        )
    };
    client.batch_execute(&sql).await.map_err(|e| {
        let e = classify(e, &what);
        if e.kind() == ErrorKind::Auth {
            e.with_hint(hint)
        } else {
            e
        }
    })
}

/// Drop a publication if it exists. True when one was dropped.
pub async fn drop_publication(client: &Client, name: &str) -> Result<bool> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .map_err(|e| classify(e, "reading publications on the source"))?
        .get(0);
    if exists {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(name)))
            .await
            .map_err(|e| classify(e, &format!("dropping publication {name} on the source")))?;
    }
    Ok(exists)
}

/// Prerequisites for logical decoding on the source: `wal_level`, free slots and senders,
/// the REPLICATION attribute. Each failure names the setting to change.
pub async fn check_source(client: &Client, need_new_slot: bool) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots)::int, current_setting('max_wal_senders')::int, \
                    (SELECT rolreplication OR rolsuper OR CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') \
                      THEN pg_has_role('rds_replication', 'MEMBER') ELSE false END FROM pg_roles WHERE rolname = current_user), \
                    current_setting('server_encoding')",
            &[],
        )
        .await
        .map_err(|e| classify(e, "reading replication settings on the source"))?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        return Err(Error::new(ErrorKind::Prerequisite, format!("the source has wal_level = {wal_level}; change data capture needs logical"))
            .with_hint("set wal_level = logical in postgresql.conf (on RDS: rds.logical_replication = 1) and restart the source"));
    }
    let (max_slots, slots, senders): (i32, i32, i32) = (row.get(1), row.get(2), row.get(3));
    if need_new_slot && slots >= max_slots {
        return Err(Error::new(ErrorKind::Prerequisite, format!("the source has no free replication slot ({slots} of max_replication_slots = {max_slots} in use)"))
            .with_hint("raise max_replication_slots (restart needed) or drop an unused slot"));
    }
    if senders < 1 {
        return Err(Error::new(
            ErrorKind::Prerequisite,
            "the source has max_wal_senders = 0",
        )
        .with_hint("set max_wal_senders to at least 2 and restart"));
    }
    let replication: Option<bool> = row.get(4);
    if replication != Some(true) {
        return Err(Error::new(
            ErrorKind::Auth,
            "the task's user on the source lacks the REPLICATION attribute",
        )
        .with_hint(
            "ALTER ROLE <user> WITH REPLICATION (on RDS: GRANT rds_replication TO <user>)",
        ));
    }
    let encoding: String = row.get(5);
    if encoding != "UTF8" {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("the source database uses encoding {encoding}; change data capture needs UTF8"),
        )
        .with_hint("convert the database to UTF8, or use mode full-load"));
    }
    Ok(())
}

/// A slot in use by another process (`55006`, "replication slot ... is active for PID") is
/// retried, at `START_REPLICATION` as in the SQL decoding functions: it is usually the
/// walsender of a previous run that has not exited yet.
pub fn busy_is_transient(e: Error) -> Error {
    if e.message().contains("is active for PID") {
        Error::new(ErrorKind::Transient, e.message().to_string())
            .with_hint("another connection holds the slot; if a previous pgtide run was just stopped, its walsender ends within seconds; pgtide retries")
    } else {
        e
    }
}
