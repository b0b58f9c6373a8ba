//! Finding PostgreSQL's client and server programs on this machine.
//!
//! pgtide needs `pg_dump`/`pg_restore` to copy a PostgreSQL schema (functions, views, triggers
//! and the rest come out exactly as `pg_dump` writes them), and the demo and the tests need
//! `initdb`/`postgres`. A machine often has several versions side by side (Debian's
//! `/usr/lib/postgresql/<major>/bin`), and `pg_dump` must be at least as new as the source
//! server: an older `pg_dump` refuses to dump a newer server. Debian's `/usr/bin/pg_dump` is a
//! wrapper that picks a version by its own rules, so we look at the real directories first and
//! ask every candidate for its version instead of trusting its location.

use pgtide_core::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory holding PostgreSQL programs of one major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinDir {
    /// The directory.
    pub dir: PathBuf,
    /// Major version (`15` for 15.18).
    pub major: u32,
}

impl BinDir {
    /// Full path of a program in this directory.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Parse `pg_dump (PostgreSQL) 15.18 (Debian ...)` or `initdb (PostgreSQL) 17.2` into the major.
pub fn parse_major(version_output: &str) -> Option<u32> {
    let after = version_output.split(')').nth(1)?.trim();
    let num = after.split_whitespace().next()?;
    let digits: String = num.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major: u32 = digits.parse().ok()?;
    Some(major)
}

/// The major version a program reports, or `None` if it does not run.
pub fn program_major(path: &Path) -> Option<u32> {
    let out = Command::new(path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_major(&String::from_utf8_lossy(&out.stdout))
}

/// Candidate directories, most specific first: `PGTIDE_PG_BIN`, Debian and RPM layouts, and the
/// directories of `program` on `PATH` (symlinks resolved, so `/usr/local/bin/initdb ->
/// /usr/lib/postgresql/15/bin/initdb` yields the real directory).
pub fn candidate_dirs(program: &str) -> Vec<BinDir> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("PGTIDE_PG_BIN") {
        dirs.push(PathBuf::from(d));
    }
    for root in ["/usr/lib/postgresql", "/usr/local/pgsql"] {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                dirs.push(e.path().join("bin"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("pgsql-") {
                dirs.push(e.path().join("bin"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(program);
            if let Ok(real) = std::fs::canonicalize(&p)
                && real.file_name().map(|f| f == program).unwrap_or(false)
                && let Some(parent) = real.parent()
            {
                dirs.push(parent.to_path_buf());
            }
        }
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for d in dirs {
        let Ok(canon) = std::fs::canonicalize(&d) else {
            continue;
        };
        if seen.contains(&canon) || !canon.join(program).is_file() {
            continue;
        }
        seen.push(canon.clone());
        if let Some(major) = program_major(&canon.join(program)) {
            out.push(BinDir { dir: canon, major });
        }
    }
    out
}

/// Find the newest directory holding all of `programs` (for the demo and tests: `initdb`,
/// `postgres`, `pg_ctl`, `psql`), preferring `PGTIDE_PG_BIN`.
pub fn find_server_bin(programs: &[&str]) -> Result<BinDir> {
    let first = programs.first().copied().unwrap_or("postgres");
    let mut cands: Vec<BinDir> = candidate_dirs(first)
        .into_iter()
        .filter(|b| programs.iter().all(|p| b.program(p).is_file()))
        .collect();
    if let Some(env) = std::env::var_os("PGTIDE_PG_BIN")
        && let Some(b) = cands
            .iter()
            .find(|b| Path::new(&env).canonicalize().ok().as_ref() == Some(&b.dir))
    {
        return Ok(b.clone());
    }
    cands.sort_by_key(|b| std::cmp::Reverse(b.major));
    cands.into_iter().next().ok_or_else(|| {
        Error::new(
            ErrorKind::Prerequisite,
            format!(
                "no PostgreSQL server programs found (looked for {})",
                programs.join(", ")
            ),
        )
        .with_hint(
            "install them (Debian/Ubuntu: sudo apt-get install -y postgresql) \
             or set PGTIDE_PG_BIN to the directory that holds initdb and postgres",
        )
    })
}

/// Choose `pg_dump` and `pg_restore` for a copy from a server of `source_major` to one of
/// `target_major`.
///
/// `pg_dump` must be at least as new as the source. Among those, the target's own version is
/// best (its output is meant for that server); otherwise the oldest one that is new enough,
/// which is least likely to emit syntax the target does not know. `explicit` (the task's
/// `schema.pg_dump`, a file or a directory) overrides the search but is still checked.
pub fn find_pg_dump(
    explicit: Option<&Path>,
    source_major: u32,
    target_major: u32,
) -> Result<BinDir> {
    let hint_install = format!(
        "install PostgreSQL {source_major} or newer client programs (Debian/Ubuntu: \
         sudo apt-get install -y postgresql-client-{source_major}) or point schema.pg_dump at one"
    );
    if let Some(p) = explicit {
        let dir = if p.is_dir() {
            p.to_path_buf()
        } else {
            p.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let b = BinDir { major: 0, dir };
        let major = program_major(&b.program("pg_dump")).ok_or_else(|| {
            Error::new(
                ErrorKind::Prerequisite,
                format!("schema.pg_dump: no working pg_dump in {}", b.dir.display()),
            )
            .with_hint(hint_install.clone())
        })?;
        if !b.program("pg_restore").is_file() {
            return Err(Error::new(
                ErrorKind::Prerequisite,
                format!(
                    "schema.pg_dump: {} has pg_dump but no pg_restore",
                    b.dir.display()
                ),
            )
            .with_hint(hint_install));
        }
        if major < source_major {
            return Err(Error::new(
                ErrorKind::Prerequisite,
                format!(
                    "schema.pg_dump: pg_dump {major} in {} cannot dump a PostgreSQL {source_major} source",
                    b.dir.display()
                ),
            )
            .with_hint(hint_install));
        }
        return Ok(BinDir { major, ..b });
    }
    let cands: Vec<BinDir> = candidate_dirs("pg_dump")
        .into_iter()
        .filter(|b| b.program("pg_restore").is_file())
        .collect();
    let found: Vec<u32> = cands.iter().map(|b| b.major).collect();
    let mut ok: Vec<BinDir> = cands
        .into_iter()
        .filter(|b| b.major >= source_major)
        .collect();
    ok.sort_by_key(|b| (b.major != target_major, b.major));
    ok.into_iter().next().ok_or_else(|| {
        let seen = if found.is_empty() {
            "none found".to_string()
        } else {
            format!(
                "found only version(s) {}",
                found
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Error::new(
            ErrorKind::Prerequisite,
            format!("no pg_dump of version {source_major} or newer to copy the schema ({seen})"),
        )
        .with_hint(hint_install)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("initdb (PostgreSQL) 17.2\n"), Some(17));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 18beta1\n"), Some(18));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn explicit_pg_dump_that_is_too_old_is_refused() {
        let Ok(b) = find_server_bin(&["pg_dump", "pg_restore"]) else {
            panic!("the test machine must have pg_dump installed (scripts/test.sh installs it)");
        };
        let e = find_pg_dump(Some(&b.dir), b.major + 1, b.major + 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Prerequisite);
        assert!(e.message().contains("cannot dump"), "{}", e.report());
        let ok = find_pg_dump(Some(&b.program("pg_dump")), b.major, b.major).unwrap();
        assert_eq!(ok.major, b.major);
        let e = find_pg_dump(None, 99, 99).unwrap_err();
        assert!(
            e.message().contains("version 99 or newer"),
            "{}",
            e.report()
        );
    }
}
