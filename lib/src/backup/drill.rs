//! `backup drill`: proves that a backup restores. `verify` reads a backup through
//! (checksum, decryption, a full read by pg_restore) but cannot see a dump that was
//! written without error and does not restore: since PostgreSQL 10.3 pg_restore runs
//! with an empty `search_path`, so a CHECK constraint whose function names a table
//! without its schema fails on restore and that table arrives empty. A drill restores
//! the backup by the restore's own path ([`super::restore`], parallel where it can be)
//! into a scratch database `<db>_drill_<time>`, on the backup's server or the one
//! `--into`/`BACKUP_DRILL_URL` names, with pg_restore going on past errors so that
//! every failing table is seen; then compares every table's rows and the large
//! objects with the exact counts in the manifest, runs the team's own checks
//! (`BACKUP_DRILL_SQL`) and drops the scratch database (also when stopped).

use std::path::PathBuf;

use tracing::{info, warn};

use super::catalog::{self, Backup, Reading, Side};
use super::manifest::{Counts, Drill};
use super::restore::{self, Request};
use super::{err, unix_now, BackupError, Cancel};
use crate::pg::PgTarget;
use crate::url::Url;

/// What to drill, and where.
#[derive(Debug, Clone, Default)]
pub struct DrillRequest {
    /// A backup name, or `latest`.
    pub name: String,
    pub from: Option<Side>,
    /// The server of the scratch database (`--into`, `BACKUP_DRILL_URL`); default the
    /// backup URL's.
    pub into: Option<Url>,
    /// Keep the scratch database (`--keep`).
    pub keep: bool,
    pub jobs: usize,
    pub tmp_dir: Option<PathBuf>,
    /// `BACKUP_DRILL_SQL`: a file of queries that must each return true.
    pub sql: Option<PathBuf>,
}

/// What a drill found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub backup: String,
    /// The scratch database (dropped unless kept).
    pub database: String,
    pub kept: bool,
    pub drill: Drill,
}

/// The queries of a `BACKUP_DRILL_SQL` file: statements ending with `;` at the end of
/// a line; without any `;`, one query a line. `--` comment lines and blank lines are
/// skipped.
pub fn queries(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect();
    if !lines.iter().any(|l| l.ends_with(';')) {
        return lines.iter().map(|l| l.to_string()).collect();
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in lines {
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(l);
        if l.ends_with(';') {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// pg_restore's messages cut into its reports: a line starting with `pg_restore:` and
/// the lines that continue it. Each error is paired with the object of the TOC entry
/// pg_restore named before it (`TABLE DATA a_child`), if any.
fn restore_errors(messages: &str) -> Vec<(Option<String>, String)> {
    let mut entries: Vec<String> = Vec::new();
    for line in messages.lines() {
        if line.starts_with("pg_restore:") || entries.is_empty() {
            entries.push(line.to_string());
        } else if let Some(last) = entries.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    let mut object: Option<String> = None;
    let mut out = Vec::new();
    for e in entries {
        let first = e.lines().next().unwrap_or("").to_string();
        if let Some(toc) = first.strip_prefix("pg_restore: from TOC entry ") {
            // `3365; 0 16390 TABLE DATA a_child app`: the object is the type and the
            // name (the owner, last, left out)
            let rest = toc.split_once("; ").map_or(toc, |(_, r)| r);
            let words: Vec<&str> = rest.split(' ').skip(2).collect();
            object = (words.len() > 1).then(|| words[..words.len() - 1].join(" "));
            continue;
        }
        if first.starts_with("pg_restore: warning: errors ignored on restore") {
            continue;
        }
        if first.starts_with("pg_restore: error:") || first.contains("ERROR:") {
            out.push((object.clone(), first));
        }
    }
    out
}

/// The data error pg_restore reported for `table`, if any.
fn error_for<'a>(errors: &'a [(Option<String>, String)], table: &str) -> Option<&'a str> {
    let data = format!("TABLE DATA {table}");
    let copy = format!("COPY failed for table \"{table}\"");
    errors
        .iter()
        .find(|(o, e)| o.as_deref() == Some(data.as_str()) || e.contains(&copy))
        .or_else(|| {
            errors
                .iter()
                .find(|(o, _)| o.as_deref() == Some(&format!("TABLE {table}")))
        })
        .map(|(_, e)| e.as_str())
}

/// Compares the backup's counts with the restored ones; one line per difference, and
/// the rows the restored copy lacks.
fn compare(
    backup: &Counts,
    restored: &Counts,
    errors: &[(Option<String>, String)],
) -> (Vec<String>, i64) {
    let mut problems = Vec::new();
    let mut missing = 0i64;
    for (schema, table, rows) in &backup.tables {
        let got = restored
            .tables
            .iter()
            .find(|(s, t, _)| s == schema && t == table)
            .map(|t| t.2);
        let n = got.unwrap_or(0);
        if got == Some(*rows) {
            continue;
        }
        missing += (rows - n).max(0);
        let mut line = match got {
            Some(n) => format!("{schema}.{table}: {rows} rows in the backup, {n} restored"),
            None => {
                format!("{schema}.{table}: {rows} rows in the backup, the table was not restored")
            }
        };
        if let Some(e) = error_for(errors, table) {
            line.push_str(": ");
            line.push_str(e);
        }
        problems.push(line);
    }
    if backup.large_objects != restored.large_objects {
        problems.push(format!(
            "large objects: {} in the backup, {} restored",
            backup.large_objects, restored.large_objects
        ));
    }
    (problems, missing)
}

/// The queries of the `BACKUP_DRILL_SQL` file at `path` (none without one); a file
/// that cannot be read is a usage error.
pub(crate) fn read_checks(path: Option<&std::path::Path>) -> Result<Vec<String>, BackupError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        BackupError::new(
            super::BackupKind::Usage,
            format!(
                "BACKUP_DRILL_SQL {}: {}",
                path.display(),
                crate::error::io_reason(&e)
            ),
        )
    })?;
    Ok(queries(&text))
}

