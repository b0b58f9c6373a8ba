//! AWS DMS table-mapping documents, turned into pgtide's own rules.
//!
//! A DMS user can bring the JSON document they already have (`dms_table_mapping:` in the task
//! file). Each rule becomes the native rule with the same meaning, so the result is exactly what
//! the same rules written in YAML give; the test `dms_mapping_equals_native_rules` in
//! `crates/cli/tests/rules.rs` moves a database both ways and compares.
//!
//! # Translation
//!
//! - Names in DMS are case-sensitive and `%` is the only wildcard: `Sales%` becomes the pattern
//!   `"Sales"*` (quoted, so case and dots are kept).
//! - Selection `include`/`explicit` → `tables.include`, `exclude` → `tables.exclude`; `filters`
//!   → a row condition: conditions of one filter are OR'ed, filters are AND'ed, as DMS
//!   documents. Values become SQL string literals (quotes doubled), compared against the column
//!   with PostgreSQL's own type resolution (`"created" >= '2019-01-08'` compares dates).
//! - Transformations: `rename`, `add-prefix`, `remove-prefix`, `replace-prefix`, `add-suffix`,
//!   `remove-suffix`, `replace-suffix`, `convert-lowercase`, `convert-uppercase` on schemas,
//!   tables and columns; `remove-column`; `change-data-type` with the DMS type names below.
//!
//! - `table-type: view` selects views copied as tables (`all`: tables and views).
//!
//! Anything else (tablespaces, `add-column` expressions, `define-primary-key`,
//! table-settings rules, LOB settings...) cannot be honoured and is an error that names the
//! rule: never silently ignored.

use crate::error::{Error, Result};
use crate::ident::{quote_ident, quote_literal};
use crate::rules::{Action, RuleObject, TableSettings, Transform};
use crate::selection::{NamePattern, TablePattern};
use serde_json::Value;

/// What a DMS document contributes to a task.
#[derive(Debug, Clone, Default)]
pub struct DmsRules {
    /// Include patterns.
    pub include: Vec<TablePattern>,
    /// Exclude patterns.
    pub exclude: Vec<TablePattern>,
    /// Views copied as tables (`table-type` `view`, or `all`).
    pub views: Vec<TablePattern>,
    /// Row conditions from selection filters.
    pub settings: Vec<TableSettings>,
    /// Transformation rules.
    pub transforms: Vec<Transform>,
}

/// A DMS name (case-sensitive, `%` wildcard) as one part of a pgtide pattern.
fn dms_part(name: &str) -> String {
    let mut out = String::new();
    for (i, lit) in name.split('%').enumerate() {
        if i > 0 && !out.ends_with('*') {
            out.push('*');
        }
        if !lit.is_empty() {
            out.push_str(&quote_ident(lit));
        }
    }
    out
}

fn field<'a>(rule: &'a Value, key: &str) -> Option<&'a str> {
    rule.get(key).and_then(Value::as_str)
}

fn id_of(rule: &Value) -> String {
    let id = match rule.get("rule-id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "?".into(),
    };
    match field(rule, "rule-name") {
        Some(n) if n != id => format!("DMS rule {id} ({n:?})"),
        _ => format!("DMS rule {id}"),
    }
}

fn unsupported(origin: &str, what: &str, hint: &str) -> Error {
    Error::config(format!("{origin}: {what} cannot be honoured by pgtide"))
        .with_hint(hint.to_string())
}

/// The PostgreSQL type for a DMS `data-type` object.
fn dms_type(origin: &str, dt: &Value) -> Result<String> {
    let ty = field(dt, "type").unwrap_or("");
    let num = |k: &str| {
        dt.get(k)
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
    };
    let t = match ty {
        "string" | "wstring" => match num("length") {
            Some(n) if n > 0 => format!("varchar({n})"),
            _ => "text".into(),
        },
        "clob" | "nclob" => "text".into(),
        "boolean" => "boolean".into(),
        "int1" | "int2" | "uint1" => "smallint".into(),
        "int4" | "uint2" => "integer".into(),
        "int8" | "uint4" => "bigint".into(),
        "uint8" => "numeric(20,0)".into(),
        "numeric" => match (num("precision"), num("scale")) {
            (Some(p), Some(s)) => format!("numeric({p},{s})"),
            (Some(p), None) => format!("numeric({p})"),
            _ => "numeric".into(),
        },
        "real4" => "real".into(),
        "real8" => "double precision".into(),
        "date" => "date".into(),
        "time" => "time".into(),
        "datetime" => match num("scale") {
            Some(s) => format!("timestamp({s})"),
            None => "timestamp".into(),
        },
        "bytes" | "blob" => "bytea".into(),
        other => {
            return Err(unsupported(
                origin,
                &format!("data type {other:?}"),
                "use one of string, wstring, clob, nclob, boolean, int1..int8, uint1..uint8, numeric, real4, real8, date, time, datetime, bytes, blob",
            ));
        }
    };
    Ok(t)
}

