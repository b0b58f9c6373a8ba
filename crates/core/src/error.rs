//! One error type for the whole pipeline.
//!
//! An operator reading an error needs three things: what failed (named in their terms: the
//! table, the column, the setting), why (the underlying cause, kept as the error's `source`),
//! and what to do next. The last one has two halves: *can pgtide retry on its own* (a dropped
//! connection, a server restarting) or *must a person act* (wrong password, missing database,
//! a lost replication slot). [`ErrorKind::is_retryable`] is the one place that decides, so
//! the retry loops and the exit-code logic never guess from message text.
//!
//! Errors never carry secrets: callers build messages from redacted endpoints
//! ([`crate::endpoint::PgUrl`] prints without its password) and never from row contents.

use std::fmt;

/// Shorthand used across the crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, at the granularity that decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The task file or the command line is invalid. Nothing has connected yet.
    Config,
    /// A server could not be reached, or the connection dropped. Retrying may succeed.
    Connection,
    /// A transient server-side condition: the server is starting or shutting down, a
    /// serialization failure, a deadlock. Retrying the unit of work may succeed.
    Transient,
    /// Authentication or authorization failed. A person must fix credentials or grants.
    Auth,
    /// Something the task names does not exist: a database, a table, a slot.
    NotFound,
    /// The target holds data or objects that conflict with what the task would write.
    Conflict,
    /// The source holds something pgtide cannot move as asked.
    Unsupported,
    /// A prerequisite is missing: a program (`pg_dump`), a server setting, a privilege.
    Prerequisite,
    /// A statement failed on a server for a reason that retrying will not fix.
    Database,
    /// Local I/O failed (files, child processes).
    Io,
    /// The operator interrupted the run.
    Interrupted,
    /// A broken invariant inside pgtide: a bug, reported with as much context as possible.
    Internal,
}

impl ErrorKind {
    /// True when the same work may succeed if simply retried after a pause.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Transient)
    }

    /// The process exit code for an error of this kind: 2 for bad input (nothing ran),
    /// 130 for an interruption, 1 for everything else.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Config => 2,
            ErrorKind::Interrupted => 130,
            _ => 1,
        }
    }
}

/// An error with its kind, a message in the operator's terms, an optional hint (the fix),
/// and the underlying cause.
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Shorthand for an [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Attach the fix the operator should apply.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Attach the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Prefix the message with what was being done, keeping kind, hint and cause.
    #[must_use]
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The kind, which decides retry versus stop.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without cause or hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The fix, when one is known.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// True when retrying the same work may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The full text for an operator: message, each cause on its own line, then the hint.
    pub fn report(&self) -> String {
        let mut out = self.message.clone();
        let mut cause = std::error::Error::source(self);
        let mut last = String::new();
        while let Some(c) = cause {
            let text = c.to_string();
            // Drivers often repeat the inner message in the outer one; print each once.
            if !text.is_empty() && text != last && !self.message.contains(&text) {
                out.push_str("\n  caused by: ");
                out.push_str(&text);
            }
            last = text;
            cause = c.source();
        }
        if let Some(h) = &self.hint {
            out.push_str("\n  hint: ");
            out.push_str(h);
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.report())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, "I/O error").with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_cause_and_hint_once() {
        let io = std::io::Error::other("disk full");
        let e = Error::new(ErrorKind::Io, "writing the schema dump")
            .with_source(io)
            .with_hint("free some space");
        assert_eq!(
            e.report(),
            "writing the schema dump\n  caused by: disk full\n  hint: free some space"
        );
    }

    #[test]
    fn only_connection_and_transient_errors_are_retried() {
        assert!(ErrorKind::Connection.is_retryable());
        assert!(ErrorKind::Transient.is_retryable());
        for k in [
            ErrorKind::Auth,
            ErrorKind::NotFound,
            ErrorKind::Config,
            ErrorKind::Database,
        ] {
            assert!(!k.is_retryable(), "{k:?}");
        }
    }
}
