//! Pagila into MariaDB with `full-load-and-cdc` under a concurrent workload: inserts, updates
//! of every type family (booleans, arrays → JSON, bytea, enums, timestamptz), primary-key
//! updates, deletes across partitions, a TRUNCATE, rolled-back savepoints. The first run is
//! killed with SIGKILL while streaming; the second resumes from the checkpoint and stops at
//! an end LSN. Source and target then agree row for row under a canonical comparison.

mod common;
use common::*;
use pgtide_testkit::datasets::load_pagila;
use pgtide_testkit::{MariaDbServer, PgOptions, PgServer};

const EXTRA: &str = r#"
CREATE TABLE scratch (id serial PRIMARY KEY, note text, at timestamptz, flags boolean[], nums int[], data bytea, tz timetz);
INSERT INTO scratch (note, at, flags, nums, data, tz)
  SELECT 'n' || g, '2021-06-01 12:00:00+02'::timestamptz + g * interval '1 hour', ARRAY[g % 2 = 0, true], ARRAY[g, g * 2],
         decode(md5(g::text), 'hex'), '10:00:00+05'
  FROM generate_series(1, 100) g;
"#;

fn dml(server: &PgServer, round: u32) {
    let sql = format!(
        r#"
INSERT INTO rental (rental_date, inventory_id, customer_id, staff_id) VALUES (now(), {inv}, {cust}, 1);
INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date)
  VALUES ({cust}, 1, (SELECT max(rental_id) FROM rental), 4.99, '2022-03-15 10:00:00.123456+00');
UPDATE film SET special_features = ARRAY['Trailers', 'Round {round}', 'with "quotes", commas\and backslash'],
  rating = 'NC-17', rental_rate = rental_rate + 1 WHERE film_id = {film};
UPDATE staff SET picture = decode(repeat(md5('{round}'), 40), 'hex'), active = NOT active WHERE staff_id = 1;
UPDATE customer SET activebool = NOT activebool, email = NULL WHERE customer_id = {cust};
UPDATE actor SET actor_id = actor_id + 100000 WHERE actor_id = {actor};
DELETE FROM payment WHERE payment_id IN (SELECT payment_id FROM payment_p2022_02 ORDER BY payment_id LIMIT 3);
UPDATE payment SET payment_date = '2022-04-02 08:00:00+00' WHERE payment_id = (SELECT min(payment_id) FROM payment_p2022_01);
BEGIN;
INSERT INTO scratch (note, at, flags, nums, data) VALUES ('kept {round}', now(), '{{}}', ARRAY[{round}], '\x00ff');
SAVEPOINT a;
INSERT INTO scratch (note) VALUES ('rolled back {round}');
ROLLBACK TO SAVEPOINT a;
UPDATE scratch SET nums = nums || {round}, tz = '23:59:59-08' WHERE id % 7 = {m};
DELETE FROM scratch WHERE id = {del};
COMMIT;
"#,
        inv = 1 + round * 7,
        cust = 1 + round * 3,
        film = 1 + round * 11,
        actor = 1 + round,
        m = round % 7,
        del = 50 + round,
        round = round
    );
    server.psql("src", &sql).unwrap();
    if round == 5 {
        server
            .psql(
                "src",
                "TRUNCATE scratch; INSERT INTO scratch (note, flags) VALUES ('after truncate', '{NULL,false}')",
            )
            .unwrap();
    }
}

#[test]
fn pagila_full_load_and_cdc_into_mariadb_survives_a_kill_and_ends_identical() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    load_pagila(&source, "src").unwrap();
    source.psql("src", EXTRA).unwrap();
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("pagila").unwrap();
    maria
        .sql("", "SET GLOBAL group_concat_max_len = 1000000000")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "my",
        &task_yaml(
            "my",
            &source.url("src"),
            &maria.url("pagila"),
            "full_load: { threads: 2 }\n",
        )
        .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );

    dml(&source, 0);
    let mut run = Running::start(dir.path(), "first", &["run", task.to_str().unwrap()], &[]);
    for round in 1..=3 {
        dml(&source, round);
    }
    wait_until(240, "the full load into MariaDB to finish", || {
        maria_phase(&maria, "pagila", "my").as_deref() == Some("cdc")
    });
    for round in 4..=6 {
        dml(&source, round);
    }
    // Let it apply some of the stream, then kill it without a chance to clean up.
    std::thread::sleep(std::time::Duration::from_secs(2));
    run.kill();
    let (_, out, err) = run.wait();
    assert!(
        !err.contains("ERROR"),
        "first run failed before the kill\nstdout:\n{out}\nstderr:\n{err}"
    );
    for round in 7..=9 {
        dml(&source, round);
    }
    let end = current_lsn(&source, "src");
    let out = run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert!(out.contains(&format!("stopped at end LSN {end}")), "{out}");

    for table in [
        "actor",
        "address",
        "category",
        "city",
        "country",
        "customer",
        "film",
        "film_actor",
        "film_category",
        "inventory",
        "language",
        "payment",
        "rental",
        "staff",
        "store",
        "scratch",
    ] {
        let (a, b) = digests(&source, "src", &maria, "pagila", table);
        assert_eq!(a, b, "{table}: source and MariaDB differ");
    }
    // The changes really went through the stream (not only the load).
    assert_eq!(
        maria
            .sql(
                "pagila",
                "SELECT note FROM scratch WHERE note = 'after truncate'"
            )
            .unwrap(),
        "after truncate"
    );
    assert_eq!(
        maria
            .sql(
                "pagila",
                "SELECT COUNT(*) FROM actor WHERE actor_id > 100000"
            )
            .unwrap(),
        "10"
    );
}

/// A value MySQL cannot hold, arriving in the stream, stops the task without applying it and
/// without quoting it; the checkpoint stays before it.
#[test]
fn a_streamed_value_mysql_cannot_hold_stops_the_task() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    source.create_database("src").unwrap();
    source
        .psql(
            "src",
            "CREATE TABLE public.events (id int PRIMARY KEY, at date, note text); \
             INSERT INTO public.events VALUES (1, '2024-01-01', 'ok');",
        )
        .unwrap();
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("pagila").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "bad",
        &task_yaml("bad", &source.url("src"), &maria.url("pagila"), "")
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let run = Running::start(dir.path(), "first", &["run", task.to_str().unwrap()], &[]);
    wait_until(120, "streaming to start", || {
        maria_phase(&maria, "pagila", "bad").as_deref() == Some("cdc")
    });
    source
        .psql(
            "src",
            "INSERT INTO public.events VALUES (2, '2024-02-02', 'fine'); \
             INSERT INTO public.events VALUES (3, 'infinity', 'caesar');",
        )
        .unwrap();
    let end = current_lsn(&source, "src");
    let mut run = run;
    wait_until(60, "the task to stop", || !run.running());
    let (code, _out, err) = run.wait();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("events.at") && err.contains("infinite"),
        "{err}"
    );
    assert!(!err.contains("caesar"), "no row values in errors: {err}");
    // The transaction holding the bad value was not applied (neither of its rows).
    assert_eq!(
        maria.sql("pagila", "SELECT COUNT(*) FROM events").unwrap(),
        "1"
    );
    // Fix it on the source: the next run still stops on it (nothing is skipped silently).
    let (code, err) = run_err_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);
    assert_eq!(code, 1, "{err}");
}
