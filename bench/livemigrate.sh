#!/usr/bin/env bash
# A migration against live traffic: a session holds ACCESS SHARE on a table for 10 s
# (as a nightly pg_dump does), a migration ALTERs that table, and a reader queries it
# every 50 ms. Reports the reader's worst latency with a plain migrator (`psql -f`),
# with refinery's and drizzle's behaviour (no lock_timeout), and with dockhand's
# lock_timeout and retries, all in one run. Writes the "livemigrate" section of
# bench/RESULTS.md.
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
