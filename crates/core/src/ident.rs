//! Identifier quoting.
//!
//! Every identifier pgtide writes into SQL is quoted, always, even `public`: a name that needs
//! no quotes today (`order`) may be a reserved word on the target, and a name with upper case,
//! a dot, a quote or non-ASCII letters (`"My Table"`, `"a.b"`, `"bıgınt"`) must survive exactly.
//! Values are never interpolated into SQL; they travel as parameters or COPY data. The one
//! exception is a literal that a server-side command cannot take as a parameter (a snapshot
//! name in `SET TRANSACTION SNAPSHOT`), quoted by [`quote_literal`].

use std::fmt;

/// Quote a PostgreSQL identifier: wrap in double quotes and double every embedded quote.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quote a string literal for the rare statements that cannot take parameters
/// (`SET TRANSACTION SNAPSHOT '...'`). Uses the `E''`-free standard form and rejects NUL.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// True when PostgreSQL would print `name` without quotes: lower-case ASCII letters, digits,
/// underscores, not starting with a digit. (Keywords are not checked; this is for messages only.)
fn is_plain(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Quote only when needed; for messages and reports, never for SQL.
pub fn display_ident(name: &str) -> String {
    if is_plain(name) {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// A schema-qualified object name, as the catalog spells it (no folding, no quotes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    /// The schema (namespace).
    pub schema: String,
    /// The object name within the schema.
    pub name: String,
}

impl QualifiedName {
    /// Build a name from its parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The quoted form for SQL: `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Displays as PostgreSQL would print it: quotes only where needed (`public."My Table"`).
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident("t"), "\"t\"");
        assert_eq!(quote_ident("My \"odd\" name"), "\"My \"\"odd\"\" name\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn display_quotes_only_when_needed() {
        assert_eq!(
            QualifiedName::new("public", "actor").to_string(),
            "public.actor"
        );
        assert_eq!(
            QualifiedName::new("public", "My Table").to_string(),
            "public.\"My Table\""
        );
        assert_eq!(
            QualifiedName::new("public", "a.b").to_string(),
            "public.\"a.b\""
        );
        assert_eq!(
            QualifiedName::new("public", "T").to_string(),
            "public.\"T\""
        );
    }
}
