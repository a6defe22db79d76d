//! PostgreSQL connections from libpq-style URLs, with rustls for `sslmode`, and errors
//! sorted into "keep waiting" (server starting up, refused, name not resolvable yet,
//! too many connections) and "fail now" (wrong password, missing database, TLS).
//!
//! tokio-postgres knows `sslmode` disable/prefer/require only; this module maps all six
//! libpq modes onto it and onto rustls verification:
//!
//! | sslmode | TLS | verification |
//! |---|---|---|
//! | disable | never | - |
//! | allow, prefer (default) | if the server offers it | none (as libpq) |
//! | require | always | none, or chain when `sslrootcert` is given (as libpq) |
//! | verify-ca | always | chain |
//! | verify-full | always | chain and host name |

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};

use crate::config::{invalid, ConfigError};
use crate::net::{permanent, transient, NetError, Retry};
use crate::tls::{self, PgTls, Verify};
use crate::url::Url;

/// The `application_name` dockhand's connections use unless the URL names one, so a
/// blocker report or `pg_stat_activity` says who we are (set once by each binary).
static APP_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Sets the default `application_name` (`dockhand-entrypoint`, `dockhand-backup`).
pub fn set_application_name(name: &'static str) {
    let _ = APP_NAME.set(name);
}

/// A PostgreSQL target ready to connect.
#[derive(Clone)]
pub struct PgTarget {
    /// The URL, for messages (Display is redacted).
    pub url: Url,
    config: Config,
    /// Host names as given, with their port, resolved at connect time.
    tcp_hosts: Vec<(String, u16)>,
    verify: Verify,
    root_file: Option<PathBuf>,
}

/// Debug shows the redacted URL only: the config holds the password.
impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.url)
    }
}

/// What a URL's query says beyond the settings it puts into the [`Config`] at once:
/// read one parameter at a time by [`UrlQuery::apply`], then used by
/// [`PgTarget::from_url`].
struct UrlQuery {
    /// The password: the URL's, `PGPASSWORD`'s, or the query's `password`.
    password: Option<String>,
    /// The database: the URL's path, or the query's `dbname` (empty: not named).
    dbname: String,
    sslmode: String,
    root_file: Option<PathBuf>,
    /// `host=`: a socket directory (starting with `/`) or a host name.
    socket_dir: Option<String>,
    /// `port=`, over the URL's ports.
    port_override: Option<u16>,
    /// Prisma's `sslcert` (its CA certificate), used when `sslrootcert` is not given.
    prisma_root: Option<PathBuf>,
    /// Prisma's `sslaccept=strict`.
    strict: bool,
}

impl UrlQuery {
    fn new(password: Option<String>, dbname: String) -> UrlQuery {
        UrlQuery {
            password,
            dbname,
            sslmode: "prefer".to_string(),
            root_file: None,
            socket_dir: None,
            port_override: None,
            prisma_root: None,
            strict: false,
        }
    }

    /// One query parameter: libpq's, then Prisma's, else refused or ignored.
    fn apply(
        &mut self,
        k: &str,
        v: &str,
        url: &Url,
        config: &mut Config,
    ) -> Result<(), ConfigError> {
        if self.libpq_param(k, v, config)? || self.prisma_param(k, v, url)? {
            return Ok(());
        }
        unsupported_param(k, v)
    }

