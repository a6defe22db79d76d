//! `backup restore`: a backup streamed back (download, decrypt, decompress, checksum)
//! into `pg_restore` (or `psql` for the globals). By default into a new database named
//! `<db>_restore_<time>`, so a restore can never overwrite anything. Into an existing
//! database only when it is empty, or with `--clean` and a confirmation (typed at the
//! terminal, or `--yes`). `pg_restore` runs in one transaction and stops at the first
//! error, so a failed restore leaves the target as it was (and a database the restore
//! created is dropped again). The report says what arrived: tables, rows, time.

use std::process::Stdio;
use std::time::Instant;

use super::catalog::{self, Backup, Reading, Side};
use super::dump::{self, Tools};
use super::manifest::{file_safe, stamp, Content};
use super::{err, unix_now, BackupError, Cancel};
use crate::pg::PgTarget;
use crate::url::Url;

/// What to restore, and where.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A backup name, or `latest`.
    pub name: String,
    pub from: Option<Side>,
    /// The target database (`--to`); default: a new database on the backup URL's server.
    pub to: Option<Url>,
    /// Drop the backup's objects in the target first (`--clean`).
    pub clean: bool,
    /// Confirmed on the command line (`--yes`).
    pub yes: bool,
    /// Skip ownership and privileges (restoring as another role).
    pub no_owner: bool,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Report {
    pub backup: String,
    pub database: String,
    pub created: bool,
    pub tables: i64,
    pub rows: i64,
    pub seconds: f64,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Restores. `confirm` is asked (with the database name) before a `--clean` restore
/// into a non-empty database without `--yes`; it returns whether the user agreed.
pub fn restore(
    r: &Reading,
    backups: &[Backup],
    req: &Request,
    backup_url: Option<&Url>,
    cancel: &Cancel,
    confirm: &dyn Fn(&str) -> Result<bool, BackupError>,
) -> Result<Report, BackupError> {
    let clock = Instant::now();
    let b = catalog::find(backups, &req.name)?;
    let m = &b.manifest;
    let from = match req.from {
        Some(Side::Local) if !b.local => {
            return Err(err(format!(
                "{}: there is no local copy (try --from s3)",
                m.name
            )))
        }
        Some(Side::S3) if !b.remote => {
            return Err(err(format!(
                "{}: there is no copy in S3 (try --from local)",
                m.name
            )))
        }
        Some(f) => f,
        None if b.local => Side::Local,
        None => Side::S3,
    };
    let globals = m.kind == Content::Globals;
    let url = match (&req.to, backup_url) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => {
            let db = if globals {
                PgTarget::from_url(u).map_err(super::usage)?.dbname().to_string()
            } else {
                format!(
                    "{}_restore_{}",
                    file_safe(&m.database).to_lowercase(),
                    stamp(unix_now()).to_lowercase().replace('t', "_").trim_end_matches('z')
                )
            };
            u.with_database(&db)
        }
        (None, None) => {
            return Err(err(
                "no target: pass --to postgres://... or set DIRECT_URL (a new database is created on its server)",
            ))
        }
    };
    let target = PgTarget::from_url(&url).map_err(|e| err(format!("{url}: {e}")))?;
    let database = target.dbname().to_string();

    // Does it exist, and is it empty?
    let (server, exists, nonempty) = r.rt.block_on(async {
        let (admin, db) = connect_first(&target, &[&database, "postgres", "template1"]).await?;
        let connected_to_target = db == database;
        let server = dump::server_of(&admin, &target).await?;
        let q =
            |e: tokio_postgres::Error| err(format!("{}: {}", target.url, crate::pg::classify(&e)));
        let exists = connected_to_target
            || admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
                .await
                .map_err(q)?
                .is_some();
        let nonempty = if exists && !globals {
            let c = if connected_to_target {
                admin
            } else {
                target
                    .connect()
                    .await
                    .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))?
            };
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
                    &[],
                )
                .await
                .map_err(q)?
                .get(0);
            n > 0
        } else {
            false
        };
        Ok::<_, BackupError>((server, exists, nonempty))
    })?;
    if nonempty {
        if !req.clean {
            return Err(err(format!(
                "database {database:?} is not empty: restore into a new database (leave out --to), or pass --clean to drop the backup's objects in it first"
            )));
        }
        if !req.yes && !confirm(&database)? {
            return Err(err(format!("not confirmed: {database:?} left as it was")));
        }
    }
    let tools: Tools = dump::find_tools(server.major.max(m.pg_dump_major()))?;
    let created = !exists && !globals;
    if created {
        r.rt.block_on(async {
            let (admin, _) = connect_first(&target, &["postgres", "template1"]).await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&database)))
                .await
                .map_err(|e| {
                    let hint = if e.code()
                        == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
                    {
                        ": grant the role CREATEDB, or create the database and pass --to"
                    } else {
                        ""
                    };
                    err(format!(
                        "cannot create database {database:?}: {}{hint}",
                        crate::pg::classify(&e)
                    ))
                })
        })?;
    }
    let result = (|| {
        let opened = catalog::open(r, m, from)?;
        // The connection settings travel in the environment; pg_restore insists on a
        // --dbname, given as a quoted conninfo (a bare name holding '=' would be read
        // as a connection string).
        let mut cmd = if globals {
            let mut c = dump::libpq_command(&tools.psql(), Some(&target));
            c.args([
                "--no-password",
                "--quiet",
                "--no-psqlrc",
                "--single-transaction",
                "--set=ON_ERROR_STOP=1",
                "--file=-",
            ]);
            c
        } else {
            let mut c = dump::libpq_command(&tools.pg_restore, Some(&target));
            c.args(["--no-password", "--exit-on-error", "--single-transaction"])
                .arg(format!("--dbname={}", dump::conninfo_dbname(&database)));
            if req.clean {
                c.args(["--clean", "--if-exists"]);
            }
            if req.no_owner {
                c.args(["--no-owner", "--no-privileges"]);
            }
            c
        };
        cmd.stdout(Stdio::null());
        let (status, messages) = catalog::feed(cmd, opened, m, cancel)?;
        if !status.success() {
            return Err(err(format!(
                "{} failed ({status}): {}",
                if globals { "psql" } else { "pg_restore" },
                messages.trim().replace('\n', "; ")
            )));
        }
        Ok(())
    })();
    if let Err(e) = result {
        if created {
            let _ = r.rt.block_on(async {
                let (admin, _) = connect_first(&target, &["postgres", "template1"])
                    .await
                    .ok()?;
                admin
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {}",
                        quote_ident(&database)
                    ))
                    .await
                    .ok()
            });
        }
        return Err(e);
    }
    let restored_in = clock.elapsed().as_secs_f64();
    let (tables, rows) = if globals {
        (0, 0)
    } else {
        r.rt.block_on(count(&target))?
    };
    Ok(Report {
        backup: m.name.clone(),
        database,
        created,
        tables,
        rows,
        seconds: restored_in,
    })
}

