//! The migration lint against a real PostgreSQL: every rule on a big and a small table
//! (big = above `--lint-min-size`, set low here so that a few thousand rows are big),
//! the catalog's say (a widening type change, a validated NOT NULL check, a stable
//! default, a table created in the same pending set), the allow comment, the policy
//! (`warn` applies, `error` refuses with exit 4 and applies nothing, `--migrate-status`
//! prints the findings), all three formats, and `--migrate-cmd`, which cannot be seen.

use std::path::Path;
use std::time::Duration;

use dockhand_tests::bins::bin;
use dockhand_tests::pg::Postgres;
use dockhand_tests::run::{command, run, Run};

const LONG: Duration = Duration::from_secs(90);
const MIN: &str = "64kB";

fn entrypoint(args: &[&str], url: &str) -> Run {
    run(
        command(&bin("entrypoint"), args, &[("DIRECT_URL", url)]),
        LONG,
    )
}

/// `big` (5000 rows, some hundred kB) and `small` (empty), alike otherwise, each with
/// an index on `v`; `checked` is big and has a validated `note IS NOT NULL` check. The
/// app's user owns them, as it would its migrations' tables.
fn tables(pg: &Postgres) {
    for (t, rows) in [("big", 5000), ("small", 0), ("checked", 5000)] {
        pg.psql_db(
            "app",
            &format!(
                "CREATE TABLE {t} (id int PRIMARY KEY, n int, v varchar(20), note text);
                 INSERT INTO {t} SELECT g, g, 'x', repeat('y', 50) FROM generate_series(1, {rows}) g;
                 CREATE INDEX {t}_v_idx ON {t} (v);
                 ANALYZE {t};
                 ALTER TABLE {t} OWNER TO app;"
            ),
        );
    }
    pg.psql_db(
        "app",
        "ALTER TABLE checked ADD CONSTRAINT checked_note_nn CHECK (note IS NOT NULL);",
    );
}

/// Each rule and its statement on table `@` (the rule's statements for `big` and
/// `small` are the same but for the name).
const RULES: &[(&str, &str)] = &[
    (
        "require-concurrent-index-creation",
        "CREATE INDEX @_n ON @ (n);",
    ),
    ("require-concurrent-index-deletion", "DROP INDEX @_v_idx;"),
    (
        "ban-concurrent-index-creation-in-transaction",
        "CREATE INDEX CONCURRENTLY @_c ON @ (n);",
    ),
    (
        "changing-column-type",
        "ALTER TABLE @ ALTER COLUMN n TYPE bigint;",
    ),
    (
        "adding-not-nullable-field",
        "ALTER TABLE @ ALTER COLUMN note SET NOT NULL;",
    ),
    (
        "constraint-missing-not-valid",
        "ALTER TABLE @ ADD CONSTRAINT @_pos CHECK (n > 0);",
    ),
    (
        "disallowed-unique-constraint",
        "ALTER TABLE @ ADD CONSTRAINT @_u UNIQUE (n);",
    ),
    (
        "adding-field-with-default",
        "ALTER TABLE @ ADD COLUMN u uuid DEFAULT gen_random_uuid();",
    ),
    (
        "renaming-column",
        "ALTER TABLE @ RENAME COLUMN note TO body;",
    ),
    ("ban-drop-column", "ALTER TABLE @ DROP COLUMN v;"),
    ("vacuum-full", "VACUUM FULL @;"),
    ("cluster", "CLUSTER @ USING @_pkey;"),
    ("lock-table", "LOCK TABLE @ IN SHARE MODE;"),
    ("renaming-table", "ALTER TABLE @ RENAME TO @_old;"),
    ("ban-drop-table", "DROP TABLE @;"),
];

/// The status output's finding lines for `rule` on `table`.
fn lines<'a>(out: &'a str, rule: &str, table: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.contains(&format!("[{rule}]")) && l.contains(&format!(" on {table} (")))
        .collect()
}

