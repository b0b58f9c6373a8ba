//! Values MariaDB cannot hold (BC, infinite and after-9999 dates, NaN and ±Infinity, numbers
//! with too many digits, PostgreSQL's largest `real`) under each `mysql.out_of_range` policy,
//! through the full load and the stream alike; and the full load through multi-row INSERT when
//! the server has `local_infile` off.

mod common;
use common::*;
use pgtide_testkit::{MariaDbServer, PgOptions, PgServer};

const SCHEMA: &str = "CREATE TABLE public.v (id int PRIMARY KEY, da date, ts timestamp(3), tz timestamptz, \
     n numeric, n52 numeric(5,2), r real, d double precision, dnn date NOT NULL)";

/// Rows `{b}+1 .. {b}+4`: one that fits, then values outside MariaDB's ranges.
fn rows(base: u32) -> String {
    let r = [
        "(1, '2020-02-29', '2020-01-01 10:00:00.123', '2020-01-01 10:00:00+02', 1.5, 1.25, 1.5, 2.5, '2020-01-01')",
        "(2, '0044-03-15 BC', 'infinity', '-infinity', 'NaN', 'NaN', '3.4028235e+38', '-Infinity', 'infinity')",
        "(3, 'infinity', '294276-12-31 23:59:59.999', '10000-01-01 00:00:00+00', ('1' || repeat('0', 40))::numeric, -999.99, 'NaN', 'NaN', '-infinity')",
        "(4, NULL, NULL, NULL, 123.1234567890123456789012345678905, NULL, NULL, NULL, '2020-01-01')",
    ];
    let rows: Vec<String> = r
        .iter()
        .map(|r| r.replacen("(", &format!("({} + ", base), 1))
        .collect();
    format!("INSERT INTO public.v VALUES {}", rows.join(", "))
}

/// The MariaDB rows `{base}+1 .. {base}+4` in text, without the id.
fn target_rows(maria: &MariaDbServer, base: u32) -> Vec<String> {
    let out = maria
        .sql(
            "dst",
            &format!(
                "SELECT CONCAT_WS('|', COALESCE(CAST(da AS CHAR), 'N'), COALESCE(CAST(ts AS CHAR), 'N'), \
                 COALESCE(CAST(tz AS CHAR), 'N'), COALESCE(CAST(n AS CHAR), 'N'), COALESCE(CAST(n52 AS CHAR), 'N'), \
                 COALESCE(IF(r > 3.4e38, 'FLT_MAX', CAST(r AS CHAR)), 'N'), COALESCE(CAST(d AS CHAR), 'N'), CAST(dnn AS CHAR)) \
                 FROM v WHERE id BETWEEN {} AND {} ORDER BY id",
                base + 1,
                base + 4
            ),
        )
        .unwrap();
    out.lines().map(str::to_string).collect()
}

const MAX_DECIMAL: &str = "99999999999999999999999999999999999.999999999999999999999999999999";

fn clamped() -> Vec<String> {
    vec![
        "2020-02-29|2020-01-01 10:00:00.123|2020-01-01 08:00:00.000000|1.500000000000000000000000000000|1.25|1.5|2.5|2020-01-01".into(),
        "0001-01-01|9999-12-31 23:59:59.999|0001-01-01 00:00:00.000000|N|N|FLT_MAX|-1.7976931348623157e308|9999-12-31".into(),
        format!("9999-12-31|9999-12-31 23:59:59.999|9999-12-31 23:59:59.999999|{MAX_DECIMAL}|-999.99|N|N|0001-01-01"),
        "N|N|N|123.123456789012345678901234567891|N|N|N|2020-01-01".into(),
    ]
}

