//! Tables without a key, slots that are missing, consumed elsewhere or invalidated, and a slot
//! whose tables are idle: each is handled as the task says or stops with the way out; nothing is
//! skipped silently.

mod common;
use common::*;
use pgtide_testkit::{PgOptions, PgServer};

fn pair() -> (PgServer, PgServer, tempfile::TempDir) {
    let source = PgServer::start_with(PgOptions {
        settings: vec![
            ("max_slot_wal_keep_size".into(), "'16MB'".into()),
            ("wal_keep_size".into(), "0".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    let target = PgServer::start_with(PgOptions {
        logical: false,
        ..Default::default()
    })
    .unwrap();
    source.create_database("src").unwrap();
    target.create_database("dst").unwrap();
    (source, target, tempfile::tempdir().unwrap())
}

fn cdc_task(
    dir: &std::path::Path,
    name: &str,
    source: &PgServer,
    target: &PgServer,
    extra: &str,
) -> std::path::PathBuf {
    task_file(
        dir,
        name,
        &task_yaml(name, &source.url("src"), &target.url("dst"), extra)
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    )
}

#[test]
fn tables_without_key_fail_by_default_or_follow_the_policy() {
    let (source, target, dir) = pair();
    source
        .psql(
            "src",
            "CREATE TABLE keyed (id int PRIMARY KEY, v text); CREATE TABLE log (at timestamptz, msg text); \
             INSERT INTO keyed VALUES (1, 'a'); INSERT INTO log VALUES (now(), 'hello')",
        )
        .unwrap();
    // Default: refuse, listing the table and the three fixes; nothing is created on either side.
    let task = cdc_task(dir.path(), "nk", &source, &target, "");
    let (code, err) = run_err(&task);
    assert_eq!(code, 1);
    for needle in [
        "public.log",
        "ADD PRIMARY KEY",
        "REPLICA IDENTITY FULL",
        "insert-only",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert_eq!(
        source
            .psql("src", "SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
    assert_eq!(
        source
            .psql("src", "SELECT count(*) FROM pg_publication")
            .unwrap(),
        "0"
    );
    assert_eq!(
        target
            .psql(
                "dst",
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            .unwrap(),
        "0"
    );

    // insert-only: the source application can still update and delete; only inserts and
    // truncates are replicated, and the run says so.
    let task = cdc_task(
        dir.path(),
        "nk",
        &source,
        &target,
        "cdc: { tables_without_key: insert-only }\n",
    );
    let run = Running::start(dir.path(), "io", &["run", task.to_str().unwrap()], &[]);
    wait_until(60, "the load", || {
        phase(&target, "dst", "nk").as_deref() == Some("cdc")
    });
    source
        .psql(
            "src",
            "INSERT INTO log VALUES (now(), 'second'); UPDATE log SET msg = 'edited' WHERE msg = 'hello'; \
             DELETE FROM log WHERE msg = 'second'; UPDATE keyed SET v = 'b'",
        )
        .expect("updates and deletes on the key-less table still work on the source");
    let end = current_lsn(&source, "src");
    run.terminate();
    let (code, out, err) = run.wait();
    assert_eq!(code, Some(0), "{err}");
    let out2 = run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    for o in [&out, &out2] {
        assert!(
            o.contains("public.log is replicated for INSERT and TRUNCATE only"),
            "{o}"
        );
    }
    assert_eq!(
        target
            .psql("dst", "SELECT string_agg(msg, ',' ORDER BY msg) FROM log")
            .unwrap(),
        "hello,second"
    );
    assert_eq!(target.psql("dst", "SELECT v FROM keyed").unwrap(), "b");
}

#[test]
fn slot_problems_stop_with_the_way_out() {
    let (source, target, dir) = pair();
    source
        .psql(
            "src",
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')",
        )
        .unwrap();
    let task = cdc_task(dir.path(), "sl", &source, &target, "");
    let end = current_lsn(&source, "src");
    run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);

    // Someone else consumed the slot past the target's checkpoint: changes would be missing.
    // (Committed synchronously: a slot is only advanced up to flushed WAL.)
    source
        .psql(
            "src",
            "SET synchronous_commit = on; INSERT INTO t VALUES (2, 'b')",
        )
        .unwrap();
    source
        .psql(
            "src",
            "SELECT pg_replication_slot_advance('pgtide_sl', pg_current_wal_insert_lsn())",
        )
        .unwrap();
    let (code, err) = run_err(&task);
    assert_eq!(code, 1);
    assert!(
        err.contains("past the target's checkpoint") && err.contains("--restart"),
        "{err}"
    );

    // The slot is gone.
    source
        .psql("src", "SELECT pg_drop_replication_slot('pgtide_sl')")
        .unwrap();
    let (_, err) = run_err(&task);
    assert!(
        err.contains("replication slot pgtide_sl is missing") && err.contains("--restart"),
        "{err}"
    );

    // --restart reloads and streams again.
    let end = current_lsn(&source, "src");
    let out = run_ok_args(&[
        "run",
        task.to_str().unwrap(),
        "--restart",
        "--end-lsn",
        &end,
    ]);
    assert!(out.contains("full load of task sl"), "{out}");
    assert_eq!(target.psql("dst", "SELECT count(*) FROM t").unwrap(), "2");

    // The source removes WAL the slot still needs (max_slot_wal_keep_size): the slot is lost.
    source
        .psql("src", "CREATE TABLE churn (id serial PRIMARY KEY, x text)")
        .unwrap();
    for _ in 0..6 {
        source
            .psql("src", "INSERT INTO churn (x) SELECT repeat('w', 1000) FROM generate_series(1, 10000); SELECT pg_switch_wal(); CHECKPOINT;")
            .unwrap();
    }
    assert_eq!(
        source
            .psql("src", "SELECT wal_status FROM pg_replication_slots")
            .unwrap(),
        "lost"
    );
    let (_, err) = run_err(&task);
    assert!(
        err.contains("invalidated (wal_status = lost)") && err.contains("max_slot_wal_keep_size"),
        "{err}"
    );
}

#[test]
fn an_idle_or_filtered_slot_does_not_pin_wal() {
    let (source, target, dir) = pair();
    source
        .psql(
            "src",
            "CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE noisy (id int, pad text)",
        )
        .unwrap();
    let task = cdc_task(
        dir.path(),
        "idle",
        &source,
        &target,
        "tables: { include: [public.watched] }\ncdc: { heartbeat_interval: 1 }\n",
    );
    let run = Running::start(dir.path(), "idle", &["run", task.to_str().unwrap()], &[]);
    wait_until(60, "the load", || {
        phase(&target, "dst", "idle").as_deref() == Some("cdc")
    });
    // Lots of WAL from a table that is not replicated.
    source
        .psql(
            "src",
            "INSERT INTO noisy SELECT g, repeat('p', 500) FROM generate_series(1, 20000) g",
        )
        .unwrap();
    let after = current_lsn(&source, "src");
    let moved = || {
        source
            .psql(
                "src",
                &format!(
                    "SELECT confirmed_flush_lsn >= '{after}'::pg_lsn FROM pg_replication_slots"
                ),
            )
            .map(|r| r == "t")
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !moved() {
        if std::time::Instant::now() > deadline {
            run.terminate();
            let (_, _, err) = run.wait();
            panic!(
                "the slot did not move past {after}: {}\n{err}",
                source
                    .psql(
                        "src",
                        "SELECT confirmed_flush_lsn, restart_lsn, active FROM pg_replication_slots"
                    )
                    .unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // And what was confirmed beyond the last applied transaction is recorded on the target.
    assert_eq!(
        target
            .psql(
                "dst",
                &format!("SELECT confirmed_lsn >= '{after}'::pg_lsn FROM pgtide.cdc_progress")
            )
            .unwrap(),
        "t"
    );
    run.terminate();
    let (code, _, err) = run.wait();
    assert_eq!(code, Some(0), "{err}");
}

/// A slot created before the task's publication existed cannot be decoded by pgoutput for the
/// changes in between ("publication does not exist" in the historic snapshot). The task stops
/// and says why and what to do; after following the advice it streams.
#[test]
fn a_slot_older_than_the_publication_is_explained() {
    let (source, target, dir) = pair();
    source
        .psql("src", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    source
        .psql(
            "src",
            "SELECT pg_create_logical_replication_slot('pgtide_old', 'pgoutput')",
        )
        .unwrap();
    source.psql("src", "INSERT INTO t VALUES (1, 'a')").unwrap();
    target
        .psql("dst", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let task = cdc_task(dir.path(), "old", &source, &target, "")
        .to_str()
        .unwrap()
        .to_string();
    let yaml = std::fs::read_to_string(&task)
        .unwrap()
        .replace("mode: full-load-and-cdc\n", "mode: cdc\n");
    std::fs::write(&task, yaml).unwrap();
    let task = std::path::PathBuf::from(task);
    let end = current_lsn(&source, "src");
    let (code, err) = run_err_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("publication") && err.contains("created before"),
        "{err}"
    );
    assert!(err.contains("--restart"), "{err}");

    // Following the advice: a new slot, after the publication, streams what comes next.
    source.psql("src", "INSERT INTO t VALUES (2, 'b')").unwrap();
    let end = current_lsn(&source, "src");
    run_ok_args(&[
        "run",
        task.to_str().unwrap(),
        "--restart",
        "--end-lsn",
        &end,
    ]);
    source.psql("src", "INSERT INTO t VALUES (3, 'c')").unwrap();
    let end = current_lsn(&source, "src");
    run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert_eq!(
        target
            .psql("dst", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t")
            .unwrap(),
        "3"
    );
}

/// A row changed on the target behind pgtide's back: the batch that finds the target different
/// from what the source's changes assume is not committed (not even the parts of it that
/// applied cleanly, nor its checkpoint), and the task stops saying which table and what to do.
/// The applier sends a batch's statements ahead of their results; this is what keeps the
/// `COMMIT` behind the check of every one of them.
#[test]
fn a_target_changed_outside_pgtide_stops_the_task_without_committing_the_batch() {
    let (source, target, dir) = pair();
    source
        .psql(
            "src",
            "CREATE TABLE acct (id int PRIMARY KEY, v int); CREATE TABLE hist (id int PRIMARY KEY, note text); \
             INSERT INTO acct SELECT g, 0 FROM generate_series(1, 100) g",
        )
        .unwrap();
    let task = cdc_task(dir.path(), "drift", &source, &target, "");
    let run = Running::start(dir.path(), "drift", &["run", task.to_str().unwrap()], &[]);
    wait_until(60, "the load", || {
        phase(&target, "dst", "drift").as_deref() == Some("cdc")
    });
    target
        .psql("dst", "DELETE FROM acct WHERE id = 50")
        .unwrap();
    let applied_before = target
        .psql("dst", "SELECT commit_lsn FROM pgtide.cdc_progress")
        .unwrap();
    source
        .psql(
            "src",
            "BEGIN; INSERT INTO hist VALUES (1, 'first'); UPDATE acct SET v = v + 1 WHERE id IN (49, 50, 51); \
             INSERT INTO hist VALUES (2, 'second'); COMMIT",
        )
        .unwrap();
    let (code, _, err) = run.wait();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("public.acct") && err.contains("no longer matches the source"),
        "{err}"
    );
    assert!(err.contains("re-run the full load"), "{err}");
    // Nothing of the transaction is on the target, and the checkpoint did not move.
    assert_eq!(
        target.psql("dst", "SELECT count(*) FROM hist").unwrap(),
        "0"
    );
    assert_eq!(
        target
            .psql(
                "dst",
                "SELECT string_agg(v::text, ',' ORDER BY id) FROM acct WHERE id IN (49, 51)"
            )
            .unwrap(),
        "0,0"
    );
    assert_eq!(
        target
            .psql("dst", "SELECT commit_lsn FROM pgtide.cdc_progress")
            .unwrap(),
        applied_before
    );
}
