//! The migration lint: every pending statement is checked against the live database
//! before anything is applied, so that the statement that takes its lock at once and
//! then holds it for as long as it works (`CREATE INDEX` without `CONCURRENTLY` on a
//! 20 GB table, a column type change that rewrites it, a constraint validated under
//! lock) is named before it runs, with the size of what it will lock.
//!
//! Linters that run in CI (squawk, strong_migrations) see SQL text alone: a rule that
//! fires on an empty table is noise, on a big one an outage. Here each finding is
//! joined with the live catalog: the table's size (`pg_total_relation_size`), its row
//! estimate (`reltuples`), the server version (any default rewrites before PostgreSQL
//! 11, a volatile one still does), the function volatility (`pg_proc`), the column's
//! current type (a widening `varchar` change is no rewrite), validated `IS NOT NULL`
//! checks (PostgreSQL 12+ then skips the `SET NOT NULL` scan). A table created earlier
//! in the same pending set holds nothing anyone waits for: no finding is made for it.
//!
//! The SQL is parsed with squawk's parser (`squawk-syntax`: pure Rust, no libpg_query),
//! reusing the loaders of each format: the pending migrations are those
//! [`super::status`] reports. `--migrate-cmd` runs SQL dockhand never sees.
//!
//! Policy (`--migrate-lint`): `warn` logs each finding and applies; `error` refuses to
//! apply when a finding touches a table larger than `--lint-min-size` (smaller ones
//! only warn); `off`. A statement is allowed with `-- dockhand:allow <rule>` on the
//! line above it; an allow that names no rule, or an unknown one, is an error.

use tokio_postgres::Client;
use tracing::warn;

use super::failure::{err, MigrateError};
use crate::config::{human_size, invalid, ConfigError};

/// `--migrate-lint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Log the findings, apply.
    #[default]
    Warn,
    /// Refuse to apply (exit 4) when a finding touches a table above the minimum size.
    Error,
    Off,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, ConfigError> {
        match s.trim() {
            "" | "warn" => Ok(Mode::Warn),
            "error" => Ok(Mode::Error),
            "off" => Ok(Mode::Off),
            other => Err(invalid(format!(
                "--migrate-lint {other:?}: use warn, error or off"
            ))),
        }
    }
}

/// The lint's settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub mode: Mode,
    /// Findings on tables up to this size (bytes) never refuse (`--lint-min-size`).
    pub min_size: u64,
}

/// `--lint-min-size`'s default, as its row in the entrypoint's table gives it.
pub const DEFAULT_MIN_SIZE: &str = "10MB";

/// [`DEFAULT_MIN_SIZE`] in bytes.
fn default_min_size() -> u64 {
    crate::config::parse_size(DEFAULT_MIN_SIZE).unwrap_or(10 << 20)
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Warn,
            min_size: default_min_size(),
        }
    }
}

/// A rule: what the statement locks and how long, the outage, the safe rewrite.
#[derive(Debug)]
pub struct Rule {
    pub name: &'static str,
    pub locks: &'static str,
    pub safe: &'static str,
}

const INDEX: &str = "require-concurrent-index-creation";
const DROP_INDEX: &str = "require-concurrent-index-deletion";
const CONCURRENT_TX: &str = "ban-concurrent-index-creation-in-transaction";
const TYPE_CHANGE: &str = "changing-column-type";
const NOT_NULL: &str = "adding-not-nullable-field";
const NOT_VALID: &str = "constraint-missing-not-valid";
const UNIQUE: &str = "disallowed-unique-constraint";
const DEFAULT: &str = "adding-field-with-default";
const RENAME_COLUMN: &str = "renaming-column";
const RENAME_TABLE: &str = "renaming-table";
const DROP_COLUMN: &str = "ban-drop-column";
const DROP_TABLE: &str = "ban-drop-table";
const VACUUM_FULL: &str = "vacuum-full";
const CLUSTER: &str = "cluster";
const LOCK_TABLE: &str = "lock-table";
const NO_TIMEOUT: &str = "no-lock-timeout";