#[test]
fn every_rule_flags_a_big_table_blocking_and_a_small_one_only_as_a_warning() {
    let pg = Postgres::start();
    tables(&pg);
    let dir = tempfile::tempdir().unwrap();
    let mut sql = String::new();
    for t in ["big", "small"] {
        for (_, stmt) in RULES {
            sql.push_str(&stmt.replace('@', t));
            sql.push('\n');
        }
    }
    // what the catalog clears: a widening change, a stable default, a SET NOT NULL
    // with a validated check, a table created in the pending set
    sql.push_str(
        "ALTER TABLE big ALTER COLUMN v TYPE varchar(40);
ALTER TABLE big ADD COLUMN k int DEFAULT 0;
ALTER TABLE checked ALTER COLUMN note SET NOT NULL;
ALTER TABLE big ADD CONSTRAINT big_fk FOREIGN KEY (n) REFERENCES big (id) NOT VALID;
CREATE TABLE fresh (id int);
CREATE INDEX fresh_id ON fresh (id);
ALTER TABLE fresh ALTER COLUMN id TYPE bigint;
",
    );
    std::fs::write(dir.path().join("V1__rules.sql"), &sql).unwrap();
    // lock_timeout reset by the migration itself
    std::fs::write(
        dir.path().join("V2__no_timeout.sql"),
        "SET lock_timeout = 0;\nALTER TABLE big ADD COLUMN w int;\nALTER TABLE small ADD COLUMN w int;\n",
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();

    let r = entrypoint(
        &[
            "--migrate-status",
            "--migrations",
            d,
            "--lint-min-size",
            MIN,
        ],
        &url,
    );
    assert_eq!(r.code, Some(1), "pending, warn: {}", r.output());
    let out = &r.stdout;
    let mut rules: Vec<&str> = RULES.iter().map(|(r, _)| *r).collect();
    rules.push("no-lock-timeout");
    for rule in &rules {
        let big = lines(out, rule, "big");
        let small = lines(out, rule, "small");
        assert!(
            !big.is_empty() && big.iter().all(|l| l.trim_start().starts_with("BLOCKS ")),
            "{rule} on big must block:\n{out}"
        );
        assert!(!small.is_empty(), "{rule} on small must be found:\n{out}");
        if *rule == "ban-concurrent-index-creation-in-transaction" {
            // it cannot run at all, whatever the size
            assert!(small.iter().all(|l| l.contains("BLOCKS")), "{out}");
        } else {
            assert!(
                small.iter().all(|l| !l.contains("BLOCKS")),
                "{rule} on small must only warn:\n{out}"
            );
        }
    }
    // each finding: file and line, size, what it locks, the safe pattern
    let index = lines(out, "require-concurrent-index-creation", "big")[0];
    assert!(index.contains("V1__rules.sql:1:"), "{index}");
    assert!(
        index.contains("KiB") && index.contains("~5000 rows"),
        "{index}"
    );
    assert!(
        index.contains("SHARE lock") && index.contains("safe: CREATE INDEX CONCURRENTLY"),
        "{index}"
    );
    let timeout = lines(out, "no-lock-timeout", "big")[0];
    assert!(timeout.contains("V2__no_timeout.sql:2:"), "{timeout}");
    // what the catalog clears is not a finding
    assert_eq!(
        lines(out, "changing-column-type", "big").len(),
        1,
        "varchar(20) to varchar(40) is no rewrite:\n{out}"
    );
    assert_eq!(
        lines(out, "adding-field-with-default", "big").len(),
        1,
        "{out}"
    );
    assert!(
        lines(out, "adding-not-nullable-field", "checked").is_empty(),
        "{out}"
    );
    assert_eq!(
        lines(out, "constraint-missing-not-valid", "big").len(),
        1,
        "{out}"
    );
    assert!(
        !out.contains(" on fresh ("),
        "a table created in the pending set: {out}"
    );

    // error: status exits 4 for CI, and a start refuses and applies nothing
    let r = entrypoint(
        &[
            "--migrate-status",
            "--migrations",
            d,
            "--lint-min-size",
            MIN,
            "--migrate-lint",
            "error",
        ],
        &url,
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    let r = entrypoint(
        &[
            "--migrate-only",
            "--migrations",
            d,
            "--lint-min-size",
            MIN,
            "--migrate-lint",
            "error",
        ],
        &url,
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr
            .contains("V1__rules.sql:1 [require-concurrent-index-creation] on big")
            && r.stderr.contains("nothing was applied"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr
            .contains("[require-concurrent-index-creation] on small"),
        "small tables do not refuse: {}",
        r.stderr
    );
    assert_eq!(
        pg.psql_db("app", "SELECT to_regclass('refinery_schema_history') IS NULL AND to_regclass('fresh') IS NULL"),
        "t"
    );
    // off: no findings at all
    let r = entrypoint(
        &[
            "--migrate-status",
            "--migrations",
            d,
            "--migrate-lint",
            "off",
        ],
        &url,
    );
    assert!(!r.stdout.contains("migration lint"), "{}", r.output());
}

#[test]
fn the_default_size_keeps_small_tables_quiet_and_warn_applies() {
    let pg = Postgres::start();
    tables(&pg);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("V1__index.sql"),
        "CREATE INDEX big_n ON big (n);\n",
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    // 10 MB default: a few hundred kB is no reason to refuse
    let r = entrypoint(
        &[
            "--migrate-only",
            "--migrations",
            d,
            "--migrate-lint",
            "error",
        ],
        &pg.url(),
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("[require-concurrent-index-creation]"),
        "{}",
        r.stderr
    );
    // warn (the default) logs and applies, however big
    std::fs::write(
        dir.path().join("V2__index.sql"),
        "CREATE INDEX big_v2 ON big (v);\n",
    )
    .unwrap();
    let r = entrypoint(
        &["--migrate-only", "--migrations", d, "--lint-min-size", MIN],
        &pg.url(),
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr
            .contains("V2__index.sql:1: [require-concurrent-index-creation]"),
        "{}",
        r.stderr
    );
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('big_n', 'big_v2')"
        ),
        "2"
    );
}

#[test]
fn an_allow_comment_names_its_rule_and_a_bare_one_is_refused() {
    let pg = Postgres::start();
    tables(&pg);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = [
        "--migrate-only",
        "--migrations",
        d,
        "--lint-min-size",
        MIN,
        "--migrate-lint",
        "error",
    ];
    std::fs::write(
        dir.path().join("V1__index.sql"),
        "-- dockhand:allow\nCREATE INDEX big_n ON big (n);\n",
    )
    .unwrap();
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("V1__index.sql:1") && r.stderr.contains("bare allow"),
        "{}",
        r.stderr
    );
    // another rule's allow does not cover it
    std::fs::write(
        dir.path().join("V1__index.sql"),
        "-- dockhand:allow ban-drop-table\nCREATE INDEX big_n ON big (n);\n",
    )
    .unwrap();
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(4), "{}", r.output());
    std::fs::write(
        dir.path().join("V1__index.sql"),
        "-- a maintenance window: big is read-only tonight\n-- dockhand:allow require-concurrent-index-creation\nCREATE INDEX big_n ON big (n);\n",
    )
    .unwrap();
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("allowed by its dockhand:allow comment"),
        "{}",
        r.stderr
    );
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        ),
        "1"
    );
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A pending set that creates a table and indexes it (never a finding), then indexes
/// `big` on line 5 (a finding): drizzle's breakpoints between.
const DRIZZLE: &str = "CREATE TABLE fresh (id int);
--> statement-breakpoint
CREATE INDEX fresh_id ON fresh (id);
--> statement-breakpoint
CREATE INDEX big_n ON big (n);
";

