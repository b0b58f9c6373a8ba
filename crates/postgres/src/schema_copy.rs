//! Copying a PostgreSQL schema with `pg_dump`, run by pgtide statement by statement.
//!
//! # Why `pg_dump`, and why not `pg_restore -d`
//!
//! Functions, views, triggers, rules, policies, domains, comments, extensions: re-creating all
//! of that from the catalog is what `pg_dump` has done correctly for decades, so pgtide uses it
//! for PostgreSQL targets. It dumps the schema only (`--schema-only --format=custom`) inside the
//! load's exported snapshot (`--snapshot`), so the schema and the rows describe one instant.
//!
//! `pg_restore` then only *converts* the archive into SQL (`-f -`); pgtide executes that SQL on
//! its own target connections. That buys three things:
//!
//! 1. **Atomic, resumable steps.** The pre-data script runs in one target transaction together
//!    with the state row that records it as done; a crash leaves either all of it or none.
//! 2. **Indexes and constraints scheduled per table.** The SQL of each `INDEX`/`CONSTRAINT`
//!    entry becomes a job that runs as soon as its table's rows are in, in parallel with the copy
//!    of other tables (primary keys before the load by default), instead of one long post-data
//!    phase at the end.
//! 3. **No target password in a child process.** Only `pg_dump` connects (to the source), with
//!    the password in its environment, never on its command line.
//!
//! # The archive's table of contents
//!
//! `pg_restore -l` prints one line per entry: `3428; 2606 16520 CONSTRAINT public payment
//! payment_pkey postgres` — dump id; catalog table OID and object OID; the entry type (which can
//! be several words: `FK CONSTRAINT`, `INDEX ATTACH`, `MATERIALIZED VIEW`); the schema (`-` for
//! none); the tag; the owner. The object OID ties an entry to our schema model. The SQL that
//! `pg_restore -f -` prints puts a header before each entry (`-- Name: payment payment_pkey;
//! Type: CONSTRAINT; Schema: public; Owner: -`), which is how a script is split back into
//! entries. Since 2025 the script also carries psql's `\restrict KEY` / `\unrestrict KEY`
//! meta-commands (a defence for scripts fed to psql); they are not SQL and are dropped here.

use crate::programs::BinDir;
use pgtide_core::endpoint::{ConnUrl, Host};
use pgtide_core::ident::quote_ident;
use pgtide_core::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Entry types that span several words in `pg_restore -l` output, longest first.
const MULTI_WORD_DESCS: &[&str] = &[
    "MATERIALIZED VIEW DATA",
    "SEQUENCE OWNED BY",
    "MATERIALIZED VIEW",
    "CHECK CONSTRAINT",
    "DEFAULT ACL",
    "EVENT TRIGGER",
    "FK CONSTRAINT",
    "FOREIGN TABLE",
    "INDEX ATTACH",
    "LARGE OBJECT",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "ROW SECURITY",
    "SECURITY LABEL",
    "SEQUENCE SET",
    "SERVER",
    "STATISTICS DATA",
    "TABLE ATTACH",
    "TABLE DATA",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE",
    "USER MAPPING",
    "FOREIGN DATA WRAPPER",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "PROCEDURAL LANGUAGE",
    "SHELL TYPE",
    "ACCESS METHOD",
    "DEFAULT",
];

/// One line of `pg_restore -l`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// The line as printed, written back verbatim into list files.
    pub line: String,
    /// Dump id (first field).
    pub dump_id: i32,
    /// OID of the catalog the object lives in (`pg_class`, `pg_constraint`, ...), 0 if none.
    pub catalog_oid: u32,
    /// OID of the object on the source, 0 if none.
    pub object_oid: u32,
    /// Entry type: `TABLE`, `INDEX`, `FK CONSTRAINT`, ...
    pub desc: String,
    /// Schema, `None` for `-`.
    pub schema: Option<String>,
    /// Tag without the owner (`payment payment_pkey` for a constraint). Ambiguous when names
    /// contain spaces: use it for messages, and the script's segment headers for matching.
    pub tag: String,
}