/// Connects to the first of `dbs` on the target's server that accepts; returns the
/// client and the database it is connected to.
async fn connect_first<'a>(
    target: &PgTarget,
    dbs: &[&'a str],
) -> Result<(tokio_postgres::Client, &'a str), BackupError> {
    let mut last = String::new();
    for db in dbs {
        match target.with_dbname(db).connect().await {
            Ok(c) => return Ok((c, db)),
            Err(e) => last = e.message().to_string(),
        }
    }
    Err(err(format!("{}: {last}", target.url)))
}

/// User tables and their exact row counts in the restored database.
async fn count(target: &PgTarget) -> Result<(i64, i64), BackupError> {
    let c = target
        .connect()
        .await
        .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))?;
    let q = |e: tokio_postgres::Error| err(format!("counting rows: {}", crate::pg::classify(&e)));
    let tables = c
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%'",
            &[],
        )
        .await
        .map_err(q)?;
    let mut rows = 0i64;
    for t in &tables {
        let (schema, name): (String, String) = (t.get(0), t.get(1));
        let n: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM ONLY {}.{}",
                    quote_ident(&schema),
                    quote_ident(&name)
                ),
                &[],
            )
            .await
            .map_err(q)?
            .get(0);
        rows += n;
    }
    Ok((tables.len() as i64, rows))
}