/// Runs each query of `BACKUP_DRILL_SQL` on the restored copy; a problem for each
/// that does not return true.
pub(crate) async fn run_checks(target: &PgTarget, queries: &[String]) -> Vec<String> {
    let client = match target.connect().await {
        Ok(c) => c,
        Err(e) => return vec![format!("BACKUP_DRILL_SQL: cannot connect: {e}")],
    };
    let mut problems = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let short: String = q.chars().take(80).collect();
        let short = short.replace('\n', " ");
        match client.simple_query(q).await {
            Ok(msgs) => {
                let value = msgs.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(String::from)),
                    _ => None,
                });
                if value != Some(Some("t".to_string())) {
                    let got = match value {
                        None => "no row".to_string(),
                        Some(None) => "NULL".to_string(),
                        Some(Some(v)) => format!("{v:?}"),
                    };
                    problems.push(format!(
                        "BACKUP_DRILL_SQL check {} ({short}) returned {got}, not true",
                        i + 1
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "BACKUP_DRILL_SQL check {} ({short}) failed: {}",
                i + 1,
                crate::pg::classify(&e)
            )),
        }
    }
    problems
}

/// Drills the backup `req.name` from `backups`: restores it into a scratch database,
/// checks it, drops it (unless kept), and records the result in the backup's
/// manifest. `Ok` with the outcome whether the drill passed or not; `Err` when it
/// could not run (no such backup, no server, stopped).
pub fn drill(
    r: &Reading,
    backups: &[Backup],
    req: &DrillRequest,
    backup_url: Option<&Url>,
    cancel: &Cancel,
) -> Result<Outcome, BackupError> {
    let checks = read_checks(req.sql.as_deref())?;
    let server = req.into.as_ref().or(backup_url).ok_or_else(|| {
        err("no server to drill on: pass --into postgres://... (or set BACKUP_DRILL_URL or DIRECT_URL)")
    })?;
    let b = catalog::find(backups, &req.name)?;
    let m = &b.manifest;
    info!("{}: drilling (a restore into a scratch database)", m.name);
    let report = restore::restore(
        r,
        backups,
        &Request {
            name: m.name.clone(),
            from: req.from,
            to: Some(server.clone()),
            no_owner: true,
            jobs: req.jobs,
            tmp_dir: req.tmp_dir.clone(),
            drill: true,
            ..Request::default()
        },
        backup_url,
        cancel,
        &|_| Ok(false),
    )?;
    let template = PgTarget::from_url(server).map_err(super::usage)?;
    let target = template.with_dbname(&report.database);
    let finish = |keep: bool| {
        if !keep && !restore::drop_database(r, &target) {
            warn!(
                "the scratch database {:?} could not be dropped: drop it by hand",
                report.database
            );
        }
    };
    if let Err(e) = cancel.check() {
        finish(false);
        return Err(e);
    }
    let (mut problems, rows_missing) = problems_of(m, &report);
    if !checks.is_empty() && cancel.check().is_ok() {
        problems.extend(r.rt.block_on(run_checks(&target, &checks)));
    }
    if let Err(e) = cancel.check() {
        finish(false);
        return Err(e);
    }
    finish(req.keep);
    let drill = Drill {
        at: unix_now(),
        ok: problems.is_empty(),
        seconds: report.seconds,
        rows_missing,
        problems: problems
            .into_iter()
            .map(|p| crate::redact::text(&p))
            .collect(),
    };
    save(r, b, &drill);
    Ok(Outcome {
        backup: m.name.clone(),
        database: report.database,
        kept: req.keep,
        drill,
    })
}