/// Parse one `pg_restore -l` line; comments and blank lines give `None`.
pub fn parse_toc_line(line: &str) -> Option<TocEntry> {
    let l = line.trim_end();
    if l.is_empty() || l.starts_with(';') {
        return None;
    }
    let (id, rest) = l.split_once(';')?;
    let dump_id: i32 = id.trim().parse().ok()?;
    let rest = rest.trim_start();
    let mut it = rest.splitn(3, ' ');
    let catalog_oid: u32 = it.next()?.parse().ok()?;
    let object_oid: u32 = it.next()?.parse().ok()?;
    let rest = it.next()?;
    let desc = MULTI_WORD_DESCS
        .iter()
        .find(|d| rest.starts_with(*d) && rest[d.len()..].starts_with(' '))
        .map(|d| d.to_string())
        .unwrap_or_else(|| rest.split(' ').next().unwrap_or("").to_string());
    let rest = rest[desc.len()..].trim_start();
    let (schema, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    // The owner is the last word; the tag is everything between schema and owner.
    let tag = match rest.rsplit_once(' ') {
        Some((tag, _owner)) => tag.to_string(),
        None => rest.to_string(),
    };
    Some(TocEntry {
        line: l.to_string(),
        dump_id,
        catalog_oid,
        object_oid,
        desc,
        schema: (schema != "-").then(|| schema.to_string()),
        tag,
    })
}

/// A schema-only archive of the source and its table of contents.
#[derive(Debug)]
pub struct SchemaArchive {
    _dir: tempfile::TempDir,
    file: PathBuf,
    bin: BinDir,
    /// Entries of the pre-data section (types, functions, tables, views, ...), in dump order.
    pub pre_data: Vec<TocEntry>,
    /// Entries of the post-data section (indexes, constraints, triggers, ...), in dump order.
    pub post_data: Vec<TocEntry>,
}

/// What `pg_dump` should leave out.
#[derive(Debug, Default, Clone)]
pub struct DumpFilter {
    /// Schemas to leave out entirely (`--exclude-schema`).
    pub exclude_schemas: Vec<String>,
    /// Tables, views and sequences to leave out (`--exclude-table`), as (schema, name).
    pub exclude_relations: Vec<(String, String)>,
}

/// A psql/pg_dump pattern that matches exactly one name: inside double quotes, every pattern
/// character is literal.
fn exact_pattern(part: &str) -> String {
    quote_ident(part)
}

/// libpq conninfo for child programs, without the password (it travels in `PGPASSWORD`).
pub fn conninfo(url: &ConnUrl) -> String {
    fn kv(k: &str, v: &str) -> String {
        let esc = v.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{k}='{esc}'")
    }
    let mut parts = vec![
        kv(
            "host",
            &match &url.host {
                Host::Tcp(h) => h.clone(),
                Host::Socket(p) => p.display().to_string(),
            },
        ),
        kv("port", &url.port.to_string()),
        kv("user", &url.user),
        kv("dbname", &url.database),
        kv("sslmode", url.sslmode.as_str()),
        kv("application_name", "pgtide-pg_dump"),
    ];
    if let Some(r) = &url.sslrootcert {
        parts.push(kv("sslrootcert", r));
    }
    if let Some(c) = &url.sslcert {
        parts.push(kv("sslcert", &c.display().to_string()));
    }
    if let Some(k) = &url.sslkey {
        parts.push(kv("sslkey", &k.display().to_string()));
    }
    if let Some(t) = url.connect_timeout {
        parts.push(kv("connect_timeout", &t.to_string()));
    }
    parts.join(" ")
}

async fn run_program(mut cmd: Command, what: &str) -> Result<Vec<u8>> {
    cmd.kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| {
        Error::new(
            ErrorKind::Prerequisite,
            format!("{what}: cannot start the program"),
        )
        .with_source(e)
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg: String = stderr.lines().take(12).collect::<Vec<_>>().join("\n    ");
        let kind = if stderr.contains("password authentication failed")
            || stderr.contains("no password supplied")
        {
            ErrorKind::Auth
        } else if stderr.contains("could not connect") || stderr.contains("Connection refused") {
            ErrorKind::Connection
        } else {
            ErrorKind::Database
        };
        return Err(Error::new(
            kind,
            format!("{what} failed ({}):\n    {msg}", out.status),
        ));
    }
    Ok(out.stdout)
}

impl SchemaArchive {
    /// Dump the source schema inside `snapshot` and read its table of contents.
    pub async fn dump(
        bin: &BinDir,
        source: &ConnUrl,
        snapshot: &str,
        filter: &DumpFilter,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("pgtide-schema-")
            .tempdir()?;
        let file = dir.path().join("schema.dump");
        let mut cmd = Command::new(bin.program("pg_dump"));
        cmd.arg("--schema-only")
            .arg("--format=custom")
            .arg("--no-publications")
            .arg("--no-subscriptions")
            .arg("--no-tablespaces")
            .arg(format!("--snapshot={snapshot}"))
            .arg(format!("--file={}", file.display()))
            .arg("--exclude-schema=pgtide");
        for s in &filter.exclude_schemas {
            cmd.arg(format!("--exclude-schema={}", exact_pattern(s)));
        }
        for (s, t) in &filter.exclude_relations {
            cmd.arg(format!(
                "--exclude-table={}.{}",
                exact_pattern(s),
                exact_pattern(t)
            ));
        }
        cmd.arg(format!("--dbname={}", conninfo(source)));
        cmd.env_remove("PGPASSWORD").env("PGCONNECT_TIMEOUT", "30");
        if let Some(pw) = &source.password {
            cmd.env("PGPASSWORD", pw.expose());
        }
        run_program(cmd, &format!("pg_dump {} of the source schema", bin.major)).await?;
        let mut archive = SchemaArchive {
            _dir: dir,
            file,
            bin: bin.clone(),
            pre_data: Vec::new(),
            post_data: Vec::new(),
        };
        archive.pre_data = archive.list(Some("pre-data")).await?;
        archive.post_data = archive.list(Some("post-data")).await?;
        Ok(archive)
    }

    async fn list(&self, section: Option<&str>) -> Result<Vec<TocEntry>> {
        let mut cmd = Command::new(self.bin.program("pg_restore"));
        cmd.arg("--list");
        if let Some(s) = section {
            cmd.arg(format!("--section={s}"));
        }
        cmd.arg(&self.file);
        let out = run_program(cmd, "pg_restore --list").await?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(parse_toc_line)
            .collect())
    }

    /// The SQL of `entries`, split back into one script per entry (in the order printed).
    /// `clean` adds `DROP ... IF EXISTS` statements for the entries, which come first as their
    /// own segment.
    pub async fn sql(&self, entries: &[&TocEntry], options: &ScriptOptions) -> Result<Script> {
        if entries.is_empty() {
            return Ok(Script::default());
        }
        let list = self._dir.path().join(format!(
            "list-{}.txt",
            std::process::id() as u64 ^ entries[0].dump_id as u64 ^ entries.len() as u64
        ));
        let text: String = entries.iter().map(|e| format!("{}\n", e.line)).collect();
        tokio::fs::write(&list, text).await?;
        let mut cmd = Command::new(self.bin.program("pg_restore"));
        cmd.arg("--file=-")
            .arg(format!("--use-list={}", list.display()));
        if !options.owners {
            cmd.arg("--no-owner");
        }
        if !options.privileges {
            cmd.arg("--no-privileges");
        }
        if options.clean {
            cmd.arg("--clean").arg("--if-exists");
        }
        cmd.arg(&self.file);
        let out = run_program(cmd, "pg_restore (converting the schema archive to SQL)").await?;
        let _ = tokio::fs::remove_file(&list).await;
        Script::parse(&String::from_utf8_lossy(&out))
    }

    /// Where `pg_dump` and `pg_restore` came from.
    pub fn programs(&self) -> &BinDir {
        &self.bin
    }

    /// The archive file (for debugging and the README's manual recovery steps).
    pub fn path(&self) -> &Path {
        &self.file
    }
}