/// Every rule (the names follow squawk's where squawk has one).
pub static RULES: &[Rule] = &[
    Rule {
        name: INDEX,
        locks: "SHARE lock: every INSERT, UPDATE and DELETE waits for the whole index build, which grows with the table",
        safe: "CREATE INDEX CONCURRENTLY, alone in a migration that runs outside a transaction",
    },
    Rule {
        name: DROP_INDEX,
        locks: "ACCESS EXCLUSIVE lock: reads and writes wait, and queue behind any long query on the table",
        safe: "DROP INDEX CONCURRENTLY, alone in a migration that runs outside a transaction",
    },
    Rule {
        name: CONCURRENT_TX,
        locks: "nothing: PostgreSQL refuses CONCURRENTLY inside a transaction block, so the migration fails",
        safe: "a migration of its own holding only that statement (Prisma runs a one-statement migration outside a transaction; refinery and drizzle run every migration in one)",
    },
    Rule {
        name: TYPE_CHANGE,
        locks: "ACCESS EXCLUSIVE lock while the whole table and its indexes are rewritten: reads and writes wait, for time that grows with the table",
        safe: "add a new column, backfill it in batches, switch the code over, then drop the old column (widening varchar or varchar to text is no rewrite)",
    },
    Rule {
        name: NOT_NULL,
        locks: "ACCESS EXCLUSIVE lock while every row is scanned: reads and writes wait, for time that grows with the table",
        safe: "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; then VALIDATE CONSTRAINT c (in a later migration); then SET NOT NULL, which uses it (PostgreSQL 12+)",
    },
    Rule {
        name: NOT_VALID,
        locks: "the table (and a foreign key's referenced table) is scanned under lock: writes wait, for time that grows with the table",
        safe: "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a later migration (it takes a weaker lock)",
    },
    Rule {
        name: UNIQUE,
        locks: "ACCESS EXCLUSIVE lock while the unique index is built: reads and writes wait, for time that grows with the table",
        safe: "CREATE UNIQUE INDEX CONCURRENTLY in its own migration, then ADD CONSTRAINT c UNIQUE USING INDEX (or PRIMARY KEY USING INDEX)",
    },
    Rule {
        name: DEFAULT,
        locks: "ACCESS EXCLUSIVE lock while the whole table is rewritten (a volatile default, a serial or generated column, or any default before PostgreSQL 11)",
        safe: "add the column without the default, backfill it in batches, then SET DEFAULT",
    },
    Rule {
        name: RENAME_COLUMN,
        locks: "a short ACCESS EXCLUSIVE lock, but the replicas still running the old code query the old name and fail until they are replaced",
        safe: "add the new column, write both, backfill, move the reads, and drop the old one in a later release",
    },
    Rule {
        name: RENAME_TABLE,
        locks: "a short ACCESS EXCLUSIVE lock, but the replicas still running the old code query the old name and fail until they are replaced",
        safe: "create the new table (or a view under the old name), move the code over, and drop the old name in a later release",
    },
    Rule {
        name: DROP_COLUMN,
        locks: "a short ACCESS EXCLUSIVE lock, but the replicas still running the old code select or insert the column and fail until they are replaced",
        safe: "stop using the column in one release (drop NOT NULL if it has one), and drop it in the next",
    },
    Rule {
        name: DROP_TABLE,
        locks: "ACCESS EXCLUSIVE lock, and the replicas still running the old code fail on the missing table until they are replaced",
        safe: "stop using the table in one release, and drop it in the next",
    },
    Rule {
        name: VACUUM_FULL,
        locks: "ACCESS EXCLUSIVE lock while the table is rewritten: reads and writes wait, for time that grows with the table",
        safe: "pg_repack (or pg_squeeze) outside the migration; plain VACUUM takes no such lock",
    },
    Rule {
        name: CLUSTER,
        locks: "ACCESS EXCLUSIVE lock while the table is rewritten in index order: reads and writes wait, for time that grows with the table",
        safe: "pg_repack --order-by outside the migration",
    },
    Rule {
        name: LOCK_TABLE,
        locks: "the lock taken is held until the migration's transaction ends (drizzle: until every pending migration is done)",
        safe: "leave locking to the statements themselves, with lock_timeout (--ddl-lock-timeout)",
    },
    Rule {
        name: NO_TIMEOUT,
        locks: "no lock_timeout: if a long transaction (a pg_dump) holds the table, the statement waits in the lock queue and every query on the table queues behind it",
        safe: "keep --ddl-lock-timeout on, and do not reset lock_timeout in the migration (SET lock_timeout = '5s' at its top when dockhand cannot set it)",
    },
];

/// The rule of that name.
pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name == name)
}

/// One finding, joined with the catalog.
#[derive(Debug, Clone)]
pub struct Finding {
    pub rule: &'static Rule,
    /// The migration file, relative to the folder.
    pub file: String,
    /// 1-based line of the statement in its file.
    pub line: usize,
    /// The table as the catalog names it (or as written).
    pub table: String,
    /// `pg_total_relation_size`; 0 when the table does not exist yet.
    pub size: u64,
    /// `reltuples`; negative when never analysed.
    pub rows: f64,
    /// What the statement does, in a few words (`CREATE INDEX`).
    pub what: String,
    /// True when `--migrate-lint error` refuses it (the table is above the minimum size,
    /// or the statement cannot succeed).
    pub blocks: bool,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = if self.rows < 0.0 {
            "rows unknown (never analysed)".to_string()
        } else {
            format!("~{} rows", self.rows.round() as u64)
        };
        write!(
            f,
            "{}:{}: [{}] {} on {} ({}, {}): {}; safe: {}",
            self.file,
            self.line,
            self.rule.name,
            self.what,
            self.table,
            human_size(self.size),
            rows,
            self.rule.locks,
            self.rule.safe
        )
    }
}

/// A pending migration's SQL.
#[derive(Debug, Clone)]
pub struct Script {
    pub file: String,
    pub sql: String,
}

/// What the lint needs to know about how the scripts run.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// A file holding one statement runs outside a transaction (Prisma); refinery and
    /// drizzle run every statement in one.
    pub alone_runs_outside: bool,
    /// dockhand sets `lock_timeout` for every statement (`--ddl-lock-timeout` on, and
    /// not Prisma through a pooler).
    pub lock_timeout_set: bool,
    pub min_size: u64,
}

/// The parser and the catalog join: squawk's parser is the size of this feature.
#[cfg(feature = "lint")]
mod check {
    use std::collections::{HashMap, HashSet};

    use squawk_syntax::ast::{self, AstNode};
    use squawk_syntax::{SourceFile, SyntaxNode};
    use tokio_postgres::types::Type;
    use tokio_postgres::Client;
    use tracing::{info, warn};

    use super::*;
    use crate::pg::classify;

    /// A finding before the catalog is read.
    #[derive(Debug)]
    pub(super) struct Candidate {
        pub(super) rule: &'static str,
        file: usize,
        line: usize,
        /// The relation as written (a table, or for DROP INDEX an index).
        relation: String,
        what: String,
        check: Check,
    }

    /// What the catalog must confirm before a candidate is a finding.
    #[derive(Debug)]
    enum Check {
        None,
        /// A type change: no rewrite when the column's current type widens to the new.
        TypeChange {
            column: String,
            new_type: String,
            using: bool,
        },
        /// SET NOT NULL: no scan on PostgreSQL 12+ with a validated `col IS NOT NULL` check.
        SetNotNull {
            column: String,
            validated_here: bool,
        },
        /// A default: a rewrite before PostgreSQL 11, or when volatile.
        Default {
            functions: Vec<String>,
            always: bool,
        },
    }