fn condition(origin: &str, filters: &Value) -> Result<Option<String>> {
    let Some(list) = filters.as_array() else {
        return Ok(None);
    };
    let mut anded = Vec::new();
    for f in list {
        match field(f, "filter-type") {
            Some("source") | None => {}
            Some(other) => {
                return Err(unsupported(
                    origin,
                    &format!("filter-type {other:?}"),
                    "only source filters exist for a PostgreSQL source",
                ));
            }
        }
        let col = field(f, "column-name").ok_or_else(|| {
            Error::config(format!("{origin}: a filter has no column-name"))
                .with_hint("every DMS filter names the column it tests")
        })?;
        let c = quote_ident(col);
        let conds = f
            .get("filter-conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if conds.is_empty() {
            return Err(Error::config(format!(
                "{origin}: the filter on {col:?} has no filter-conditions"
            ))
            .with_hint(
                "add at least one condition, e.g. {\"filter-operator\": \"eq\", \"value\": \"x\"}",
            ));
        }
        let mut ored = Vec::new();
        for cond in &conds {
            let op = field(cond, "filter-operator").unwrap_or("");
            let val = |k: &str| -> Result<String> {
                match cond.get(k) {
                    Some(Value::String(s)) => Ok(quote_literal(s)),
                    Some(Value::Number(n)) => Ok(quote_literal(&n.to_string())),
                    Some(Value::Bool(b)) => Ok(quote_literal(&b.to_string())),
                    _ => Err(Error::config(format!(
                        "{origin}: filter-operator {op:?} on {col:?} needs \"{k}\""
                    ))
                    .with_hint("give the value as a string")),
                }
            };
            ored.push(match op {
                "eq" => format!("{c} = {}", val("value")?),
                "noteq" => format!("{c} <> {}", val("value")?),
                "lte" | "ste" => format!("{c} <= {}", val("value")?),
                "gte" => format!("{c} >= {}", val("value")?),
                "between" => format!(
                    "{c} BETWEEN {} AND {}",
                    val("start-value")?,
                    val("end-value")?
                ),
                "notbetween" => format!(
                    "{c} NOT BETWEEN {} AND {}",
                    val("start-value")?,
                    val("end-value")?
                ),
                "null" => format!("{c} IS NULL"),
                "notnull" => format!("{c} IS NOT NULL"),
                other => {
                    return Err(unsupported(
                        origin,
                        &format!("filter-operator {other:?}"),
                        "use eq, noteq, lte, ste, gte, between, notbetween, null or notnull",
                    ));
                }
            });
        }
        anded.push(if ored.len() == 1 {
            ored.pop().expect("one")
        } else {
            format!("({})", ored.join(" OR "))
        });
    }
    Ok((!anded.is_empty()).then(|| anded.join(" AND ")))
}

