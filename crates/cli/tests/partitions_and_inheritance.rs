//! Partitioned tables (several levels, default partitions, indexes and keys on the parent,
//! foreign keys to a partitioned table) and inheritance load with no row twice and none
//! missing; a partition excluded by name stays behind.

mod common;
use common::*;

const SQL: &str = r#"
CREATE TABLE animals (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE dogs (breed text) INHERITS (animals);
CREATE TABLE cats (indoor boolean) INHERITS (animals);
ALTER TABLE dogs ADD PRIMARY KEY (id);
INSERT INTO animals SELECT g, 'animal ' || g FROM generate_series(1, 100) g;
INSERT INTO dogs SELECT g, 'dog ' || g, 'mutt' FROM generate_series(101, 150) g;
INSERT INTO cats SELECT g, 'cat ' || g, g % 2 = 0 FROM generate_series(151, 175) g;

CREATE TABLE measurements (id bigint NOT NULL, at date NOT NULL, region text NOT NULL, value numeric,
    PRIMARY KEY (id, at, region), UNIQUE (at, id, region)) PARTITION BY RANGE (at);
CREATE TABLE m_2023 PARTITION OF measurements FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE m_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
    PARTITION BY LIST (region);
CREATE TABLE m_2024_eu PARTITION OF m_2024 FOR VALUES IN ('eu');
CREATE TABLE m_2024_rest PARTITION OF m_2024 DEFAULT;
CREATE TABLE m_other PARTITION OF measurements DEFAULT;
CREATE INDEX measurements_value_idx ON measurements (value);
INSERT INTO measurements SELECT g, date '2023-01-01' + (g % 900), (ARRAY['eu', 'us', 'apac'])[1 + g % 3], g / 10.0
  FROM generate_series(1, 30000) g;
CREATE TABLE readings (id serial PRIMARY KEY, m_id bigint, m_at date, m_region text,
    FOREIGN KEY (m_id, m_at, m_region) REFERENCES measurements (id, at, region));
INSERT INTO readings (m_id, m_at, m_region) SELECT id, at, region FROM measurements WHERE id % 10 = 0;
ANALYZE;
"#;

fn count(server: &pgtide_testkit::PgServer, db: &str, sql: &str) -> i64 {
    server.psql(db, sql).unwrap().parse().unwrap()
}

#[test]
fn partitions_and_inheritance_load_every_row_once() {
    let pair = Pair::start();
    pair.source.create_database("src").unwrap();
    pair.source.psql("src", SQL).unwrap();
    pair.target.create_database("all").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "all",
        &task_yaml(
            "parts",
            &pair.source.url("src"),
            &pair.target.url("all"),
            "full_load: { threads: 3, split_threshold: 1MB }\n",
        ),
    );
    run_ok(&task);
    let v = compare(
        &pair.source.url("src"),
        &pair.target.url("all"),
        &["public"],
    );
    assert!(v.ok(), "{}", v.render());
    for sql in [
        "SELECT count(*) FROM animals",
        "SELECT count(*) FROM ONLY animals",
        "SELECT count(*) FROM dogs",
        "SELECT count(*) FROM measurements",
        "SELECT count(*) FROM m_2024",
        "SELECT count(*) FROM readings",
    ] {
        assert_eq!(
            count(&pair.source, "src", sql),
            count(&pair.target, "all", sql),
            "{sql}"
        );
    }
    assert_eq!(
        count(&pair.target, "all", "SELECT count(*) FROM animals"),
        175,
        "no row twice through the parent"
    );
    // The parent's indexes are valid (every partition's index attached) and the foreign key to
    // the partitioned table exists and is validated.
    assert_eq!(
        count(
            &pair.target,
            "all",
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid"
        ),
        0
    );
    // (A foreign key to a partitioned table has one catalog row per referenced partition.)
    let fks = "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated AND conrelid = 'readings'::regclass";
    assert_eq!(
        count(&pair.target, "all", fks),
        count(&pair.source, "src", fks)
    );
    assert!(count(&pair.target, "all", fks) > 0);

    // Excluding one partition by name leaves it (and its rows) behind, nothing else.
    pair.target.create_database("some").unwrap();
    let task = task_file(
        dir.path(),
        "some",
        &task_yaml(
            "some",
            &pair.source.url("src"),
            &pair.target.url("some"),
            "tables: { include: [public.measurements], exclude: [public.m_2024_eu] }\n",
        ),
    );
    run_ok(&task);
    let expected = count(
        &pair.source,
        "src",
        "SELECT count(*) FROM measurements WHERE NOT (at >= '2024-01-01' AND at < '2025-01-01' AND region = 'eu')",
    );
    assert_eq!(
        count(&pair.target, "some", "SELECT count(*) FROM measurements"),
        expected
    );
    assert!(pair.target.psql("some", "SELECT 1 FROM m_2024_eu").is_err());
    assert_eq!(
        count(&pair.target, "some", "SELECT count(*) FROM m_2024_rest"),
        count(&pair.source, "src", "SELECT count(*) FROM m_2024_rest")
    );
}
