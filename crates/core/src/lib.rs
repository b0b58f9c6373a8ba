//! pgtide's domain model, shared by every stage and every target kind.
//!
//! # Layout
//! - [`task`]: the YAML task file: raw serde structs, validated into a [`task::Task`] before
//!   anything connects.
//! - [`endpoint`]: connection URLs, parsed once, printable without their secrets.
//! - [`ident`]: identifier quoting and qualified names. Every identifier that reaches SQL goes
//!   through here.
//! - [`lsn`]: WAL positions.
//! - [`selection`]: include/exclude patterns that follow PostgreSQL's identifier rules.
//! - [`rules`]: per-table settings (columns, row conditions, keys, splits) and transformations
//!   (renames, removed and retyped columns), resolved the same way for the load and the stream;
//!   [`dms`] reads AWS DMS table-mapping documents into them.
//! - [`schema`]: the source schema model produced by introspection and consumed by planning,
//!   DDL and loading.
//! - [`failpoint`]: crash points that tests arm with `PGTIDE_FAILPOINT`.
//! - [`error`]: one error type that keeps its cause, says whether retrying can help, and carries
//!   the hint shown to the operator.
//!
//! Nothing here performs I/O on a database; the `pgtide-postgres` crate fills these types in.

pub mod dms;
pub mod endpoint;
pub mod error;
pub mod failpoint;
pub mod ident;
pub mod lsn;
pub mod rules;
pub mod schema;
pub mod selection;
pub mod size;
pub mod task;

pub use error::{Error, ErrorKind, Result};