#[test]
fn clamp_writes_the_nearest_value_in_load_and_stream_and_counts_it() {
    let (source, maria) = servers();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "cl",
        &format!(
            "{}mysql: {{ out_of_range: clamp }}\n",
            task_yaml("cl", &source.url("src"), &maria.url("dst"), "")
                .replace("mode: full-load\n", "mode: full-load-and-cdc\n")
        ),
    );
    let mut run = Running::start(dir.path(), "first", &["run", task.to_str().unwrap()], &[]);
    wait_until(120, "streaming to start", || {
        maria_phase(&maria, "dst", "cl").as_deref() == Some("cdc")
    });
    assert_eq!(target_rows(&maria, 0), clamped(), "full load");
    // The stream: the same values inserted, and the row that fit updated out of range.
    source.psql("src", &rows(100)).unwrap();
    source
        .psql(
            "src",
            "UPDATE public.v SET da = 'infinity', n = 'NaN', d = 'Infinity' WHERE id = 1",
        )
        .unwrap();
    let end = current_lsn(&source, "src");
    let second_err = run_until_end(&mut run, &task, &end);
    assert_eq!(target_rows(&maria, 100), clamped(), "stream");
    assert_eq!(
        maria
            .sql(
                "dst",
                "SELECT CONCAT_WS('|', da, COALESCE(n, 'N'), d) FROM v WHERE id = 1"
            )
            .unwrap(),
        "9999-12-31|N|1.7976931348623157e308"
    );
    // The report of the first run counted every changed value per column.
    let (_, out, err) = run.wait();
    assert!(
        format!("{err}{second_err}").contains(
            "public.v.da: a value outside MySQL's range was written as the nearest value"
        ),
        "the stream warns about changed values: {err}\n{second_err}"
    );
    for needle in [
        "values outside MySQL's range written as the nearest value the column holds (NaN as NULL) (mysql.out_of_range: clamp)",
        "public.v.da: 2 values",
        "public.v.n: 3 values",
        "public.v.r: 2 values",
        "public.v.dnn: 2 values",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}\n{err}");
    }
}

/// Stop the first run, then run to `end`; the first run's output stays readable. Returns the
/// second run's stderr.
fn run_until_end(run: &mut Running, task: &std::path::Path, end: &str) -> String {
    assert!(run.running(), "the first run is streaming");
    run.terminate();
    wait_until(60, "the first run to stop", || !run.running());
    run_ok_args_both(&["run", task.to_str().unwrap(), "--end-lsn", end]).1
}

/// A source with the table and its rows, and an empty MariaDB database `dst`.
fn servers() -> (PgServer, MariaDbServer) {
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    source.create_database("src").unwrap();
    source.psql("src", SCHEMA).unwrap();
    source.psql("src", &rows(0)).unwrap();
    let maria = MariaDbServer::start().unwrap();
    maria.create_database("dst").unwrap();
    (source, maria)
}

#[test]
fn null_writes_null_but_not_into_a_not_null_column_and_error_stops_the_stream() {
    let (source, maria) = servers();
    let dir = tempfile::tempdir().unwrap();
    let null_task = task_file(
        dir.path(),
        "nu",
        &format!(
            "{}mysql: {{ out_of_range: \"null\" }}\n",
            task_yaml("nu", &source.url("src"), &maria.url("dst"), "")
        ),
    );
    // dnn is NOT NULL: NULL cannot stand in for its infinite dates.
    let (code, err) = run_err(&null_task);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("public.v.dnn") && err.contains("NOT NULL") && err.contains("rolled back"),
        "{err}"
    );
    assert!(!err.contains("infinity'"), "no values in errors: {err}");
    source
        .psql("src", "UPDATE public.v SET dnn = '2020-01-01'")
        .unwrap();
    let out = run_ok(&null_task);
    assert!(out.contains("public.v.n: 3 values"), "{out}");
    assert!(
        out.contains("written as NULL (mysql.out_of_range: null)"),
        "{out}"
    );
    assert_eq!(
        target_rows(&maria, 0),
        vec![
            "2020-02-29|2020-01-01 10:00:00.123|2020-01-01 08:00:00.000000|1.500000000000000000000000000000|1.25|1.5|2.5|2020-01-01",
            "N|N|N|N|N|N|N|2020-01-01",
            "N|N|N|N|-999.99|N|N|2020-01-01",
            "N|N|N|N|N|N|N|2020-01-01",
        ]
    );

    // The default policy, error, stops the stream at the change and applies nothing of it.
    source
        .psql("src", "DELETE FROM public.v WHERE id > 1")
        .unwrap();
    let err_task = task_file(
        dir.path(),
        "er",
        &task_yaml("er", &source.url("src"), &maria.url("dst"), "")
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let mut run = Running::start(dir.path(), "er", &["run", err_task.to_str().unwrap()], &[]);
    wait_until(120, "streaming to start", || {
        maria_phase(&maria, "dst", "er").as_deref() == Some("cdc")
    });
    source
        .psql(
            "src",
            "INSERT INTO public.v VALUES (50, '2021-01-01', NULL, NULL, 1, 1, 1, 1, '2021-01-01'); \
             INSERT INTO public.v VALUES (51, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, '2021-01-01')",
        )
        .unwrap();
    wait_until(60, "the run to stop", || !run.running());
    let (code, _, err) = run.wait();
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("public.v.n") && err.contains("NaN") && err.contains("mysql.out_of_range"),
        "{err}"
    );
    assert_eq!(
        maria
            .sql("dst", "SELECT COUNT(*) FROM v WHERE id = 51")
            .unwrap(),
        "0"
    );
}
