//! Bad input gets one clear error that names the problem and the fix, a non-zero exit code,
//! and changes nothing on the target. Secrets never appear in the output.

mod common;
use common::*;
use pgtide_testkit::{PgOptions, PgServer};

fn target_untouched(server: &PgServer, db: &str) {
    let n = server
        .psql(db, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')")
        .unwrap();
    assert_eq!(n, "0", "the target must be left as it was");
    let s = server
        .psql(
            db,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgtide'",
        )
        .unwrap();
    assert_eq!(s, "0", "no state schema on a failed check");
}

#[test]
fn task_file_mistakes_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("yaml", "name: [unclosed\n", "task file"),
        (
            "unknown",
            "name: x\nsource: { url: \"postgresql://u:SECRETPW@h/d\" }\ntarget: { url: postgresql://u@h/d }\nfull_load: { thread: 2 }\n",
            "full_load.thread: unknown field `thread`",
        ),
        (
            "badmode",
            "name: x\nsource: { url: \"postgresql://u:SECRETPW@h/d\" }\ntarget: { url: postgresql://u@h/d }\nmode: fullload\n",
            "use full-load, cdc or full-load-and-cdc",
        ),
        (
            "badurl",
            "name: x\nsource: { url: \"postgresql://u:SECRETPW@h/d?sslmode=sometimes\" }\ntarget: { url: postgresql://u@h/d }\n",
            "unknown sslmode",
        ),
        (
            "badpattern",
            "name: x\nsource: { url: postgresql://u@h/d }\ntarget: { url: postgresql://u@h/d }\ntables: { include: [orders] }\n",
            "tables.include[0]",
        ),
    ];
    for (name, yaml, expect) in cases {
        let task = task_file(dir.path(), name, yaml);
        let (code, stderr) = run_err(&task);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{name}: expected {expect:?} in:\n{stderr}"
        );
        assert!(
            stderr.contains("hint:"),
            "{name}: a hint is given:\n{stderr}"
        );
        assert!(
            !stderr.contains("SECRETPW"),
            "{name}: secret echoed:\n{stderr}"
        );
    }
    let out = pgtide(&["run", "/nonexistent/task.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read task file"));
}

#[test]
fn connection_problems_are_named_with_their_fix() {
    let secured = PgServer::start_with(PgOptions {
        password: Some("right-pw".into()),
        ..Default::default()
    })
    .unwrap();
    let target = PgServer::start_with(PgOptions {
        logical: false,
        ..Default::default()
    })
    .unwrap();
    target.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let wrong_pw = format!(
        "postgresql://postgres:WRONG-PW-123@127.0.0.1:{}/postgres?sslmode=disable",
        secured.port()
    );
    let cases = [
        (
            format!(
                "postgresql://postgres@127.0.0.1:{closed_port}/postgres?sslmode=disable&connect_timeout=5"
            ),
            "cannot connect to the source",
            "listens on that host and port",
        ),
        (
            wrong_pw.clone(),
            "password authentication failed",
            "check the user and password",
        ),
        (
            secured.url("no_such_db"),
            "does not exist",
            "create the database first",
        ),
        (
            secured.url_without_password("postgres"),
            "password",
            "password_env",
        ),
    ];
    for (i, (url, expect, hint)) in cases.iter().enumerate() {
        let task = task_file(
            dir.path(),
            &format!("c{i}"),
            &task_yaml("conn", url, &target.url("dst"), ""),
        );
        let (code, stderr) = run_err(&task);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(expect),
            "case {i}: expected {expect:?} in:\n{stderr}"
        );
        assert!(
            stderr.contains(hint),
            "case {i}: expected hint {hint:?} in:\n{stderr}"
        );
        assert!(
            !stderr.contains("WRONG-PW-123") && !stderr.contains("right-pw"),
            "secret echoed:\n{stderr}"
        );
        target_untouched(&target, "dst");
    }
    // The password from a file, as the task file says, works.
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "right-pw\n").unwrap();
    secured
        .psql(
            "postgres",
            "CREATE TABLE public.one (id int PRIMARY KEY); INSERT INTO public.one VALUES (1)",
        )
        .unwrap();
    let yaml = format!(
        "name: pwfile\nsource: {{ url: \"{}\", password_file: \"{}\" }}\ntarget: {{ url: \"{}\" }}\n",
        secured.url_without_password("postgres"),
        pwfile.display(),
        target.url("dst")
    );
    run_ok(&task_file(dir.path(), "pwfile", &yaml));
    assert_eq!(
        target
            .psql("dst", "SELECT count(*) FROM public.one")
            .unwrap(),
        "1"
    );
}

