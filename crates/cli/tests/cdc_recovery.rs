//! Exactly once across crashes and outages: pgtide dies during the full load, in the middle of
//! a batch, and between the target's commit and the confirmation to the source; the source
//! restarts; the target is down for 30 seconds. Every time, a restart ends with a target that is
//! identical to the source, with no change lost and none applied twice.

mod common;
use common::*;
use pgtide_testkit::{PgOptions, PgServer};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const SCHEMA: &str = "
CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL, note text);
INSERT INTO acct SELECT g, 0, repeat('n', g % 50) FROM generate_series(1, 1000) g;
CREATE TABLE ledger (id bigserial PRIMARY KEY, acct int NOT NULL, delta int NOT NULL, at timestamptz DEFAULT now());
CREATE TABLE filler (id int PRIMARY KEY, payload text);
INSERT INTO filler SELECT g, md5(g::text) || repeat('f', 200) FROM generate_series(1, 300000) g;
ANALYZE;
";

/// Every transaction moves money between two accounts and records it: if one change were lost
/// or applied twice, the balances would not sum to zero and the ledger would not match.
const WORKLOAD: &str = "\\set a random(1, 1000)
\\set b random(1, 1000)
BEGIN;
UPDATE acct SET balance = balance - 7 WHERE id = :a;
UPDATE acct SET balance = balance + 7 WHERE id = :b;
INSERT INTO ledger (acct, delta) VALUES (:a, -7), (:b, 7);
COMMIT;
";