fn refused_then_allowed(pg: &Postgres, d: &str, file: &Path, name: &str) {
    let args = [
        "--migrate-only",
        "--migrations",
        d,
        "--lint-min-size",
        MIN,
        "--migrate-lint",
        "error",
    ];
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains(&format!(
            "{name}:5 [require-concurrent-index-creation] on big"
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("on fresh"), "{}", r.stderr);
    assert_eq!(
        pg.psql_db("app", "SELECT to_regclass('fresh') IS NULL"),
        "t"
    );
    write(
        file,
        &DRIZZLE.replace(
            "CREATE INDEX big_n",
            "-- dockhand:allow require-concurrent-index-creation\nCREATE INDEX big_n",
        ),
    );
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('fresh_id', 'big_n')"
        ),
        "2"
    );
}

#[test]
fn drizzle_0_x_and_1_0_folders_are_linted() {
    let pg = Postgres::start();
    tables(&pg);
    // 0.x: journal and TAG.sql
    let v0 = tempfile::tempdir().unwrap();
    write(
        &v0.path().join("meta/_journal.json"),
        r#"{"version":"7","dialect":"postgresql","entries":[{"idx":0,"version":"7","when":1700000000000,"tag":"0000_index","breakpoints":true}]}"#,
    );
    let f = v0.path().join("0000_index.sql");
    write(&f, DRIZZLE);
    refused_then_allowed(&pg, v0.path().to_str().unwrap(), &f, "0000_index.sql");

    let pg = Postgres::start();
    tables(&pg);
    let v1 = tempfile::tempdir().unwrap();
    let f = v1.path().join("20260101000000_index/migration.sql");
    write(&f, DRIZZLE);
    refused_then_allowed(
        &pg,
        v1.path().to_str().unwrap(),
        &f,
        "20260101000000_index/migration.sql",
    );
}

