//! The shared datasets (`../shared/datasets/` next to the repository), used as they are.

use crate::pg::PgServer;
use pgtide_core::{Error, ErrorKind, Result};
use std::path::PathBuf;

/// `../shared/datasets` relative to the repository root, or `PGTIDE_DATASETS`.
pub fn datasets_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PGTIDE_DATASETS") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets")
}

/// The Pagila directory; an error (never a skip) when it is missing.
pub fn pagila_dir() -> Result<PathBuf> {
    let d = datasets_dir().join("pagila");
    if d.join("pagila-schema.sql").is_file() && d.join("pagila-data.sql").is_file() {
        Ok(d)
    } else {
        Err(Error::new(
            ErrorKind::Prerequisite,
            format!("the Pagila dataset is not at {}", d.display()),
        )
        .with_hint("the tests read ../shared/datasets/pagila next to the repository; set PGTIDE_DATASETS to elsewhere"))
    }
}

/// Create database `db` on `server` and load Pagila's schema and data into it.
pub fn load_pagila(server: &PgServer, db: &str) -> Result<()> {
    let dir = pagila_dir()?;
    server.create_database(db)?;
    server.psql_file(db, &dir.join("pagila-schema.sql"))?;
    server.psql_file(db, &dir.join("pagila-data.sql"))?;
    server.psql(db, "ANALYZE")?;
    Ok(())
}
