//! The throwaway MariaDB server starts, answers, and is gone after drop.

use pgtide_testkit::MariaDbServer;

#[test]
fn starts_answers_and_stops() {
    let db = MariaDbServer::start().expect("MariaDB server");
    db.create_database("shop").unwrap();
    db.sql(
        "shop",
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(10)); INSERT INTO t VALUES (1, 'é')",
    )
    .unwrap();
    assert_eq!(db.sql("shop", "SELECT v FROM t").unwrap(), "é");
    assert_eq!(
        db.sql("", "SELECT @@character_set_server").unwrap(),
        "utf8mb4"
    );
    let socket = db.socket();
    drop(db);
    assert!(!socket.exists(), "the server's files are removed");
}