    /// Lints `scripts` against the database.
    pub(super) async fn lint(
        client: &Client,
        scripts: &[Script],
        ctx: &Context,
    ) -> Result<Vec<Finding>, MigrateError> {
        let candidates = candidates(scripts, ctx)?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        join(client, scripts, candidates, ctx).await
    }

    /// The normalised name of a relation as written: its last part, unquoted, or in lower
    /// case when not quoted (PostgreSQL folds unquoted names).
    fn key(raw: &str) -> String {
        let last = raw.rsplit('.').next().unwrap_or(raw).trim();
        match last.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(q) => q.replace("\"\"", "\""),
            None => last.to_lowercase(),
        }
    }

    fn text(node: &impl AstNode) -> String {
        node.syntax().text().to_string().trim().to_string()
    }

    /// The 1-based line of the first token of `node` that is not a comment or space.
    fn start_line(sql: &str, node: &SyntaxNode) -> usize {
        let offset = node
            .descendants_with_tokens()
            .filter_map(|e| e.into_token())
            .find(|t| !t.kind().is_trivia())
            .map(|t| usize::from(t.text_range().start()))
            .unwrap_or_else(|| usize::from(node.text_range().start()));
        sql[..offset.min(sql.len())].matches('\n').count() + 1
    }

    /// The rules allowed for the statement starting on `line` (1-based): the
    /// `-- dockhand:allow` comments on the lines just above it.
    fn allowed_above(lines: &[&str], line: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = line.saturating_sub(1);
        while i > 0 {
            let l = lines[i - 1].trim();
            if !l.starts_with("--") {
                break;
            }
            if let Some(rest) = l.split_once("dockhand:allow").map(|(_, r)| r) {
                out.extend(
                    rest.split(|c: char| c == ',' || c.is_whitespace())
                        .filter(|w| !w.is_empty())
                        .map(String::from),
                );
            }
            i -= 1;
        }
        out
    }

    /// Checks every `dockhand:allow` comment of a file: each must name known rules.
    fn check_allows(file: &str, sql: &str) -> Result<(), MigrateError> {
        for (n, l) in sql.lines().enumerate() {
            // only line comments count, as in `allowed_above` (not a string that
            // happens to hold the words)
            if !l.trim_start().starts_with("--") {
                continue;
            }
            let Some((_, rest)) = l.split_once("dockhand:allow") else {
                continue;
            };
            let names: Vec<&str> = rest
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| !w.is_empty())
                .collect();
            let all = || RULES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ");
            if names.is_empty() {
                return Err(err(format!(
                    "{file}:{}: `-- dockhand:allow` names no rule; a bare allow is refused: name the rule it allows, e.g. `-- dockhand:allow {INDEX}` (rules: {})",
                    n + 1,
                    all()
                )));
            }
            if let Some(bad) = names.iter().find(|w| rule(w).is_none()) {
                return Err(err(format!(
                    "{file}:{}: `-- dockhand:allow {bad}`: no such rule (rules: {})",
                    n + 1,
                    all()
                )));
            }
        }
        Ok(())
    }

    /// The names of the functions an expression calls, in lower case.
    fn functions(expr: &ast::Expr) -> Vec<String> {
        expr.syntax()
            .descendants()
            .filter_map(ast::CallExpr::cast)
            .filter_map(|c| c.expr())
            .map(|e| key(&text(&e)))
            .collect()
    }

    /// `col IS NOT NULL`: the column.
    fn not_null_column(expr: &ast::Expr) -> Option<String> {
        let t = text(expr).to_lowercase();
        let t = t.trim_start_matches('(').trim_end_matches(')').trim();
        let col = t.strip_suffix("is not null")?.trim();
        (!col.is_empty() && !col.contains(' ')).then(|| key(col))
    }

    /// What the statements read so far tell about later ones, across the scripts.
    #[derive(Default)]
    struct Seen {
        /// Tables created earlier in the pending set: nothing waits on them.
        created: HashSet<String>,
        /// CHECK (col IS NOT NULL) constraints: name → (table, column), and validated ones
        not_null_checks: HashMap<String, (String, String)>,
        validated: HashSet<(String, String)>,
    }

    /// Every statement of every script, as candidates (with the allow comments applied).
    pub(super) fn candidates(
        scripts: &[Script],
        ctx: &Context,
    ) -> Result<Vec<Candidate>, MigrateError> {
        let mut out = Vec::new();
        let mut seen = Seen::default();
        for (fi, script) in scripts.iter().enumerate() {
            check_allows(&script.file, &script.sql)?;
            let stmts = statements(script);
            let lines: Vec<&str> = script.sql.lines().collect();
            // refinery and drizzle run every migration in a transaction; Prisma sends the
            // script as one simple query, an implicit transaction when it holds several.
            // script as one simple query: a transaction whenever it holds several.
            let in_tx = !ctx.alone_runs_outside || stmts.len() > 1;
            let mut timeout = ctx.lock_timeout_set;
            for stmt in &stmts {
                let line = start_line(&script.sql, stmt.syntax());
                let (mut found, locks_table) = statement(stmt, in_tx, &mut timeout, &mut seen);
                if !timeout {
                    if let Some(t) = locks_table {
                        found.push((NO_TIMEOUT, t, "a locking statement".into(), Check::None));
                    }
                }
                if found.is_empty() {
                    continue;
                }
                let allowed = allowed_above(&lines, line);
                for (rule, relation, what, check) in found {
                    if allowed.iter().any(|a| a == rule) {
                        info!(
                            "migration lint: {}:{line}: {rule} allowed by its dockhand:allow comment",
                            script.file
                        );
                        continue;
                    }
                    // nothing waits on a table created earlier in the same pending set
                    if !relation.is_empty() && seen.created.contains(&key(&relation)) {
                        continue;
                    }
                    out.push(Candidate {
                        rule,
                        file: fi,
                        line,
                        relation,
                        what,
                        check,
                    });
                }
            }
        }
        // validated in this set, after the candidate was made: mark them
        for c in &mut out {
            if let Check::SetNotNull {
                column,
                validated_here,
            } = &mut c.check
            {
                *validated_here = seen.validated.contains(&(key(&c.relation), column.clone()));
            }
        }
        Ok(out)
    }

    /// The statements of a script, as far as the parser reads it (what it cannot read is
    /// said once, and not checked).
    fn statements(script: &Script) -> Vec<ast::Stmt> {
        let parse = SourceFile::parse(&script.sql);
        if let Some(e) = parse.errors().first() {
            let at = usize::from(e.range().start()).min(script.sql.len());
            warn!(
                "migration lint: {}:{}: the SQL parser does not understand {:?}; statements it cannot read are not checked",
                script.file,
                script.sql[..at].matches('\n').count() + 1,
                e.message()
            );
        }
        parse.tree().stmts().collect()
    }

    /// One statement's candidates, and the table it locks (for the lock_timeout rule).
    /// `timeout` follows `SET`/`RESET lock_timeout`; `seen` learns created tables and
    /// NOT NULL checks.
    fn statement(
        stmt: &ast::Stmt,
        in_tx: bool,
        timeout: &mut bool,
        seen: &mut Seen,
    ) -> (Found, Option<String>) {
        let mut found: Found = Vec::new();
        let mut locks_table: Option<String> = None;
        match stmt {
            ast::Stmt::Set(s) => {
                let t = text(s).to_lowercase();
                if t.contains("lock_timeout") {
                    let value = t
                        .split(['=', ' '])
                        .rfind(|w| !w.is_empty() && *w != ";")
                        .unwrap_or("")
                        .trim_matches(|c| c == '\'' || c == ';' || c == '"');
                    *timeout = !(value == "0" || value == "default");
                }
            }
            ast::Stmt::Reset(s) => {
                let t = text(s).to_lowercase();
                if t.contains("lock_timeout") || t.contains(" all") {
                    *timeout = false;
                }
            }
            ast::Stmt::CreateTable(c) => {
                if let Some(name) = c.table_name().and_then(|n| n.path()) {
                    seen.created.insert(key(&text(&name)));
                }
            }
            ast::Stmt::CreateIndex(c) => locks_table = create_index(c, in_tx, &mut found),
            ast::Stmt::DropIndex(d) => locks_table = drop_index(d, in_tx, &mut found),
            ast::Stmt::DropTable(d) => {
                for t in d.table_name_refs() {
                    let t = text(&t);
                    found.push((DROP_TABLE, t.clone(), "DROP TABLE".into(), Check::None));
                    locks_table = Some(t);
                }
            }
            ast::Stmt::Vacuum(v) => vacuum_full(v, &mut found),
            ast::Stmt::Cluster(c) => {
                let t = c.table_name_ref().map(|t| text(&t)).unwrap_or_default();
                found.push((CLUSTER, t.clone(), "CLUSTER".into(), Check::None));
                locks_table = Some(t);
            }
            ast::Stmt::Lock(l) => locks_table = lock_table(l, &mut found),
            ast::Stmt::AlterTable(a) => {
                let table = a
                    .table_relation_name()
                    .and_then(|r| r.table_name_ref())
                    .map(|t| text(&t))
                    .unwrap_or_default();
                locks_table = Some(table.clone());
                let tk = key(&table);
                for action in a.actions() {
                    alter_action(&action, &table, &tk, &mut found, seen);
                }
            }
            _ => {}
        }
        (found, locks_table)
    }

    /// `CREATE INDEX`: the table it locks (none when `CONCURRENTLY`, which must not
    /// run in a transaction).
    fn create_index(c: &ast::CreateIndex, in_tx: bool, found: &mut Found) -> Option<String> {
        let table = c
            .table_relation_name()
            .and_then(|r| r.table_name_ref())
            .map(|t| text(&t))
            .unwrap_or_default();
        if c.concurrently_token().is_some() {
            if in_tx {
                found.push((
                    CONCURRENT_TX,
                    table,
                    "CREATE INDEX CONCURRENTLY".into(),
                    Check::None,
                ));
            }
            return None;
        }
        found.push((INDEX, table.clone(), "CREATE INDEX".into(), Check::None));
        Some(table)
    }

    /// `DROP INDEX`: the (last) index it locks, as for `CREATE INDEX`.
    fn drop_index(d: &ast::DropIndex, in_tx: bool, found: &mut Found) -> Option<String> {
        let mut locks_table = None;
        for idx in d.index_refs() {
            let idx = text(&idx);
            if d.concurrently_token().is_some() {
                if in_tx {
                    found.push((
                        CONCURRENT_TX,
                        idx,
                        "DROP INDEX CONCURRENTLY".into(),
                        Check::None,
                    ));
                }
            } else {
                found.push((DROP_INDEX, idx.clone(), "DROP INDEX".into(), Check::None));
                locks_table = Some(idx);
            }
        }
        locks_table
    }

    /// `VACUUM FULL`: each table named, or the whole database.
    fn vacuum_full(v: &ast::Vacuum, found: &mut Found) {
        let full = v.full_token().is_some()
            || v.vacuum_option_list().is_some_and(|o| {
                o.vacuum_options().any(|o| {
                    let t = text(&o).to_lowercase();
                    t == "full" || t == "full true" || t == "full on"
                })
            });
        if !full {
            return;
        }
        let tables: Vec<String> = v
            .table_and_columns_list()
            .map(|l| {
                l.table_and_columnss()
                    .filter_map(|t| t.table_relation_name())
                    .filter_map(|r| r.table_name_ref())
                    .map(|t| text(&t))
                    .collect()
            })
            .unwrap_or_default();
        if tables.is_empty() {
            found.push((
                VACUUM_FULL,
                String::new(),
                "VACUUM FULL".into(),
                Check::None,
            ));
        }
        for t in tables {
            found.push((VACUUM_FULL, t, "VACUUM FULL".into(), Check::None));
        }
    }

    /// `LOCK TABLE`: each table; the last one locked.
    fn lock_table(l: &ast::Lock, found: &mut Found) -> Option<String> {
        let mut locks_table = None;
        for r in l
            .relation_list()
            .into_iter()
            .flat_map(|l| l.relation_names())
        {
            let t = r
                .relation_name_ref()
                .map(|t| text(&t))
                .unwrap_or_else(|| text(&r));
            found.push((LOCK_TABLE, t.clone(), "LOCK TABLE".into(), Check::None));
            locks_table = Some(t);
        }
        locks_table
    }

    type Found = Vec<(&'static str, String, String, Check)>;

    /// One action of `ALTER TABLE table` (`tk`: its key).
    fn alter_action(
        action: &ast::AlterTableAction,
        table: &str,
        tk: &str,
        found: &mut Found,
        seen: &mut Seen,
    ) {
        let t = || table.to_string();
        match action {
            ast::AlterTableAction::AlterColumn(ac) => alter_column(ac, table, found),
            ast::AlterTableAction::AddConstraint(ac) => {
                if let Some(constraint) = ac.constraint() {
                    add_constraint(&constraint, table, tk, found, seen);
                }
            }
            ast::AlterTableAction::ValidateConstraint(v) => {
                if let Some(name) = v.constraint_name_ref() {
                    if let Some(tc) = seen.not_null_checks.get(&key(&text(&name))) {
                        seen.validated.insert(tc.clone());
                    }
                }
            }
            ast::AlterTableAction::AddColumn(ac) => add_column(ac, table, found),
            ast::AlterTableAction::RenameColumn(rc) => {
                let from = rc.column_name_ref().map(|c| text(&c)).unwrap_or_default();
                found.push((
                    RENAME_COLUMN,
                    t(),
                    format!("RENAME COLUMN {from}"),
                    Check::None,
                ));
            }
            ast::AlterTableAction::TableRenameTo(_) => {
                found.push((RENAME_TABLE, t(), "RENAME TO".into(), Check::None));
            }
            ast::AlterTableAction::DropColumn(dc) => {
                let c = dc.column_name_ref().map(|c| text(&c)).unwrap_or_default();
                found.push((DROP_COLUMN, t(), format!("DROP COLUMN {c}"), Check::None));
            }
            _ => {}
        }
    }

    /// `ALTER COLUMN ... TYPE` and `SET NOT NULL`.
    fn alter_column(ac: &ast::AlterColumn, table: &str, found: &mut Found) {
        let t = || table.to_string();
        let column = ac.column_name_ref().map(|c| key(&text(&c)));
        match ac.option() {
            Some(ast::AlterColumnOption::SetType(st)) => found.push((
                TYPE_CHANGE,
                t(),
                format!("ALTER COLUMN {} TYPE", column.clone().unwrap_or_default()),
                Check::TypeChange {
                    column: column.unwrap_or_default(),
                    new_type: st.ty().map(|t| text(&t)).unwrap_or_default(),
                    using: st.using_expr().is_some(),
                },
            )),
            Some(ast::AlterColumnOption::SetNotNull(_)) => found.push((
                NOT_NULL,
                t(),
                format!(
                    "ALTER COLUMN {} SET NOT NULL",
                    column.clone().unwrap_or_default()
                ),
                Check::SetNotNull {
                    column: column.unwrap_or_default(),
                    validated_here: false,
                },
            )),
            _ => {}
        }
    }

    /// `ADD CONSTRAINT`: a CHECK or FOREIGN KEY without `NOT VALID`, a UNIQUE or
    /// PRIMARY KEY without `USING INDEX`; a `col IS NOT NULL` check is remembered in
    /// `seen` (for a later SET NOT NULL).
    fn add_constraint(
        constraint: &ast::Constraint,
        table: &str,
        tk: &str,
        found: &mut Found,
        seen: &mut Seen,
    ) {
        let t = || table.to_string();
        let not_valid = constraint.is_not_valid();
        match constraint {
            ast::Constraint::CheckConstraint(c) => {
                if let Some(col) = c.expr().as_ref().and_then(not_null_column) {
                    let name = c
                        .constraint_name_clause()
                        .map(|n| text(&n))
                        .and_then(|n| n.split_whitespace().last().map(key))
                        .unwrap_or_default();
                    if not_valid {
                        seen.not_null_checks.insert(name, (tk.to_string(), col));
                    } else {
                        seen.validated.insert((tk.to_string(), col));
                    }
                }
                if !not_valid {
                    found.push((NOT_VALID, t(), "ADD CHECK".into(), Check::None));
                }
            }
            ast::Constraint::ForeignKeyConstraint(_) if !not_valid => {
                found.push((NOT_VALID, t(), "ADD FOREIGN KEY".into(), Check::None));
            }
            ast::Constraint::UniqueConstraint(u) if u.using_index().is_none() => {
                found.push((UNIQUE, t(), "ADD UNIQUE".into(), Check::None));
            }
            ast::Constraint::PrimaryKeyConstraint(p) if p.using_index().is_none() => {
                found.push((UNIQUE, t(), "ADD PRIMARY KEY".into(), Check::None));
            }
            _ => {}
        }
    }

    /// `ADD COLUMN`: with a default (serial, generated, or an expression: the catalog
    /// says whether it is volatile), or UNIQUE.
    fn add_column(ac: &ast::AddColumn, table: &str, found: &mut Found) {
        let t = || table.to_string();
        let ty = ac.ty().map(|t| text(&t).to_lowercase()).unwrap_or_default();
        let serial = matches!(
            ty.as_str(),
            "serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8"
        );
        let column = ac.column_name().map(|c| text(&c)).unwrap_or_default();
        let mut default = None;
        for c in ac.constraints() {
            match c {
                ast::Constraint::DefaultConstraint(d) => {
                    if let Some(e) = d.expr() {
                        let is_null = text(&e).eq_ignore_ascii_case("null");
                        if !is_null {
                            default = Some(functions(&e));
                        }
                    }
                }
                ast::Constraint::GeneratedConstraint(_) => {
                    default = Some(vec!["<generated>".into()]);
                }
                ast::Constraint::UniqueConstraint(_) | ast::Constraint::PrimaryKeyConstraint(_) => {
                    found.push((
                        UNIQUE,
                        t(),
                        format!("ADD COLUMN {column} UNIQUE"),
                        Check::None,
                    ));
                }
                _ => {}
            }
        }
        if serial || default.is_some() {
            let functions = default.unwrap_or_default();
            let always = serial || functions.iter().any(|f| f == "<generated>");
            found.push((
                DEFAULT,
                t(),
                format!("ADD COLUMN {column} with a default"),
                Check::Default { functions, always },
            ));
        }
    }

    /// A relation as the catalog knows it.
    #[derive(Debug, Clone, Default)]
    struct Relation {
        name: String,
        size: u64,
        rows: f64,
        /// Definitions of its validated CHECK constraints.
        checks: Vec<String>,
    }

    /// A catalog query that failed, as the lint reports it.
    fn catalog_error(e: tokio_postgres::Error) -> MigrateError {
        err(format!("migration lint: {}", classify(&e)))
    }

    /// The candidates the catalog confirms, as findings: each with its table's size
    /// and rows, blocking when the table is larger than `--lint-min-size`.
    async fn join(
        client: &Client,
        scripts: &[Script],
        candidates: Vec<Candidate>,
        ctx: &Context,
    ) -> Result<Vec<Finding>, MigrateError> {
        let version: i32 = client
            .query_typed_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(catalog_error)?
            .get(0);
        let relations = relations(client, &candidates).await?;
        let whole_db: i64 = if candidates.iter().any(|c| c.relation.is_empty()) {
            client
                .query_typed_one("SELECT pg_database_size(current_database())", &[])
                .await
                .map_err(catalog_error)?
                .get(0)
        } else {
            0
        };
        let volatile = volatile_functions(client, &candidates).await?;
        let mut out = Vec::new();
        for c in candidates {
            let rel = relations
                .get(&c.relation)
                .cloned()
                .unwrap_or_else(|| Relation {
                    name: if c.relation.is_empty() {
                        "every table of the database".into()
                    } else {
                        c.relation.clone()
                    },
                    size: whole_db.max(0) as u64,
                    ..Relation::default()
                });
            if !confirmed(client, &c, &rel, version, &volatile).await? {
                continue;
            }
            let blocks = c.rule == CONCURRENT_TX || rel.size > ctx.min_size;
            out.push(Finding {
                rule: rule(c.rule).expect("every candidate's rule is in RULES"),
                file: scripts[c.file].file.clone(),
                line: c.line,
                table: rel.name,
                size: rel.size,
                rows: rel.rows,
                what: c.what,
                blocks,
            });
        }
        Ok(out)
    }

    /// The candidates' relations as the catalog knows them, by the name written.
    async fn relations(
        client: &Client,
        candidates: &[Candidate],
    ) -> Result<HashMap<String, Relation>, MigrateError> {
        let names: Vec<String> = candidates
            .iter()
            .map(|c| c.relation.clone())
            .filter(|r| plausible_name(r))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // A name that is an index stands for its table (DROP INDEX). to_regclass is NULL
        // for a relation that does not exist (yet).
        let rows = client
            .query_typed(
                "SELECT n, coalesce(t.oid::regclass::text, n), coalesce(pg_total_relation_size(t.oid), 0)::int8, \
                 coalesce(t.reltuples, 0)::float8, \
                 coalesce((SELECT array_agg(pg_get_constraintdef(c.oid)) FROM pg_constraint c WHERE c.conrelid = t.oid AND c.contype = 'c' AND c.convalidated), '{}')::text[] \
                 FROM unnest($1::text[]) AS n \
                 LEFT JOIN pg_class r ON r.oid = to_regclass(n) \
                 LEFT JOIN pg_index i ON i.indexrelid = r.oid \
                 LEFT JOIN pg_class t ON t.oid = coalesce(i.indrelid, r.oid)",
                &[(&names, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(catalog_error)?;
        let mut relations: HashMap<String, Relation> = HashMap::new();
        for r in rows {
            relations.insert(
                r.get(0),
                Relation {
                    name: r.get(1),
                    size: r.get::<_, i64>(2).max(0) as u64,
                    rows: r.get(3),
                    checks: r.get(4),
                },
            );
        }
        Ok(relations)
    }

    /// Which of the functions the candidates' defaults call are volatile.
    async fn volatile_functions(
        client: &Client,
        candidates: &[Candidate],
    ) -> Result<HashSet<String>, MigrateError> {
        let called: Vec<String> = candidates
            .iter()
            .flat_map(|c| match &c.check {
                Check::Default { functions, .. } => functions.clone(),
                _ => Vec::new(),
            })
            .collect();
        if called.is_empty() {
            return Ok(HashSet::new());
        }
        Ok(client
            .query_typed(
                "SELECT DISTINCT proname::text FROM pg_proc WHERE proname = ANY($1::text[]) AND provolatile = 'v'",
                &[(&called, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(catalog_error)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Whether the catalog confirms candidate `c` on `rel` (server `version`): a type
    /// change that rewrites, a SET NOT NULL no validated check spares, a default that
    /// rewrites.
    async fn confirmed(
        client: &Client,
        c: &Candidate,
        rel: &Relation,
        version: i32,
        volatile: &HashSet<String>,
    ) -> Result<bool, MigrateError> {
        Ok(match &c.check {
            Check::None => true,
            Check::TypeChange {
                column,
                new_type,
                using,
            } => {
                let old: Option<String> = if plausible_name(&c.relation) {
                    client
                        .query_typed(
                            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
                            &[(&c.relation, Type::TEXT), (column, Type::TEXT)],
                        )
                        .await
                        .map_err(catalog_error)?
                        .first()
                        .map(|r| r.get(0))
                } else {
                    None
                };
                *using || !old.is_some_and(|old| no_rewrite(&old, new_type))
            }
            Check::SetNotNull {
                column,
                validated_here,
            } => {
                let checked = *validated_here
                    || rel
                        .checks
                        .iter()
                        .filter_map(|d| d.strip_prefix("CHECK "))
                        .any(|d| {
                            let d = d.trim_start_matches('(').trim_end_matches(')');
                            d.strip_suffix(" IS NOT NULL")
                                .is_some_and(|col| key(col) == *column)
                        });
                version < 120000 || !checked
            }
            Check::Default { functions, always } => {
                version < 110000 || *always || functions.iter().any(|f| volatile.contains(f))
            }
        })
    }

    /// True when `name` is a relation name `to_regclass` can read (one to three
    /// dot-separated identifiers, plain or double-quoted): older servers raise an
    /// error on anything else, which must not fail the migration. Others are left
    /// unknown (size 0).
    pub(super) fn plausible_name(name: &str) -> bool {
        let mut parts = 0;
        let mut chars = name.chars().peekable();
        loop {
            parts += 1;
            match chars.next() {
                Some('"') => {
                    let mut len = 0;
                    loop {
                        match chars.next() {
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                len += 1;
                            }
                            Some('"') => break,
                            Some(_) => len += 1,
                            None => return false,
                        }
                    }
                    if len == 0 {
                        return false;
                    }
                }
                Some(c) if c.is_alphabetic() || c == '_' => {
                    while chars
                        .peek()
                        .is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
                    {
                        chars.next();
                    }
                }
                _ => return false,
            }
            match chars.next() {
                None => return parts <= 3,
                Some('.') => {}
                Some(_) => return false,
            }
        }
    }

    /// True when changing a column from `old` (as `format_type` spells it) to `new` (as
    /// written) keeps the data as it is: PostgreSQL then skips the rewrite.
    pub(super) fn no_rewrite(old: &str, new: &str) -> bool {
        fn split(t: &str) -> (String, Vec<u32>) {
            let t = t.trim().to_lowercase();
            let (base, args) = match t.split_once('(') {
                Some((b, a)) => (
                    b.trim().to_string(),
                    a.trim_end_matches(')')
                        .split(',')
                        .filter_map(|n| n.trim().parse().ok())
                        .collect(),
                ),
                None => (t.clone(), Vec::new()),
            };
            let base = match base.as_str() {
                "varchar" => "character varying".to_string(),
                "decimal" => "numeric".to_string(),
                _ => base,
            };
            (base, args)
        }
        let (ob, oa) = split(old);
        let (nb, na) = split(new);
        match (ob.as_str(), nb.as_str()) {
            ("character varying", "text") => true,
            ("character varying", "character varying") => {
                na.is_empty() || oa.first().is_some_and(|o| na[0] >= *o)
            }
            ("text", "character varying") => na.is_empty(),
            ("numeric", "numeric") => {
                na.is_empty()
                    || (oa.len() == na.len()
                        && oa.first() <= na.first()
                        && oa.get(1) == na.get(1)
                        && !oa.is_empty())
            }
            (a, b) => a == b && oa == na,
        }
    }
}

/// Logs the findings and applies the policy: `error` refuses (exit 4) when one blocks.
pub fn enforce(findings: &[Finding], policy: &Policy) -> Result<(), MigrateError> {
    for f in findings {
        warn!("migration lint: {f}");
    }
    let blocking: Vec<&Finding> = findings.iter().filter(|f| f.blocks).collect();
    if policy.mode == Mode::Error && !blocking.is_empty() {
        return Err(err(format!(
            "--migrate-lint error: {} pending statement(s) would lock a table larger than --lint-min-size {} (or cannot run): {}; nothing was applied. Rewrite them as the findings say, or allow one with `-- dockhand:allow <rule>` on the line above it",
            blocking.len(),
            human_size(policy.min_size),
            blocking
                .iter()
                .map(|f| format!("{}:{} [{}] on {} ({})", f.file, f.line, f.rule.name, f.table, human_size(f.size)))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok(())
}

/// The lint of a migration run or `--migrate-status`: the pending migrations' findings.
pub async fn findings(
    client: &Client,
    scripts: &[Script],
    ctx: &Context,
) -> Result<Vec<Finding>, MigrateError> {
    #[cfg(feature = "lint")]
    return check::lint(client, scripts, ctx).await;
    #[cfg(not(feature = "lint"))]
    {
        let _ = (client, ctx);
        if !scripts.is_empty() {
            warn!("migration lint: this entrypoint was built without the `lint` feature: pending statements are not checked");
        }
        Ok(Vec::new())
    }
}

#[cfg(all(test, feature = "lint"))]
mod tests {
    use super::check::*;
    use super::*;
    use crate::migrate::Format;

    fn ctx(format: Format) -> Context {
        Context {
            alone_runs_outside: format == Format::Prisma,
            lock_timeout_set: true,
            min_size: default_min_size(),
        }
    }

    fn rules_of(sql: &str, format: Format) -> Vec<&'static str> {
        let s = [Script {
            file: "f.sql".into(),
            sql: sql.into(),
        }];
        candidates(&s, &ctx(format))
            .unwrap()
            .iter()
            .map(|c| c.rule)
            .collect()
    }

    #[test]
    fn each_statement_finds_its_rule() {
        let r = |s| rules_of(s, Format::Refinery);
        assert_eq!(r("CREATE INDEX i ON t (a);"), [INDEX]);
        assert_eq!(r("CREATE INDEX CONCURRENTLY i ON t (a);"), [CONCURRENT_TX]);
        assert!(rules_of("CREATE INDEX CONCURRENTLY i ON t (a);", Format::Prisma).is_empty());
        assert_eq!(r("DROP INDEX i;"), [DROP_INDEX]);
        assert_eq!(
            r("ALTER TABLE t ALTER COLUMN a TYPE bigint;"),
            [TYPE_CHANGE]
        );
        assert_eq!(r("ALTER TABLE t ALTER COLUMN a SET NOT NULL;"), [NOT_NULL]);
        assert_eq!(
            r("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id);"),
            [NOT_VALID]
        );
        assert!(
            r("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id) NOT VALID;")
                .is_empty()
        );
        assert_eq!(
            r("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);"),
            [NOT_VALID]
        );
        assert_eq!(r("ALTER TABLE t ADD CONSTRAINT u UNIQUE (a);"), [UNIQUE]);
        assert!(r("ALTER TABLE t ADD CONSTRAINT u UNIQUE USING INDEX i;").is_empty());
        assert_eq!(
            r("ALTER TABLE t ADD COLUMN b uuid DEFAULT gen_random_uuid();"),
            [DEFAULT]
        );
        assert_eq!(r("ALTER TABLE t RENAME COLUMN a TO b;"), [RENAME_COLUMN]);
        assert_eq!(r("ALTER TABLE t RENAME TO u;"), [RENAME_TABLE]);
        assert_eq!(r("ALTER TABLE t DROP COLUMN a;"), [DROP_COLUMN]);
        assert_eq!(r("DROP TABLE t;"), [DROP_TABLE]);
        assert_eq!(r("VACUUM FULL t;"), [VACUUM_FULL]);
        assert_eq!(r("VACUUM (FULL) t;"), [VACUUM_FULL]);
        assert!(r("VACUUM t;").is_empty());
        assert_eq!(r("CLUSTER t USING i;"), [CLUSTER]);
        assert_eq!(r("LOCK TABLE t IN ACCESS EXCLUSIVE MODE;"), [LOCK_TABLE]);
        assert_eq!(
            r("SET lock_timeout = 0;\nALTER TABLE t ADD COLUMN b int;"),
            [NO_TIMEOUT]
        );
        assert!(r("CREATE TABLE t (a int);\nCREATE INDEX i ON t (a);").is_empty());
        assert!(r("CREATE TABLE \"T\" (a int);\nCREATE INDEX i ON \"T\" (a);").is_empty());
    }

    #[test]
    fn allow_comments_name_a_rule() {
        let s = |sql: &str| {
            candidates(
                &[Script {
                    file: "f.sql".into(),
                    sql: sql.into(),
                }],
                &ctx(Format::Refinery),
            )
        };
        assert!(
            s("-- dockhand:allow require-concurrent-index-creation\nCREATE INDEX i ON t (a);")
                .unwrap()
                .is_empty()
        );
        // on the line above only
        assert_eq!(
            s("-- dockhand:allow require-concurrent-index-creation\nSELECT 1;\nCREATE INDEX i ON t (a);")
                .unwrap()
                .len(),
            1
        );
        let e = s("-- dockhand:allow\nCREATE INDEX i ON t (a);").unwrap_err();
        assert!(e.message().contains("bare allow"), "{e}");
        assert!(e.message().contains("f.sql:1"), "{e}");
        // words in a string are not a comment
        assert_eq!(
            s("INSERT INTO notes VALUES ('-- dockhand:allow');\nCREATE INDEX i ON t (a);")
                .unwrap()
                .len(),
            1
        );
        let e = s("-- dockhand:allow everything\nCREATE INDEX i ON t (a);").unwrap_err();
        assert!(e.message().contains("no such rule"), "{e}");
    }

    #[test]
    fn widening_types_are_no_rewrite() {
        assert!(no_rewrite("character varying(20)", "varchar(40)"));
        assert!(no_rewrite("character varying(20)", "text"));
        assert!(!no_rewrite("character varying(20)", "varchar(10)"));
        assert!(!no_rewrite("integer", "bigint"));
        assert!(no_rewrite("numeric(10,2)", "numeric(12,2)"));
        assert!(!no_rewrite("numeric(10,2)", "numeric(12,3)"));
    }

    #[test]
    fn the_readme_documents_every_rule() {
        let readme = include_str!("../../../README.md");
        for r in RULES {
            assert!(
                readme.contains(&format!("| `{}` |", r.name)),
                "README's rule table lacks {}",
                r.name
            );
        }
    }

    #[test]
    fn only_names_to_regclass_reads_are_looked_up() {
        for ok in ["t", "public.t", "\"We\"\"ird.Name\"", "db.s.t", "_x$1"] {
            assert!(plausible_name(ok), "{ok}");
        }
        for bad in ["", "a b", "\"", "\"\"", "a.", "a.b.c.d", "t; DROP", "1t"] {
            assert!(!plausible_name(bad), "{bad}");
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("error").unwrap(), Mode::Error);
        assert!(Mode::parse("loud").is_err());
    }
}
