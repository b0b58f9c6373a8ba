//! The statements the applier runs, built once per table and shape and then prepared.
//!
//! Values always travel as text parameters (`$n::text` cast to the column's target type);
//! identifiers are always quoted. `ONLY` everywhere: a change to an inheritance parent must not
//! touch its children, whose changes arrive on their own.

use super::TargetTable;
use pgtide_core::ident::quote_ident;

pub(super) fn cast(table: &TargetTable, col: usize, expr: &str) -> String {
    format!("{expr}::{}", table.types[col])
}

pub(super) fn update_run_sql(table: &TargetTable, set: &[usize]) -> String {
    let cols: Vec<usize> = table.key.iter().chain(set.iter()).copied().collect();
    let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..cols.len()).map(|i| format!("p{i}")).collect();
    let sets: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("v.p{}", table.key.len() + j))
            )
        })
        .collect();
    let conds: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "t.{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("v.p{j}"))
            )
        })
        .collect();
    format!(
        "UPDATE ONLY {} AS t SET {} FROM unnest({}) AS v({}) WHERE {}",
        table.name.quoted(),
        sets.join(", "),
        params.join(", "),
        aliases.join(", "),
        conds.join(" AND ")
    )
}

pub(super) fn delete_run_sql(table: &TargetTable) -> String {
    let params: Vec<String> = (1..=table.key.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let aliases: Vec<String> = (0..table.key.len()).map(|i| format!("p{i}")).collect();
    let conds: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "t.{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("v.p{j}"))
            )
        })
        .collect();
    format!(
        "DELETE FROM ONLY {} AS t USING unnest({}) AS v({}) WHERE {}",
        table.name.quoted(),
        params.join(", "),
        aliases.join(", "),
        conds.join(" AND ")
    )
}

/// `UPDATE ... SET <set> WHERE <key> = old key`; parameters: set values, then old key values.
pub(super) fn key_update_sql(table: &TargetTable, set: &[usize]) -> String {
    let sets: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", j + 1))
            )
        })
        .collect();
    let conds: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", set.len() + j + 1))
            )
        })
        .collect();
    format!(
        "UPDATE ONLY {} SET {} WHERE {}",
        table.name.quoted(),
        sets.join(", "),
        conds.join(" AND ")
    )
}

/// `DELETE ... WHERE <key> = key`; parameters: the key values.
pub(super) fn key_delete_sql(table: &TargetTable) -> String {
    let conds: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", j + 1))
            )
        })
        .collect();
    format!(
        "DELETE FROM ONLY {} WHERE {}",
        table.name.quoted(),
        conds.join(" AND ")
    )
}

/// Text-form comparison of every matchable column, for tables without a key. Parameters follow
/// `first_param`.
fn whole_row_match(table: &TargetTable, matchable: &[usize], first_param: usize) -> String {
    if matchable.is_empty() {
        return "true".into();
    }
    matchable
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{}::text IS NOT DISTINCT FROM ({})::text",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", first_param + j))
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

pub(super) fn whole_row_update_sql(
    table: &TargetTable,
    set: &[usize],
    matchable: &[usize],
) -> String {
    let sets: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            format!(
                "{} = {}",
                quote_ident(&table.columns[c]),
                cast(table, c, &format!("${}::text", j + 1))
            )
        })
        .collect();
    format!(
        "UPDATE ONLY {t} SET {} WHERE ctid = (SELECT ctid FROM ONLY {t} WHERE {} LIMIT 1)",
        sets.join(", "),
        whole_row_match(table, matchable, set.len() + 1),
        t = table.name.quoted()
    )
}

pub(super) fn whole_row_delete_sql(table: &TargetTable, matchable: &[usize]) -> String {
    format!(
        "DELETE FROM ONLY {t} WHERE ctid = (SELECT ctid FROM ONLY {t} WHERE {} LIMIT 1)",
        whole_row_match(table, matchable, 1),
        t = table.name.quoted()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgtide_core::ident::QualifiedName;

    fn table() -> TargetTable {
        TargetTable {
            name: QualifiedName::new("public", "My Table"),
            columns: vec!["id".into(), "Val".into(), "p".into()],
            types: vec!["integer".into(), "text".into(), "point".into()],
            key: vec![0],
            whole_row: false,
            compactable: true,
        }
    }

    #[test]
    fn run_statements_quote_and_cast() {
        let t = table();
        assert_eq!(
            update_run_sql(&t, &[1]),
            "UPDATE ONLY \"public\".\"My Table\" AS t SET \"Val\" = v.p1::text FROM unnest($1::text[], $2::text[]) AS v(p0, p1) WHERE t.\"id\" = v.p0::integer"
        );
        assert_eq!(
            delete_run_sql(&t),
            "DELETE FROM ONLY \"public\".\"My Table\" AS t USING unnest($1::text[]) AS v(p0) WHERE t.\"id\" = v.p0::integer"
        );
        assert_eq!(
            key_update_sql(&t, &[0, 1]),
            "UPDATE ONLY \"public\".\"My Table\" SET \"id\" = $1::text::integer, \"Val\" = $2::text::text WHERE \"id\" = $3::text::integer"
        );
        assert_eq!(
            key_delete_sql(&t),
            "DELETE FROM ONLY \"public\".\"My Table\" WHERE \"id\" = $1::text::integer"
        );
        let d = whole_row_delete_sql(&t, &[0, 2]);
        assert!(
            d.contains("\"p\"::text IS NOT DISTINCT FROM ($2::text::point)::text"),
            "{d}"
        );
        assert!(d.contains("LIMIT 1"));
    }
}