    /// A libpq parameter; false when `k` is none of those understood here.
    fn libpq_param(&mut self, k: &str, v: &str, config: &mut Config) -> Result<bool, ConfigError> {
        match k {
            "sslmode" => self.sslmode = v.to_string(),
            "sslrootcert" => self.root_file = (v != "system").then(|| PathBuf::from(v)),
            "host" => self.socket_dir = Some(v.to_string()),
            "port" => {
                self.port_override = Some(
                    v.parse()
                        .map_err(|_| invalid(format!("port={v:?} is not a port number")))?,
                )
            }
            "user" => {
                config.user(v);
            }
            "password" => self.password = Some(v.to_string()),
            "dbname" => self.dbname = v.to_string(),
            "application_name" => {
                config.application_name(v);
            }
            "options" => {
                config.options(v);
            }
            "connect_timeout" => {
                let secs: u64 = v.parse().map_err(|_| {
                    invalid(format!("connect_timeout={v:?} is not a number of seconds"))
                })?;
                // 0 waits indefinitely, for libpq and Prisma alike
                if secs > 0 {
                    config.connect_timeout(Duration::from_secs(secs));
                }
            }
            "target_session_attrs" => {
                config.target_session_attrs(session_attrs(v)?);
            }
            "channel_binding" => {
                config.channel_binding(channel_binding(v)?);
            }
            "gssencmode" | "sslcompression" | "keepalives" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A parameter of Prisma's; false when `k` is none of those.
    fn prisma_param(&mut self, k: &str, v: &str, url: &Url) -> Result<bool, ConfigError> {
        match k {
            // Prisma's: the schema its migrations and `_prisma_migrations` live in
            // (see `schema`); PgBouncer mode (see `pgbouncer`).
            "schema" => {
                if v.is_empty() || v.chars().any(char::is_control) {
                    return Err(invalid(format!(
                        "schema={v:?}: name the schema (Prisma's default is public)"
                    )));
                }
            }
            "pgbouncer" => {
                if v != "true" && v != "false" {
                    return Err(invalid(format!(
                        "pgbouncer={v:?}: use true or false (as Prisma does)"
                    )));
                }
            }
            // Prisma's TLS settings, read as Prisma reads them: `sslcert` is the CA
            // certificate (libpq's client certificate comes with `sslkey`, which
            // dockhand does not support), `sslaccept=strict` verifies the chain and
            // the host name.
            "sslcert" if !url.query.iter().any(|(k, _)| k == "sslkey") => {
                self.prisma_root = Some(PathBuf::from(v));
            }
            "sslaccept" => match v {
                "strict" => self.strict = true,
                "accept_invalid_certs" => {}
                _ => {
                    return Err(invalid(format!(
                        "sslaccept={v:?}: use strict or accept_invalid_certs (Prisma's values), or sslmode=verify-full"
                    )))
                }
            },
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// After the query: the user, application name, password and database the URL
    /// left out, as libpq fills them in.
    fn fill_in(&self, config: &mut Config, user: &str) {
        if config.get_user().is_none() {
            config.user(user);
        }
        if config.get_application_name().is_none() {
            config.application_name(APP_NAME.get().copied().unwrap_or("dockhand"));
        }
        if let Some(p) = &self.password {
            config.password(p);
        }
        let dbname = if self.dbname.is_empty() {
            std::env::var("PGDATABASE")
                .unwrap_or_else(|_| config.get_user().unwrap_or("postgres").to_string())
        } else {
            self.dbname.clone()
        };
        config.dbname(&dbname);
    }

    /// The hosts to connect to: a socket directory (set in `config`, TLS off), the
    /// query's `host`, or the URL's host list; TCP hosts with their ports.
    fn hosts(&self, url: &Url, config: &mut Config) -> Vec<(String, u16)> {
        let mut tcp_hosts = Vec::new();
        match &self.socket_dir {
            Some(dir) if dir.starts_with('/') => {
                config.host_path(dir);
                config.port(self.port_override.or(url.port()).unwrap_or(5432));
                config.ssl_mode(SslMode::Disable);
            }
            Some(h) => {
                tcp_hosts.push((h.clone(), self.port_override.or(url.port()).unwrap_or(5432)))
            }
            None => {
                for hp in &url.hosts {
                    tcp_hosts.push((
                        hp.host.clone(),
                        self.port_override.or(hp.port).unwrap_or(5432),
                    ));
                }
            }
        }
        tcp_hosts
    }
}

/// `target_session_attrs`'s value.
fn session_attrs(v: &str) -> Result<tokio_postgres::config::TargetSessionAttrs, ConfigError> {
    match v {
        "any" => Ok(tokio_postgres::config::TargetSessionAttrs::Any),
        "read-write" => Ok(tokio_postgres::config::TargetSessionAttrs::ReadWrite),
        _ => Err(invalid(format!(
            "target_session_attrs={v:?}: use any or read-write"
        ))),
    }
}

/// `channel_binding`'s value.
fn channel_binding(v: &str) -> Result<tokio_postgres::config::ChannelBinding, ConfigError> {
    use tokio_postgres::config::ChannelBinding;
    match v {
        "disable" => Ok(ChannelBinding::Disable),
        "prefer" => Ok(ChannelBinding::Prefer),
        "require" => Ok(ChannelBinding::Require),
        _ => Err(invalid(format!(
            "channel_binding={v:?}: use disable, prefer or require"
        ))),
    }
}

/// A parameter neither libpq's nor Prisma's as read here: a client certificate is
/// refused, another tool's parameter is ignored, anything else is refused.
fn unsupported_param(k: &str, v: &str) -> Result<(), ConfigError> {
    match k {
        "sslcert" | "sslkey" | "sslidentity" | "sslpassword" => Err(invalid(format!(
            "{k}=: TLS client certificates are not supported; authenticate with a password (the URL, PGPASSWORD or PGPASSWORD_FILE)"
        ))),
        other => match crate::url::pg_foreign_param(other) {
            Some(whose) => {
                tracing::debug!("ignoring {other}={v:?} in the PostgreSQL URL ({whose})");
                Ok(())
            }
            None => Err(invalid(format!(
                "unknown parameter {other:?} in the PostgreSQL URL: libpq's parameters (sslmode, application_name, options, connect_timeout, ...), Prisma's (schema, connection_limit, pool_timeout, pgbouncer, ...) and node-postgres' are understood; remove it, or check its spelling"
            ))),
        },
    }
}

/// How `sslmode` maps onto rustls verification and tokio-postgres' mode (the table
/// at the top of this module).
fn tls_mode(sslmode: &str, root_file: bool) -> Result<(Verify, SslMode), ConfigError> {
    Ok(match sslmode {
        "disable" => (Verify::None, SslMode::Disable),
        "allow" | "prefer" => (Verify::None, SslMode::Prefer),
        "require" if root_file => (Verify::ChainOnly, SslMode::Require),
        "require" => (Verify::None, SslMode::Require),
        "verify-ca" => (Verify::ChainOnly, SslMode::Require),
        "verify-full" => (Verify::Full, SslMode::Require),
        other => {
            return Err(invalid(format!(
                "sslmode={other:?}: use disable, prefer, require, verify-ca or verify-full"
            )))
        }
    })
}

/// Refuses a target that names no host, or requires channel binding where TLS is
/// never used.
fn check_hosts_and_binding(
    config: &Config,
    tcp_hosts: &[(String, u16)],
) -> Result<(), ConfigError> {
    if tcp_hosts.is_empty() && config.get_hosts().is_empty() {
        return Err(invalid("the PostgreSQL URL names no host"));
    }
    // Channel binding is a property of TLS: where TLS is never used it cannot
    // happen, so say so now rather than fail every connection.
    if config.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require
        && config.get_ssl_mode() == SslMode::Disable
    {
        return Err(invalid(
            "channel_binding=require needs TLS, which sslmode=disable (or a Unix socket) never uses: use sslmode=require or verify-full over TCP, or drop channel_binding",
        ));
    }
    Ok(())
}

impl PgTarget {
    /// Builds a target from a `postgres://` or `postgresql://` URL. `PGUSER`, `PGPASSWORD`
    /// (or `PGPASSWORD_FILE`) and `PGDATABASE` fill in what the URL leaves out, as libpq does.
    pub fn from_url(url: &Url) -> Result<PgTarget, ConfigError> {
        let mut config = Config::new();
        let user = if url.username.is_empty() {
            std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())
        } else {
            url.username.clone()
        };
        let mut password = url.password.clone();
        if password.is_none() {
            password = crate::config::var("PGPASSWORD")?;
        }
        let dbname = url
            .decoded_path()
            .ok_or_else(|| invalid("bad %-escape in the database name"))?
            .trim_start_matches('/')
            .to_string();
        let mut query = UrlQuery::new(password, dbname);
        for (k, v) in &url.query {
            query.apply(k, v, url, &mut config)?;
        }
        query.fill_in(&mut config, &user);
        let root_file = query.root_file.take().or(query.prisma_root.take());
        let (verify, mode) = tls_mode(&query.sslmode, root_file.is_some())?;
        // Prisma's sslaccept=strict: whenever TLS is used, chain and host name.
        let verify = if query.strict { Verify::Full } else { verify };
        config.ssl_mode(mode);
        let tcp_hosts = query.hosts(url, &mut config);
        check_hosts_and_binding(&config, &tcp_hosts)?;
        Ok(PgTarget {
            url: url.clone(),
            config,
            tcp_hosts,
            verify,
            root_file,
        })
    }

    /// A query parameter of the URL (the last one when repeated), e.g. Prisma's
    /// `schema` and `pgbouncer`, which dockhand reads where they apply.
    pub fn url_param(&self, key: &str) -> Option<&str> {
        self.url
            .query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The connection settings (host names not yet resolved).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database name this target connects to.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("")
    }

    /// Resolves the hosts, connects and authenticates. The connection task is spawned
    /// on the current runtime and ends when the returned client is dropped.
    pub async fn connect(&self) -> Result<Client, NetError> {
        let config = self.resolved().await?;
        let tls_config = self.tls_config()?;
        let (client, connection) = config
            .connect(PgTls(tls_config))
            .await
            .map_err(|e| classify_for(&e, Some(&self.host_names())))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The libpq environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME`, ...) that makes a libpq program
    /// (pg_dump, pg_restore, psql) connect with exactly the settings this target
    /// resolved: the password from the URL, `PGPASSWORD` or `PGPASSWORD_FILE`, the user
    /// and database filled in as libpq would, the host list or socket directory.
    /// `app_name` names the connection in `pg_stat_activity` unless the URL does.
    pub fn libpq_env(&self, app_name: &str) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        let (hosts, ports) = self.libpq_hosts();
        env.push(("PGHOST", hosts.join(",")));
        env.push(("PGPORT", ports.join(",")));
        if let Some(u) = self.config.get_user() {
            env.push(("PGUSER", u.to_string()));
        }
        if let Some(p) = self.config.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(p).into_owned()));
        }
        if let Some(d) = self.config.get_dbname() {
            env.push(("PGDATABASE", d.to_string()));
        }
        let query = |k: &str| self.url_param(k).map(str::to_string);
        env.push(("PGSSLMODE", self.libpq_sslmode()));
        // also Prisma's sslcert (its CA certificate), never libpq's client certificate
        if let Some(root) = query("sslrootcert")
            .or_else(|| self.root_file.as_ref().map(|p| p.display().to_string()))
        {
            env.push(("PGSSLROOTCERT", root));
        }
        env.push((
            "PGAPPNAME",
            query("application_name").unwrap_or_else(|| app_name.to_string()),
        ));
        if let Some(o) = self.config.get_options() {
            env.push(("PGOPTIONS", o.to_string()));
        }
        if let Some(t) = self.config.get_connect_timeout() {
            env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string()));
        }
        if let Some(t) = query("target_session_attrs") {
            env.push(("PGTARGETSESSIONATTRS", t));
        }
        if let Some(c) = query("channel_binding") {
            env.push(("PGCHANNELBINDING", c));
        }
        env
    }

    /// `PGHOST` and `PGPORT`'s lists: the TCP hosts with their ports, or the socket
    /// directory with its port.
    fn libpq_hosts(&self) -> (Vec<String>, Vec<String>) {
        use tokio_postgres::config::Host;
        if self.tcp_hosts.is_empty() {
            let ports = self.config.get_ports();
            self.config
                .get_hosts()
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let host = match h {
                        Host::Tcp(name) => name.clone(),
                        Host::Unix(dir) => dir.display().to_string(),
                    };
                    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    (host, port.to_string())
                })
                .unzip()
        } else {
            self.tcp_hosts
                .iter()
                .map(|(h, p)| (h.clone(), p.to_string()))
                .unzip()
        }
    }

    /// `PGSSLMODE`: off over a socket, verify-full where this target verifies the host
    /// name, else the URL's `sslmode`.
    fn libpq_sslmode(&self) -> String {
        use tokio_postgres::config::Host;
        if self
            .config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, Host::Unix(_)))
        {
            "disable".to_string()
        } else if self.verify == Verify::Full && self.config.get_ssl_mode() == SslMode::Require {
            // also Prisma's sslaccept=strict
            "verify-full".to_string()
        } else {
            self.url_param("sslmode").unwrap_or("prefer").to_string()
        }
    }

    /// The host names connected to, for messages (`db`, `db1, db2`).
    fn host_names(&self) -> String {
        let names: Vec<&str> = self.tcp_hosts.iter().map(|(h, _)| h.as_str()).collect();
        names.join(", ")
    }

    /// The rustls configuration this target's `sslmode` asks for.
    pub fn tls_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, NetError> {
        tls::client_config(self.verify, self.root_file.as_deref())
    }

    /// The same target for another database on the same server.
    pub fn with_dbname(&self, db: &str) -> PgTarget {
        let mut t = self.clone();
        t.config.dbname(db);
        t.url = t.url.with_database(db);
        t
    }

    /// The connection settings with host names resolved by [`crate::net::resolve`]
    /// (which needs no NSS in a static binary).
    async fn resolved(&self) -> Result<Config, NetError> {
        let mut config = self.config.clone();
        for (host, port) in &self.tcp_hosts {
            let addrs = crate::net::resolve(host, *port).await?;
            for a in addrs {
                config.host(host);
                config.hostaddr(a.ip());
                config.port(a.port());
            }
        }
        Ok(config)
    }

    /// Connects for a connection pool: like [`PgTarget::connect`] but with
    /// tokio-postgres's own error, as `deadpool_postgres::Connect` wants. A host name
    /// our resolver cannot resolve is left to tokio-postgres, whose error then says so.
    pub async fn connect_raw(
        &self,
        tls_config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let config = match self.resolved().await {
            Ok(c) => c,
            Err(_) => self.config.clone(),
        };
        let (client, connection) = config.connect(PgTls(tls_config)).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, task))
    }

    /// Connects and runs `SELECT 1`: the server accepts queries.
    pub async fn ping(&self) -> Result<(), NetError> {
        let client = self.connect().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }
}

/// `pg_backend_pid()` over the simple query protocol (prepared statements themselves
/// break behind a transaction pooler, and would hide what is being tested).
async fn backend_pid(c: &Client) -> Result<i32, NetError> {
    let rows = c
        .simple_query("SELECT pg_backend_pid()")
        .await
        .map_err(|e| classify(&e))?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .ok_or_else(|| permanent("no answer to SELECT pg_backend_pid()"))
}

/// Detects a transaction pooler (PgBouncer in transaction mode) by behaviour, not by
/// port: with `a` open, a second connection B is made, and the backend of each is
/// asked in turn, A, B, A, three times. A direct connection (or a session pooler)
/// gives each client its own backend for good; a transaction pooler hands B the
/// backend A just used, or A another one. Returns the shared backend's pid when pooled.
pub async fn shared_backend(target: &PgTarget, a: &Client) -> Result<Option<i32>, NetError> {
    let b = target.connect().await?;
    let first = backend_pid(a).await?;
    for _ in 0..3 {
        let pb = backend_pid(&b).await?;
        let pa = backend_pid(a).await?;
        if pb == first || pa != first {
            return Ok(Some(first));
        }
    }
    Ok(None)
}

/// A session that blocks another, as `pg_stat_activity` shows it to our role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub pid: i32,
    /// Its role and `application_name`: visible to every role.
    pub role: String,
    pub application: String,
    /// The rest, which the server shows only to members of its role and of
    /// `pg_read_all_stats`; `None` when hidden from us.
    pub activity: Option<Activity>,
    /// Our role, quoted as an identifier (for the GRANT that would show the rest).
    pub viewer: String,
}

/// What a blocking session is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub peer: Peer,
    /// `active`, `idle in transaction`, ...
    pub state: String,
    /// How long its transaction has been open; `None` when it is in none.
    pub transaction_age: Option<Duration>,
    /// The start of its query, as the server shows it.
    pub query: String,
}

/// Where a session comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A client's address.
    Tcp(String),
    UnixSocket,
    /// No client: a server process (`autovacuum worker`, ...).
    Server(String),
}

/// The sessions that block backend `pid` (`pg_blocking_pids`), each as much as our
/// role may see of it.
pub async fn blockers(c: &Client, pid: i32) -> Result<Vec<Blocker>, NetError> {
    // A session hidden from us has NULL address, state and transaction start, which
    // were once printed as "from local, , in a transaction for 0s"; the server marks
    // it by the query text '<insufficient privilege>'.
    let rows = c
        .query_typed(
            "SELECT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), \
             quote_ident(current_user::text), a.query IS DISTINCT FROM '<insufficient privilege>', \
             host(a.client_addr), coalesce(a.client_port = -1, false), coalesce(a.backend_type, ''), \
             coalesce(a.state, ''), \
             (extract(epoch FROM clock_timestamp() - a.xact_start) * 1000)::bigint, \
             left(coalesce(a.query, ''), 120) \
             FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids($1))",
            &[(&pid, tokio_postgres::types::Type::INT4)],
        )
        .await
        .map_err(|e| classify(&e))?;
    Ok(rows
        .iter()
        .map(|r| Blocker {
            pid: r.get(0),
            role: r.get(1),
            application: r.get(2),
            viewer: r.get(3),
            activity: r.get::<_, bool>(4).then(|| Activity {
                peer: match (r.get::<_, Option<String>>(5), r.get::<_, bool>(6)) {
                    (Some(addr), _) => Peer::Tcp(addr),
                    (None, true) => Peer::UnixSocket,
                    (None, false) => Peer::Server(r.get(7)),
                },
                state: r.get(8),
                transaction_age: r
                    .get::<_, Option<i64>>(9)
                    .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                query: r.get(10),
            }),
        })
        .collect())
}

impl Blocker {
    /// One line: `backend 812 "nightly-dump" (role app) from 10.0.0.5, idle in
    /// transaction, in a transaction for 4.8s, running "SELECT ..."`, the query passed
    /// through `mask` (string literals may hold secrets). What is hidden from us is
    /// said so, with the GRANT that shows it.
    pub fn describe(&self, mask: impl Fn(&str) -> String) -> String {
        let mut line = format!("backend {}", self.pid);
        if !self.application.is_empty() {
            line.push_str(&format!(" {:?}", self.application));
        }
        let role = if self.role.is_empty() {
            String::new()
        } else {
            format!("role {}", self.role)
        };
        let Some(a) = &self.activity else {
            let sep = if role.is_empty() { "" } else { "; " };
            line.push_str(&format!(
                " ({role}{sep}its address, state, transaction and query are hidden from role {}: GRANT pg_read_all_stats TO {} to see them)",
                self.viewer, self.viewer
            ));
            return line;
        };
        if !role.is_empty() {
            line.push_str(&format!(" ({role})"));
        }
        match &a.peer {
            Peer::Tcp(addr) => line.push_str(&format!(" from {addr}")),
            Peer::UnixSocket => line.push_str(" over a Unix socket"),
            Peer::Server(kind) if !kind.is_empty() => line.push_str(&format!(", {kind}")),
            Peer::Server(_) => {}
        }
        if !a.state.is_empty() {
            line.push_str(&format!(", {}", a.state));
        }
        match a.transaction_age {
            Some(age) => line.push_str(&format!(
                ", in a transaction for {}",
                crate::duration::format(age)
            )),
            None => line.push_str(", in no transaction"),
        }
        line.push_str(&format!(", running {:?}", mask(&a.query)));
        line
    }
}

/// What to do about a certificate that is not trusted, for PostgreSQL.
const TRUST_HINT: &str =
    "name its CA with sslrootcert=FILE or SSL_CERT_FILE; sslmode=require encrypts without checking";

/// Sorts a tokio-postgres error and gives it a short, password-free reason.
pub fn classify(e: &tokio_postgres::Error) -> NetError {
    classify_for(e, None)
}

/// [`classify`], naming `host` (the host or hosts connected to) in a certificate error.
fn classify_for(e: &tokio_postgres::Error, host: Option<&str>) -> NetError {
    let host = host.filter(|h| !h.is_empty()).unwrap_or("the server");
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let reason = db.message().to_string();
        // 57P03 cannot_connect_now ("the database system is starting up"),
        // 53300 too_many_connections, 57P01 admin_shutdown, 08xxx connection exceptions.
        // PgBouncer reports its own authentication and routing errors as 08P01, and
        // relays the server's refusal of a missing database or role the same way
        // (`database "x" does not exist`); its next attempts then stall on the pool's
        // login retry, so waiting would only hide the cause.
        let pooler_refusal = code == "08P01"
            && (reason.contains("authentication failed")
                || reason.contains("no such database")
                || reason.contains("does not exist"));
        let waiting_helps = !pooler_refusal
            && (matches!(code, "57P03" | "53300" | "57P01" | "57P02")
                || code.starts_with("08")
                || code.starts_with("53"));
        let kind = if waiting_helps {
            Retry::Transient
        } else {
            Retry::Permanent
        };
        return NetError::new(kind, reason);
    }
    // Walk the source chain for I/O and TLS causes.
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        // tokio-postgres's "authentication error" shows its cause only as a source.
        if s.to_string().contains("did not use channel binding") {
            return permanent(
                "channel_binding=require, but the server did not use channel binding: it needs TLS (sslmode=require or stricter, and ssl=on on the server, not through a pooler that ends TLS) and SCRAM-SHA-256 password authentication",
            );
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                return permanent(tls::reason(io, host, TRUST_HINT));
            }
            return transient(crate::error::io_reason(io));
        }
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return permanent(tls::error_reason(r, host, TRUST_HINT));
        }
        source = s.source();
    }
    // tokio-postgres says what went wrong in the error's source, not in its Display
    // ("invalid configuration", "error performing TLS handshake").
    let cause = std::error::Error::source(e)
        .map(|c| c.to_string())
        .unwrap_or_default();
    match cause.as_str() {
        "password missing" => {
            return permanent(
                "the server asks for a password and no password was given: set PGPASSWORD or PGPASSWORD_FILE, or write it into the URL as USER:PASSWORD@HOST",
            )
        }
        "server does not support TLS" => {
            return permanent(
                "the server does not support TLS, which the URL's sslmode (require, verify-ca or verify-full) demands: turn on ssl in the server, or use sslmode=prefer",
            )
        }
        _ => {}
    }
    let text = crate::redact::text(&if cause.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {cause}")
    });
    if text.contains("server does not support TLS") || text.contains("TLS") {
        return permanent(text);
    }
    if e.is_closed() {
        return transient("connection closed by the server");
    }
    transient(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn target(s: &str) -> Result<PgTarget, ConfigError> {
        PgTarget::from_url(&Url::parse(s).unwrap())
    }

    #[test]
    fn builds_config() {
        let t = target("postgres://app:pw@db:6543/shop?sslmode=verify-full&application_name=x")
            .unwrap();
        assert_eq!(t.dbname(), "shop");
        assert_eq!(t.tcp_hosts, vec![("db".to_string(), 6543)]);
        assert_eq!(t.verify, Verify::Full);
        let t = target("postgresql://app@h/?host=/run/postgresql").unwrap();
        assert!(t.tcp_hosts.is_empty());
        assert_eq!(t.dbname(), "app");
    }

    #[test]
    fn blocker_lines_say_what_is_shown_and_what_is_hidden() {
        let hidden = Blocker {
            pid: 7,
            role: "postgres".into(),
            application: "pg_dump".into(),
            activity: None,
            viewer: "app".into(),
        };
        assert_eq!(
            hidden.describe(|q| q.to_string()),
            "backend 7 \"pg_dump\" (role postgres; its address, state, transaction and query are hidden from role app: GRANT pg_read_all_stats TO app to see them)"
        );
        let shown = |peer| Blocker {
            activity: Some(Activity {
                peer,
                state: "idle in transaction".into(),
                transaction_age: Some(Duration::from_millis(5200)),
                query: "SELECT 'x'".into(),
            }),
            ..hidden.clone()
        };
        assert_eq!(
            shown(Peer::Tcp("10.0.0.5".into())).describe(|_| "SELECT '...'".into()),
            "backend 7 \"pg_dump\" (role postgres) from 10.0.0.5, idle in transaction, in a transaction for 5.2s, running \"SELECT '...'\""
        );
        assert!(shown(Peer::UnixSocket)
            .describe(|q| q.into())
            .contains("(role postgres) over a Unix socket, idle"));
        assert!(shown(Peer::Server("autovacuum worker".into()))
            .describe(|q| q.into())
            .contains("(role postgres), autovacuum worker, idle"));
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(target("postgres://h/db?sslmode=sometimes")
            .unwrap_err()
            .message()
            .contains("sslmode"));
        assert!(target("postgres://h/db?bogus=1")
            .unwrap_err()
            .message()
            .contains("bogus"));
        assert!(target("postgres://h/db?channel_binding=sometimes")
            .unwrap_err()
            .message()
            .contains("disable, prefer or require"));
        for no_tls in [
            "postgres://h/db?channel_binding=require&sslmode=disable",
            "postgres://u@/db?host=/run/postgresql&channel_binding=require",
        ] {
            let e = target(no_tls).unwrap_err();
            assert!(e.message().contains("needs TLS"), "{e}");
        }
        let t = target("postgres://h/db?channel_binding=require&sslmode=verify-full").unwrap();
        assert_eq!(
            t.config().get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );
        assert!(t
            .libpq_env("x")
            .contains(&("PGCHANNELBINDING", "require".into())));
        assert!(target("postgres:///db")
            .unwrap_err()
            .message()
            .contains("no host"));
        for (bad, says) in [
            ("postgres://h/db?schema=", "schema"),
            ("postgres://h/db?pgbouncer=yes", "pgbouncer"),
            (
                "postgres://h/db?connection_limit=5&sslidentity=id.p12",
                "client certificates",
            ),
            (
                "postgres://h/db?sslcert=c.pem&sslkey=k.pem",
                "client certificates",
            ),
            ("postgres://h/db?sslaccept=maybe", "sslaccept"),
            ("postgres://h/db?schema=public&shema=public", "\"shema\""),
        ] {
            let e = target(bad).unwrap_err();
            assert!(e.message().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn accepts_the_urls_prisma_and_node_postgres_users_write() {
        for ok in [
            "postgresql://app:pw@db:5432/app?schema=public",
            "postgresql://app:pw@db:5432/app?schema=public&connection_limit=5&pool_timeout=10",
            "postgresql://app:pw@pgbouncer:6432/app?pgbouncer=true&connection_limit=1",
            "postgresql://app:pw@db/app?connect_timeout=0&socket_timeout=30&statement_cache_size=0",
            "postgresql://app:pw@db/app?ssl=true&application_name=web&options=-c%20search_path%3Dfoo",
            "postgresql://app:pw@db/app?max_connection_lifetime=60&max_idle_connection_lifetime=10",
        ] {
            let t = target(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            let env = t.libpq_env("dockhand-backup");
            // libpq refuses parameters it does not know: none reaches it
            assert!(
                env.iter().all(|(k, v)| !v.contains("schema=") && !v.contains("connection_limit") && k.starts_with("PG")),
                "{ok}: {env:?}"
            );
        }
        let t = target("postgresql://db/app?connect_timeout=0").unwrap();
        assert_eq!(
            t.config().get_connect_timeout(),
            None,
            "0 waits indefinitely"
        );
        let t =
            target("postgresql://db/app?schema=tenant_1&options=-c%20search_path%3Dfoo").unwrap();
        assert_eq!(t.url_param("schema"), Some("tenant_1"));
        assert_eq!(t.config().get_options(), Some("-c search_path=foo"));
        // Prisma's TLS settings: sslcert is its CA, sslaccept=strict verifies fully
        let t =
            target("postgresql://db/app?sslmode=require&sslcert=/ca.pem&sslaccept=strict").unwrap();
        assert_eq!(
            (t.verify, t.root_file.as_deref()),
            (Verify::Full, Some(Path::new("/ca.pem")))
        );
        let env = t.libpq_env("x");
        assert!(
            env.contains(&("PGSSLMODE", "verify-full".into())),
            "{env:?}"
        );
        assert!(
            env.contains(&("PGSSLROOTCERT", "/ca.pem".into())),
            "{env:?}"
        );
    }
}
