//! A kill -9 of `pgtide run` in the middle of the copy, then a re-run, ends with a correct
//! target; in between, the target holds exactly the rows of the chunks recorded as done.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOURCE_SQL: &str = "
CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL, n numeric, at timestamptz);
INSERT INTO big SELECT g, md5(g::text) || repeat('x', g % 64), g / 7.0, '2024-01-01'::timestamptz + g * interval '1 second'
  FROM generate_series(1, 1500000) g;
CREATE INDEX big_at_idx ON big (at);
CREATE TABLE small (id serial PRIMARY KEY, big_id bigint REFERENCES big (id));
INSERT INTO small (big_id) SELECT g FROM generate_series(1, 1000) g;
ANALYZE;
";

fn done_chunks(pair: &Pair) -> Option<(i64, i64)> {
    let out = pair
        .target
        .psql("dst", "SELECT count(*) FILTER (WHERE done_at IS NOT NULL), count(*) FROM pgtide.load_chunk WHERE source_table = 'big'")
        .ok()?;
    let (a, b) = out.split_once('|')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn kill_during_copy_then_rerun_resumes_to_an_identical_target() {
    let pair = Pair::start();
    pair.source.create_database("src").unwrap();
    pair.source.psql("src", SOURCE_SQL).unwrap();
    pair.target.create_database("dst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = task_yaml(
        "resume",
        &pair.source.url("src"),
        &pair.target.url("dst"),
        "full_load: { threads: 2, split_threshold: 2MB }\n",
    );
    let task = task_file(dir.path(), "resume", &yaml);

    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(["--progress", "none", "run", task.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((done, _)) = done_chunks(&pair)
            && done >= 3
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "pgtide ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "no chunk finished within two minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (done, total) = done_chunks(&pair).unwrap();
    assert!(
        done < total,
        "the kill must land mid-copy ({done}/{total} chunks done)"
    );
    // Exactly the committed chunks' rows are there: no partial chunk survived the kill.
    let recorded: i64 = pair
        .target
        .psql("dst", "SELECT coalesce(sum(rows), 0) FROM pgtide.load_chunk WHERE source_table = 'big' AND done_at IS NOT NULL")
        .unwrap()
        .parse()
        .unwrap();
    let present: i64 = pair
        .target
        .psql("dst", "SELECT count(*) FROM public.big")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        present, recorded,
        "rows on the target equal the rows of chunks recorded as done"
    );
    assert!(present > 0 && present < 1_500_000);

    // A changed configuration must not silently continue the interrupted load.
    let changed = task_file(
        dir.path(),
        "changed",
        &yaml.replace(
            "full_load:",
            "tables: { exclude: [public.small] }\nfull_load:",
        ),
    );
    let (code, stderr) = run_err(&changed);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("different configuration") && stderr.contains("--restart"),
        "{stderr}"
    );

    // The same task resumes: only the missing chunks are copied, and the result is identical.
    let report = run_ok(&task);
    assert!(report.contains("(resumed)"), "{report}");
    let v = compare(
        &pair.source.url("src"),
        &pair.target.url("dst"),
        &["public"],
    );
    assert!(v.ok(), "{}", v.render());
    let chunks_total: i64 = pair
        .target
        .psql(
            "dst",
            "SELECT count(*) FROM pgtide.load_chunk WHERE source_table = 'big'",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        chunks_total, total,
        "the recorded plan was reused, not re-planned"
    );
}