/// What the restore of a drill shows: each table whose rows differ from the
/// manifest's counts (with pg_restore's error for it), pg_restore's other errors, and
/// the rows missing in all.
fn problems_of(m: &super::manifest::Manifest, report: &restore::Report) -> (Vec<String>, i64) {
    let errors = restore_errors(&report.messages);
    let restored = report.counts.clone().unwrap_or_default();
    let (mut problems, rows_missing) = match &m.counts {
        Some(counts) => compare(counts, &restored, &errors),
        None => {
            info!(
                "{}: the manifest has no row counts (a backup made before they existed): only pg_restore's errors are checked",
                m.name
            );
            (Vec::new(), 0)
        }
    };
    // errors not already named with a table
    for (_, e) in &errors {
        if !problems.iter().any(|p| p.ends_with(e.as_str())) {
            problems.push(e.clone());
        }
    }
    if report.restore_failed && problems.is_empty() {
        problems.push(format!(
            "pg_restore failed: {}",
            report.messages.trim().replace('\n', "; ")
        ));
    }
    (problems, rows_missing)
}

/// Records a drill's result in the drilled backup's manifest (`list` shows it,
/// `restore latest` warns on a failed one); a failure to write it is a warning.
pub(super) fn save(r: &Reading, b: &Backup, drill: &Drill) {
    let mut updated = b.manifest.clone();
    updated.drill = Some(drill.clone());
    if let Err(e) = catalog::update_manifest(r, b, &updated) {
        warn!(
            "{}: the drill's result was not recorded: {e}",
            b.manifest.name
        );
    }
}

/// When the daemon drills (`BACKUP_DRILL`).
#[derive(Debug, Clone, Default)]
pub enum When {
    #[default]
    Off,
    /// Every new database backup, right after its run.
    AfterBackup,
    /// The latest backup, on this cron schedule (the daemon's time zone).
    Cron(String),
}

/// The daemon's drills: when, and the request settings (`BACKUP_DRILL_URL`,
/// `BACKUP_DRILL_SQL`, `BACKUP_RESTORE_JOBS`, `BACKUP_TMP_DIR`).
#[derive(Clone, Default)]
pub struct DaemonDrills {
    pub when: When,
    pub request: DrillRequest,
    /// The age identities (`BACKUP_AGE_IDENTITY`) for encrypted backups.
    pub identities: Vec<age::x25519::Identity>,
}

impl DaemonDrills {
    /// Reads `BACKUP_DRILL`: `off`, `after-backup` or a cron expression (checked now,
    /// so a typo is a usage error at start, not a silent lack of drills).
    pub fn when(v: Option<&str>) -> Result<When, crate::config::ConfigError> {
        match v.map(str::trim) {
            None | Some("") | Some("off") => Ok(When::Off),
            Some("after-backup") => Ok(When::AfterBackup),
            Some(expr) => {
                super::schedule::parse_schedule(expr).map_err(|e| {
                    crate::config::invalid(format!(
                        "{} (or BACKUP_DRILL=off or after-backup)",
                        e.message().replace("BACKUP_SCHEDULE=", "BACKUP_DRILL=")
                    ))
                })?;
                Ok(When::Cron(expr.to_string()))
            }
        }
    }
}

