//! The source schema model → MySQL DDL, with an assessment of every source object.
//!
//! # What converts
//!
//! - **Tables** become InnoDB tables in the target database, `utf8mb4` with the `utf8mb4_bin`
//!   collation: PostgreSQL compares text byte-wise under the C collation pgtide loads with, and
//!   a case-insensitive MySQL default would make `'a'` and `'A'` collide in a unique key. A
//!   partitioned table becomes one table holding all its partitions' rows. When the selection
//!   spans several schemas, table names are prefixed with their schema.
//! - **Columns** get the type from [`crate::types`]; serial and identity primary keys become
//!   `AUTO_INCREMENT`; literal defaults and `now()` carry over, other defaults are reported.
//! - **Keys and indexes**: primary keys, unique constraints, plain b-tree indexes on columns.
//!   Text and bytea columns in a key get a bounded type ([`crate::types::needs_key_substitute`]).
//! - **Foreign keys** with their actions (not `SET DEFAULT`, which InnoDB rejects).
//!
//! # What is reported instead
//!
//! Expression, partial and non-b-tree indexes, CHECK and exclusion constraints, generated
//! columns' expressions, non-literal defaults, views, functions, triggers, standalone sequences
//! and extensions: each is an assessment item with the action to take.
//!
//! # Names
//!
//! MySQL identifiers are at most 64 characters, column and index names compare without regard
//! to case, and foreign-key names are unique per database. Names are shortened (with a hash
//! suffix, so two long names stay distinct) and de-duplicated, and each change is reported.
//! Every identifier is written with backquotes, so reserved words need no special case.

use crate::types::{Fidelity, map_column, needs_key_substitute};
use pgtide_core::ident::QualifiedName;
use pgtide_core::schema::{ConstraintKind, Schema, Table, TableKind};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The status of one source object in the assessment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "kebab-case")]
pub enum Status {
    /// Converted automatically, as is.
    Converted,
    /// Converted automatically, with this caveat.
    ConvertedWithLoss(String),
    /// Not converted: the action the operator must take.
    ActionRequired(String),
}

/// One source object and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// `table`, `column`, `index`, `constraint`, `view`, `materialized view`, `function`,
    /// `trigger`, `sequence`, `type`, `extension`.
    pub kind: &'static str,
    /// The source object (`public.film`, `public.film.rating`, ...).
    pub source: String,
    /// What it became on the target, if anything.
    pub target: Option<String>,
    /// Converted, with loss, or action required.
    pub status: Status,
}

/// A function, procedure or aggregate on the source (for the assessment).
#[derive(Debug, Clone)]
pub struct SourceFunction {
    /// Schema and name.
    pub name: QualifiedName,
    /// Argument list, for the report.
    pub arguments: String,
    /// `function`, `procedure`, `aggregate`, `window`.
    pub kind: String,
    /// Implementation language.
    pub language: String,
}

/// A converted column, for the loader.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertedColumn {
    /// Source column name.
    pub source: String,
    /// Target column name.
    pub target: String,
    /// MySQL type.
    pub mysql: String,
    /// Source type OID.
    pub type_oid: u32,
    /// Source `format_type` text.
    pub type_name: String,
    /// Declared NOT NULL (on both sides).
    pub not_null: bool,
}

/// A converted table, for the loader.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertedTable {
    /// Source OID.
    pub oid: u32,
    /// Source name.
    #[serde(serialize_with = "display")]
    pub source: QualifiedName,
    /// The source table is partitioned: its rows are read through it, from all partitions.
    pub partitioned: bool,
    /// Target table name.
    pub target: String,
    /// Columns in order.
    pub columns: Vec<ConvertedColumn>,
    /// `CREATE TABLE` statement.
    pub create: String,
}

/// Result of a conversion.
#[derive(Debug, Clone, Serialize)]
pub struct Conversion {
    /// Target database (from the target URL).
    pub database: String,
    /// The DDL script.
    pub ddl: String,
    /// The converted tables, largest first.
    pub tables: Vec<ConvertedTable>,
    /// `ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY` statements.
    pub foreign_keys: Vec<String>,
    /// Every source object.
    pub items: Vec<Item>,
    /// Source table → target table name.
    pub table_names: BTreeMap<String, String>,
}

fn display<S: serde::Serializer>(n: &QualifiedName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&n.to_string())
}

const MAX_IDENT: usize = 64;

/// Quote a MySQL identifier.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// FNV-1a, for short stable suffixes.
fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:08x}", h as u32)
}

