//! TRUNCATE is not MVCC-safe: committed while a load runs, it would show the load's snapshot an
//! empty table and the target would silently miss its rows. The load holds ACCESS SHARE locks
//! on the source tables for its whole length, so such a TRUNCATE waits (as with pg_dump).

mod common;
use common::*;

#[test]
fn a_truncate_on_the_source_waits_for_the_load() {
    let Pair { source, target } = Pair::start();
    source.create_database("src").unwrap();
    target.create_database("dst").unwrap();
    // The view copied as a table makes the load last a few seconds, deterministically.
    source
        .psql(
            "src",
            "CREATE TABLE public.items (id int, n int); \
             CREATE VIEW public.a_slow AS SELECT 1 AS one FROM pg_sleep(5);",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(
        dir.path(),
        "lk",
        &task_yaml(
            "lk",
            &source.url("src"),
            &target.url("dst"),
            "tables: { include: [public.items], views: [public.a_slow] }\nfull_load: { threads: 1 }\n",
        ),
    );
    let run = Running::start(dir.path(), "lk", &["run", task.to_str().unwrap()], &[]);
    wait_until(60, "the load to start copying", || {
        phase(&target, "dst", "lk").as_deref() == Some("load")
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The snapshot's own session holds the lock (workers lock only what they have read, and
    // only until they finish).
    assert_eq!(
        source
            .psql(
                "src",
                "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.relation = 'public.items'::regclass AND l.mode = 'AccessShareLock' AND l.granted \
                   AND a.application_name = 'pgtide' AND a.query NOT LIKE 'COPY%'",
            )
            .unwrap(),
        "t"
    );
    let err = source
        .psql("src", "SET lock_timeout = '300ms'; TRUNCATE public.items")
        .unwrap_err();
    assert!(err.to_string().contains("lock timeout"), "{err}");
    let (code, out, stderr) = run.wait();
    assert_eq!(code, Some(0), "{out}\n{stderr}");
    // Once the load is over, the source is free again.
    source.psql("src", "TRUNCATE public.items").unwrap();
}
