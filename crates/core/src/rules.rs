//! Per-table settings and transformation rules: which columns and rows of a table move, and
//! what schema, table and columns are called on the target.
//!
//! # Why one resolver
//!
//! The full load (COPY column lists, `WHERE`, target DDL) and change data capture (publication
//! column lists and row filters, the relation map in front of the applier) must agree exactly,
//! or the target drifts: a column renamed in one phase and not the other, a row filtered in the
//! copy and not in the stream. So both phases ask [`Rules::map_table`] and nothing else.
//!
//! # Semantics
//!
//! - Patterns always match the **source** names (like AWS DMS's object locators), so the result
//!   does not depend on the order in which renames happen to run.
//! - Actions apply in rule order to the current target name: `add_prefix` then `case: upper`
//!   gives `X_ORDERS`; a rule that renames an object twice, removes a column that another rule
//!   renames, or changes a type twice is a contradiction, reported with both rules' names.
//! - New names given in the task file follow SQL's identifier rules, like patterns: `orders_v2`
//!   folds to lower case, `"Orders"` is exact. Names from a DMS document are taken exactly.
//! - Settings (`tables.settings`) merge when several match one table; two that set the same
//!   field for one table contradict each other (column exclude lists add up).
//! - A rule that matches nothing is an error: it is almost always a typo that would otherwise
//!   move data the operator meant to keep back.

use crate::error::{Error, Result};
use crate::ident::{QualifiedName, display_ident};
use crate::selection::{NamePattern, TablePattern};
use crate::task::TablePreparation;
use std::collections::{BTreeMap, HashMap};

/// Settings for the tables a pattern matches.
#[derive(Debug, Clone)]
pub struct TableSettings {
    /// Where the rule came from, for messages (`tables.settings[2]`, `DMS rule 4 "keep eu"`).
    pub origin: String,
    /// Which tables.
    pub pattern: TablePattern,
    /// Only these columns move (source names).
    pub columns_include: Option<Vec<String>>,
    /// These columns do not move (source names).
    pub columns_exclude: Vec<String>,
    /// An SQL boolean expression on the source's columns: only rows where it is true move, in
    /// the full load and in change data capture.
    pub condition: Option<String>,
    /// Integer column the full load splits the table on (key ranges).
    pub split_key: Option<String>,
    /// How many chunks the full load cuts the table into.
    pub chunks: Option<u64>,
    /// Row count used for progress when the catalog's estimate is wrong.
    pub row_count_estimate: Option<u64>,
    /// Columns that identify a row on the target for updates and deletes of a table without a
    /// primary key (the source must send whole old rows: `REPLICA IDENTITY FULL`).
    pub row_identifier_key: Option<Vec<String>>,
    /// Preparation of this table's target, overriding `full_load.table_preparation`.
    pub preparation: Option<TablePreparation>,
}

impl TableSettings {
    /// Settings for `pattern` with nothing set.
    pub fn new(origin: impl Into<String>, pattern: TablePattern) -> Self {
        TableSettings {
            origin: origin.into(),
            pattern,
            columns_include: None,
            columns_exclude: Vec::new(),
            condition: None,
            split_key: None,
            chunks: None,
            row_count_estimate: None,
            row_identifier_key: None,
            preparation: None,
        }
    }
}

/// What kind of object a transformation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleObject {
    /// A schema: `public`. Renaming it moves the selected tables to the new schema.
    Schema,
    /// A table: `public.orders`.
    Table,
    /// A column: `public.orders.note`.
    Column,
}

impl RuleObject {
    /// Lower-case name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleObject::Schema => "schema",
            RuleObject::Table => "table",
            RuleObject::Column => "column",
        }
    }
}

