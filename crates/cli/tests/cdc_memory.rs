//! Bounded memory: a single source transaction of two million rows (about 400 MB of values, far
//! more than the limit) streams through pgtide with peak RSS under 256 MB, and arrives whole.

mod common;
use common::*;
use pgtide_testkit::{PgOptions, PgServer};

#[test]
fn a_two_million_row_transaction_streams_in_bounded_memory() {
    let source = PgServer::start().unwrap();
    let target = PgServer::start_with(PgOptions {
        logical: false,
        ..Default::default()
    })
    .unwrap();
    source.create_database("src").unwrap();
    source
        .psql(
            "src",
            "CREATE TABLE wide (id bigint PRIMARY KEY, a text, b text)",
        )
        .unwrap();
    target.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "mem",
        &task_yaml("mem", &source.url("src"), &target.url("dst"), "")
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let run = Running::start(dir.path(), "mem", &["run", task.to_str().unwrap()], &[]);
    wait_until(60, "the load", || {
        phase(&target, "dst", "mem").as_deref() == Some("cdc")
    });
    source
        .psql(
            "src",
            "BEGIN; \
             INSERT INTO wide SELECT g, repeat(md5(g::text), 3), repeat(md5((g + 1)::text), 3) FROM generate_series(1, 2000000) g; \
             UPDATE wide SET a = 'updated' WHERE id % 4 = 0; \
             DELETE FROM wide WHERE id % 10 = 1; \
             COMMIT",
        )
        .unwrap();
    let expected = source.psql("src", "SELECT count(*) FROM wide").unwrap();
    wait_until(600, "the big transaction to be applied", || {
        target
            .psql("dst", "SELECT count(*) FROM wide")
            .ok()
            .as_deref()
            == Some(expected.as_str())
    });
    run.terminate();
    let peak = run.peak_mib();
    let (code, _, err) = run.wait();
    assert_eq!(code, Some(0), "{err}");
    eprintln!("peak RSS while applying the 2M-row transaction: {peak} MiB");
    assert!(peak > 0, "the peak was measured");
    assert!(
        peak < 256,
        "peak RSS {peak} MiB while applying a ~400 MB transaction"
    );
    let v = compare(&source.url("src"), &target.url("dst"), &["public"]);
    assert!(v.ok(), "{}", v.render());
}
