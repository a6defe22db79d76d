//! A real PgBouncer in transaction pooling mode in front of a [`Postgres`], with the
//! `app` role's password in its auth file (SCRAM on both sides).

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::pg::Postgres;
use crate::proc::{chown_to_service, service_command, Service};

pub struct PgBouncer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    password: String,
    _service: Service,
}

impl PgBouncer {
    pub fn start(pg: &Postgres) -> PgBouncer {
        let dir = tempfile::Builder::new()
            .prefix("dockhand-pgb-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"app\" \"{}\"\n", pg.password),
        )
        .unwrap();
        chown_to_service(dir.path());
        for _ in 0..5 {
            let port = crate::free_port();
            let ini = format!(
                "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {dir}/userlist.txt\npool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 5\nignore_startup_parameters = extra_float_digits,options\nadmin_users = app\nlogfile = {dir}/pgbouncer.log\n",
                pg_port = pg.port,
                dir = dir.path().display()
            );
            let conf = dir.path().join("pgbouncer.ini");
            std::fs::write(&conf, ini).unwrap();
            chown_to_service(&conf);
            let mut cmd = service_command("pgbouncer");
            cmd.arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut service = Service::spawn("pgbouncer", cmd, Signal::SIGINT);
            if crate::wait_until(Duration::from_secs(10), || {
                service.running() && crate::port_open(port)
            }) {
                return PgBouncer {
                    dir,
                    port,
                    password: pg.password.clone(),
                    _service: service,
                };
            }
        }
        panic!("PgBouncer did not start (is it installed? run scripts/setup)");
    }

    /// `postgres://app:PASSWORD@127.0.0.1:PORT/app` through PgBouncer.
    pub fn url(&self) -> String {
        format!(
            "postgres://app:{}@127.0.0.1:{}/app",
            self.password, self.port
        )
    }
}
