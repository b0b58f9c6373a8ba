//! Reading the source catalog into the schema model.
//!
//! Run it inside the load snapshot (after `SET TRANSACTION SNAPSHOT`) so the model and the rows
//! describe the same instant; catalog reads are MVCC like table reads. Every query filters out
//! system schemas and objects that belong to extensions (those come back with
//! `CREATE EXTENSION` on the target, and their data is the extension's business).
//!
//! Supported source versions: PostgreSQL 12 and newer (stored generated columns, the
//! `attgenerated` column and `pg_inherits`-based partitions are assumed). Multiranges are read
//! from 14 on, where they exist.

use crate::connect::classify;
use pgtide_core::ident::QualifiedName;
use pgtide_core::schema::*;
use pgtide_core::{Error, ErrorKind, Result};
use std::collections::{BTreeMap, HashMap};
use tokio_postgres::GenericClient;

/// The oldest source version pgtide reads (`server_version_num`).
pub const MIN_SOURCE_VERSION: u32 = 120000;

const USER_SCHEMA_FILTER: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgtide') \
     AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_'";

fn not_extension_member(classid: &str, col: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = '{classid}'::regclass \
         AND dep.objid = {col} AND dep.deptype = 'e')"
    )
}

/// `server_version_num` of the connected server.
pub async fn server_version<C: GenericClient>(client: &C) -> Result<u32> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(|e| classify(e, "reading the server version"))?;
    let v: i32 = row.get(0);
    Ok(v as u32)
}