/// What a transformation does (the rule actions of AWS DMS that make sense for a database
/// migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// New name.
    Rename(String),
    /// Put this in front of the name.
    AddPrefix(String),
    /// Take this off the front of the name, where it is there.
    RemovePrefix(String),
    /// Replace this prefix (first) with that one (second), where the name has it.
    ReplacePrefix(String, String),
    /// Put this after the name.
    AddSuffix(String),
    /// Take this off the end of the name, where it is there.
    RemoveSuffix(String),
    /// Replace this suffix (first) with that one (second), where the name has it.
    ReplaceSuffix(String, String),
    /// Lower-case the name.
    Lowercase,
    /// Upper-case the name.
    Uppercase,
    /// Do not move the column (columns only).
    RemoveColumn,
    /// Create the target column with this type (columns only; PostgreSQL targets). Values are
    /// converted by the type's input function: a value it refuses stops the load naming the
    /// table, never a silent change.
    ChangeType(String),
}

impl Action {
    fn apply(&self, name: &str) -> String {
        match self {
            Action::Rename(n) => n.clone(),
            Action::AddPrefix(p) => format!("{p}{name}"),
            Action::RemovePrefix(p) => name.strip_prefix(p.as_str()).unwrap_or(name).to_string(),
            Action::ReplacePrefix(old, new) => match name.strip_prefix(old.as_str()) {
                Some(rest) => format!("{new}{rest}"),
                None => name.to_string(),
            },
            Action::AddSuffix(s) => format!("{name}{s}"),
            Action::RemoveSuffix(s) => name.strip_suffix(s.as_str()).unwrap_or(name).to_string(),
            Action::ReplaceSuffix(old, new) => match name.strip_suffix(old.as_str()) {
                Some(rest) => format!("{rest}{new}"),
                None => name.to_string(),
            },
            Action::Lowercase => name.to_lowercase(),
            Action::Uppercase => name.to_uppercase(),
            Action::RemoveColumn | Action::ChangeType(_) => name.to_string(),
        }
    }
}

/// One transformation rule.
#[derive(Debug, Clone)]
pub struct Transform {
    /// Where the rule came from, for messages (`transform[1]`, `DMS rule 7 "lower"`).
    pub origin: String,
    /// What it names.
    pub object: RuleObject,
    /// Which objects (one, two or three parts for schema, table, column).
    pub pattern: NamePattern,
    /// What it does.
    pub action: Action,
}

impl Transform {
    /// Check that the action fits the object.
    pub fn validate(&self) -> Result<()> {
        if matches!(self.action, Action::RemoveColumn | Action::ChangeType(_))
            && self.object != RuleObject::Column
        {
            return Err(Error::config(format!(
                "{}: only a column can be {}d",
                self.origin,
                if self.action == Action::RemoveColumn {
                    "remove"
                } else {
                    "retype"
                }
            ))
            .with_hint(
                "name a column as schema.table.column; to leave a table out, use tables.exclude",
            ));
        }
        if let Action::Rename(n) | Action::AddPrefix(n) | Action::AddSuffix(n) = &self.action
            && n.is_empty()
        {
            return Err(
                Error::config(format!("{}: the new name part is empty", self.origin))
                    .with_hint("give the name or the prefix/suffix to add"),
            );
        }
        Ok(())
    }
}

/// All settings and transformations of a task.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Per-table settings, in file order.
    pub settings: Vec<TableSettings>,
    /// Transformations, in file order.
    pub transforms: Vec<Transform>,
}

/// One column as it moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMapping {
    /// Source name.
    pub source: String,
    /// Target name.
    pub target: String,
    /// Target type when a rule changes it.
    pub target_type: Option<String>,
}

/// What the rules make of one source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMapping {
    /// Target name.
    pub target: QualifiedName,
    /// Columns that move, in source order.
    pub columns: Vec<ColumnMapping>,
    /// Source columns that do not move.
    pub removed: Vec<String>,
    /// Row condition (source SQL), with the rule it came from.
    pub condition: Option<(String, String)>,
    /// Split column (source name).
    pub split_key: Option<String>,
    /// Chunk count for the full load.
    pub chunks: Option<u64>,
    /// Row estimate for progress.
    pub row_count_estimate: Option<u64>,
    /// Row-identifying columns (source names), with the rule they came from.
    pub row_identifier_key: Option<(Vec<String>, String)>,
    /// Preparation override.
    pub preparation: Option<TablePreparation>,
    /// Indexes of the settings that matched.
    pub used_settings: Vec<usize>,
    /// Indexes of the transforms that matched.
    pub used_transforms: Vec<usize>,
}