/// Options for turning archive entries into SQL.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptOptions {
    /// Keep `ALTER ... OWNER TO`.
    pub owners: bool,
    /// Keep `GRANT`/`REVOKE`.
    pub privileges: bool,
    /// Emit `DROP ... IF EXISTS` before the creates.
    pub clean: bool,
}

/// One entry's SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Entry type from the header (`INDEX`, `CONSTRAINT`, ...); `SETUP` for the preamble.
    pub desc: String,
    /// Schema from the header, `None` for `-`.
    pub schema: Option<String>,
    /// Name from the header (the TOC tag).
    pub name: String,
    /// The statements.
    pub sql: String,
}

/// A `pg_restore` script split at its entry headers.
#[derive(Debug, Default, Clone)]
pub struct Script {
    /// Session settings printed before the first entry (`SET search_path = ''`, ...); run
    /// them on every connection that runs segments. With `clean`, the drops are here too.
    pub preamble: String,
    /// Entry segments in order.
    pub segments: Vec<Segment>,
}

impl Script {
    /// Split `pg_restore -f -` output. Fails on psql meta-commands other than
    /// `\restrict`/`\unrestrict`, which would mean options pgtide does not use.
    pub fn parse(text: &str) -> Result<Self> {
        let mut preamble = String::new();
        let mut segments: Vec<Segment> = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        let mut in_dollar_body = false;
        while i < lines.len() {
            let line = lines[i];
            // A header is "--" / "-- Name: ...; Type: ...; Schema: ...; Owner: ..." / "--".
            if !in_dollar_body
                && line == "--"
                && i + 2 < lines.len()
                && lines[i + 1].starts_with("-- Name: ")
                && lines[i + 2] == "--"
                && let Some((name, desc, schema)) = parse_header(&lines[i + 1][9..])
            {
                segments.push(Segment {
                    desc,
                    schema: (schema != "-").then(|| schema.to_string()),
                    name,
                    sql: String::new(),
                });
                i += 3;
                continue;
            }
            if !in_dollar_body
                && (line.starts_with("\\restrict ") || line.starts_with("\\unrestrict "))
            {
                i += 1;
                continue;
            }
            if !in_dollar_body && line.starts_with('\\') {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "unexpected psql meta-command in pg_restore output: {}",
                        line.split_whitespace().next().unwrap_or("")
                    ),
                ));
            }
            // Track dollar-quoted bodies only to avoid mistaking their lines for headers or
            // meta-commands; an odd count of "$$"-style tags toggles the state.
            if count_dollar_tags(line) % 2 == 1 {
                in_dollar_body = !in_dollar_body;
            }
            let target = match segments.last_mut() {
                Some(s) => &mut s.sql,
                None => &mut preamble,
            };
            target.push_str(line);
            target.push('\n');
            i += 1;
        }
        Ok(Script { preamble, segments })
    }
}