/// Read the whole schema model. `client` should be inside the load snapshot.
pub async fn introspect<C: GenericClient>(client: &C) -> Result<Schema> {
    let version = server_version(client).await?;
    if version < MIN_SOURCE_VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the source runs PostgreSQL {}, pgtide needs 12 or newer",
                version / 10000
            ),
        )
        .with_hint(
            "upgrade the source in place to 12+ first, or use pg_dump/pg_restore for this hop",
        ));
    }
    let q =
        |what: &'static str| move |e| classify(e, &format!("introspecting the source ({what})"));

    // Tables.
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
                c.relpersistence = 'u', c.relreplident::text, c.relrowsecurity, \
                c.reltuples::float8, c.relpages::int8, \
                pg_relation_size(c.oid)::int8, pg_table_size(c.oid)::int8, \
                (SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid AND c.relispartition), \
                ARRAY(SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid \
                      AND NOT c.relispartition ORDER BY i.inhseqno), \
                (SELECT ic.relname::text FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid \
                  WHERE x.indrelid = c.oid AND x.indisreplident) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMA_FILTER} AND {} \
         ORDER BY n.nspname, c.relname",
        not_extension_member("pg_class", "c.oid")
    );
    let mut tables: Vec<Table> = Vec::new();
    for r in client.query(&sql, &[]).await.map_err(q("tables"))? {
        let relkind: String = r.get(3);
        let ident: String = r.get(5);
        let replident_index: Option<String> = r.get(13);
        tables.push(Table {
            oid: r.get(0),
            name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            kind: if relkind == "p" {
                TableKind::Partitioned
            } else {
                TableKind::Ordinary
            },
            partition_of: r.get(11),
            inherits: r.get(12),
            unlogged: r.get(4),
            columns: Vec::new(),
            primary_key: None,
            replica_identity: match ident.as_str() {
                "n" => ReplicaIdentity::Nothing,
                "f" => ReplicaIdentity::Full,
                "i" => ReplicaIdentity::Index(replident_index.unwrap_or_default()),
                _ => ReplicaIdentity::Default,
            },
            indexes: Vec::new(),
            constraints: Vec::new(),
            triggers: Vec::new(),
            row_security: r.get(6),
            estimated_rows: r.get::<_, f64>(7) as i64,
            pages: r.get::<_, i64>(8).max(0) as u64,
            heap_bytes: r.get::<_, i64>(9).max(0) as u64,
            total_bytes: r.get::<_, i64>(10).max(0) as u64,
        });
    }
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let index_of: HashMap<u32, usize> =
        tables.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();

    // Columns.
    let rows = client
        .query(
            "SELECT a.attrelid, a.attnum, a.attname::text, a.atttypid, \
                    format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END, \
                    a.attidentity::text, a.attgenerated::text \
             FROM pg_attribute a \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .await
        .map_err(q("columns"))?;
    for r in rows {
        let rel: u32 = r.get(0);
        let identity: String = r.get(7);
        let generated: String = r.get(8);
        if let Some(&i) = index_of.get(&rel) {
            tables[i].columns.push(Column {
                attnum: r.get(1),
                name: r.get(2),
                type_oid: r.get(3),
                type_name: r.get(4),
                not_null: r.get(5),
                default: r.get(6),
                identity: match identity.as_str() {
                    "a" => Some(Identity::Always),
                    "d" => Some(Identity::ByDefault),
                    _ => None,
                },
                generated: generated == "s",
            });
        }
    }

    // Indexes.
    let rows = client
        .query(
            "SELECT i.indexrelid, i.indrelid, ic.relname::text, pg_get_indexdef(i.indexrelid), \
                    i.indisunique, i.indisprimary, i.indisvalid, \
                    (SELECT con.conname::text FROM pg_constraint con WHERE con.conindid = i.indexrelid \
                       AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')), \
                    ic.relkind = 'I', \
                    (SELECT h.inhparent FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = ANY($1) ORDER BY i.indrelid, ic.relname",
            &[&oids],
        )
        .await
        .map_err(q("indexes"))?;
    for r in rows {
        let rel: u32 = r.get(1);
        if let Some(&i) = index_of.get(&rel) {
            tables[i].indexes.push(Index {
                oid: r.get(0),
                name: r.get(2),
                definition: r.get(3),
                unique: r.get(4),
                primary: r.get(5),
                valid: r.get(6),
                constraint: r.get(7),
                partitioned: r.get(8),
                parent_index: r.get(9),
            });
        }
    }

    // Constraints (NOT NULL is part of the column).
    let rows = client
        .query(
            "SELECT c.oid, c.conrelid, c.conname::text, c.contype::text, pg_get_constraintdef(c.oid), \
                    c.convalidated, c.conislocal AND c.conparentid = 0, \
                    NULLIF(c.confrelid, 0), NULLIF(c.conindid, 0), \
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, ord) \
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.ord) \
             FROM pg_constraint c \
             WHERE c.conrelid = ANY($1) AND c.contype IN ('p', 'u', 'c', 'f', 'x') \
             ORDER BY c.conrelid, c.conname",
            &[&oids],
        )
        .await
        .map_err(q("constraints"))?;
    for r in rows {
        let rel: u32 = r.get(1);
        let Some(&i) = index_of.get(&rel) else {
            continue;
        };
        let contype: String = r.get(3);
        let kind = match contype.as_str() {
            "p" => ConstraintKind::PrimaryKey,
            "u" => ConstraintKind::Unique,
            "c" => ConstraintKind::Check,
            "f" => ConstraintKind::ForeignKey,
            _ => ConstraintKind::Exclusion,
        };
        let name: String = r.get(2);
        if kind == ConstraintKind::PrimaryKey {
            tables[i].primary_key = Some(Key {
                name: name.clone(),
                columns: r.get(9),
            });
        }
        tables[i].constraints.push(Constraint {
            oid: r.get(0),
            name,
            kind,
            definition: r.get(4),
            validated: r.get(5),
            local: r.get(6),
            references: r.get(7),
            index: r.get(8),
        });
    }

    // User triggers.
    let rows = client
        .query(
            "SELECT t.oid, t.tgrelid, t.tgname::text FROM pg_trigger t \
             WHERE t.tgrelid = ANY($1) AND NOT t.tgisinternal ORDER BY t.tgrelid, t.tgname",
            &[&oids],
        )
        .await
        .map_err(q("triggers"))?;
    for r in rows {
        let rel: u32 = r.get(1);
        if let Some(&i) = index_of.get(&rel) {
            tables[i].triggers.push(Trigger {
                oid: r.get(0),
                name: r.get(2),
            });
        }
    }

    let types = introspect_types(client, &oids, version).await?;

    // Sequences and what owns them.
    let sql = format!(
        "SELECT s.oid, n.nspname::text, s.relname::text, d.refobjid, a.attname::text, \
                coalesce(d.deptype = 'i', false) \
         FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace \
         LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid \
              AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
         LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
         WHERE s.relkind = 'S' AND {USER_SCHEMA_FILTER} AND {} \
         ORDER BY n.nspname, s.relname",
        not_extension_member("pg_class", "s.oid")
    );
    let mut sequences = Vec::new();
    for r in client.query(&sql, &[]).await.map_err(q("sequences"))? {
        let owner: Option<u32> = r.get(3);
        let col: Option<String> = r.get(4);
        sequences.push(Sequence {
            oid: r.get(0),
            name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            owned_by: owner.zip(col),
            identity: r.get(5),
        });
    }

    // Views and materialized views, with the relations they read.
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind = 'm', c.relispopulated, \
                ARRAY(SELECT DISTINCT d.refobjid FROM pg_rewrite rw \
                      JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid \
                       AND d.refclassid = 'pg_class'::regclass \
                      WHERE rw.ev_class = c.oid AND d.refobjid <> c.oid) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('v', 'm') AND {USER_SCHEMA_FILTER} AND {} \
         ORDER BY n.nspname, c.relname",
        not_extension_member("pg_class", "c.oid")
    );
    let mut views = Vec::new();
    for r in client.query(&sql, &[]).await.map_err(q("views"))? {
        views.push(View {
            oid: r.get(0),
            name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            materialized: r.get(3),
            populated: r.get(4),
            depends_on: r.get(5),
            columns: Vec::new(),
        });
    }
    // View columns, with types printed under an empty search path (qualified unless they are
    // in pg_catalog); the session's own search path is put back in the same statement order.
    if !views.is_empty() {
        let voids: Vec<u32> = views.iter().map(|v| v.oid).collect();
        let saved: String = client
            .query_one("SELECT current_setting('search_path')", &[])
            .await
            .map_err(q("the search path"))?
            .get(0);
        client
            .query_one("SELECT set_config('search_path', 'pg_catalog', false)", &[])
            .await
            .map_err(q("the search path"))?;
        let rows = client
            .query(
                "SELECT a.attrelid, a.attnum, a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod)                  FROM pg_attribute a WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped                  ORDER BY a.attrelid, a.attnum",
                &[&voids],
            )
            .await
            .map_err(q("view columns"));
        client
            .query_one("SELECT set_config('search_path', $1, false)", &[&saved])
            .await
            .map_err(q("the search path"))?;
        let at: HashMap<u32, usize> = views.iter().enumerate().map(|(i, v)| (v.oid, i)).collect();
        for r in rows? {
            if let Some(&i) = at.get(&r.get::<_, u32>(0)) {
                views[i].columns.push(Column {
                    attnum: r.get(1),
                    name: r.get(2),
                    type_oid: r.get(3),
                    type_name: r.get(4),
                    not_null: false,
                    default: None,
                    identity: None,
                    generated: false,
                });
            }
        }
    }

    let mut extensions = Vec::new();
    for r in client
        .query(
            "SELECT e.extname::text, n.nspname::text, e.extversion FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY e.extname",
            &[],
        )
        .await
        .map_err(q("extensions"))?
    {
        extensions.push(Extension {
            name: r.get(0),
            schema: r.get(1),
            version: r.get(2),
        });
    }

    let large_objects: i64 = client
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(q("large objects"))?
        .get(0);

    let sql = format!(
        "SELECT n.nspname::text FROM pg_namespace n WHERE {USER_SCHEMA_FILTER} AND {} ORDER BY 1",
        not_extension_member("pg_namespace", "n.oid")
    );
    let schemas: Vec<String> = client
        .query(&sql, &[])
        .await
        .map_err(q("schemas"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let block_size: i32 = client
        .query_one("SELECT current_setting('block_size')::int4", &[])
        .await
        .map_err(q("block size"))?
        .get(0);

    Ok(Schema {
        server_version: version,
        schemas,
        block_size: block_size as u64,
        tables,
        types,
        sequences,
        views,
        extensions,
        large_objects: large_objects as u64,
    })
}

/// Every type reachable from the columns of `tables`: element types of arrays, base types of
/// domains, attribute types of composites, subtypes of ranges, ranges of multiranges.
async fn introspect_types<C: GenericClient>(
    client: &C,
    tables: &[u32],
    version: u32,
) -> Result<BTreeMap<u32, PgType>> {
    let multirange_edge = if version >= 140000 {
        "UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = ty.oid"
    } else {
        ""
    };
    let multirange_col = if version >= 140000 {
        "(SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = ty.oid)"
    } else {
        "NULL::oid"
    };
    let sql = format!(
        "WITH RECURSIVE reach(oid) AS ( \
            SELECT DISTINCT a.atttypid FROM pg_attribute a \
             WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
            UNION \
            SELECT s.x FROM reach JOIN pg_type ty ON ty.oid = reach.oid, \
              LATERAL ( \
                SELECT ty.typelem WHERE ty.typelem <> 0 AND ty.typlen = -1 \
                UNION ALL SELECT ty.typbasetype WHERE ty.typtype = 'd' \
                UNION ALL SELECT a.atttypid FROM pg_attribute a \
                   WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
                UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = ty.oid \
                {multirange_edge} \
              ) AS s(x) \
         ) \
         SELECT ty.oid, n.nspname::text, ty.typname::text, ty.typtype::text, ty.typelem, ty.typlen::int4, \
                ty.typbasetype, ty.typsend::oid <> 0 AND ty.typreceive::oid <> 0, \
                (SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = ty.oid), \
                {multirange_col}, \
                ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = ty.oid ORDER BY e.enumsortorder), \
                ARRAY(SELECT a.atttypid FROM pg_attribute a WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid \
                      AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
         FROM pg_type ty JOIN pg_namespace n ON n.oid = ty.typnamespace \
         WHERE ty.oid IN (SELECT oid FROM reach)"
    );
    let rows = client
        .query(&sql, &[&tables])
        .await
        .map_err(|e| classify(e, "introspecting the source (types)"))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let oid: u32 = r.get(0);
        let typtype: String = r.get(3);
        let typelem: u32 = r.get(4);
        let typlen: i32 = r.get(5);
        let kind = match typtype.as_str() {
            "e" => TypeKind::Enum(r.get(10)),
            "d" => TypeKind::Domain { base: r.get(6) },
            "c" => TypeKind::Composite(r.get(11)),
            "r" => TypeKind::Range {
                subtype: r.get::<_, Option<u32>>(8).unwrap_or(0),
            },
            "m" => TypeKind::Multirange {
                range: r.get::<_, Option<u32>>(9).unwrap_or(0),
            },
            "p" => TypeKind::Pseudo,
            _ if typelem != 0 && typlen == -1 => TypeKind::Array { element: typelem },
            _ => TypeKind::Base,
        };
        out.insert(
            oid,
            PgType {
                oid,
                name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                kind,
                binary_io: r.get(7),
            },
        );
    }
    Ok(out)
}

