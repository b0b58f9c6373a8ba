//! Round trip into MariaDB per type family, with edge values, through both paths: rows that
//! exist before the task starts go through the full load (LOAD DATA), the same values inserted
//! and updated while streaming go through CDC. Both must equal the source under a canonical
//! comparison.

mod common;
use common::*;
use pgtide_testkit::{MariaDbServer, PgOptions, PgServer};

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "fine"');
CREATE TABLE t (
  id int PRIMARY KEY,
  i2 smallint, i4 int, i8 bigint,
  n numeric(12,4), nu numeric, r real, d double precision, m money,
  tx text, vc varchar(20), ch char(5),
  b bytea, bo boolean,
  da date, ts timestamp, tstz timestamptz, ti time, titz timetz, iv interval,
  u uuid, j json, jb jsonb, xs text[], ns int[], bs boolean[],
  e mood, ip inet, cidr_ cidr, mac macaddr, pt point, rg int4range, bt bit(8), vb varbit(16),
  tv tsvector
);
"#;

/// Edge values per family; `{id}` is replaced.
const ROWS: [&str; 3] = [
    r#"({id}, -32768, -2147483648, -9223372036854775808, -99999999.9999, 12345678901234567890.123456789, 1.5, -0.000244140625, '-1234.56',
       E'tab\there\nnewline \\ backslash, ünïcødé 🐘 and ''quotes''', 'twenty chars exactly', 'ab',
       '\x00ff0a5c09', true,
       '1000-01-01', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:00+00', '00:00:00', '23:59:59.999999+14', '1 year 2 mons -3 days 04:05:06.789',
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2, {"b": null}], "c": "\u00e9"}', '{"z": 1, "a": "x"}',
       ARRAY['', 'NULL', NULL, 'comma,here', 'quote"here', E'back\\slash', '{braces}'], ARRAY[[1,2],[3,4]], ARRAY[true,false,NULL],
       'it''s "fine"', '2001:db8::1/64', '10.0.0.0/8', '08:00:2b:01:02:03', '(1.5,-2)', '[1,10)', B'10100101', B'101',
       'a:1 fat:2 rat:3')"#,
    r#"({id}, 32767, 2147483647, 9223372036854775807, 99999999.9999, -0.000000000000000000000000000001, -3.25, 1e15, '92233720368547758.07',
       '', '', '',
       '', false,
       '2024-02-29', '2000-01-01 00:00:00', '2024-03-31 01:30:00.5-07', '24:00:00', '00:00:00-12', '0',
       '00000000-0000-0000-0000-000000000000', '[]', '[]',
       '{}', '{}', '{}',
       'sad', '0.0.0.0', '::/0', '00:00:00:00:00:00', '(0,0)', 'empty', B'00000000', B'',
       '')"#,
    r#"({id}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL,
       NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL)"#,
];

fn insert(source: &PgServer, base: u32) {
    let values: Vec<String> = ROWS
        .iter()
        .enumerate()
        .map(|(i, r)| r.replace("{id}", &(base + i as u32).to_string()))
        .collect();
    source
        .psql(
            "src",
            &format!("INSERT INTO t VALUES {}", values.join(", ")),
        )
        .unwrap();
}

#[test]
fn every_type_family_round_trips_into_mariadb_through_load_and_stream() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    source.create_database("src").unwrap();
    source.psql("src", SCHEMA).unwrap();
    insert(&source, 1);
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("dst").unwrap();
    maria
        .sql("", "SET GLOBAL group_concat_max_len = 1000000000")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "ty",
        &task_yaml("ty", &source.url("src"), &maria.url("dst"), "")
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let mut run = Running::start(dir.path(), "first", &["run", task.to_str().unwrap()], &[]);
    wait_until(120, "streaming to start", || {
        maria_phase(&maria, "dst", "ty").as_deref() == Some("cdc")
    });
    // The stream path: the same values inserted, then rows updated into each other's values
    // (every column changes, NULL to value and back), one deleted.
    insert(&source, 101);
    source
        .psql(
            "src",
            "UPDATE t SET (i2, i4, i8, n, nu, r, d, m, tx, vc, ch, b, bo, da, ts, tstz, ti, titz, iv, u, j, jb, xs, ns, bs, e, ip, cidr_, mac, pt, rg, bt, vb, tv) = \
               (SELECT i2, i4, i8, n, nu, r, d, m, tx, vc, ch, b, bo, da, ts, tstz, ti, titz, iv, u, j, jb, xs, ns, bs, e, ip, cidr_, mac, pt, rg, bt, vb, tv FROM t WHERE id = 101) \
             WHERE id IN (102, 103); \
             DELETE FROM t WHERE id = 3;",
        )
        .unwrap();
    let end = current_lsn(&source, "src");
    assert!(run.running(), "the first run is streaming");
    run.terminate();
    let (code, out, err) = run.wait();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    run_ok_args(&["run", task.to_str().unwrap(), "--end-lsn", &end]);

    assert_eq!(
        maria.sql("dst", "SELECT COUNT(*) FROM t").unwrap(),
        "5",
        "rows 1, 2, 101, 102, 103"
    );
    // Multi-byte text is stored as is (the client's display may not show it).
    assert_eq!(
        maria
            .sql(
                "dst",
                "SELECT HEX(tx) LIKE '%F09F9098%' FROM t WHERE id = 102"
            )
            .unwrap(),
        "1"
    );
    let (a, b) = digests(&source, "src", &maria, "dst", "t");
    assert_eq!(a, b, "source and MariaDB differ");
}

/// With `local_infile` off on the server, the full load uses multi-row INSERT (and says so):
/// every type family's edge values arrive as through LOAD DATA. `load_method: load-data`
/// refuses instead.
#[test]
fn every_type_family_loads_through_insert_when_local_infile_is_off() {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    source.create_database("src").unwrap();
    source.psql("src", SCHEMA).unwrap();
    insert(&source, 1);
    // Enough rows for several statements (1000 rows each).
    source
        .psql(
            "src",
            "INSERT INTO t (id, tx, b, bt, n) SELECT g, repeat(E'x\\ty', g % 7), '\\x00ff'::bytea, B'00000001', g / 3.0 FROM generate_series(1000, 3500) g",
        )
        .unwrap();
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("dst").unwrap();
    maria
        .sql(
            "",
            "SET GLOBAL group_concat_max_len = 1000000000; SET GLOBAL local_infile = 0",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let forced = task_file(
        dir.path(),
        "ld",
        &format!(
            "{}mysql: {{ load_method: load-data }}\n",
            task_yaml("ld", &source.url("src"), &maria.url("dst"), "")
        ),
    );
    let (code, err) = run_err(&forced);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("local_infile off"), "{err}");
    let task = task_file(
        dir.path(),
        "ins",
        &task_yaml("ins", &source.url("src"), &maria.url("dst"), ""),
    );
    let out = run_ok(&task);
    assert!(
        out.contains("multi-row INSERT: the server has local_infile off"),
        "{out}"
    );
    assert_eq!(maria.sql("dst", "SELECT COUNT(*) FROM t").unwrap(), "2504");
    let (a, b) = digests(&source, "src", &maria, "dst", "t");
    assert_eq!(a, b, "source and MariaDB differ");
}
