//! TLS follows libpq's sslmode semantics, for pgtide's own connections and for pg_dump's.
//! The source only accepts TLS (hostssl), with a certificate for "localhost" signed by a test CA.

mod common;
use common::*;
use pgtide_testkit::{PgOptions, PgServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::Path;
use std::process::Command;

struct Certs {
    ca: std::path::PathBuf,
    other_ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let ca_params = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params("pgtide test CA").self_signed(&ca_key).unwrap();
    let other_key = KeyPair::generate().unwrap();
    let other = ca_params("some other CA").self_signed(&other_key).unwrap();
    let srv_key = KeyPair::generate().unwrap();
    let mut srv_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    srv_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let srv = srv_params.signed_by(&srv_key, &ca, &ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    Certs {
        ca: write("ca.pem", ca.pem()),
        other_ca: write("other-ca.pem", other.pem()),
        cert: write("server.crt", srv.pem()),
        key: write("server.key", srv_key.serialize_pem()),
    }
}

#[test]
fn sslmodes_follow_libpq_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let source = PgServer::start_with(PgOptions {
        tls: Some((certs.cert.clone(), certs.key.clone())),
        hba: Some(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n".into(),
        ),
        ..Default::default()
    })
    .unwrap();
    let target = PgServer::start_with(PgOptions {
        logical: false,
        ..Default::default()
    })
    .unwrap();
    source.create_database("src").unwrap();
    source
        .psql("src", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g")
        .unwrap();
    let p = source.port();
    let ca = certs.ca.display();
    let other = certs.other_ca.display();
    let cases: Vec<(String, Option<&str>)> = vec![
        (
            format!("postgresql://postgres@127.0.0.1:{p}/src?sslmode=disable"),
            Some("no pg_hba.conf entry"),
        ),
        (
            format!("postgresql://postgres@127.0.0.1:{p}/src?sslmode=require"),
            None,
        ),
        (
            format!("postgresql://postgres@127.0.0.1:{p}/src?sslmode=prefer"),
            None,
        ),
        (
            format!("postgresql://postgres@localhost:{p}/src?sslmode=verify-full&sslrootcert={ca}"),
            None,
        ),
        (
            format!("postgresql://postgres@127.0.0.1:{p}/src?sslmode=verify-ca&sslrootcert={ca}"),
            None,
        ),
        (
            format!("postgresql://postgres@127.0.0.1:{p}/src?sslmode=verify-full&sslrootcert={ca}"),
            Some("certificate"),
        ),
        (
            format!(
                "postgresql://postgres@localhost:{p}/src?sslmode=verify-ca&sslrootcert={other}"
            ),
            Some("certificate"),
        ),
        (
            format!("postgresql://postgres@localhost:{p}/src?sslmode=verify-full"),
            Some("needs a root certificate"),
        ),
    ];
    let home = tempfile::tempdir().unwrap(); // no ~/.postgresql/root.crt here
    for (i, (url, failure)) in cases.iter().enumerate() {
        let db = format!("d{i}");
        target.create_database(&db).unwrap();
        let task = task_file(
            dir.path(),
            &db,
            &task_yaml("tls", url, &target.url(&db), ""),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_pgtide"))
            .args(["--progress", "none", "run", task.to_str().unwrap()])
            .env("HOME", home.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match failure {
            None => {
                assert!(out.status.success(), "case {i} ({url}) failed:\n{stderr}");
                assert_eq!(
                    target.psql(&db, "SELECT count(*) FROM t").unwrap(),
                    "100",
                    "case {i}"
                );
            }
            Some(msg) => {
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "case {i} ({url}) should fail:\n{stderr}"
                );
                assert!(
                    stderr.contains(msg),
                    "case {i}: expected {msg:?} in:\n{stderr}"
                );
                assert!(stderr.contains("hint:"), "case {i}:\n{stderr}");
            }
        }
    }

    // Change data capture over TLS: the replication connection (and the preflight's probe of
    // it) follows the same sslmode rules; the source accepts nothing but TLS.
    target.create_database("cdc").unwrap();
    let url =
        format!("postgresql://postgres@localhost:{p}/src?sslmode=verify-full&sslrootcert={ca}");
    let task = task_file(
        dir.path(),
        "cdc",
        &task_yaml("tlscdc", &url, &target.url("cdc"), "")
            .replace("mode: full-load\n", "mode: full-load-and-cdc\n"),
    );
    let end = current_lsn(&source, "src");
    let out = Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args([
            "--progress",
            "none",
            "run",
            task.to_str().unwrap(),
            "--end-lsn",
            &end,
        ])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    source
        .psql("src", "INSERT INTO t SELECT g, 'y' FROM generate_series(101, 150) g; UPDATE t SET v = 'z' WHERE id <= 10")
        .unwrap();
    let end = current_lsn(&source, "src");
    let out = Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args([
            "--progress",
            "none",
            "run",
            task.to_str().unwrap(),
            "--end-lsn",
            &end,
        ])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        target
            .psql(
                "cdc",
                "SELECT count(*), count(*) FILTER (WHERE v = 'z') FROM t"
            )
            .unwrap(),
        "150|10"
    );
}

/// MySQL/MariaDB targets take the same sslmode semantics: a MariaDB that requires secure
/// transport refuses plain text, accepts `require`, and `verify-full` judges the chain and the
/// name; `verify-ca` is refused with the way out (the driver cannot skip only the name).
#[test]
fn mysql_targets_follow_the_same_sslmodes() {
    use pgtide_testkit::MariaDbServer;
    let dir = tempfile::Builder::new()
        .prefix("pgtide-tls-")
        .tempdir()
        .unwrap();
    // mariadbd runs as an unprivileged user: it must read the certificates.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let certs = make_certs(dir.path());
    for f in [&certs.ca, &certs.other_ca, &certs.cert, &certs.key] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let maria = MariaDbServer::start_with_args(&[
        format!("--ssl-cert={}", certs.cert.display()),
        format!("--ssl-key={}", certs.key.display()),
        format!("--ssl-ca={}", certs.ca.display()),
        "--require-secure-transport=ON".to_string(),
    ])
    .unwrap();
    let source = PgServer::start_with(PgOptions::default()).unwrap();
    source.create_database("src").unwrap();
    source
        .psql("src", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g")
        .unwrap();
    let p = maria.port();
    let ca = certs.ca.display();
    let other = certs.other_ca.display();
    let cases: Vec<(String, Option<&str>)> = vec![
        (
            format!("mysql://pgtide:pgtide@127.0.0.1:{p}/DB?sslmode=disable"),
            Some("add sslmode=require"),
        ),
        (
            format!("mysql://pgtide:pgtide@127.0.0.1:{p}/DB?sslmode=require"),
            None,
        ),
        (
            format!("mysql://pgtide:pgtide@localhost:{p}/DB?sslmode=verify-full&sslrootcert={ca}"),
            None,
        ),
        (
            format!("mysql://pgtide:pgtide@127.0.0.1:{p}/DB?sslmode=verify-ca&sslrootcert={ca}"),
            Some("use sslmode=verify-full"),
        ),
        (
            format!("mysql://pgtide:pgtide@127.0.0.1:{p}/DB?sslmode=require&sslrootcert={ca}"),
            Some("not available for MySQL targets"),
        ),
        (
            format!("mysql://pgtide:pgtide@127.0.0.1:{p}/DB?sslmode=verify-full&sslrootcert={ca}"),
            Some("certificate"),
        ),
        (
            format!(
                "mysql://pgtide:pgtide@localhost:{p}/DB?sslmode=verify-full&sslrootcert={other}"
            ),
            Some("TLS certificate was not accepted"),
        ),
        (
            format!("mysql://pgtide:pgtide@localhost:{p}/DB?sslmode=verify-full"),
            Some("needs a root certificate"),
        ),
    ];
    for (i, (url, failure)) in cases.iter().enumerate() {
        let db = format!("d{i}");
        maria.create_database(&db).unwrap();
        let url = url.replace("/DB?", &format!("/{db}?"));
        let task = task_file(
            dir.path(),
            &db,
            &task_yaml("tls", &source.url("src"), &url, ""),
        );
        let out = pgtide(&["--progress", "none", "run", task.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match failure {
            None => {
                assert!(out.status.success(), "case {i} ({url}) failed:\n{stderr}");
                assert_eq!(
                    maria.sql(&db, "SELECT COUNT(*) FROM t").unwrap(),
                    "100",
                    "case {i}"
                );
            }
            Some(msg) => {
                assert_ne!(
                    out.status.code(),
                    Some(0),
                    "case {i} ({url}) should fail:\n{stderr}"
                );
                assert!(
                    stderr.contains(msg),
                    "case {i}: expected {msg:?} in:\n{stderr}"
                );
            }
        }
    }
}
