//! Pagila (partitioned payment, enums, domains, a non-ASCII identifier, arrays, tsvector,
//! bytea, views, a materialized view, functions, triggers) loads into an empty target and
//! every table, sequence and schema object matches the source.

mod common;
use common::*;
use pgtide_testkit::datasets;

#[test]
fn pagila_full_load_matches_the_source_and_reruns_cleanly() {
    let pair = Pair::start();
    datasets::load_pagila(&pair.source, "pagila").unwrap();
    // Pagila creates its materialized view WITH NO DATA; populate it so the load must refresh it.
    pair.source
        .psql(
            "pagila",
            "REFRESH MATERIALIZED VIEW public.rental_by_category",
        )
        .unwrap();
    pair.target.create_database("pagila").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "pagila",
        &task_yaml(
            "pagila",
            &pair.source.url("pagila"),
            &pair.target.url("pagila"),
            "full_load: { threads: 3 }\n",
        ),
    );
    let report = run_ok(&task);
    assert!(report.contains("payment_p2022_01"), "{report}");

    let v = compare(
        &pair.source.url("pagila"),
        &pair.target.url("pagila"),
        &["public"],
    );
    assert!(v.ok(), "{}", v.render());
    // Every table with storage, including the seven payment partitions, was compared.
    assert!(v.tables.len() >= 21, "{}", v.render());
    let payment_rows: i64 = v
        .tables
        .iter()
        .filter(|t| t.name.name.starts_with("payment_p"))
        .map(|t| t.target_rows)
        .sum();
    let source_payment: i64 = pair
        .source
        .psql("pagila", "SELECT count(*) FROM payment")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        payment_rows, source_payment,
        "no payment row twice, none missing"
    );
    let target_payment: i64 = pair
        .target
        .psql("pagila", "SELECT count(*) FROM payment")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        target_payment, source_payment,
        "rows are reachable through the partitioned parent"
    );
    // The schema came along: views, the refreshed materialized view, functions, triggers,
    // the non-ASCII domain, and foreign keys that are valid.
    for (what, sql) in [
        (
            "views",
            "SELECT count(*) FROM pg_views WHERE schemaname = 'public'",
        ),
        (
            "matview rows",
            "SELECT count(*) FROM public.rental_by_category",
        ),
        (
            "functions",
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'",
        ),
        (
            "triggers",
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal",
        ),
        (
            "domain",
            "SELECT count(*) FROM pg_type WHERE typname = 'bıgınt'",
        ),
        (
            "valid fks",
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated AND connamespace = 'public'::regnamespace",
        ),
        (
            "valid indexes",
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'public'::regnamespace AND i.indisvalid",
        ),
    ] {
        let s = pair.source.psql("pagila", sql).unwrap();
        let t = pair.target.psql("pagila", sql).unwrap();
        assert_eq!(s, t, "{what}");
        assert_ne!(t, "0", "{what}");
    }
    // The trigger that maintains film.fulltext exists and fires on the target.
    pair.target
        .psql(
            "pagila",
            "UPDATE film SET description = 'A zebra story' WHERE film_id = 1",
        )
        .unwrap();
    let hit = pair
        .target
        .psql(
            "pagila",
            "SELECT fulltext @@ to_tsquery('zebra') FROM film WHERE film_id = 1",
        )
        .unwrap();
    assert_eq!(hit, "t");
    // The state says done, per table ready.
    let states = pair
        .target
        .psql(
            "pagila",
            "SELECT DISTINCT state FROM pgtide.load_table WHERE task = 'pagila'",
        )
        .unwrap();
    assert_eq!(states, "ready");

    // A second run of a finished task is a fresh drop-and-create that ends identical again;
    // this one builds primary keys before the rows (partitioned ones included, with their
    // partitions' indexes attached after the load).
    pair.target
        .psql(
            "pagila",
            "DELETE FROM public.payment_p2022_03 WHERE payment_id % 2 = 0",
        )
        .unwrap();
    let task = task_file(
        dir.path(),
        "pagila",
        &task_yaml(
            "pagila",
            &pair.source.url("pagila"),
            &pair.target.url("pagila"),
            "full_load: { threads: 2, primary_keys: before-load }\n",
        ),
    );
    let report = run_ok(&task);
    assert!(!report.contains("(resumed)"), "{report}");
    let v = compare(
        &pair.source.url("pagila"),
        &pair.target.url("pagila"),
        &["public"],
    );
    assert!(v.ok(), "{}", v.render());
}