impl TableMapping {
    /// The target name of source column `c`, when it moves.
    pub fn target_column(&self, c: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|m| m.source == c)
            .map(|m| m.target.as_str())
    }

    /// True when some column is renamed or retyped, or the table is renamed or moved.
    pub fn renames(&self, source: &QualifiedName) -> bool {
        &self.target != source || self.columns.iter().any(|c| c.source != c.target)
    }
}

fn contradiction(a: &str, b: &str, what: String) -> Error {
    Error::config(format!("{a} and {b} contradict each other: both {what}")).with_hint(
        "keep one of the two rules, or narrow their patterns so they name different objects",
    )
}

impl Rules {
    /// Apply the rules that name one object kind to the last of `names`; `used` collects the
    /// rules that matched. Returns the new name, whether a rule removes the object (columns),
    /// and the new type a rule gives it (columns).
    fn transform_name(
        &self,
        object: RuleObject,
        names: &[&str],
        used: &mut Vec<usize>,
    ) -> Result<(String, bool, Option<String>)> {
        let mut current = names.last().copied().unwrap_or_default().to_string();
        let mut renamed_by: Option<&str> = None;
        let mut removed_by: Option<&str> = None;
        let mut retyped: Option<(&str, String)> = None;
        let mut any_by: Option<&str> = None;
        let shown = names
            .iter()
            .map(|n| display_ident(n))
            .collect::<Vec<_>>()
            .join(".");
        for (i, t) in self.transforms.iter().enumerate() {
            if t.object != object || !t.pattern.matches(names) {
                continue;
            }
            used.push(i);
            match &t.action {
                Action::RemoveColumn => {
                    if let Some(other) = any_by.or(removed_by) {
                        return Err(contradiction(
                            other,
                            &t.origin,
                            format!("name column {shown}, and one removes it"),
                        ));
                    }
                    removed_by = Some(&t.origin);
                }
                Action::ChangeType(ty) => {
                    if let Some(other) = removed_by {
                        return Err(contradiction(
                            other,
                            &t.origin,
                            format!("name column {shown}, and one removes it"),
                        ));
                    }
                    if let Some((other, _)) = retyped {
                        return Err(contradiction(
                            other,
                            &t.origin,
                            format!("change the type of column {shown}"),
                        ));
                    }
                    retyped = Some((&t.origin, ty.clone()));
                    any_by.get_or_insert(&t.origin);
                }
                a => {
                    if let Some(other) = removed_by {
                        return Err(contradiction(
                            other,
                            &t.origin,
                            format!("name column {shown}, and one removes it"),
                        ));
                    }
                    if let Action::Rename(_) = a {
                        if let Some(other) = renamed_by {
                            return Err(contradiction(
                                other,
                                &t.origin,
                                format!("rename {} {shown}", object.as_str()),
                            ));
                        }
                        renamed_by = Some(&t.origin);
                    }
                    current = a.apply(&current);
                    any_by.get_or_insert(&t.origin);
                }
            }
        }
        if current.is_empty() {
            return Err(Error::config(format!(
                "the rules leave {} {shown} with an empty name",
                object.as_str()
            ))
            .with_hint("check the remove_prefix/remove_suffix rules that match it"));
        }
        if current.len() > 63 {
            return Err(Error::config(format!(
                "the rules make the target name of {} {shown} longer than 63 bytes ({current:?})",
                object.as_str()
            ))
            .with_hint("PostgreSQL would truncate it; choose a shorter name or prefix"));
        }
        Ok((current, removed_by.is_some(), retyped.map(|(_, t)| t)))
    }