fn workload(source: &PgServer, dir: &Path, seconds: u32) -> Child {
    let script = dir.join("workload.sql");
    std::fs::write(&script, WORKLOAD).unwrap();
    Command::new(source.bin().program("pgbench"))
        .args([
            "-h",
            source.socket_dir().to_str().unwrap(),
            "-p",
            &source.port().to_string(),
            "-U",
            "postgres",
            "-n",
        ])
        .args([
            "-c",
            "2",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
            script.to_str().unwrap(),
            "src",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn setup() -> (PgServer, PgServer, tempfile::TempDir, std::path::PathBuf) {
    let source = PgServer::start().unwrap();
    let target = PgServer::start_with(PgOptions {
        logical: false,
        ..Default::default()
    })
    .unwrap();
    source.create_database("src").unwrap();
    source.psql("src", SCHEMA).unwrap();
    target.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "rc",
        &task_yaml(
            "rc",
            &source.url("src"),
            &target.url("dst"),
            "full_load: { threads: 2, split_threshold: 1MB }\n",
        )
        .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    (source, target, dir, task)
}

fn finish_and_compare(source: &PgServer, target: &PgServer, task: &Path) {
    let end = current_lsn(source, "src");
    let out = run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert!(out.contains("stopped at end LSN"), "{out}");
    let v = compare(&source.url("src"), &target.url("dst"), &["public"]);
    assert!(v.ok(), "{}", v.render());
    assert_eq!(
        target.psql("dst", "SELECT sum(balance) FROM acct").unwrap(),
        "0"
    );
    // Replaying the same range again changes nothing.
    let before = target
        .psql(
            "dst",
            "SELECT sum(inserts + updates + deletes) FROM pgtide.cdc_table_stats",
        )
        .unwrap();
    let out = run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert!(out.contains("applied 0 source transactions"), "{out}");
    assert_eq!(
        target
            .psql(
                "dst",
                "SELECT sum(inserts + updates + deletes) FROM pgtide.cdc_table_stats"
            )
            .unwrap(),
        before
    );
    let v = compare(&source.url("src"), &target.url("dst"), &["public"]);
    assert!(v.ok(), "{}", v.render());
}

/// Run pgtide until a failpoint aborts it.
fn crash_at(dir: &Path, task: &Path, point: &str) -> String {
    let run = Running::start(
        dir,
        point,
        &["run", task.to_str().unwrap()],
        &[("PGTIDE_FAILPOINT", point)],
    );
    let (code, _, err) = run.wait();
    assert_eq!(
        code, None,
        "pgtide should have been aborted at {point}:\n{err}"
    );
    assert!(err.contains(&format!("failpoint {point} reached")), "{err}");
    err
}

#[test]
fn crashes_at_every_stage_are_recovered_exactly_once() {
    let (source, target, dir, task) = setup();
    let mut bench = workload(&source, dir.path(), 40);

    // 1. Dies during the full load, after its first chunk committed.
    crash_at(dir.path(), &task, "load-after-chunk");
    assert_ne!(phase(&target, "dst", "rc").as_deref(), Some("cdc"));
    // The next run starts the load over from a new slot, and streams.
    crash_at(dir.path(), &task, "apply-before-commit");
    assert_eq!(
        phase(&target, "dst", "rc").as_deref(),
        Some("cdc"),
        "the second run finished its load"
    );
    // 2. Dies in the middle of a batch (written, not committed): the batch is redone.
    crash_at(dir.path(), &task, "apply-before-commit");
    // 3. Dies after the target committed and before the source was told: the server sends those
    // transactions again and they are skipped.
    crash_at(dir.path(), &task, "cdc-after-commit");
    crash_at(dir.path(), &task, "cdc-after-commit");
    // 4. A plain kill -9 while streaming.
    let mut run = Running::start(dir.path(), "kill9", &["run", task.to_str().unwrap()], &[]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    run.kill();
    run.wait();

    assert!(bench.wait().unwrap().success());
    finish_and_compare(&source, &target, &task);
}

#[test]
fn source_restart_and_target_outage_are_survived() {
    let (mut source, mut target, dir, task) = setup();
    let mut run = Running::start(dir.path(), "long", &["run", task.to_str().unwrap()], &[]);
    wait_until(120, "the full load", || {
        phase(&target, "dst", "rc").as_deref() == Some("cdc")
    });
    let mut bench = workload(&source, dir.path(), 5);
    assert!(bench.wait().unwrap().success());

    // The source crashes and comes back.
    source.crash();
    source.restart().unwrap();
    let mut bench = workload(&source, dir.path(), 5);
    assert!(bench.wait().unwrap().success());
    // The target is down for 30 seconds while the source keeps changing.
    target.stop();
    let mut bench = workload(&source, dir.path(), 5);
    assert!(bench.wait().unwrap().success());
    std::thread::sleep(std::time::Duration::from_secs(25));
    assert!(
        run.running(),
        "pgtide keeps retrying while the target is down"
    );
    target.restart().unwrap();
    let mut bench = workload(&source, dir.path(), 5);
    assert!(bench.wait().unwrap().success());
    // The target crashes under load: batches committed without waiting for its disk may be
    // lost with their checkpoint, and the source must not have been told of them.
    let mut bench = workload(&source, dir.path(), 5);
    std::thread::sleep(std::time::Duration::from_secs(3));
    target.crash();
    target.restart().unwrap();
    assert!(bench.wait().unwrap().success());

    // The running pgtide catches up by itself after the outages.
    wait_until(180, "pgtide to catch up after the outages", || {
        target.psql("dst", "SELECT count(*) FROM ledger").ok()
            == source.psql("src", "SELECT count(*) FROM ledger").ok()
    });
    run.terminate();
    let (code, out, err) = run.wait();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("reconnect") || err.contains("WARN"),
        "the outages were noticed:\n{err}"
    );
    finish_and_compare(&source, &target, &task);
}

/// The task slot's confirmed position.
fn slot_confirmed(source: &PgServer) -> String {
    source
        .psql(
            "src",
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'pgtide_rc'",
        )
        .unwrap()
}

/// How far the target's checkpoint says the source is applied or confirmed.
fn target_durable(target: &PgServer) -> String {
    target
        .psql(
            "dst",
            "SELECT greatest(end_lsn, confirmed_lsn) FROM pgtide.cdc_progress WHERE task = 'rc'",
        )
        .unwrap()
}

/// The slot's confirmed position never passes what the target made durable.
fn assert_slot_not_ahead(source: &PgServer, target: &PgServer) {
    let confirmed = slot_confirmed(source);
    let durable = target_durable(target);
    let ahead = source
        .psql(
            "src",
            &format!("SELECT '{confirmed}'::pg_lsn > '{durable}'::pg_lsn"),
        )
        .unwrap();
    assert_eq!(
        ahead, "f",
        "slot confirmed at {confirmed}, target durable at {durable}"
    );
}

/// A backlog is drained through the SQL decoding interface in chunks (1 MB of WAL each here,
/// so there are many chunk boundaries), and that path is exactly-once too: crashes after a
/// chunk committed and before the slot moved, in the middle of a batch, a stop request and an
/// end LSN inside the backlog.
#[test]
fn a_backlog_drained_in_chunks_survives_crashes_exactly_once() {
    let (source, target, dir, task) = setup();
    let yaml = std::fs::read_to_string(&task).unwrap().replace(
        "full_load: {",
        "cdc: { catch_up_from_mb: 0, catch_up_chunk_mb: 1, max_batch_changes: 500 }\nfull_load: {",
    );
    std::fs::write(&task, yaml).unwrap();
    let end = current_lsn(&source, "src");
    run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert_eq!(phase(&target, "dst", "rc").as_deref(), Some("cdc"));

    // A backlog builds up while pgtide is not running.
    let mut bench = workload(&source, dir.path(), 8);
    assert!(bench.wait().unwrap().success());
    let err = crash_at(dir.path(), &task, "catch-up-before-advance");
    assert!(
        err.contains("catching up through the SQL decoding interface"),
        "{err}"
    );
    assert_slot_not_ahead(&source, &target);
    crash_at(dir.path(), &task, "catch-up-before-advance");
    assert_slot_not_ahead(&source, &target);
    crash_at(dir.path(), &task, "apply-before-commit");
    assert_slot_not_ahead(&source, &target);

    // An end LSN in the middle of the backlog: exactly the transactions before it.
    let mut bench = workload(&source, dir.path(), 4);
    assert!(bench.wait().unwrap().success());
    let middle = current_lsn(&source, "src");
    let ledger_at_middle = source.psql("src", "SELECT count(*) FROM ledger").unwrap();
    let mut bench = workload(&source, dir.path(), 4);
    assert!(bench.wait().unwrap().success());
    let out = run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &middle]);
    assert!(out.contains("stopped at end LSN"), "{out}");
    assert_eq!(
        target.psql("dst", "SELECT count(*) FROM ledger").unwrap(),
        ledger_at_middle
    );
    assert_eq!(
        target.psql("dst", "SELECT sum(balance) FROM acct").unwrap(),
        "0"
    );
    // The slot was confirmed (through the replication protocol) exactly as far as the target.
    assert_eq!(slot_confirmed(&source), target_durable(&target));

    // A stop request while catching up ends cleanly with whole transactions.
    let mut bench = workload(&source, dir.path(), 6);
    assert!(bench.wait().unwrap().success());
    let run = Running::start(dir.path(), "stop", &["run", task.to_str().unwrap()], &[]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    run.terminate();
    let (code, out, err) = run.wait();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        target.psql("dst", "SELECT sum(balance) FROM acct").unwrap(),
        "0"
    );
    assert_slot_not_ahead(&source, &target);

    finish_and_compare(&source, &target, &task);
}
