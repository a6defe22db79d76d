#!/usr/bin/env bash
# A migration against live traffic: a session holds ACCESS SHARE on a table for 10 s
# (as a nightly pg_dump does), a migration ALTERs that table, and a reader queries it
# every 50 ms. Reports the reader's worst latency with a plain migrator (`psql -f`),
# with refinery's and drizzle's behaviour (no lock_timeout), and with dockhand's
# lock_timeout and retries, all in one run. Then the migration lint: a Prisma migration
# builds an index on a table of 2 million rows (LIVEMIGRATE_ROWS) while a writer inserts
# every 20 ms, once with CREATE INDEX (the lint flags it first, `--migrate-status
# --migrate-lint error` exits 4) and once with CONCURRENTLY, and the lint's start-up
# cost with 200 applied and 5 pending migrations. Writes the "livemigrate" section of
# bench/RESULTS.md. A smoke run of the lint part alone, without touching RESULTS.md:
#   LIVEMIGRATE_ONLY_LINT=1 LIVEMIGRATE_ROWS=20000 DOCKHAND_BENCH_ENTRYPOINT=target/debug/entrypoint \
#     python3 bench/livemigrate.py "$PWD" "$(mktemp -d)"
# (after `cargo build --workspace` and `cargo build -p dockhand-tests --example pgctl`).
. "$(dirname "$0")/../scripts/lib.sh"
. "$ROOT/bench/lib.sh"
"$ROOT/scripts/setup" >/dev/null
"$ROOT/scripts/build-static" >/dev/null
cargo build -q --locked -p dockhand-tests --example pgctl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$ROOT/bench/livemigrate.py" "$ROOT" "$work" >"$work/section.md"
machine_line >>"$work/section.md"
echo "Run: \`bench/livemigrate.sh\`." >>"$work/section.md"
write_section livemigrate "$work/section.md"
sed -n '/livemigrate:start/,/livemigrate:end/p' "$RESULTS"