/// `Name: <tag>; Type: <desc>; Schema: <schema>; Owner: <owner>` → (tag, desc, schema).
fn parse_header(h: &str) -> Option<(String, String, String)> {
    let (name, rest) = h.rsplit_once("; Type: ")?;
    let (desc, rest) = rest.split_once("; Schema: ")?;
    let schema = rest.split_once("; Owner:").map(|(s, _)| s).unwrap_or(rest);
    Some((name.to_string(), desc.to_string(), schema.to_string()))
}

/// Number of dollar-quote delimiters (`$$`, `$body$`) on a line outside single quotes.
fn count_dollar_tags(line: &str) -> usize {
    let b = line.as_bytes();
    let mut n = 0;
    let mut i = 0;
    let mut in_quote = false;
    while i < b.len() {
        match b[i] {
            b'\'' => in_quote = !in_quote,
            b'-' if !in_quote && i + 1 < b.len() && b[i + 1] == b'-' => break,
            b'$' if !in_quote => {
                let mut j = i + 1;
                if j < b.len() && b[j].is_ascii_digit() {
                    i += 1;
                    continue;
                }
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j < b.len() && b[j] == b'$' {
                    n += 1;
                    i = j + 1;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toc_lines() {
        let e = parse_toc_line("3428; 2606 16520 CONSTRAINT public payment payment_pkey postgres")
            .unwrap();
        assert_eq!(e.dump_id, 3428);
        assert_eq!(e.catalog_oid, 2606);
        assert_eq!(e.object_oid, 16520);
        assert_eq!(e.desc, "CONSTRAINT");
        assert_eq!(e.schema.as_deref(), Some("public"));
        assert_eq!(e.tag, "payment payment_pkey");
        let e = parse_toc_line("3490; 2606 16743 FK CONSTRAINT public payment_p2022_01 payment_p2022_01_customer_id_fkey postgres").unwrap();
        assert_eq!(e.desc, "FK CONSTRAINT");
        assert_eq!(e.tag, "payment_p2022_01 payment_p2022_01_customer_id_fkey");
        let e =
            parse_toc_line("3471; 0 0 INDEX ATTACH public payment_p2022_01_pkey postgres").unwrap();
        assert_eq!(e.desc, "INDEX ATTACH");
        let e = parse_toc_line("5; 2615 2200 SCHEMA - public postgres").unwrap();
        assert_eq!(e.schema, None);
        assert_eq!(e.tag, "public");
        let e =
            parse_toc_line("249; 1259 16555 MATERIALIZED VIEW public rental_by_category postgres")
                .unwrap();
        assert_eq!(e.desc, "MATERIALIZED VIEW");
        let e = parse_toc_line("888; 1247 16386 DOMAIN public bıgınt postgres").unwrap();
        assert_eq!(e.tag, "bıgınt");
        let e = parse_toc_line("215; 1259 16411 TABLE public My Table postgres").unwrap();
        assert_eq!(e.tag, "My Table");
        assert!(parse_toc_line(";     dbname: pagila").is_none());
        assert!(parse_toc_line("").is_none());
    }

    #[test]
    fn splits_scripts_at_headers_and_drops_restrict() {
        let text = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET statement_timeout = 0;\n\
            --\n-- Name: f(); Type: FUNCTION; Schema: public; Owner: -\n--\n\n\
            CREATE FUNCTION public.f() RETURNS int AS $$\n--\n-- Name: fake; Type: TABLE; Schema: public; Owner: -\n--\n\\not meta\nSELECT 1\n$$ LANGUAGE sql;\n\n\
            --\n-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: -\n--\n\n\
            ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\n\\unrestrict abc\n";
        let s = Script::parse(text).unwrap();
        assert!(s.preamble.contains("statement_timeout"));
        assert!(!s.preamble.contains("restrict"));
        assert_eq!(s.segments.len(), 2);
        assert_eq!(s.segments[0].desc, "FUNCTION");
        assert!(
            s.segments[0].sql.contains("\\not meta"),
            "body lines stay in the body"
        );
        assert_eq!(s.segments[1].name, "t t_pkey");
        assert_eq!(s.segments[1].desc, "CONSTRAINT");
        assert_eq!(s.segments[1].schema.as_deref(), Some("public"));
        assert!(s.segments[1].sql.contains("PRIMARY KEY"));
        assert!(!s.segments[1].sql.contains("unrestrict"));
        assert!(Script::parse("\\connect other\n").is_err());
    }

    #[test]
    fn dollar_tags_are_counted_outside_quotes_and_comments() {
        assert_eq!(count_dollar_tags("AS $$"), 1);
        assert_eq!(count_dollar_tags("AS $body$ select 1 $body$"), 2);
        assert_eq!(count_dollar_tags("select '$$'"), 0);
        assert_eq!(count_dollar_tags("select $1, $2"), 0);
        assert_eq!(count_dollar_tags("-- $$"), 0);
    }
}
