//! Development helper: starts a throwaway PostgreSQL and PgBouncer from the harness,
//! prints their URLs, and keeps them up until Enter is pressed.
fn main() {
    let pg = dockhand_tests::pg::Postgres::start();
    let b = dockhand_tests::pgbouncer::PgBouncer::start(&pg);
    println!("DIRECT={}\nBOUNCER={}", pg.url(), b.url());
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}
