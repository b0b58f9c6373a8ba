//! Table selection patterns that follow PostgreSQL's identifier rules.
//!
//! A pattern is `schema.table`. Each part follows the rules a user already knows from SQL and
//! psql: unquoted letters fold to lower case, a double-quoted part matches exactly (`""` inside
//! quotes is one quote character), `*` matches any run of characters and `?` exactly one, and
//! inside quotes `*`, `?` and `.` are literal. So `public.table1`, `public."TABLE1"` and
//! `public."Table1"` select three different tables, and `public."a.b"` selects the table whose
//! name contains a dot. Peers that match case-insensitively or split on every dot select the
//! wrong tables here; the tests below pin the rules.
//!
//! A table is selected when it matches at least one include pattern and no exclude pattern.

use crate::error::{Error, Result};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    AnyOne,
    AnyRun,
}

/// One part (schema or table) of a pattern, compiled to tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    tokens: Vec<Token>,
}

impl Part {
    fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        glob(&self.tokens, &name)
    }

    fn is_match_all(&self) -> bool {
        self.tokens.iter().all(|t| *t == Token::AnyRun) && !self.tokens.is_empty()
    }

    /// The exact name when the part has no wildcard.
    fn literal(&self) -> Option<String> {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }
}

/// Iterative glob match with single backtrack point for `*` (linear in practice).
fn glob(tokens: &[Token], name: &[char]) -> bool {
    let (mut t, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::AnyRun) => {
                star = Some((t, n));
                t += 1;
            }
            Some(Token::AnyOne) => {
                t += 1;
                n += 1;
            }
            Some(Token::Char(c)) if *c == name[n] => {
                t += 1;
                n += 1;
            }
            _ => match star {
                Some((st, sn)) => {
                    t = st + 1;
                    n = sn + 1;
                    star = Some((st, sn + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::AnyRun)
}

/// A compiled `schema.table` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    text: String,
    schema: Part,
    table: Part,
}

/// Split a pattern into its dot-separated parts, compiled; quoting and wildcard rules as in the
/// module docs. Errors name the pattern and show `form` (e.g. `schema.table`).
fn parse_parts(text: &str, form: &str, example: &str) -> Result<Vec<Part>> {
    let mut parts: Vec<Vec<Token>> = vec![Vec::new()];
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    let mut saw_any = false;
    while let Some(c) = chars.next() {
        saw_any = true;
        let cur = parts.last_mut().expect("parts is never empty");
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push(Token::Char('"'));
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(Token::Char(c));
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '.' => parts.push(Vec::new()),
            '*' => {
                if cur.last() != Some(&Token::AnyRun) {
                    cur.push(Token::AnyRun)
                }
            }
            '?' => cur.push(Token::AnyOne),
            c if c.is_whitespace() => {
                return Err(Error::config(format!(
                    "pattern {text:?} contains unquoted white space"
                ))
                .with_hint("put names with spaces in double quotes: public.\"My Table\""));
            }
            c => cur.extend(c.to_lowercase().map(Token::Char)),
        }
    }
    if !saw_any {
        return Err(
            Error::config("pattern is empty").with_hint(format!("write {form}, e.g. {example}"))
        );
    }
    if in_quotes {
        return Err(
            Error::config(format!("pattern {text:?} has an unterminated double quote")).with_hint(
                "close the quote, or double a quote that is part of the name: \"a\"\"b\"",
            ),
        );
    }
    let want = form.split('.').count();
    if parts.len() != want {
        return Err(Error::config(format!(
            "pattern {text:?} must have the form {form} ({} part{} found)",
            parts.len(),
            if parts.len() == 1 { "" } else { "s" }
        ))
        .with_hint(format!(
            "write {form}, e.g. {example}; quote a name that contains a dot: \"a.b\""
        )));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(format!("pattern {text:?} has an empty part"))
            .with_hint(format!("write {form}, e.g. {example}")));
    }
    Ok(parts.into_iter().map(|tokens| Part { tokens }).collect())
}

/// A compiled pattern of one, two or three parts (`schema`, `schema.table`,
/// `schema.table.column`), for the rules that name schemas or columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    text: String,
    parts: Vec<Part>,
}

