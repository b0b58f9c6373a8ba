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
    for cmd in ["status", "validate", "cleanup"] {
        let o = pgtide(&[cmd, task.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains(&format!(
                "`pgtide {cmd}` does not support MySQL/MariaDB targets yet"
            )),
            "{cmd}: {err}"
        );
    }
    let (code, err) = run_err_args(&["run", task.to_str().unwrap(), "--end-lsn", "0/1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("this task's mode is full-load"), "{err}");
}

/// Pagila moves into MariaDB: every table, every row, values compared in canonical forms.
#[test]
fn pagila_full_load_into_mariadb() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    load_pagila(&source, "pagila").unwrap();
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("pagila").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "load",
        &task_yaml("load", &source.url("pagila"), &maria.url("pagila"), ""),
    );
    let out = run_ok(&task);
    assert!(out.contains("LOAD DATA LOCAL INFILE"), "{out}");
    // Twice: drop-and-create starts over.
    run_ok(&task);

    for (pg_table, my_table) in [
        ("actor", "actor"),
        ("address", "address"),
        ("category", "category"),
        ("city", "city"),
        ("country", "country"),
        ("customer", "customer"),
        ("film", "film"),
        ("film_actor", "film_actor"),
        ("film_category", "film_category"),
        ("inventory", "inventory"),
        ("language", "language"),
        ("payment", "payment"),
        ("rental", "rental"),
        ("staff", "staff"),
        ("store", "store"),
    ] {
        let a = source
            .psql("pagila", &format!("SELECT count(*) FROM public.{pg_table}"))
            .unwrap();
        let b = maria
            .sql("pagila", &format!("SELECT COUNT(*) FROM `{my_table}`"))
            .unwrap();
        assert_eq!(a, b, "{pg_table} rows");
    }
    // Canonical comparisons per type family.
    let checks = [
        // numeric
        (
            "SELECT sum(amount)::text FROM payment",
            "SELECT CAST(SUM(amount) AS CHAR) FROM payment",
        ),
        // timestamptz -> UTC DATETIME(6)
        (
            "SELECT to_char(min(rental_date) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '|' || to_char(max(return_date) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM rental",
            "SELECT CONCAT(DATE_FORMAT(MIN(rental_date), '%Y-%m-%d %H:%i:%s'), '|', DATE_FORMAT(MAX(return_date), '%Y-%m-%d %H:%i:%s')) FROM rental",
        ),
        // boolean
        (
            "SELECT count(*) FILTER (WHERE activebool) FROM customer",
            "SELECT SUM(activebool) FROM customer",
        ),
        // text[] -> JSON
        (
            "SELECT count(*) FROM film WHERE 'Trailers' = ANY(special_features)",
            "SELECT COUNT(*) FROM film WHERE JSON_CONTAINS(special_features, '\"Trailers\"')",
        ),
        // enum
        (
            "SELECT string_agg(rating::text || ':' || n, ',' ORDER BY rating::text) FROM (SELECT rating, count(*) n FROM film GROUP BY rating) s",
            "SELECT GROUP_CONCAT(CONCAT(rating, ':', n) ORDER BY CAST(rating AS CHAR) SEPARATOR ',') FROM (SELECT rating, COUNT(*) n FROM film GROUP BY rating) s",
        ),
        // bytea
        (
            "SELECT coalesce(sum(length(picture)), 0)::text FROM staff",
            "SELECT CAST(COALESCE(SUM(LENGTH(picture)), 0) AS CHAR) FROM staff",
        ),
        // text with non-ASCII, md5 over all titles and descriptions
        (
            "SELECT md5(string_agg(title || coalesce(description, ''), '|' ORDER BY film_id)) FROM film",
            "SELECT MD5(GROUP_CONCAT(CONCAT(title, COALESCE(description, '')) ORDER BY film_id SEPARATOR '|')) FROM film",
        ),
    ];
    maria
        .sql("", "SET GLOBAL group_concat_max_len = 100000000")
        .unwrap();
    for (pg, my) in checks {
        let a = source
            .psql("pagila", &format!("SET TimeZone = 'UTC'; {pg}"))
            .unwrap();
        let b = maria.sql("pagila", my).unwrap();
        assert_eq!(a, b, "{pg}");
    }
    // Foreign keys were added with checks on.
    let fks: i64 = maria
        .sql("", "SELECT COUNT(*) FROM information_schema.referential_constraints WHERE constraint_schema = 'pagila'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(fks >= 15, "{fks}");
}

/// A value MySQL cannot hold stops the load and rolls the table back; nothing is altered.
#[test]
fn a_value_mysql_cannot_hold_stops_the_load() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    source.create_database("src").unwrap();
    source
        .psql(
            "src",
            "CREATE TABLE public.events (id int PRIMARY KEY, at date, note text); \
             INSERT INTO public.events VALUES (1, '2024-01-01', 'ok'), (2, '0044-03-15 BC', 'caesar'), (3, 'infinity', 'later');",
        )
        .unwrap();
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "bad",
        &task_yaml("bad", &source.url("src"), &maria.url("dst"), ""),
    );
    let (code, err) = run_err(&task);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("rolled back") && err.contains("`events`"),
        "{err}"
    );
    assert!(
        !err.contains("0044") && !err.contains("caesar"),
        "no row values in errors: {err}"
    );
    assert_eq!(
        maria.sql("dst", "SELECT COUNT(*) FROM events").unwrap(),
        "0"
    );
}

/// `pgtide check` with a MySQL target: the source's prerequisites as for PostgreSQL, then the
/// target's server, load method, TLS, type conversion and expected tables.
#[test]
fn check_reports_a_mysql_targets_prerequisites() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    load_pagila(&source, "pagila").unwrap();
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("pagila").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "chk",
        &task_yaml("chk", &source.url("pagila"), &maria.url("pagila"), ""),
    );
    let o = pgtide(&["check", task.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for needle in [
        "target MySQL/MariaDB",
        "LOAD DATA LOCAL INFILE (local_infile is on)",
        "columns convert with a caveat",
        "not encrypted (sslmode=",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    maria.sql("", "SET GLOBAL local_infile = 0").unwrap();
    let strict = task_file(
        dir.path(),
        "chk2",
        &format!(
            "{}full_load: {{ table_preparation: truncate }}\nmysql: {{ load_method: load-data }}\n",
            task_yaml("chk2", &source.url("pagila"), &maria.url("pagila"), "")
        ),
    );
    let o = pgtide(&["check", strict.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("local_infile off"), "{out}");
    assert!(
        out.contains("`film`") && out.contains("does not exist on the target"),
        "{out}"
    );
}