#[test]
fn selection_and_target_conflicts_stop_before_any_data_moves() {
    let pair = Pair::start();
    pair.source.create_database("src").unwrap();
    pair.source
        .psql("src", "CREATE TABLE public.items (id int PRIMARY KEY, v text); INSERT INTO public.items SELECT g, 'v' FROM generate_series(1, 10) g;")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A filter that matches nothing.
    pair.target.create_database("empty1").unwrap();
    let task = task_file(
        dir.path(),
        "nomatch",
        &task_yaml(
            "nomatch",
            &pair.source.url("src"),
            &pair.target.url("empty1"),
            "tables: { include: [\"public.Items\", sales.*] }\n",
        ),
    );
    let (code, stderr) = run_err(&task);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("tables.include[1]: pattern sales.* matches no table"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the source's schemas are: public"),
        "{stderr}"
    );
    target_untouched(&pair.target, "empty1");

    // A pg_dump that is not there.
    let nowhere = dir.path().join("no-pg-dump-here");
    std::fs::create_dir(&nowhere).unwrap();
    let task = task_file(
        dir.path(),
        "nodump",
        &task_yaml(
            "nodump",
            &pair.source.url("src"),
            &pair.target.url("empty1"),
            &format!("schema: {{ pg_dump: \"{}\" }}\n", nowhere.display()),
        ),
    );
    let (code, stderr) = run_err(&task);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no working pg_dump") && stderr.contains("apt-get install"),
        "{stderr}"
    );
    target_untouched(&pair.target, "empty1");

    // truncate / do-nothing need the tables to exist.
    let task = task_file(
        dir.path(),
        "notables",
        &task_yaml(
            "notables",
            &pair.source.url("src"),
            &pair.target.url("empty1"),
            "full_load: { table_preparation: truncate }\n",
        ),
    );
    let (_, stderr) = run_err(&task);
    assert!(
        stderr.contains("missing: public.items") && stderr.contains("drop-and-create"),
        "{stderr}"
    );
    target_untouched(&pair.target, "empty1");

    // do-nothing into a table that already holds rows.
    pair.target.create_database("busy").unwrap();
    pair.target
        .psql("busy", "CREATE TABLE public.items (id int PRIMARY KEY, v text); INSERT INTO public.items VALUES (3, 'theirs')")
        .unwrap();
    let task = task_file(
        dir.path(),
        "donothing",
        &task_yaml(
            "donothing",
            &pair.source.url("src"),
            &pair.target.url("busy"),
            "full_load: { table_preparation: do-nothing }\n",
        ),
    );
    let (_, stderr) = run_err(&task);
    assert!(
        stderr.contains("already hold rows") && stderr.contains("public.items"),
        "{stderr}"
    );
    assert_eq!(
        pair.target
            .psql("busy", "SELECT string_agg(id || v, ',') FROM public.items")
            .unwrap(),
        "3theirs"
    );
    assert_eq!(
        pair.target
            .psql(
                "busy",
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgtide'"
            )
            .unwrap(),
        "0"
    );

    // truncate into the same table works and replaces its rows.
    let task = task_file(
        dir.path(),
        "truncate",
        &task_yaml(
            "truncate",
            &pair.source.url("src"),
            &pair.target.url("busy"),
            "full_load: { table_preparation: truncate }\n",
        ),
    );
    run_ok(&task);
    assert_eq!(
        pair.target
            .psql("busy", "SELECT count(*), min(v) FROM public.items")
            .unwrap(),
        "10|v"
    );

    // Large objects are not copied: the default stops before loading; skip says so in the report.
    pair.source
        .psql("src", "SELECT lo_from_bytea(0, 'a large object')")
        .unwrap();
    pair.target.create_database("lo").unwrap();
    let task = task_file(
        dir.path(),
        "lo",
        &task_yaml("lo", &pair.source.url("src"), &pair.target.url("lo"), ""),
    );
    let (_, stderr) = run_err(&task);
    assert!(
        stderr.contains("1 large objects") && stderr.contains("large_objects: skip"),
        "{stderr}"
    );
    target_untouched(&pair.target, "lo");
    let task = task_file(
        dir.path(),
        "lo",
        &task_yaml(
            "lo",
            &pair.source.url("src"),
            &pair.target.url("lo"),
            "full_load: { large_objects: skip }\n",
        ),
    );
    let out = run_ok(&task);
    assert!(
        out.contains("warning: 1 large objects are not copied"),
        "{out}"
    );
}

/// A source user subject to row-level security would read only the rows its policies allow.
/// pgtide reads with `row_security = off`, so the copy fails naming the table and the fix instead
/// of loading a silent subset; with BYPASSRLS every row arrives.
#[test]
fn row_level_security_never_loads_a_silent_subset() {
    let pair = Pair::start();
    pair.source.create_database("src").unwrap();
    pair.source
        .psql(
            "src",
            "CREATE ROLE reader LOGIN; \
             CREATE TABLE public.notes (id int PRIMARY KEY, author text NOT NULL); \
             INSERT INTO public.notes SELECT g, CASE WHEN g % 2 = 0 THEN 'reader' ELSE 'other' END FROM generate_series(1, 20) g; \
             ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY own ON public.notes USING (author = current_user); \
             GRANT SELECT ON public.notes TO reader;",
        )
        .unwrap();
    pair.target.create_database("dst").unwrap();
    let reader_url = pair.source.url("src").replacen("postgres@", "reader@", 1);
    assert!(reader_url.contains("reader@"), "{reader_url}");
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "rls",
        &task_yaml("rls", &reader_url, &pair.target.url("dst"), ""),
    );
    let (code, stderr) = run_err(&task);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("row-level security") && stderr.contains("notes"),
        "the error names the table: {stderr}"
    );
    assert!(stderr.contains("BYPASSRLS"), "the fix is named: {stderr}");

    pair.source
        .psql("src", "ALTER ROLE reader BYPASSRLS")
        .unwrap();
    run_ok(&task);
    assert_eq!(
        pair.target
            .psql("dst", "SELECT count(*) FROM public.notes")
            .unwrap(),
        "20"
    );
}