impl NamePattern {
    /// Parse a pattern with as many parts as `form` has (`schema`, `schema.table`,
    /// `schema.table.column`).
    pub fn parse(text: &str, form: &str) -> Result<Self> {
        let example = match form.split('.').count() {
            1 => "public or \"Sales\" or sales_*",
            2 => "public.orders or public.*",
            _ => "public.orders.note or public.*.\"Secret\"",
        };
        Ok(NamePattern {
            text: text.to_string(),
            parts: parse_parts(text, form, example)?,
        })
    }

    /// True when every part matches the corresponding name.
    pub fn matches(&self, names: &[&str]) -> bool {
        self.parts.len() == names.len() && self.parts.iter().zip(names).all(|(p, n)| p.matches(n))
    }

    /// The pattern as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parse one identifier as SQL does: unquoted letters fold to lower case, a double-quoted name
/// is taken exactly. No wildcards, no dots outside quotes.
pub fn parse_ident(text: &str) -> Result<String> {
    let hint = "write a name as in SQL: orders (folds to lower case) or \"Orders\" (exact)";
    let parts = parse_parts(text, "name", "orders").map_err(|e| e.with_hint(hint))?;
    parts[0].literal().filter(|s| !s.is_empty()).ok_or_else(|| {
        Error::config(format!("{text:?} is not a name: * and ? are wildcards"))
            .with_hint("quote the name if it contains * or ?: \"a*b\"")
    })
}

impl TablePattern {
    /// Parse a pattern; errors explain the expected form.
    pub fn parse(text: &str) -> Result<Self> {
        let mut parts = parse_parts(text, "schema.table", "public.orders, *.orders or public.*")
            .map_err(|e| {
                let msg = e.message().replacen("pattern", "table pattern", 1);
                let hint = e.hint().map(str::to_string);
                let mut out = Error::config(msg);
                if let Some(h) = hint {
                    out = out.with_hint(h);
                }
                out
            })?;
        let table = parts.pop().expect("two parts");
        let schema = parts.pop().expect("two parts");
        Ok(TablePattern {
            text: text.to_string(),
            schema,
            table,
        })
    }

    /// True when the pattern selects `schema.table`.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table)
    }

    /// True when the pattern could select some table in `schema`.
    pub fn matches_schema(&self, schema: &str) -> bool {
        self.schema.matches(schema)
    }

    /// True when the pattern selects every table of the schemas it names (`sales.*`).
    pub fn is_whole_schema(&self) -> bool {
        self.table.is_match_all()
    }

    /// The exact `(schema, table)` when the pattern has no wildcard.
    pub fn literal(&self) -> Option<(String, String)> {
        Some((self.schema.literal()?, self.table.literal()?))
    }

    /// The pattern as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Schemas that never hold user tables to move.
pub const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "pg_toast", "pgtide"];

/// True for `pg_catalog`, `information_schema`, toast and temp schemas, and pgtide's own schema.
pub fn is_system_schema(schema: &str) -> bool {
    SYSTEM_SCHEMAS.contains(&schema)
        || schema.starts_with("pg_temp_")
        || schema.starts_with("pg_toast_temp_")
}

/// Include and exclude patterns together.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Tables matching any of these are candidates; empty means every user schema.
    pub include: Vec<TablePattern>,
    /// Tables matching any of these are dropped from the candidates.
    pub exclude: Vec<TablePattern>,
    /// An empty `include` selects nothing (a DMS document that selects only views: DMS moves
    /// only what a rule selects).
    pub explicit: bool,
}

