//! Operating a migration on real servers: `status` numbers match what was applied, `validate`
//! passes on a correct copy and names a changed value, a missing row and a duplicate row by
//! key, `cleanup` leaves no slot, publication or state behind and succeeds twice, and a failed
//! run's error is kept for `status`.

mod common;
use common::*;

fn status_json(task: &std::path::Path) -> serde_json::Value {
    let out = run_ok_args(&["status", task.to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}\n{out}"))
}

fn table<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("{name} in status: {status:#}"))
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn status_validate_and_cleanup() {
    let pair = Pair::start();
    pair.source.create_database("src").unwrap();
    pair.source
        .psql(
            "src",
            "CREATE TABLE public.items (id int PRIMARY KEY, v text, doc jsonb); \
             INSERT INTO public.items SELECT g, 'v' || g, jsonb_build_object('g', g) FROM generate_series(1, 5000) g; \
             CREATE SCHEMA \"Sales\"; \
             CREATE TABLE \"Sales\".\"Order Lines\" (\"Id\" bigint PRIMARY KEY, qty int, at timestamptz); \
             INSERT INTO \"Sales\".\"Order Lines\" SELECT g, g % 7, '2024-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 3000) g; \
             CREATE TABLE public.log (a int, b text); \
             INSERT INTO public.log SELECT g % 10, 'x' FROM generate_series(1, 100) g;",
        )
        .unwrap();
    pair.target.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = task_yaml(
        "ops",
        &pair.source.url("src"),
        &pair.target.url("dst"),
        &format!(
            "cdc: {{ tables_without_key: insert-only, spill_dir: \"{}\" }}\n",
            dir.path().join("spill").display()
        ),
    )
    .replace("mode: full-load\n", "mode: full-load-and-cdc\n");
    let task = task_file(dir.path(), "ops", &yaml);
    let t = task.to_str().unwrap();

    // Nothing ran yet: status says so.
    let o = pgtide(&["status", t]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has not run against this target"));
    let end = current_lsn(&pair.source, "src");
    run_ok_args(&["run", t, "--end-lsn", &end]);

    // Changes streamed through CDC, counted per table.
    pair.source
        .psql(
            "src",
            "INSERT INTO public.items VALUES (5001, 'a', NULL), (5002, 'b', NULL), (5003, 'c', '{}'); \
             UPDATE public.items SET v = 'changed' WHERE id IN (10, 11); \
             DELETE FROM public.items WHERE id = 12; \
             UPDATE \"Sales\".\"Order Lines\" SET qty = qty + 1 WHERE \"Id\" <= 4; \
             INSERT INTO public.log VALUES (1, 'y');",
        )
        .unwrap();
    let end = current_lsn(&pair.source, "src");
    run_ok_args(&["run", t, "--end-lsn", &end]);

    let st = status_json(&task);
    assert_eq!(st["mode"], "full-load-and-cdc", "{st:#}");
    assert_eq!(st["phase"], "cdc", "{st:#}");
    assert_eq!(st["running"], false);
    assert!(st["last_error"].is_null(), "{st:#}");
    let items = table(&st, "public.items");
    assert_eq!(items["full_load_rows"], 5000);
    assert_eq!(items["state"], "ready");
    assert_eq!(
        (&items["inserts"], &items["updates"], &items["deletes"]),
        (
            &serde_json::json!(3),
            &serde_json::json!(2),
            &serde_json::json!(1)
        ),
        "{items:#}"
    );
    let lines = table(&st, "\"Sales\".\"Order Lines\"");
    assert_eq!(lines["full_load_rows"], 3000);
    assert_eq!(lines["updates"], 4);
    assert_eq!(table(&st, "public.log")["inserts"], 1);
    let cdc = &st["cdc"];
    assert_eq!(cdc["slot"], "pgtide_ops");
    assert_eq!(cdc["slot_exists"], true);
    assert_eq!(cdc["slot_active"], false);
    assert!(cdc["applied_lsn"].is_string(), "{cdc:#}");
    assert!(cdc["lag_bytes"].as_u64().is_some(), "{cdc:#}");
    let text = run_ok_args(&["status", t]);
    assert!(
        text.contains("public.items") && text.contains("slot pgtide_ops inactive"),
        "{text}"
    );

    // A correct copy validates, exit 0.
    let out = run_ok_args(&["validate", t]);
    assert!(out.contains("3/3 tables equal"), "{out}");

    // A running task: status says so, cleanup refuses.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let run = Running::start(
        dir.path(),
        "live",
        &["run", t, "--metrics-addr", &addr],
        &[],
    );
    wait_until(60, "the stream to start", || {
        pair.source
            .psql(
                "src",
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgtide_ops'",
            )
            .unwrap()
            == "t"
    });
    // Validation while changes flow: what differs only by the lag settles.
    pair.source
        .psql(
            "src",
            "INSERT INTO public.items SELECT g, 'live', NULL FROM generate_series(6001, 6500) g; \
             UPDATE \"Sales\".\"Order Lines\" SET qty = 0 WHERE \"Id\" % 10 = 0;",
        )
        .unwrap();
    let out = run_ok_args(&["validate", t]);
    assert!(out.contains("3/3 tables equal"), "{out}");
    // Metrics count what this process applied; no connection strings in them.
    let expected =
        "pgtide_cdc_changes_applied_total{task=\"ops\",table=\"public.items\",op=\"insert\"} 500";
    wait_until(30, "the inserts in the metrics", || {
        http_get(&addr, "/metrics").contains(expected)
    });
    let metrics = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("# TYPE pgtide_cdc_lag_bytes gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains("table=\"\\\"Sales\\\".\\\"Order Lines\\\"\",op=\"update\"} 300"),
        "{metrics}"
    );
    let status: serde_json::Value =
        serde_json::from_str(http_get(&addr, "/status").split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(status["task"], "ops");
    assert!(status["lag_bytes"].is_number(), "{status:#}");
    for body in [&metrics, &http_get(&addr, "/status")] {
        assert!(!body.contains("postgresql://"), "{body}");
    }
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
    let st = status_json(&task);
    assert_eq!(st["running"], true, "{st:#}");
    assert!(st["cdc"]["changes_per_second"].is_number(), "{st:#}");
    let o = pgtide(&["cleanup", t]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is active"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    run.terminate();
    let (code, _, err) = run.wait();
    assert_eq!(code, Some(0), "{err}");

    // Damage the target: a changed value, a missing row, a duplicate row (the target's key is
    // dropped so the duplicate can exist), an extra row in the keyless table.
    pair.target
        .psql(
            "dst",
            "UPDATE public.items SET doc = '{\"g\": -1}' WHERE id = 5; \
             DELETE FROM \"Sales\".\"Order Lines\" WHERE \"Id\" = 7; \
             ALTER TABLE public.items DROP CONSTRAINT items_pkey; \
             INSERT INTO public.items SELECT * FROM public.items WHERE id = 9; \
             INSERT INTO public.log VALUES (42, 'z');",
        )
        .unwrap();
    let out = pgtide(&["--progress", "none", "validate", t]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("0/3 tables equal"), "{stdout}");
    assert!(stdout.contains("changed: (\"id\")=(5)"), "{stdout}");
    assert!(
        stdout.contains("duplicate on target: (\"id\")=(9)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("missing on target: (\"Id\")=(7)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("one row extra on target (the table has no key"),
        "{stdout}"
    );
    assert!(
        stderr.contains("differs from the source in 3 table(s)"),
        "{stderr}"
    );
    // Values are not printed, only keys.
    assert!(!stdout.contains("-1"), "{stdout}");

    // --table narrows, JSON names the same differences.
    let out = pgtide(&[
        "--progress",
        "none",
        "validate",
        t,
        "--table",
        "public.items",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tables = v["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "{v:#}");
    let kinds: Vec<(&str, &str)> = tables[0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["kind"].as_str().unwrap(), d["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("changed", "(\"id\")=(5)"),
            ("duplicate-on-target", "(\"id\")=(9)")
        ]
    );
    let (code, stderr) = {
        let o = pgtide(&["validate", t, "--table", "public.nosuch"]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("matches none of the task's tables"),
        "{stderr}"
    );

    // Status shows the validation.
    let st = status_json(&task);
    assert_eq!(table(&st, "public.items")["validation"], "different");

    // --repair re-copies the differing rows of keyed tables; the keyless one is reported.
    let out = pgtide(&["--progress", "none", "validate", t, "--repair"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("repaired: 3 target rows deleted, 2 copied from the source; now equal"),
        "{stdout}"
    );
    assert!(
        stdout.contains("repaired: 0 target rows deleted, 1 copied from the source; now equal"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not repaired: the table has no key"),
        "{stdout}"
    );
    let out = run_ok_args(&[
        "validate",
        t,
        "--table",
        "public.items",
        "--table",
        "\"Sales\".\"Order Lines\"",
    ]);
    assert!(out.contains("2/2 tables equal"), "{out}");
    assert_eq!(
        pair.target
            .psql("dst", "SELECT doc::text FROM public.items WHERE id = 5")
            .unwrap(),
        "{\"g\": 5}"
    );
    let st = status_json(&task);
    assert_eq!(
        table(&st, "public.items")["validation"],
        "equal",
        "the check after the repair is recorded"
    );

    // A run that fails leaves its error for status.
    pair.source
        .psql("src", "SELECT pg_drop_replication_slot('pgtide_ops')")
        .unwrap();
    let (code, stderr) = run_err(&task);
    assert_eq!(code, 1, "{stderr}");
    let st = status_json(&task);
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("pgtide_ops"),
        "{st:#}"
    );
    assert_eq!(st["cdc"]["slot_exists"], false);

    // Cleanup removes everything, twice is fine.
    let out = run_ok_args(&["cleanup", t]);
    assert!(
        out.contains("publication pgtide_ops on the source"),
        "{out}"
    );
    assert!(
        out.contains("publication pgtide_ops_insert_only on the source"),
        "{out}"
    );
    assert!(out.contains("schema pgtide on the target"), "{out}");
    for (q, what) in [
        (
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgtide%'",
            "slots",
        ),
        (
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pgtide%'",
            "publications",
        ),
    ] {
        assert_eq!(
            pair.source.psql("src", q).unwrap(),
            "0",
            "{what} left behind"
        );
    }
    assert_eq!(
        pair.target
            .psql(
                "dst",
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgtide'"
            )
            .unwrap(),
        "0"
    );
    assert!(!dir.path().join("spill").exists());
    let out = run_ok_args(&["cleanup", t]);
    assert!(out.contains("nothing to remove"), "{out}");
    let o = pgtide(&["status", t]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has not run against this target"));
}

#[test]
fn check_reports_each_problem_with_its_fix_and_run_refuses() {
    let pair = Pair::start();
    // The "bad" source is the server started without logical WAL.
    let bad = &pair.target;
    bad.create_database("src").unwrap();
    bad.psql(
        "src",
        "CREATE ROLE weak LOGIN; \
         CREATE TABLE public.items (id int PRIMARY KEY, v text); \
         CREATE TABLE public.\"Items\" (id int PRIMARY KEY, v text); \
         CREATE TABLE public.log (at timestamptz, msg text); \
         GRANT SELECT ON public.items, public.\"Items\" TO weak;",
    )
    .unwrap();
    pair.source.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weak_url = bad.url("src").replacen("postgres@", "weak@", 1);
    let task = task_file(
        dir.path(),
        "chk",
        &task_yaml("chk", &weak_url, &pair.source.url("dst"), "")
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let t = task.to_str().unwrap();
    let out = pgtide(&["--progress", "none", "check", t]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for (what, needles) in [
        (
            "wal_level",
            &[
                "wal_level = replica",
                "ALTER SYSTEM SET wal_level = logical",
            ][..],
        ),
        (
            "replication",
            &["neither REPLICATION nor superuser", "WITH REPLICATION"][..],
        ),
        (
            "select",
            &[
                "cannot read these tables",
                "GRANT SELECT ON \"public\".\"log\" TO",
            ][..],
        ),
        (
            "keyless",
            &[
                "public.log: no primary key",
                "ADD PRIMARY KEY",
                "tables_without_key: insert-only",
            ][..],
        ),
        (
            "collision",
            &["public.\"Items\" and public.items", "differ only by case"][..],
        ),
        ("publication", &["only a table's owner"][..]),
    ] {
        for n in needles {
            assert!(stdout.contains(n), "{what}: missing {n:?} in\n{stdout}");
        }
    }
    assert!(stderr.contains("block task chk"), "{stderr}");

    let out = pgtide(&["--progress", "none", "check", t, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    for c in [
        "wal_level",
        "replication_privilege",
        "select_privilege",
        "table_without_key",
        "publication_privilege",
    ] {
        assert!(errors.contains(&c), "{c} not among the errors {errors:?}");
    }

    // plan shows how each table would move, without moving anything.
    let out = run_ok_args(&["plan", t]);
    for n in [
        "plan of task chk (mode full-load-and-cdc): 3 tables",
        "public.log",
        "key: none",
        "cdc: refused: no key (tables_without_key: fail)",
        "public.\"Items\"",
        "key: primary key (id)",
        "COPY binary; split: whole",
        "columns: id, v",
        "warning: public.log has no key: the run will refuse to start",
    ] {
        assert!(out.contains(n), "plan: missing {n:?} in\n{out}");
    }
    let v: serde_json::Value = serde_json::from_str(&run_ok_args(&["plan", t, "--json"])).unwrap();
    assert_eq!(v["slot"], "pgtide_chk");
    assert_eq!(v["tables"].as_array().unwrap().len(), 3);

    // run refuses before creating anything, listing every blocking problem.
    let (code, stderr) = run_err(&task);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("block task chk")
            && stderr.contains("wal_level")
            && stderr.contains("GRANT SELECT"),
        "{stderr}"
    );
    assert_eq!(
        pair.source
            .psql(
                "dst",
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgtide'"
            )
            .unwrap(),
        "0"
    );

    // A correct setup passes.
    pair.source.create_database("good").unwrap();
    pair.source
        .psql(
            "good",
            "CREATE TABLE public.items (id int PRIMARY KEY, v text)",
        )
        .unwrap();
    bad.create_database("dst2").unwrap();
    let task = task_file(
        dir.path(),
        "good",
        &task_yaml("good", &pair.source.url("good"), &bad.url("dst2"), "")
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let out = run_ok_args(&["check", task.to_str().unwrap()]);
    assert!(out.contains("0 error(s)"), "{out}");
    assert!(out.contains("replication connection"), "{out}");
}

#[test]
fn repair_refuses_what_it_cannot_carry_exactly() {
    let pair = Pair::start();
    pair.source.create_database("src").unwrap();
    pair.source
        .psql(
            "src",
            "CREATE TABLE public.tagged (id int PRIMARY KEY, labels text[]); \
             INSERT INTO public.tagged SELECT g, ARRAY['a', 'b' || g] FROM generate_series(1, 50) g;",
        )
        .unwrap();
    pair.target.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "arr",
        &task_yaml("arr", &pair.source.url("src"), &pair.target.url("dst"), ""),
    );
    run_ok(&task);
    pair.target
        .psql(
            "dst",
            "UPDATE public.tagged SET labels = '{x}' WHERE id = 3",
        )
        .unwrap();
    let out = pgtide(&[
        "--progress",
        "none",
        "validate",
        task.to_str().unwrap(),
        "--repair",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("changed: (\"id\")=(3)"), "{stdout}");
    assert!(
        stdout.contains("not repaired: column labels (text[]) cannot be repaired row by row"),
        "{stdout}"
    );
    assert_eq!(
        pair.target
            .psql("dst", "SELECT labels::text FROM public.tagged WHERE id = 3")
            .unwrap(),
        "{x}",
        "nothing was changed"
    );
}
