//! full-load-and-cdc with a workload running during the full load: pgbench plus DML on Pagila
//! (inserts, updates of TOASTed rows that leave the TOASTed value unchanged, primary-key
//! updates, deletes, TRUNCATE, subtransactions rolled back to a savepoint, interleaved long
//! transactions that commit out of start order, and one 2M-row transaction). After a graceful
//! stop and a resumed run up to `--end-lsn`, source and target are identical, table by table.

mod common;
use common::*;
use pgtide_testkit::{PgOptions, PgServer, datasets};
use std::process::{Command, Stdio};

const EXTRA: &str = r#"
CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
-- Incompressible bodies of 20 kB are stored out of line (TOASTed).
INSERT INTO docs SELECT g, 'doc ' || g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 625) i)
  FROM generate_series(1, 50) g;
CREATE TABLE scratch (id serial PRIMARY KEY, note text);
INSERT INTO scratch (note) SELECT 'n' || g FROM generate_series(1, 100) g;
CREATE TABLE bulk (id bigint PRIMARY KEY, v text);
"#;

fn dml(server: &PgServer, round: u32) {
    let sql = format!(
        r#"
INSERT INTO rental (rental_date, inventory_id, customer_id, staff_id) VALUES (now(), {inv}, {cust}, 1);
INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date)
  VALUES ({cust}, 1, (SELECT max(rental_id) FROM rental), 4.99, '2022-03-15 10:00:00+00');
UPDATE docs SET title = 'retitled {round}' WHERE id % 5 = {m};
UPDATE actor SET actor_id = actor_id + 100000 WHERE actor_id = {actor};
DELETE FROM payment WHERE payment_id IN (SELECT payment_id FROM payment_p2022_02 ORDER BY payment_id LIMIT 3);
BEGIN;
INSERT INTO scratch (note) VALUES ('kept {round}');
SAVEPOINT a;
INSERT INTO scratch (note) VALUES ('rolled back {round}');
UPDATE customer SET email = 'rolled-back@example.com' WHERE customer_id < 50;
ROLLBACK TO SAVEPOINT a;
UPDATE customer SET activebool = NOT activebool WHERE customer_id = {cust};
COMMIT;
"#,
        inv = 1 + round * 7,
        cust = 1 + round * 3,
        m = round % 5,
        actor = 1 + round,
        round = round
    );
    server.psql("src", &sql).unwrap();
    if round % 4 == 3 {
        server.psql("src", "TRUNCATE scratch RESTART IDENTITY; INSERT INTO scratch (note) VALUES ('after truncate')").unwrap();
    }
}

/// Two transactions that start in one order and commit in the other.
fn interleaved(server: &PgServer, round: u32) {
    let psql = |sql: String| {
        Command::new(server.bin().program("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(server.socket_dir())
            .args([
                "-p",
                &server.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "src",
                "-c",
                &sql,
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    // The first starts, holds its transaction open for a second, and commits last.
    let mut first = psql(format!(
        "BEGIN; INSERT INTO scratch (note) VALUES ('first started {round}'); SELECT pg_sleep(1); \
         INSERT INTO scratch (note) VALUES ('first committed {round}'); COMMIT;"
    ));
    std::thread::sleep(std::time::Duration::from_millis(200));
    server
        .psql(
            "src",
            &format!("INSERT INTO scratch (note) VALUES ('second {round}')"),
        )
        .unwrap();
    assert!(first.wait().unwrap().success());
}

#[test]
fn full_load_and_cdc_under_concurrent_workload_ends_identical() {
    let source = PgServer::start_with(PgOptions {
        // Small enough that the 2M-row transaction is streamed while in progress.
        settings: vec![("logical_decoding_work_mem".into(), "'1MB'".into())],
        ..Default::default()
    })
    .unwrap();
    let target = PgServer::start_with(PgOptions {
        logical: false,
        ..Default::default()
    })
    .unwrap();
    datasets::load_pagila(&source, "src").unwrap();
    source.psql("src", EXTRA).unwrap();
    let pgbench = |args: &[&str]| {
        Command::new(source.bin().program("pgbench"))
            .args([
                "-h",
                source.socket_dir().to_str().unwrap(),
                "-p",
                &source.port().to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("src")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(pgbench(&["-i", "-q", "-s", "1"]).success());
    target.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "wl",
        &task_yaml(
            "wl",
            &source.url("src"),
            &target.url("dst"),
            "full_load: { threads: 2 }\ncdc: { tables_without_key: replica-identity-full }\n",
        )
        .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );

    // The workload starts before pgtide and runs through its full load and beyond.
    let mut bench = Command::new(source.bin().program("pgbench"))
        .args([
            "-h",
            source.socket_dir().to_str().unwrap(),
            "-p",
            &source.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["-c", "2", "-j", "2", "-T", "12", "-n", "src"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    dml(&source, 0);
    let run = Running::start(dir.path(), "first", &["run", task.to_str().unwrap()], &[]);
    for round in 1..=6 {
        dml(&source, round);
        if round == 2 {
            interleaved(&source, round);
            source
                .psql(
                    "src",
                    "INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 2000000) g",
                )
                .unwrap();
        }
    }
    assert!(bench.wait().unwrap().success());
    interleaved(&source, 99);
    let end = current_lsn(&source, "src");

    // The first run streams until asked to stop; a second run resumes and stops at the end LSN.
    wait_until(240, "the full load to finish", || {
        phase(&target, "dst", "wl").as_deref() == Some("cdc")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    run.terminate();
    let (code, out, err) = run.wait();
    assert_eq!(
        code,
        Some(0),
        "graceful stop\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(out.contains("stopped on request"), "{out}");
    let out = run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert!(out.contains(&format!("stopped at end LSN {end}")), "{out}");

    let v = compare(&source.url("src"), &target.url("dst"), &["public"]);
    assert!(v.ok(), "{}", v.render());
    let bulk: i64 = target
        .psql("dst", "SELECT count(*) FROM bulk")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(bulk, 2_000_000);
    // The TOASTed bodies were left alone by the title updates.
    assert_eq!(
        target
            .psql(
                "dst",
                "SELECT count(*) FROM docs WHERE length(body) = 20000 AND title LIKE 'retitled%'"
            )
            .unwrap(),
        source
            .psql(
                "src",
                "SELECT count(*) FROM docs WHERE length(body) = 20000 AND title LIKE 'retitled%'"
            )
            .unwrap()
    );
}