impl Selection {
    /// Compile raw pattern strings; the error names the offending list and position.
    pub fn parse(include: &[String], exclude: &[String]) -> Result<Self> {
        let compile = |list: &[String], key: &str| -> Result<Vec<TablePattern>> {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    TablePattern::parse(p).map_err(|e| e.context(format!("tables.{key}[{i}]")))
                })
                .collect()
        };
        Ok(Selection {
            include: compile(include, "include")?,
            exclude: compile(exclude, "exclude")?,
            explicit: false,
        })
    }

    /// True when the table is selected. System schemas are never selected.
    pub fn selects(&self, schema: &str, table: &str) -> bool {
        if is_system_schema(schema) {
            return false;
        }
        let included = (self.include.is_empty() && !self.explicit)
            || self.include.iter().any(|p| p.matches(schema, table));
        included && !self.exclude.iter().any(|p| p.matches(schema, table))
    }

    /// True when some table of `schema` could be selected (used to scope non-table objects).
    pub fn may_select_schema(&self, schema: &str) -> bool {
        if is_system_schema(schema) {
            return false;
        }
        let included = (self.include.is_empty() && !self.explicit)
            || self.include.iter().any(|p| p.matches_schema(schema));
        let wholly_excluded = self
            .exclude
            .iter()
            .any(|p| p.matches_schema(schema) && p.is_whole_schema());
        included && !wholly_excluded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> TablePattern {
        TablePattern::parse(s).unwrap()
    }

    #[test]
    fn unquoted_folds_quoted_is_exact() {
        assert!(p("public.table1").matches("public", "table1"));
        assert!(p("public.TABLE1").matches("public", "table1"));
        assert!(!p("public.TABLE1").matches("public", "TABLE1"));
        assert!(p("public.\"TABLE1\"").matches("public", "TABLE1"));
        assert!(!p("public.\"TABLE1\"").matches("public", "Table1"));
        assert!(!p("public.\"TABLE1\"").matches("public", "table1"));
        assert!(p("public.\"Table1\"").matches("public", "Table1"));
    }

    #[test]
    fn wildcards_outside_quotes_literals_inside() {
        assert!(p("public.*").matches("public", "anything"));
        assert!(p("*.orders").matches("sales", "orders"));
        assert!(p("public.t?").matches("public", "t1"));
        assert!(!p("public.t?").matches("public", "t12"));
        assert!(p("public.pay*_p2022_0?").matches("public", "payment_p2022_01"));
        assert!(p("public.\"a*\"").matches("public", "a*"));
        assert!(!p("public.\"a*\"").matches("public", "ab"));
        assert!(p("public.\"a.b\"").matches("public", "a.b"));
        assert!(p("public.\"say \"\"hi\"\"\"").matches("public", "say \"hi\""));
        assert!(p("public.\"My Table\"").matches("public", "My Table"));
        assert!(p("public.bıgınt").matches("public", "bıgınt"));
    }

    #[test]
    fn malformed_patterns_are_rejected_with_the_form() {
        for bad in [
            "orders",
            "a.b.c",
            "public.",
            ".t",
            "public.\"open",
            "",
            "my table.t",
        ] {
            let e = TablePattern::parse(bad).unwrap_err();
            assert!(e.hint().is_some(), "{bad}: {}", e.report());
        }
    }

    #[test]
    fn exclude_wins_and_system_schemas_never_match() {
        let s = Selection::parse(&["public.*".into()], &["public.tmp_*".into()]).unwrap();
        assert!(s.selects("public", "actor"));
        assert!(!s.selects("public", "tmp_x"));
        assert!(!s.selects("other", "actor"));
        let all = Selection::default();
        assert!(all.selects("sales", "x"));
        assert!(!all.selects("pg_catalog", "pg_class"));
        assert!(!all.selects("pgtide", "load_chunk"));
        assert!(!s.may_select_schema("other"));
        let ex = Selection::parse(&[], &["audit.*".into()]).unwrap();
        assert!(!ex.may_select_schema("audit"));
        assert!(ex.may_select_schema("public"));
    }

    proptest! {
        #[test]
        fn a_quoted_literal_matches_only_itself(name in "[A-Za-z0-9 ._\"*?]{1,12}", other in "[A-Za-z0-9 ._\"*?]{1,12}") {
            let quoted = crate::ident::quote_ident(&name);
            let pat = TablePattern::parse(&format!("s.{quoted}")).unwrap();
            prop_assert!(pat.matches("s", &name));
            prop_assert_eq!(pat.matches("s", &other), name == other);
        }

        #[test]
        fn star_matches_everything(name in "\\PC{0,20}") {
            prop_assert!(p("s.*").matches("s", &name));
        }
    }
}
