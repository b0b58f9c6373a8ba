//! PostgreSQL as pgtide's source and target.
//!
//! # Layout
//! - [`compare`]: order-independent table fingerprints (row count and checksum).
//! - [`connect`]: opening connections (TLS per `sslmode`) and classifying errors.
//! - [`tls`]: rustls configuration with libpq's `sslmode` semantics.
//! - [`programs`]: finding `pg_dump`/`pg_restore` and the server programs on this machine.
//! - [`introspect`]: the source catalog into [`pgtide_core::schema::Schema`].
//! - [`snapshot`]: exporting one snapshot and importing it in every worker.
//! - [`schema_copy`]: the schema through `pg_dump`, executed by pgtide entry by entry.
//! - [`copy_stream`]: COPY bytes from source to target without decoding rows.
//! - [`state`]: pgtide's progress tables on the target.
//! - [`replication`]: the replication protocol client (slots, the WAL stream, status updates).
//! - [`pgoutput`]: a pure decoder of logical replication messages.
//! - [`changes`]: pgoutput messages to committed transactions in commit order (streamed
//!   transactions spooled to disk).
//! - [`apply`]: committed transactions applied to a PostgreSQL target, batched, exactly once.
//! - [`slot`]: the source's side of CDC: prerequisites, publications, replication slots.

pub mod apply;
pub mod changes;
pub mod compare;
pub mod connect;
pub mod copy_stream;
pub mod introspect;
pub mod pgoutput;
pub mod programs;
pub mod replication;
pub mod schema_copy;
pub mod slot;
pub mod snapshot;
pub mod state;
pub mod tls;
