//! The harness itself: each service is real and behaves as the other tests assume.

use std::process::Command;

use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::pgbouncer::PgBouncer;
use dockhand_tests::s3::S3;

fn psql_url(url: &str, sql: &str) -> (bool, String) {
    let out = Command::new(bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-c", sql, url])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn postgres_checks_passwords_over_tcp() {
    let pg = Postgres::start();
    let (ok, out) = psql_url(&pg.url(), "SELECT current_user");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "app");
    let (ok, out) = psql_url(&pg.url_with("app", "wrong", "app"), "SELECT 1");
    assert!(!ok);
    assert!(out.contains("password authentication failed"), "{out}");
}

#[test]
fn clusters_are_independent_and_restartable() {
    let mut a = Postgres::start();
    let b = Postgres::start();
    assert_ne!(a.port, b.port);
    a.psql_db("app", "CREATE TABLE only_in_a (x int)");
    assert_eq!(
        b.psql_db(
            "app",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"
        ),
        "0"
    );
    a.stop_server();
    assert!(!psql_url(&a.url(), "SELECT 1").0);
    a.start_server();
    assert_eq!(a.psql_db("app", "SELECT count(*) FROM only_in_a"), "0");
}

#[test]
fn pgbouncer_pools_transactions_in_front_of_postgres() {
    let pg = Postgres::start();
    let bouncer = PgBouncer::start(&pg);
    let (ok, out) = psql_url(&bouncer.url(), "SELECT current_database()");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "app");
    let admin = format!(
        "postgres://app:{}@127.0.0.1:{}/pgbouncer",
        pg.password, bouncer.port
    );
    let (ok, out) = psql_url(&admin, "SHOW CONFIG");
    assert!(ok, "{out}");
    let pool_mode = out
        .lines()
        .find(|l| l.starts_with("pool_mode|"))
        .unwrap_or_default();
    assert!(
        pool_mode.starts_with("pool_mode|transaction"),
        "{pool_mode}"
    );
}

#[test]
fn s3_server_gives_each_test_a_bucket() {
    let s3 = S3::shared();
    let a = s3.bucket();
    let b = s3.bucket();
    assert_ne!(a, b);
    let (status, _) = s3.request("PUT", &format!("/{a}/hello.txt"), b"hello");
    assert_eq!(status, 200);
    let (status, body) = s3.request("GET", &format!("/{a}/hello.txt"), b"");
    assert_eq!((status, body.as_str()), (200, "hello"));
    let (_, listing) = s3.request("GET", &format!("/{b}?list-type=2"), b"");
    assert!(
        !listing.contains("hello.txt"),
        "bucket {b} is not empty: {listing}"
    );
}