#[test]
fn prisma_folders_are_linted_and_a_lone_concurrent_index_passes() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    write(
        &dir.path().join("migration_lock.toml"),
        "provider = \"postgresql\"\n",
    );
    write(
        &dir.path().join("20260101000000_init/migration.sql"),
        "CREATE TABLE big (id int PRIMARY KEY, n int);\n",
    );
    let args = [
        "--migrate-only",
        "--migrations",
        d,
        "--lint-min-size",
        MIN,
        "--migrate-lint",
        "error",
    ];
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    pg.psql_db(
        "app",
        "INSERT INTO big SELECT g, g FROM generate_series(1, 5000) g; ANALYZE big;",
    );
    // a lone CONCURRENTLY is the safe pattern (Prisma runs it outside a transaction)...
    let m = dir.path().join("20260102000000_index/migration.sql");
    write(&m, "CREATE INDEX big_n ON big (n);\n");
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains(
            "20260102000000_index/migration.sql:1 [require-concurrent-index-creation] on big"
        ),
        "{}",
        r.stderr
    );
    // ...next to another statement it would run in a transaction, and fail
    write(
        &m,
        "CREATE INDEX CONCURRENTLY big_n ON big (n);\nSELECT 1;\n",
    );
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr
            .contains("[ban-concurrent-index-creation-in-transaction]"),
        "{}",
        r.stderr
    );
    write(&m, "CREATE INDEX CONCURRENTLY big_n ON big (n);\n");
    let r = entrypoint(&args, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(!r.stderr.contains("migration lint:"), "{}", r.stderr);
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        ),
        "1"
    );
}

#[test]
fn a_migration_command_cannot_be_seen_and_says_so() {
    let pg = Postgres::start();
    let r = entrypoint(
        &[
            "--migrate-only",
            "--migrate-cmd",
            "true",
            "--migrate-lint",
            "error",
        ],
        &pg.url(),
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(r.stderr.matches("cannot see").count(), 1, "{}", r.stderr);
}

#[test]
fn bad_lint_settings_are_refused() {
    for (flag, value) in [("--migrate-lint", "loud"), ("--lint-min-size", "ten")] {
        let r = entrypoint(
            &["--migrate-only", "--migrate-cmd", "true", flag, value],
            "postgres://x@127.0.0.1:1/x",
        );
        assert_eq!(r.code, Some(2), "{}", r.output());
        assert!(r.stderr.contains(flag), "{}", r.stderr);
    }
}

#[test]
fn quoted_names_and_sql_the_parser_cannot_read_do_not_break_the_lint() {
    let pg = Postgres::start();
    pg.psql_db(
        "app",
        r#"CREATE TABLE "Big ""Orders"".x" (id int, v text);
           INSERT INTO "Big ""Orders"".x" SELECT g, repeat('y', 50) FROM generate_series(1, 5000) g;
           ANALYZE "Big ""Orders"".x";
           ALTER TABLE "Big ""Orders"".x" OWNER TO app;"#,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("V1__odd.sql"),
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n\
         THIS IS NOT SQL;\n\
         CREATE INDEX odd_v ON \"Big \"\"Orders\"\".x\" (v);\n",
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let r = entrypoint(
        &[
            "--migrate-status",
            "--migrations",
            d,
            "--lint-min-size",
            MIN,
            "--migrate-lint",
            "error",
        ],
        &pg.url(),
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stdout.contains("V1__odd.sql:3: [require-concurrent-index-creation] CREATE INDEX on \"Big \"\"Orders\"\".x\" ("),
        "{}",
        r.output()
    );
    assert!(
        r.stderr.contains("V1__odd.sql:2") && r.stderr.contains("not checked"),
        "{}",
        r.stderr
    );
}
