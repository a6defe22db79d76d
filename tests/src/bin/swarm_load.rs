//! The load generator of tests/tests/swarm.rs, run inside the stack's overlay network
//! (see `dockhand_tests::load`). Options: `--host tasks.app --port 3000 --workers 16
//! --rate 600 --slow-every 20 --conn-max-age-ms 10000 --dns-cache-ms 0
//! --timeout-ms 5000 --ctl /ctl`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match dockhand_tests::load::Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarm_load: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = dockhand_tests::load::run(cfg) {
        eprintln!("swarm_load: {e}");
        std::process::exit(1);
    }
}