/// User functions, procedures and aggregates (not those of extensions, not in system schemas):
/// `(name, arguments, kind, language)`, for reports on what does not move automatically.
pub async fn functions<C: GenericClient>(
    client: &C,
) -> Result<Vec<(QualifiedName, String, String, String)>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid), \
                    CASE p.prokind WHEN 'f' THEN 'function' WHEN 'p' THEN 'procedure' \
                                   WHEN 'a' THEN 'aggregate' ELSE 'window function' END, \
                    l.lanname::text \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             JOIN pg_language l ON l.oid = p.prolang \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgtide') \
               AND n.nspname NOT LIKE 'pg\\_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass \
                               AND d.objid = p.oid AND d.deptype = 'e') \
             ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .map_err(|e| classify(e, "reading functions on the source"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                r.get(2),
                r.get(3),
                r.get(4),
            )
        })
        .collect())
}

/// Objects the schema model does not carry but a report must name: `(kind, name, detail)` for
/// domain constraints, every user-defined type (including unused ones), and indexes on
/// materialized views.
pub async fn other_objects<C: GenericClient>(client: &C) -> Result<Vec<(String, String, String)>> {
    let rows = client
        .query(
            "SELECT 'domain constraint', format('%s.%s.%s', n.nspname, t.typname, c.conname), pg_get_constraintdef(c.oid) \
             FROM pg_constraint c JOIN pg_type t ON t.oid = c.contypid JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
             UNION ALL \
             SELECT 'type', format('%s.%s', n.nspname, quote_ident(t.typname)), \
                    CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' WHEN 'c' THEN 'composite' \
                                   WHEN 'r' THEN 'range' WHEN 'm' THEN 'multirange' ELSE 'base' END \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgtide') AND n.nspname NOT LIKE 'pg\\_%' \
               AND t.typelem = 0 AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e') \
             UNION ALL \
             SELECT 'materialized view index', format('%s.%s', n.nspname, i.relname), pg_get_indexdef(i.oid) \
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class m ON m.oid = x.indrelid \
             JOIN pg_namespace n ON n.oid = i.relnamespace WHERE m.relkind = 'm' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| classify(e, "reading types and constraints on the source"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
