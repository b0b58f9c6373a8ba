//! The testkit's own guarantees: servers start as a non-root user, answer, and stop.

use pgtide_testkit::{PgServer, datasets};

#[test]
fn server_starts_answers_and_stops_cleanly() {
    let mut s = PgServer::start().expect("start");
    assert_eq!(s.psql("postgres", "SHOW wal_level").unwrap(), "logical");
    let user = s.psql("postgres", "SELECT current_user").unwrap();
    assert_eq!(user, "postgres");
    let dir = s.socket_dir();
    assert!(s.is_running());
    s.stop();
    assert!(!s.is_running());
    s.restart().unwrap();
    assert_eq!(s.psql("postgres", "SELECT 1").unwrap(), "1");
    drop(s);
    assert!(!dir.exists(), "the temporary directory is removed");
}

#[test]
fn pagila_loads() {
    let s = PgServer::start().expect("start");
    datasets::load_pagila(&s, "pagila").unwrap();
    let n = s
        .psql("pagila", "SELECT count(*) FROM public.rental")
        .unwrap();
    assert!(n.parse::<i64>().unwrap() > 10_000, "{n}");
}