/// One drill by the daemon of `name` (`latest` or a backup just made): the result in
/// the manifest, the status file (a failure dates it at the epoch: unhealthy), the
/// metrics and the log. A drill that cannot run at all (no server, a backup that
/// cannot be read) is a failed drill too; a stop is nothing.
pub fn daemon_drill(runner: &super::run::Runner, name: &str, d: &DaemonDrills) -> bool {
    let s = &runner.settings;
    let req = DrillRequest {
        name: name.to_string(),
        ..d.request.clone()
    };
    // A drill server started with the stack (a cold `docker compose up`) may still be
    // starting after the first backup: wait for it as a run waits for its database.
    if let Some(url) = req.into.as_ref().or(s.url.as_ref()) {
        wait_for_server(runner, url, s.wait_timeout);
    }
    let done = runner.backups_for_reading(None).and_then(|backups| {
        drill(
            &runner.reading(&d.identities),
            &backups,
            &req,
            s.url.as_ref(),
            &runner.cancel,
        )
    });
    if runner.cancel.is_cancelled() {
        return false;
    }
    let (backup, result) = match done {
        Ok(o) => (o.backup, o.drill),
        Err(e) => (
            name.to_string(),
            Drill {
                at: unix_now(),
                ok: false,
                problems: vec![format!("the drill could not run: {}", e.message())],
                ..Drill::default()
            },
        ),
    };
    if result.ok {
        info!(
            "drill of {backup} passed: restored in {:.1} s, every table's rows as in the backup",
            result.seconds
        );
    } else {
        tracing::error!("drill of {backup} failed: {}", result.problems.join("; "));
    }
    record(s, &backup, &result);
    result.ok
}

/// Waits up to `timeout` until the server of `url` accepts a connection (to its
/// `postgres` database or the URL's own); gives up quietly (the drill then says why).
fn wait_for_server(runner: &super::run::Runner, url: &Url, timeout: std::time::Duration) {
    let Ok(target) = PgTarget::from_url(url) else {
        return;
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let up = runner.rt.block_on(async {
            target.with_dbname("postgres").ping().await.is_ok() || target.ping().await.is_ok()
        });
        if up || runner.cancel.is_cancelled() || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Records a drill of the latest backup in the status file and the metrics (when
/// set): a failed one turns the healthcheck unhealthy until a drill passes.
pub fn record(s: &super::settings::Settings, backup: &str, result: &Drill) {
    if let Some(path) = &s.status_file {
        if let Err(e) = super::status::drill(path, backup, result) {
            warn!("status file: {e}");
        }
    }
    if let Some(path) = &s.metrics_file {
        if let Err(e) = super::status::drill_metrics(path, result) {
            warn!("metrics file: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_statements_or_lines() {
        assert_eq!(
            queries("-- checks\nSELECT true\n\nSELECT count(*) > 0 FROM t\n"),
            ["SELECT true", "SELECT count(*) > 0 FROM t"]
        );
        assert_eq!(
            queries("SELECT\n  true;\nSELECT 1 = 1;\n"),
            ["SELECT\ntrue;", "SELECT 1 = 1;"]
        );
    }

    #[test]
    fn restore_errors_name_their_table() {
        let messages = "pg_restore: error: could not execute query: ERROR:  x\n\
            pg_restore: from TOC entry 3365; 0 16390 TABLE DATA a_child app\n\
            pg_restore: error: COPY failed for table \"a_child\": ERROR:  relation \"z_ref\" does not exist\n\
            LINE 1: SELECT EXISTS (SELECT 1 FROM z_ref)\n\
            pg_restore: warning: errors ignored on restore: 2\n";
        let errors = restore_errors(messages);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let backup = Counts {
            tables: vec![("public".into(), "a_child".into(), 25)],
            large_objects: 0,
        };
        let restored = Counts {
            tables: vec![("public".into(), "a_child".into(), 0)],
            large_objects: 0,
        };
        let (problems, missing) = compare(&backup, &restored, &errors);
        assert_eq!(missing, 25);
        assert_eq!(
            problems,
            ["public.a_child: 25 rows in the backup, 0 restored: pg_restore: error: COPY failed for table \"a_child\": ERROR:  relation \"z_ref\" does not exist"]
        );
    }
}