    /// Resolve one source table: `columns` are its column names in order.
    pub fn map_table(&self, schema: &str, table: &str, columns: &[&str]) -> Result<TableMapping> {
        let source = QualifiedName::new(schema, table);
        let mut used_transforms = Vec::new();
        let (target_schema, _, _) =
            self.transform_name(RuleObject::Schema, &[schema], &mut used_transforms)?;
        let (target_table, _, _) =
            self.transform_name(RuleObject::Table, &[schema, table], &mut used_transforms)?;

        // Settings: merge every match; a field set twice is a contradiction.
        let mut used_settings = Vec::new();
        let mut include: Option<(&str, &Vec<String>)> = None;
        let mut exclude: Vec<(&str, &String)> = Vec::new();
        let mut condition: Option<(&str, &String)> = None;
        let mut split_key: Option<(&str, &String)> = None;
        let mut chunks: Option<(&str, u64)> = None;
        let mut estimate: Option<(&str, u64)> = None;
        let mut row_key: Option<(&str, &Vec<String>)> = None;
        let mut preparation: Option<(&str, TablePreparation)> = None;
        fn set<'a, T>(
            slot: &mut Option<(&'a str, T)>,
            origin: &'a str,
            value: Option<T>,
            field: &str,
            table: &QualifiedName,
        ) -> Result<()> {
            if let Some(v) = value {
                if let Some((other, _)) = slot {
                    return Err(contradiction(
                        other,
                        origin,
                        format!("set {field} for {table}"),
                    ));
                }
                *slot = Some((origin, v));
            }
            Ok(())
        }
        for (i, s) in self.settings.iter().enumerate() {
            if !s.pattern.matches(schema, table) {
                continue;
            }
            used_settings.push(i);
            let o = s.origin.as_str();
            set(
                &mut include,
                o,
                s.columns_include.as_ref(),
                "columns.include",
                &source,
            )?;
            exclude.extend(s.columns_exclude.iter().map(|c| (o, c)));
            set(&mut condition, o, s.condition.as_ref(), "where", &source)?;
            set(
                &mut split_key,
                o,
                s.split_key.as_ref(),
                "split_key",
                &source,
            )?;
            set(&mut chunks, o, s.chunks, "chunks", &source)?;
            set(
                &mut estimate,
                o,
                s.row_count_estimate,
                "row_count_estimate",
                &source,
            )?;
            set(
                &mut row_key,
                o,
                s.row_identifier_key.as_ref(),
                "row_identifier_key",
                &source,
            )?;
            set(&mut preparation, o, s.preparation, "preparation", &source)?;
        }
        let missing = |origin: &str, field: &str, c: &str| {
            Error::config(format!(
                "{origin}: {field} names column {} which {source} does not have",
                display_ident(c)
            ))
            .with_hint(format!(
                "{source} has: {}; unquoted names fold to lower case, \"Quoted\" names are exact",
                columns
                    .iter()
                    .map(|c| display_ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        if let Some((o, list)) = include {
            for c in list {
                if !columns.contains(&c.as_str()) {
                    return Err(missing(o, "columns.include", c));
                }
            }
        }
        for (o, c) in &exclude {
            if !columns.contains(&c.as_str()) {
                return Err(missing(o, "columns.exclude", c));
            }
        }
        if let Some((o, c)) = split_key
            && !columns.contains(&c.as_str())
        {
            return Err(missing(o, "split_key", c));
        }

        let mut mapped = Vec::new();
        let mut removed = Vec::new();
        for &c in columns {
            let (name, rule_removed, ty) = self.transform_name(
                RuleObject::Column,
                &[schema, table, c],
                &mut used_transforms,
            )?;
            let listed_out = include.is_some_and(|(_, l)| !l.iter().any(|x| x == c))
                || exclude.iter().any(|(_, x)| *x == c);
            if rule_removed || listed_out {
                removed.push(c.to_string());
            } else {
                mapped.push(ColumnMapping {
                    source: c.to_string(),
                    target: name,
                    target_type: ty,
                });
            }
        }
        if mapped.is_empty() {
            return Err(
                Error::config(format!("the rules leave no column of {source} to move")).with_hint(
                    "exclude the table in tables.exclude instead, or keep at least one column",
                ),
            );
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for m in &mapped {
            if let Some(other) = seen.insert(&m.target, &m.source) {
                return Err(Error::config(format!(
                    "the rules give columns {} and {} of {source} the same target name {}",
                    display_ident(other),
                    display_ident(&m.source),
                    display_ident(&m.target)
                ))
                .with_hint(
                    "change one of the rename rules so every target column name is unique",
                ));
            }
        }
        if let Some((o, key)) = row_key {
            for c in key {
                if !columns.contains(&c.as_str()) {
                    return Err(missing(o, "row_identifier_key", c));
                }
                if removed.contains(c) {
                    return Err(Error::config(format!(
                        "{o}: row_identifier_key column {} of {source} is not moved, so it cannot identify rows on the target",
                        display_ident(c)
                    ))
                    .with_hint("keep the column, or choose other key columns"));
                }
            }
        }
        used_transforms.sort_unstable();
        used_transforms.dedup();
        Ok(TableMapping {
            target: QualifiedName::new(target_schema, target_table),
            columns: mapped,
            removed,
            condition: condition.map(|(o, c)| (c.clone(), o.to_string())),
            split_key: split_key.map(|(_, c)| c.clone()),
            chunks: chunks.map(|(_, n)| n),
            row_count_estimate: estimate.map(|(_, n)| n),
            row_identifier_key: row_key.map(|(o, k)| (k.clone(), o.to_string())),
            preparation: preparation.map(|(_, p)| p),
            used_settings,
            used_transforms,
        })
    }

    /// Errors for rules that matched nothing, given the indexes that were used.
    pub fn unused(&self, settings: &[usize], transforms: &[usize]) -> Result<()> {
        for (i, s) in self.settings.iter().enumerate() {
            if !settings.contains(&i) {
                return Err(Error::config(format!(
                    "{}: pattern {} matches no selected table",
                    s.origin, s.pattern
                ))
                .with_hint("check the spelling and quoting (unquoted names fold to lower case), and that tables.include selects the table"));
            }
        }
        for (i, t) in self.transforms.iter().enumerate() {
            if !transforms.contains(&i) {
                return Err(Error::config(format!(
                    "{}: {} pattern {} matches no selected {}",
                    t.origin,
                    t.object.as_str(),
                    t.pattern,
                    t.object.as_str()
                ))
                .with_hint("check the spelling and quoting (unquoted names fold to lower case), and that tables.include selects the table"));
            }
        }
        Ok(())
    }
}

/// Two source tables must not land on one target table.
pub fn check_collisions<'a>(
    pairs: impl IntoIterator<Item = (&'a QualifiedName, &'a QualifiedName)>,
) -> Result<()> {
    let mut seen: BTreeMap<&QualifiedName, &QualifiedName> = BTreeMap::new();
    for (source, target) in pairs {
        if let Some(other) = seen.insert(target, source) {
            return Err(Error::config(format!(
                "the rules map {other} and {source} to the same target table {target}"
            ))
            .with_hint("change the rename rules so every target name is unique"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(i: usize, object: RuleObject, pattern: &str, action: Action) -> Transform {
        let form = match object {
            RuleObject::Schema => "schema",
            RuleObject::Table => "schema.table",
            RuleObject::Column => "schema.table.column",
        };
        Transform {
            origin: format!("transform[{i}]"),
            object,
            pattern: NamePattern::parse(pattern, form).unwrap(),
            action,
        }
    }

    fn settings(i: usize, pattern: &str) -> TableSettings {
        TableSettings::new(
            format!("tables.settings[{i}]"),
            TablePattern::parse(pattern).unwrap(),
        )
    }

    #[test]
    fn renames_apply_in_order_to_source_matches() {
        let rules = Rules {
            settings: vec![],
            transforms: vec![
                tr(
                    0,
                    RuleObject::Schema,
                    "public",
                    Action::Rename("app".into()),
                ),
                tr(
                    1,
                    RuleObject::Table,
                    "public.*",
                    Action::AddPrefix("x_".into()),
                ),
                tr(2, RuleObject::Table, "public.orders", Action::Uppercase),
                tr(
                    3,
                    RuleObject::Column,
                    "public.orders.note",
                    Action::Rename("Remark".into()),
                ),
                tr(
                    4,
                    RuleObject::Column,
                    "public.*.secret",
                    Action::RemoveColumn,
                ),
                tr(
                    5,
                    RuleObject::Column,
                    "public.orders.amount",
                    Action::ChangeType("numeric(14,2)".into()),
                ),
            ],
        };
        let m = rules
            .map_table("public", "orders", &["id", "note", "secret", "amount"])
            .unwrap();
        assert_eq!(m.target, QualifiedName::new("app", "X_ORDERS"));
        assert_eq!(m.removed, vec!["secret".to_string()]);
        assert_eq!(m.target_column("note"), Some("Remark"));
        assert_eq!(m.columns[2].target_type.as_deref(), Some("numeric(14,2)"));
        assert_eq!(m.used_transforms, vec![0, 1, 2, 3, 4, 5]);
        // Patterns are case-exact once quoted: "Orders" is another table.
        let m = rules.map_table("public", "Orders", &["id"]).unwrap();
        assert_eq!(m.target, QualifiedName::new("app", "x_Orders"));
    }

    #[test]
    fn contradictions_name_both_rules() {
        let rules = Rules {
            settings: vec![],
            transforms: vec![
                tr(0, RuleObject::Table, "public.*", Action::Rename("a".into())),
                tr(
                    1,
                    RuleObject::Table,
                    "public.orders",
                    Action::Rename("b".into()),
                ),
            ],
        };
        let e = rules.map_table("public", "orders", &["id"]).unwrap_err();
        assert!(e.message().contains("transform[0]") && e.message().contains("transform[1]"));
        let rules = Rules {
            settings: vec![],
            transforms: vec![
                tr(0, RuleObject::Column, "public.t.c", Action::RemoveColumn),
                tr(
                    1,
                    RuleObject::Column,
                    "public.t.c",
                    Action::Rename("d".into()),
                ),
            ],
        };
        assert!(rules.map_table("public", "t", &["id", "c"]).is_err());
        let mut a = settings(0, "public.*");
        a.condition = Some("id > 1".into());
        let mut b = settings(1, "public.t");
        b.condition = Some("id < 5".into());
        let rules = Rules {
            settings: vec![a, b],
            transforms: vec![],
        };
        let e = rules.map_table("public", "t", &["id"]).unwrap_err();
        assert!(e.message().contains("where"), "{}", e.report());
    }

    #[test]
    fn column_lists_and_collisions() {
        let mut s = settings(0, "public.t");
        s.columns_include = Some(vec!["id".into(), "a".into()]);
        let rules = Rules {
            settings: vec![s],
            transforms: vec![tr(
                0,
                RuleObject::Column,
                "public.t.a",
                Action::Rename("id".into()),
            )],
        };
        let e = rules
            .map_table("public", "t", &["id", "a", "b"])
            .unwrap_err();
        assert!(e.message().contains("same target name"), "{}", e.report());
        let mut s = settings(0, "public.t");
        s.columns_exclude = vec!["nope".into()];
        let rules = Rules {
            settings: vec![s],
            transforms: vec![],
        };
        let e = rules.map_table("public", "t", &["id"]).unwrap_err();
        assert!(e.message().contains("nope") && e.hint().unwrap().contains("id"));
        let a = QualifiedName::new("s", "a");
        let b = QualifiedName::new("s", "b");
        let x = QualifiedName::new("s", "x");
        assert!(check_collisions([(&a, &x), (&b, &x)]).is_err());
        assert!(check_collisions([(&a, &a), (&b, &b)]).is_ok());
    }

    #[test]
    fn unused_rules_are_errors() {
        let rules = Rules {
            settings: vec![settings(0, "public.nothing")],
            transforms: vec![],
        };
        let e = rules.unused(&[], &[]).unwrap_err();
        assert!(e.message().starts_with("tables.settings[0]"));
    }
}
