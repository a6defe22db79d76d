//! A throwaway PostgreSQL and PgBouncer from the test harness, driven over stdin, for
//! benchmarks and the demo: prints `DIRECT=url` and `BOUNCER=url`, then obeys lines
//! `stop`, `start` (prints `ready <unix seconds>` once pg_isready succeeds; it polls
//! every 20 ms) and `quit` (or end of input).
use std::io::{BufRead, Write};

fn main() {
    let mut pg = dockhand_tests::pg::Postgres::start();
    // The backup benchmark restores into new databases as app.
    pg.psql("ALTER ROLE app CREATEDB");
    let bouncer = dockhand_tests::pgbouncer::PgBouncer::start(&pg);
    println!("DIRECT={}\nBOUNCER={}", pg.url(), bouncer.url());
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines() {
        match line.unwrap_or_default().trim() {
            "stop" => {
                pg.stop_server();
                println!("stopped");
            }
            "start" => {
                pg.start_server();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                println!("ready {:.6}", now.as_secs_f64());
            }
            "quit" => break,
            _ => println!("?"),
        }
        let _ = std::io::stdout().flush();
    }
}