/// Fit `name` into 64 characters (MySQL counts characters), keeping it distinct by a hash.
fn fit(name: &str) -> String {
    if name.chars().count() <= MAX_IDENT {
        return name.to_string();
    }
    let head: String = name.chars().take(MAX_IDENT - 9).collect();
    format!("{head}_{}", short_hash(name))
}

/// Names unique without regard to case within one namespace.
#[derive(Default)]
struct Namespace {
    used: HashSet<String>,
}

impl Namespace {
    /// A name for `wanted` that fits and is not taken; the second value says why it changed.
    fn claim(&mut self, wanted: &str) -> (String, Option<String>) {
        let mut name = fit(wanted);
        let mut why = (name != wanted).then(|| "shortened to 64 characters".to_string());
        let mut n = 2;
        while self.used.contains(&name.to_lowercase()) {
            let suffix = format!("_{n}");
            let head: String = fit(wanted)
                .chars()
                .take(MAX_IDENT - suffix.chars().count())
                .collect();
            name = format!("{head}{suffix}");
            why = Some("renamed: another name differs only by case (or by truncation)".into());
            n += 1;
        }
        self.used.insert(name.to_lowercase());
        (name, why)
    }
}

/// Split a parenthesised, comma-separated list at top level.
fn split_top(list: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0, false);
    for ch in list.chars() {
        match ch {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The text inside the first balanced parentheses at or after `from`, and the index after it.
fn parens(s: &str, from: usize) -> Option<(String, usize)> {
    let start = from + s[from..].find('(')?;
    let (mut depth, mut quoted) = (0, false);
    for (i, ch) in s[start..].char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return Some((s[start + 1..start + i].to_string(), start + i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

/// A plain column reference (`name` or `"Name"`), unquoted; None for an expression.
fn plain_ident(s: &str) -> Option<String> {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let inner = &s[1..s.len() - 1];
        if !inner.replace("\"\"", "").contains('"') {
            return Some(inner.replace("\"\"", "\""));
        }
        return None;
    }
    let ok = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$' || !c.is_ascii()
        })
        && !s.chars().next().is_some_and(|c| c.is_ascii_digit());
    ok.then(|| s.to_string())
}

/// Index columns with optional direction; None when any element is an expression or uses an
/// operator class or collation.
fn index_columns(list: &str) -> Option<Vec<(String, bool)>> {
    split_top(list)
        .iter()
        .map(|e| {
            let mut e = e.trim();
            let mut desc = false;
            for (suffix, d) in [(" DESC", true), (" ASC", false)] {
                if let Some(stripped) = e.strip_suffix(suffix) {
                    e = stripped;
                    desc = d;
                }
            }
            plain_ident(e).map(|c| (c, desc))
        })
        .collect()
}

/// Per-table conversion state.
struct TableOut {
    name: String,
    ordered: Vec<ConvertedColumn>,
    columns: HashMap<String, (String, String)>, // source column -> (target name, mysql type)
    lines: Vec<String>,
    index_names: Namespace,
}

/// Convert the selected tables of `schema` (by OID) into MySQL DDL for `database`.
pub fn convert(
    schema: &Schema,
    selected: &HashSet<u32>,
    functions: &[SourceFunction],
    database: &str,
) -> Conversion {
    let mut items: Vec<Item> = Vec::new();
    let by_oid: HashMap<u32, &Table> = schema.tables.iter().map(|t| (t.oid, t)).collect();
    // Partitions are merged into their root; the root is converted when any part is selected.
    let root_of = |t: &Table| -> u32 {
        let mut cur = t;
        while let Some(p) = cur.partition_of.and_then(|p| by_oid.get(&p)) {
            cur = p;
        }
        cur.oid
    };
    let mut converted: Vec<&Table> = Vec::new();
    let mut seen = HashSet::new();
    let mut tables_sorted: Vec<&Table> = schema
        .tables
        .iter()
        .filter(|t| selected.contains(&t.oid))
        .collect();
    tables_sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for t in &tables_sorted {
        let root = root_of(t);
        if seen.insert(root)
            && let Some(r) = by_oid.get(&root)
        {
            converted.push(r);
        }
    }
    let schemas: HashSet<&str> = converted.iter().map(|t| t.name.schema.as_str()).collect();
    let prefix = schemas.len() > 1;

    let mut table_ns = Namespace::default();
    let mut fk_ns = Namespace::default();
    let mut outs: BTreeMap<u32, TableOut> = BTreeMap::new();
    let mut table_names = BTreeMap::new();
    for t in &converted {
        let wanted = if prefix {
            format!("{}_{}", t.name.schema, t.name.name)
        } else {
            t.name.name.clone()
        };
        let (name, why) = table_ns.claim(&wanted);
        table_names.insert(t.name.to_string(), name.clone());
        let mut notes = Vec::new();
        if let Some(w) = why {
            notes.push(w);
        }
        if t.kind == TableKind::Partitioned {
            let parts: Vec<String> = schema
                .tables
                .iter()
                .filter(|p| {
                    p.partition_of.is_some() && root_of(p) == t.oid && p.kind == TableKind::Ordinary
                })
                .map(|p| p.name.to_string())
                .collect();
            notes.push(format!(
                "partitioned table: one MySQL table holds the rows of its partitions ({})",
                parts.join(", ")
            ));
        }
        items.push(Item {
            kind: "table",
            source: t.name.to_string(),
            target: Some(name.clone()),
            status: if notes.is_empty() {
                Status::Converted
            } else {
                Status::ConvertedWithLoss(notes.join("; "))
            },
        });
        outs.insert(
            t.oid,
            TableOut {
                name,
                ordered: Vec::new(),
                columns: HashMap::new(),
                lines: Vec::new(),
                index_names: Namespace::default(),
            },
        );
    }
    // Partitions themselves: reported as merged.
    for t in &tables_sorted {
        if t.partition_of.is_some() {
            let root = root_of(t);
            if let Some(o) = outs.get(&root) {
                items.push(Item {
                    kind: "table",
                    source: t.name.to_string(),
                    target: Some(o.name.clone()),
                    status: Status::ConvertedWithLoss(
                        "partition: its rows go into the table of its partitioned root".into(),
                    ),
                });
            }
        }
    }

    // Columns that are in some key or index: they need indexable types.
    let mut keyed: HashSet<(u32, String)> = HashSet::new();
    for t in &converted {
        if let Some(pk) = &t.primary_key {
            for c in &pk.columns {
                keyed.insert((t.oid, c.clone()));
            }
        }
        for c in &t.constraints {
            if c.kind == ConstraintKind::Unique || c.kind == ConstraintKind::ForeignKey {
                if let Some((list, _)) = parens(&c.definition, 0) {
                    for col in split_top(&list).iter().filter_map(|x| plain_ident(x)) {
                        keyed.insert((t.oid, col));
                    }
                }
            }
        }
        for i in &t.indexes {
            if let Some(pos) = i.definition.find(" USING btree ")
                && let Some((list, _)) = parens(&i.definition, pos)
                && let Some(cols) = index_columns(&list)
            {
                for (c, _) in cols {
                    keyed.insert((t.oid, c));
                }
            }
        }
    }
    // Referenced columns of foreign keys are keyed too.
    for t in &converted {
        for c in t
            .constraints
            .iter()
            .filter(|c| c.kind == ConstraintKind::ForeignKey)
        {
            if let (Some(r), Some(pos)) = (c.references, c.definition.find("REFERENCES"))
                && let Some((list, _)) = parens(&c.definition, pos)
            {
                let r = by_oid.get(&r).map(|x| root_of(x)).unwrap_or(r);
                for col in split_top(&list).iter().filter_map(|x| plain_ident(x)) {
                    keyed.insert((r, col));
                }
            }
        }
    }

    let owned_sequences: HashMap<(u32, String), &QualifiedName> = schema
        .sequences
        .iter()
        .filter_map(|s| s.owned_by.as_ref().map(|(t, c)| ((*t, c.clone()), &s.name)))
        .collect();
    let mut auto_sequences: HashSet<String> = HashSet::new();

    for t in &converted {
        let out = outs.get_mut(&t.oid).expect("table out");
        let mut col_ns = Namespace::default();
        let single_pk = t
            .primary_key
            .as_ref()
            .filter(|k| k.columns.len() == 1)
            .map(|k| k.columns[0].clone());
        for col in &t.columns {
            let mut mapping = map_column(schema, col);
            let (cname, why) = col_ns.claim(&col.name);
            let mut notes: Vec<String> = why.into_iter().collect();
            let mut action: Option<String> = None;
            match &mapping.fidelity {
                Fidelity::Lossless => {}
                Fidelity::Lossy(r) => notes.push(r.clone()),
                Fidelity::Unsupported(r) => action = Some(r.clone()),
            }
            if keyed.contains(&(t.oid, col.name.clone()))
                && let Some((sub, why)) = needs_key_substitute(&mapping.mysql)
            {
                mapping.mysql = sub.to_string();
                notes.push(why.to_string());
            }
            let is_int = matches!(mapping.mysql.as_str(), "SMALLINT" | "INT" | "BIGINT");
            let mut def = format!("  {} {}", quote(&cname), mapping.mysql);
            if col.not_null {
                def.push_str(" NOT NULL");
            }
            let serial = col
                .default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval("));
            if (serial || col.identity.is_some())
                && single_pk.as_deref() == Some(col.name.as_str())
                && is_int
            {
                def.push_str(" AUTO_INCREMENT");
                if let Some(seq) = owned_sequences.get(&(t.oid, col.name.clone())) {
                    auto_sequences.insert(seq.to_string());
                }
                // A serial default names its sequence even when it is not OWNED BY the column.
                if let Some(named) = col
                    .default
                    .as_deref()
                    .and_then(|d| d.strip_prefix("nextval('"))
                    .and_then(|d| d.split('\'').next())
                {
                    auto_sequences.insert(named.to_string());
                }
            } else if let Some(d) = &col.default {
                match mysql_default(d, &mapping.mysql) {
                    Some(x) => {
                        def.push_str(" DEFAULT ");
                        def.push_str(&x);
                    }
                    None => notes.push(format!(
                        "default {d} is not converted: rows loaded by pgtide carry their values; set a MySQL default by hand if the application relies on it"
                    )),
                }
            }
            if col.generated {
                notes.push("generated column: its expression is not converted; the column holds the values loaded from the source (rewrite it as a MySQL generated column by hand)".into());
            }
            out.lines.push(def);
            out.columns
                .insert(col.name.clone(), (cname.clone(), mapping.mysql.clone()));
            out.ordered.push(ConvertedColumn {
                source: col.name.clone(),
                target: cname.clone(),
                mysql: mapping.mysql.clone(),
                type_oid: col.type_oid,
                type_name: col.type_name.clone(),
                not_null: col.not_null,
            });
            items.push(Item {
                kind: "column",
                source: format!(
                    "{}.{}",
                    t.name,
                    pgtide_core::ident::display_ident(&col.name)
                ),
                target: Some(format!("{}.{} {}", out.name, cname, mapping.mysql)),
                status: match (action, notes.is_empty()) {
                    (Some(a), _) => Status::ActionRequired(a),
                    (None, true) => Status::Converted,
                    (None, false) => Status::ConvertedWithLoss(notes.join("; ")),
                },
            });
        }
        if let Some(pk) = &t.primary_key {
            let cols: Option<Vec<String>> = pk
                .columns
                .iter()
                .map(|c| out.columns.get(c).map(|x| quote(&x.0)))
                .collect();
            if let Some(cols) = cols {
                out.lines
                    .push(format!("  PRIMARY KEY ({})", cols.join(", ")));
            }
        }
    }

    // Constraints and indexes, of the converted tables and of their partitions (which land in
    // the same MySQL table: their keys and indexes are merged, duplicates reported as such).
    let mut fks: Vec<String> = Vec::new();
    let mut fk_signatures: HashMap<u32, HashMap<String, String>> = HashMap::new();
    let mut index_signatures: HashMap<u32, HashMap<String, String>> = HashMap::new();
    let mut owners: Vec<&Table> = converted.clone();
    owners.extend(
        tables_sorted
            .iter()
            .filter(|t| t.partition_of.is_some())
            .copied(),
    );
    for t in &owners {
        let root = root_of(t);
        let is_partition = root != t.oid;
        let Some(table_name) = outs.get(&root).map(|o| o.name.clone()) else {
            continue;
        };
        let mut index_oids_done: HashSet<u32> = HashSet::new();
        for c in &t.constraints {
            let src = format!("{}.{}", t.name, pgtide_core::ident::display_ident(&c.name));
            if is_partition && (c.kind == ConstraintKind::PrimaryKey || !c.local) {
                if let Some(i) = c.index {
                    index_oids_done.insert(i);
                }
                items.push(Item {
                    kind: "constraint",
                    source: src,
                    target: Some(table_name.clone()),
                    status: Status::Converted,
                });
                continue;
            }
            match c.kind {
                ConstraintKind::PrimaryKey => {
                    if let Some(i) = c.index {
                        index_oids_done.insert(i);
                    }
                    items.push(Item {
                        kind: "constraint",
                        source: src,
                        target: Some(format!("{table_name} PRIMARY KEY")),
                        status: Status::Converted,
                    });
                }
                ConstraintKind::Unique => {
                    if let Some(i) = c.index {
                        index_oids_done.insert(i);
                    }
                    let out = outs.get_mut(&root).expect("table");
                    let cols = parens(&c.definition, 0).and_then(|(l, _)| {
                        split_top(&l)
                            .iter()
                            .map(|x| plain_ident(x).and_then(|n| out.columns.get(&n).map(|v| quote(&v.0))))
                            .collect::<Option<Vec<String>>>()
                    });
                    match cols {
                        Some(cols) if !c.definition.contains("NULLS NOT DISTINCT") => {
                            let (iname, why) = out.index_names.claim(&c.name);
                            out.lines
                                .push(format!("  UNIQUE KEY {} ({})", quote(&iname), cols.join(", ")));
                            items.push(Item {
                                kind: "constraint",
                                source: src,
                                target: Some(format!("{table_name}.{iname} UNIQUE")),
                                status: match why {
                                    None => Status::Converted,
                                    Some(w) => Status::ConvertedWithLoss(w),
                                },
                            });
                        }
                        _ => items.push(Item {
                            kind: "constraint",
                            source: src,
                            target: None,
                            status: Status::ActionRequired(format!(
                                "UNIQUE {} cannot be expressed in MySQL: enforce it in the application or with a generated column",
                                c.definition
                            )),
                        }),
                    }
                }
                ConstraintKind::ForeignKey => {
                    let target_table = c
                        .references
                        .and_then(|r| by_oid.get(&r))
                        .map(|r| root_of(r))
                        .and_then(|r| outs.get(&r).map(|o| (r, o.name.clone())));
                    let Some((ref_oid, ref_name)) = target_table else {
                        items.push(Item {
                            kind: "constraint",
                            source: src,
                            target: None,
                            status: Status::ActionRequired(
                                "references a table that is not converted: add the foreign key after moving that table".into(),
                            ),
                        });
                        continue;
                    };
                    let local = parens(&c.definition, 0);
                    let remote = c
                        .definition
                        .find("REFERENCES")
                        .and_then(|p| parens(&c.definition, p));
                    let map_cols = |oid: u32, list: &str| -> Option<Vec<String>> {
                        split_top(list)
                            .iter()
                            .map(|x| {
                                plain_ident(x)
                                    .and_then(|n| outs.get(&oid).and_then(|o| o.columns.get(&n).map(|v| quote(&v.0))))
                            })
                            .collect()
                    };
                    let (Some((l, _)), Some((r, _))) = (local, remote) else {
                        continue;
                    };
                    let (Some(lc), Some(rc)) = (map_cols(root, &l), map_cols(ref_oid, &r)) else {
                        items.push(Item {
                            kind: "constraint",
                            source: src,
                            target: None,
                            status: Status::ActionRequired("could not map its columns: add it by hand".into()),
                        });
                        continue;
                    };
                    let mut notes = Vec::new();
                    let mut clause = String::new();
                    let mut unsupported = None;
                    for (what, key) in [("UPDATE", "ON UPDATE "), ("DELETE", "ON DELETE ")] {
                        if let Some(p) = c.definition.find(key) {
                            let rest = &c.definition[p + key.len()..];
                            let action = ["NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"]
                                .into_iter()
                                .find(|a| rest.starts_with(a));
                            match action {
                                Some("SET DEFAULT") => {
                                    unsupported = Some(format!("ON {what} SET DEFAULT is not supported by InnoDB: choose another action"))
                                }
                                Some(a) => clause.push_str(&format!(" ON {what} {a}")),
                                None => {}
                            }
                        }
                    }
                    if c.definition.contains("DEFERRABLE") && !c.definition.contains("NOT DEFERRABLE") {
                        notes.push("DEFERRABLE is not supported: MySQL checks the key at each statement".to_string());
                    }
                    if c.definition.contains("MATCH FULL") {
                        notes.push("MATCH FULL is not enforced by MySQL".to_string());
                    }
                    if !c.validated {
                        notes.push("NOT VALID on the source: existing rows that violate it will make the constraint fail to create".to_string());
                    }
                    if let Some(u) = unsupported {
                        items.push(Item { kind: "constraint", source: src, target: None, status: Status::ActionRequired(u) });
                        continue;
                    }
                    let signature = format!("{}|{}|{}|{}", lc.join(","), ref_name, rc.join(","), clause);
                    if let Some(first) = fk_signatures.get(&root).and_then(|m| m.get(&signature)) {
                        items.push(Item {
                            kind: "constraint",
                            source: src,
                            target: Some(format!("{table_name}.{first} FOREIGN KEY")),
                            status: Status::Converted,
                        });
                        continue;
                    }
                    let (fname, why) = fk_ns.claim(&c.name);
                    fk_signatures.entry(root).or_default().insert(signature, fname.clone());
                    if let Some(w) = why {
                        notes.push(w);
                    }
                    fks.push(format!(
                        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}){};",
                        quote(&table_name),
                        quote(&fname),
                        lc.join(", "),
                        quote(&ref_name),
                        rc.join(", "),
                        clause
                    ));
                    items.push(Item {
                        kind: "constraint",
                        source: src,
                        target: Some(format!("{table_name}.{fname} FOREIGN KEY")),
                        status: if notes.is_empty() { Status::Converted } else { Status::ConvertedWithLoss(notes.join("; ")) },
                    });
                }
                ConstraintKind::Check => items.push(Item {
                    kind: "constraint",
                    source: src,
                    target: None,
                    status: Status::ActionRequired(format!(
                        "{} is not converted (PostgreSQL expression syntax): rewrite it as a MySQL CHECK constraint",
                        c.definition
                    )),
                }),
                ConstraintKind::Exclusion => {
                    if let Some(i) = c.index {
                        index_oids_done.insert(i);
                    }
                    items.push(Item {
                        kind: "constraint",
                        source: src,
                        target: None,
                        status: Status::ActionRequired(format!(
                            "exclusion constraint {} has no MySQL equivalent: enforce it in the application",
                            c.definition
                        )),
                    })
                }
            }
        }
        for i in &t.indexes {
            if index_oids_done.contains(&i.oid) || i.primary || i.constraint.is_some() {
                continue;
            }
            let src = format!(
                "{}.{}",
                t.name.schema,
                pgtide_core::ident::display_ident(&i.name)
            );
            if is_partition && i.parent_index.is_some() {
                items.push(Item {
                    kind: "index",
                    source: src,
                    target: Some(table_name.clone()),
                    status: Status::Converted,
                });
                continue;
            }
            let out = outs.get_mut(&root).expect("table");
            let method_btree = i.definition.contains(" USING btree ");
            let partial = i.definition.contains(" WHERE ");
            let cols = i
                .definition
                .find(" USING ")
                .and_then(|p| parens(&i.definition, p))
                .and_then(|(l, _)| index_columns(&l))
                .and_then(|cols| {
                    cols.into_iter()
                        .map(|(c, d)| {
                            out.columns
                                .get(&c)
                                .map(|v| format!("{}{}", quote(&v.0), if d { " DESC" } else { "" }))
                        })
                        .collect::<Option<Vec<String>>>()
                });
            match cols {
                Some(cols) if method_btree && !partial => {
                    let signature = format!("{}|{}", i.unique, cols.join(","));
                    if let Some(first) = index_signatures.get(&root).and_then(|m| m.get(&signature))
                    {
                        items.push(Item {
                            kind: "index",
                            source: src,
                            target: Some(format!("{}.{first}", out.name)),
                            status: Status::Converted,
                        });
                        continue;
                    }
                    let (iname, why) = out.index_names.claim(&i.name);
                    index_signatures
                        .entry(root)
                        .or_default()
                        .insert(signature, iname.clone());
                    let kind = if i.unique { "UNIQUE KEY" } else { "KEY" };
                    out.lines
                        .push(format!("  {kind} {} ({})", quote(&iname), cols.join(", ")));
                    let mut notes: Vec<String> = why.into_iter().collect();
                    if i.definition.contains(" INCLUDE ") {
                        notes.push("INCLUDE columns are dropped".into());
                    }
                    items.push(Item {
                        kind: "index",
                        source: src,
                        target: Some(format!("{}.{iname}", out.name)),
                        status: if notes.is_empty() {
                            Status::Converted
                        } else {
                            Status::ConvertedWithLoss(notes.join("; "))
                        },
                    });
                }
                _ => {
                    let why = if !method_btree {
                        "a non-b-tree index (GIN, GiST, BRIN, hash) has no MySQL equivalent: use a FULLTEXT or SPATIAL index, or none"
                    } else if partial {
                        "a partial index (WHERE) has no MySQL equivalent: index all rows, or use a generated column"
                    } else {
                        "an expression index: create a MySQL functional index (8.0.13+) or a generated column with an index"
                    };
                    items.push(Item {
                        kind: "index",
                        source: src,
                        target: None,
                        status: Status::ActionRequired(format!("{why}. Source: {}", i.definition)),
                    });
                }
            }
        }
        for tr in &t.triggers {
            items.push(Item {
                kind: "trigger",
                source: format!("{}.{} ON {}", t.name.schema, pgtide_core::ident::display_ident(&tr.name), t.name),
                target: None,
                status: Status::ActionRequired(
                    "rewrite as a MySQL trigger (its PostgreSQL function is not converted), or move the logic to the application".into(),
                ),
            });
        }
    }
    for s in &schema.sequences {
        let name = s.name.to_string();
        let quoted_unqualified = pgtide_core::ident::display_ident(&s.name.name);
        let status = if auto_sequences.contains(&name)
            || auto_sequences.contains(&quoted_unqualified)
        {
            Status::Converted
        } else if s.owned_by.is_some() {
            Status::ActionRequired("owned by a column that is not a single-column integer primary key: MySQL allows AUTO_INCREMENT only on a key; set values in the application".into())
        } else {
            Status::ActionRequired("standalone sequence: MySQL has none (MariaDB has CREATE SEQUENCE); emulate it with a table or AUTO_INCREMENT".into())
        };
        items.push(Item {
            kind: "sequence",
            source: name,
            target: matches!(status, Status::Converted).then(|| "AUTO_INCREMENT".to_string()),
            status,
        });
    }
    for ty in schema.types.values().filter(|t| t.is_user_defined()) {
        use pgtide_core::schema::TypeKind;
        let status = match &ty.kind {
            TypeKind::Enum(_) => Status::Converted,
            TypeKind::Domain { .. } => Status::ConvertedWithLoss(
                "columns get the base type; the domain's constraints are not enforced".into(),
            ),
            TypeKind::Composite(_) => {
                Status::ConvertedWithLoss("columns of this type become JSON".into())
            }
            TypeKind::Array { .. } => continue,
            TypeKind::Range { .. } | TypeKind::Multirange { .. } => {
                Status::ConvertedWithLoss("columns of this type become text".into())
            }
            _ => Status::ActionRequired(
                "a base type without a MySQL equivalent: see the columns that use it".into(),
            ),
        };
        items.push(Item {
            kind: "type",
            source: ty.name.to_string(),
            target: matches!(ty.kind, TypeKind::Enum(_))
                .then(|| "ENUM(...) on each column".to_string()),
            status,
        });
    }
    for v in &schema.views {
        items.push(Item {
            kind: if v.materialized { "materialized view" } else { "view" },
            source: v.name.to_string(),
            target: None,
            status: Status::ActionRequired(if v.materialized {
                "MySQL has no materialized views: create a table filled by a scheduled job, or a plain view".into()
            } else {
                "rewrite the view's query in MySQL's dialect and create it after the load".into()
            }),
        });
    }
    for f in functions {
        items.push(Item {
            kind: "function",
            source: format!("{}({})", f.name, f.arguments),
            target: None,
            status: Status::ActionRequired(format!(
                "{} {}: rewrite as a MySQL stored routine, or move the logic to the application",
                f.language, f.kind
            )),
        });
    }
    for e in &schema.extensions {
        if e.name == "plpgsql" {
            continue;
        }
        items.push(Item {
            kind: "extension",
            source: e.name.clone(),
            target: None,
            status: Status::ActionRequired(
                "no MySQL equivalent: objects that depend on it are listed with their own action"
                    .into(),
            ),
        });
    }

    let mut ddl = String::new();
    ddl.push_str(&format!(
        "-- MySQL/MariaDB schema generated by pgtide convert for database {}\n-- Review the assessment report for what was not converted.\nSET NAMES utf8mb4;\nSET FOREIGN_KEY_CHECKS = 0;\n\n",
        quote(database)
    ));
    let mut tables = Vec::new();
    for t in &converted {
        let out = &outs[&t.oid];
        let create = format!(
            "CREATE TABLE {} (\n{}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            quote(&out.name),
            out.lines.join(",\n")
        );
        ddl.push_str(&create);
        ddl.push_str(";\n\n");
        let bytes: u64 = schema
            .tables
            .iter()
            .filter(|x| x.oid == t.oid || root_of(x) == t.oid)
            .map(|x| x.total_bytes)
            .sum();
        tables.push((
            bytes,
            ConvertedTable {
                oid: t.oid,
                source: t.name.clone(),
                partitioned: t.kind == TableKind::Partitioned,
                target: out.name.clone(),
                columns: out.ordered.clone(),
                create,
            },
        ));
    }
    tables.sort_by_key(|t| std::cmp::Reverse(t.0));
    let tables: Vec<ConvertedTable> = tables.into_iter().map(|x| x.1).collect();
    for fk in &fks {
        ddl.push_str(fk);
        ddl.push('\n');
    }
    ddl.push_str("\nSET FOREIGN_KEY_CHECKS = 1;\n");
    Conversion {
        database: database.to_string(),
        ddl,
        tables,
        foreign_keys: fks
            .iter()
            .map(|f| f.trim_end_matches(';').to_string())
            .collect(),
        items,
        table_names,
    }
}

/// A MySQL default for a PostgreSQL default expression, when it is a literal or `now()`.
fn mysql_default(pg: &str, mysql_type: &str) -> Option<String> {
    let d = pg.trim();
    if matches!(mysql_type, "LONGTEXT" | "LONGBLOB" | "JSON") {
        return None; // MySQL before 8.0.13 allows no literal default on these.
    }
    if d.eq_ignore_ascii_case("now()")
        || d.eq_ignore_ascii_case("CURRENT_TIMESTAMP")
        || d.eq_ignore_ascii_case("statement_timestamp()")
    {
        return mysql_type.starts_with("DATETIME").then(|| {
            let p = mysql_type.trim_start_matches("DATETIME");
            format!("CURRENT_TIMESTAMP{}", if p.is_empty() { "" } else { p })
        });
    }
    if d == "true" || d == "false" {
        return Some(d.to_uppercase());
    }
    if d.parse::<f64>().is_ok()
        || (d.starts_with('(') && d.ends_with(')') && d[1..d.len() - 1].parse::<f64>().is_ok())
    {
        return Some(d.trim_matches(|c| c == '(' || c == ')').to_string());
    }
    // 'literal'::type
    if let Some(rest) = d.strip_prefix('\'') {
        let end = rest.rfind('\'')?;
        let (lit, tail) = (&rest[..end], &rest[end + 1..]);
        if tail.is_empty() || tail.starts_with("::") {
            if mysql_type.starts_with("ENUM")
                || mysql_type.starts_with("VARCHAR")
                || mysql_type.starts_with("CHAR")
            {
                return Some(crate::types::mysql_literal(&lit.replace("''", "'")));
            }
            if lit.parse::<f64>().is_ok() {
                return Some(lit.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let a = "a".repeat(70);
        let b = format!("{}b", "a".repeat(69));
        let (x, wx) = Namespace::default().claim(&a);
        let (y, _) = Namespace::default().claim(&b);
        assert!(x.chars().count() <= 64 && y.chars().count() <= 64);
        assert_ne!(x, y);
        assert!(wx.is_some());
        let mut ns = Namespace::default();
        let (p, _) = ns.claim("Items");
        let (q, why) = ns.claim("items");
        assert_eq!(p, "Items");
        assert_eq!(q, "items_2");
        assert!(why.unwrap().contains("case"));
    }

    #[test]
    fn index_definitions_are_parsed() {
        let cols = index_columns("last_name, \"First Name\" DESC").unwrap();
        assert_eq!(
            cols,
            vec![("last_name".into(), false), ("First Name".into(), true)]
        );
        assert!(index_columns("lower(email)").is_none());
        assert_eq!(
            parens(
                "CREATE INDEX i ON public.t USING btree (a, b) WHERE (a > 0)",
                20
            )
            .unwrap()
            .0,
            "a, b"
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(
            mysql_default("now()", "DATETIME(6)").as_deref(),
            Some("CURRENT_TIMESTAMP(6)")
        );
        assert_eq!(mysql_default("true", "BOOLEAN").as_deref(), Some("TRUE"));
        assert_eq!(mysql_default("0", "INT").as_deref(), Some("0"));
        assert_eq!(
            mysql_default("'G'::mpaa_rating", "ENUM('G','PG')").as_deref(),
            Some("'G'")
        );
        assert_eq!(
            mysql_default("4.99", "DECIMAL(4,2)").as_deref(),
            Some("4.99")
        );
        assert_eq!(mysql_default("CURRENT_DATE", "DATE"), None);
        assert_eq!(mysql_default("('now'::text)::date", "DATE"), None);
    }
}
