//! `pgtide convert` on Pagila: the generated schema applies cleanly to a real MariaDB server,
//! keeps types, keys and foreign keys, and the assessment report names every Pagila object.

mod common;
use common::*;
use pgtide_testkit::datasets::load_pagila;
use pgtide_testkit::{MariaDbServer, PgOptions, PgServer};

#[test]
fn pagila_converts_for_mariadb_with_a_complete_assessment() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    load_pagila(&source, "pagila").unwrap();
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("pagila").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "conv",
        &task_yaml("conv", &source.url("pagila"), &maria.url("pagila"), ""),
    );
    let out_dir = dir.path().join("out");
    let stdout = run_ok_args(&[
        "convert",
        task.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(stdout.contains("convert automatically"), "{stdout}");

    // The DDL applies to MariaDB as generated.
    maria
        .sql_file("pagila", &out_dir.join("schema.sql"))
        .expect("schema.sql applies to MariaDB");
    let tables = maria
        .sql(
            "",
            "SELECT group_concat(table_name ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'pagila'",
        )
        .unwrap();
    assert_eq!(
        tables,
        "actor,address,category,city,country,customer,film,film_actor,film_category,inventory,language,payment,rental,staff,store",
        "one table per Pagila table, partitions merged into payment"
    );
    let film = maria.sql("pagila", "SHOW CREATE TABLE film").unwrap();
    for needle in [
        "enum('G','PG','PG-13','R','NC-17')",
        "`special_features` longtext", // MariaDB shows JSON as longtext with a JSON_VALID check
        "`film_id` int(11) NOT NULL AUTO_INCREMENT",
        "`rental_rate` decimal(4,2) NOT NULL DEFAULT 4.99",
        "PRIMARY KEY (`film_id`)",
        "FOREIGN KEY (`language_id`) REFERENCES `language` (`language_id`)",
        "COLLATE=utf8mb4_bin",
    ] {
        assert!(film.contains(needle), "film: missing {needle:?} in\n{film}");
    }
    let payment = maria.sql("pagila", "SHOW CREATE TABLE payment").unwrap();
    assert!(
        payment.contains("PRIMARY KEY (`payment_date`,`payment_id`)"),
        "{payment}"
    );
    let fks: i64 = maria
        .sql(
            "",
            "SELECT count(*) FROM information_schema.referential_constraints WHERE constraint_schema = 'pagila'",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(fks >= 15, "foreign keys created: {fks}");
    // Data that fits the converted types is accepted (a smoke test of the mapping).
    maria
        .sql(
            "pagila",
            "INSERT INTO language (name, last_update) VALUES ('Klingon', NOW(6)); \
             INSERT INTO film (title, language_id, rating, special_features, `fulltext`) \
             VALUES ('X', LAST_INSERT_ID(), 'PG-13', '[\"Trailers\"]', '''x'':1')",
        )
        .unwrap();

    // The report names every source object.
    let md = std::fs::read_to_string(out_dir.join("assessment.md")).unwrap();
    let html = std::fs::read_to_string(out_dir.join("assessment.html")).unwrap();
    assert!(html.contains("<table>") && html.contains("ACTION REQUIRED"));
    let objects = source
        .psql(
            "pagila",
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = 'public' AND c.relkind IN ('r','p','v','m','S','i') \
             UNION ALL SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND contype <> 'n' \
             UNION ALL SELECT tgname FROM pg_trigger WHERE NOT tgisinternal \
             UNION ALL SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace \
             UNION ALL SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typtype IN ('e','d','c') AND typrelid = 0",
        )
        .unwrap();
    let mut missing = Vec::new();
    for name in objects.lines().filter(|l| !l.is_empty()) {
        // Indexes that implement constraints are reported as the constraint.
        if !md.contains(name) {
            missing.push(name.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "objects missing from the report: {missing:?}"
    );
    for needle in [
        "| view | public.actor_info |",
        "ACTION REQUIRED",
        "| type | public.mpaa_rating | ENUM(...) on each column | converted |",
        "| type | public.year |",
        "film_fulltext_idx",
        "| sequence | public.actor_actor_id_seq | AUTO_INCREMENT | converted |",
    ] {
        assert!(md.contains(needle), "report: missing {needle:?}");
    }
}

#[test]
fn mysql_targets_are_refused_where_not_supported_yet() {
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "m",
        &task_yaml(
            "m",
            "postgresql://u@127.0.0.1:1/db",
            "mysql://u@127.0.0.1:1/db",
            "",
        ),
    );
    let (code, err) = run_err(&task);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("does not support MySQL/MariaDB targets yet")
            && err.contains("pgtide convert"),
        "{err}"
    );
}