/// Parse a DMS table-mapping document.
pub fn parse(text: &str) -> Result<DmsRules> {
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        Error::config(format!("the DMS table mapping is not valid JSON: {e}")).with_hint(
            "export the table mapping from the DMS console or `aws dms describe-replication-tasks`",
        )
    })?;
    let rules = doc.get("rules").and_then(Value::as_array).ok_or_else(|| {
        Error::config("the DMS table mapping has no \"rules\" array")
            .with_hint("the document looks like {\"rules\": [{\"rule-type\": \"selection\", ...}]}")
    })?;
    let mut out = DmsRules::default();
    for rule in rules {
        let origin = id_of(rule);
        let loc = rule.get("object-locator").cloned().unwrap_or(Value::Null);
        let schema = field(&loc, "schema-name");
        let table = field(&loc, "table-name");
        let pattern = |parts: &[Option<&str>], form: &str| -> Result<NamePattern> {
            let mut text = Vec::new();
            for p in parts {
                let p = p.ok_or_else(|| {
                    Error::config(format!("{origin}: the object-locator lacks a name"))
                        .with_hint("give schema-name, table-name and (for columns) column-name")
                })?;
                text.push(dms_part(p));
            }
            NamePattern::parse(&text.join("."), form).map_err(|e| e.context(&origin))
        };
        match field(rule, "rule-type") {
            Some("selection") => {
                let table_type = field(&loc, "table-type").unwrap_or("table");
                if !matches!(table_type, "table" | "view" | "all") {
                    return Err(unsupported(
                        &origin,
                        &format!("table-type {table_type:?}"),
                        "use table, view or all",
                    ));
                }
                let text = format!(
                    "{}.{}",
                    dms_part(schema.unwrap_or("%")),
                    dms_part(table.unwrap_or("%"))
                );
                let p = TablePattern::parse(&text).map_err(|e| e.context(&origin))?;
                let filter = condition(&origin, rule.get("filters").unwrap_or(&Value::Null))?;
                match field(rule, "rule-action") {
                    Some("include") | Some("explicit") if table_type == "view" => {
                        if filter.is_some() {
                            return Err(unsupported(
                                &origin,
                                "filters on a view selection",
                                "select the view without filters, or filter the view's definition",
                            ));
                        }
                        out.views.push(p);
                    }
                    Some("include") | Some("explicit") => {
                        if table_type == "all" {
                            out.views.push(p.clone());
                        }
                        if let Some(c) = filter {
                            let mut s = TableSettings::new(origin.clone(), p.clone());
                            s.condition = Some(c);
                            out.settings.push(s);
                        }
                        out.include.push(p);
                    }
                    Some("exclude") => {
                        if filter.is_some() {
                            return Err(unsupported(
                                &origin,
                                "filters on an exclude rule",
                                "DMS applies filters only to include rules; move the filter to the include rule",
                            ));
                        }
                        out.exclude.push(p);
                    }
                    other => {
                        return Err(unsupported(
                            &origin,
                            &format!("selection rule-action {other:?}"),
                            "use include, explicit or exclude",
                        ));
                    }
                }
            }
            Some("transformation") => {
                let target = field(rule, "rule-target").unwrap_or("");
                let (object, pat) = match target {
                    "schema" => (RuleObject::Schema, pattern(&[schema], "schema")?),
                    "table" => (
                        RuleObject::Table,
                        pattern(&[schema, table], "schema.table")?,
                    ),
                    "column" => (
                        RuleObject::Column,
                        pattern(
                            &[schema, table, field(&loc, "column-name")],
                            "schema.table.column",
                        )?,
                    ),
                    other => {
                        return Err(unsupported(
                            &origin,
                            &format!("rule-target {other:?}"),
                            "pgtide transforms schemas, tables and columns; indexes, tablespaces and keys come from the source schema",
                        ));
                    }
                };
                let value = || -> Result<String> {
                    field(rule, "value").map(str::to_string).ok_or_else(|| {
                        Error::config(format!("{origin}: the rule needs a \"value\""))
                            .with_hint("give the new name, prefix or suffix in \"value\"")
                    })
                };
                let old = || -> Result<String> {
                    field(rule, "old-value").map(str::to_string).ok_or_else(|| {
                        Error::config(format!("{origin}: the rule needs an \"old-value\""))
                            .with_hint("give the prefix or suffix to replace in \"old-value\"")
                    })
                };
                let action = match field(rule, "rule-action").unwrap_or("") {
                    "rename" => Action::Rename(value()?),
                    "add-prefix" => Action::AddPrefix(value()?),
                    "remove-prefix" => Action::RemovePrefix(value()?),
                    "replace-prefix" => Action::ReplacePrefix(old()?, value()?),
                    "add-suffix" => Action::AddSuffix(value()?),
                    "remove-suffix" => Action::RemoveSuffix(value()?),
                    "replace-suffix" => Action::ReplaceSuffix(old()?, value()?),
                    "convert-lowercase" => Action::Lowercase,
                    "convert-uppercase" => Action::Uppercase,
                    "remove-column" => Action::RemoveColumn,
                    "change-data-type" => Action::ChangeType(dms_type(
                        &origin,
                        rule.get("data-type").unwrap_or(&Value::Null),
                    )?),
                    other => {
                        return Err(unsupported(
                            &origin,
                            &format!("rule-action {other:?}"),
                            "pgtide honours rename, add/remove/replace-prefix, add/remove/replace-suffix, convert-lowercase, convert-uppercase, remove-column and change-data-type; remove this rule (or express it in the task file)",
                        ));
                    }
                };
                let t = Transform {
                    origin: origin.clone(),
                    object,
                    pattern: pat,
                    action,
                };
                t.validate()?;
                out.transforms.push(t);
            }
            other => {
                return Err(unsupported(
                    &origin,
                    &format!("rule-type {other:?}"),
                    "pgtide reads selection and transformation rules; set table settings (parallel load, LOBs) in the task file",
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_filters_and_transforms() {
        let doc = r#"{"rules": [
          {"rule-type": "selection", "rule-id": "1", "rule-name": "all", "object-locator": {"schema-name": "public", "table-name": "%"}, "rule-action": "include"},
          {"rule-type": "selection", "rule-id": 2, "rule-name": "2", "object-locator": {"schema-name": "public", "table-name": "Tmp%"}, "rule-action": "exclude"},
          {"rule-type": "selection", "rule-id": "3", "rule-name": "3", "object-locator": {"schema-name": "public", "table-name": "payment"}, "rule-action": "include",
           "filters": [{"filter-type": "source", "column-name": "amount", "filter-conditions": [{"filter-operator": "gte", "value": "5"}, {"filter-operator": "eq", "value": "O'Neil"}]},
                       {"filter-type": "source", "column-name": "staff_id", "filter-conditions": [{"filter-operator": "between", "start-value": "1", "end-value": "2"}]}]},
          {"rule-type": "transformation", "rule-id": "4", "rule-name": "4", "rule-target": "schema", "object-locator": {"schema-name": "public"}, "rule-action": "rename", "value": "App"},
          {"rule-type": "transformation", "rule-id": "5", "rule-name": "5", "rule-target": "column", "object-locator": {"schema-name": "public", "table-name": "%", "column-name": "last_update"}, "rule-action": "remove-column"},
          {"rule-type": "transformation", "rule-id": "6", "rule-name": "6", "rule-target": "column", "object-locator": {"schema-name": "public", "table-name": "film", "column-name": "length"}, "rule-action": "change-data-type", "data-type": {"type": "int8"}}
        ]}"#;
        let r = parse(doc).unwrap();
        assert!(r.include[0].matches("public", "anything"));
        assert!(r.exclude[0].matches("public", "Tmp1"));
        assert!(!r.exclude[0].matches("public", "tmp1"));
        assert_eq!(
            r.settings[0].condition.as_deref(),
            Some(
                "(\"amount\" >= '5' OR \"amount\" = 'O''Neil') AND \"staff_id\" BETWEEN '1' AND '2'"
            )
        );
        assert_eq!(r.transforms[0].action, Action::Rename("App".into()));
        assert!(
            r.transforms[1]
                .pattern
                .matches(&["public", "x", "last_update"])
        );
        assert_eq!(r.transforms[2].action, Action::ChangeType("bigint".into()));
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_the_rule() {
        for rule in [
            r#"{"rule-type": "transformation", "rule-id": "9", "rule-name": "ts", "rule-target": "table-tablespace", "object-locator": {"schema-name": "public", "table-name": "%"}, "rule-action": "rename", "value": "x"}"#,
            r#"{"rule-type": "transformation", "rule-id": "9", "rule-name": "ts", "rule-target": "column", "object-locator": {"schema-name": "public", "table-name": "t", "column-name": "c"}, "rule-action": "add-column", "value": "x"}"#,
            r#"{"rule-type": "table-settings", "rule-id": "9", "rule-name": "ts", "object-locator": {"schema-name": "public", "table-name": "t"}}"#,
            r#"{"rule-type": "selection", "rule-id": "9", "rule-name": "ts", "object-locator": {"schema-name": "public", "table-name": "v", "table-type": "sequence"}, "rule-action": "include"}"#,
        ] {
            let e = parse(&format!("{{\"rules\": [{rule}]}}")).unwrap_err();
            assert!(
                e.message().starts_with("DMS rule 9 (\"ts\")"),
                "{}",
                e.report()
            );
            assert!(e.hint().is_some());
        }
        assert!(parse("{").is_err());
        assert!(parse("{}").is_err());
    }

    #[test]
    fn dms_names_are_exact_with_percent_wildcards() {
        assert_eq!(dms_part("Sales%"), "\"Sales\"*");
        assert_eq!(dms_part("%"), "*");
        assert_eq!(dms_part("a%b"), "\"a\"*\"b\"");
        assert_eq!(dms_part("a.b"), "\"a.b\"");
        let p = TablePattern::parse(&format!("{}.{}", dms_part("s"), dms_part("a%b"))).unwrap();
        assert!(p.matches("s", "aXYb"));
        assert!(!p.matches("s", "AXYb"));
    }
}
