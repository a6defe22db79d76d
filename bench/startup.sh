#!/usr/bin/env bash
# Start-up cost, side by side in one run (real PostgreSQL from the test harness):
# - readiness latency: PostgreSQL is stopped, the waiter starts, PostgreSQL starts
#   0.5-1.5 s later; latency = when the app starts - when pg_isready first succeeds
#   (polled every 20 ms, so ±20 ms). dockhand's `--wait postgres` against
#   `wait-for-it` (TCP port only) and the 2 s `pg_isready` loop of users' scripts;
# - the migration phase when nothing is pending, with 200 applied migrations:
#   `entrypoint --migrations DIR -- true` minus `entrypoint -- true` (hyperfine);
# - resident memory of the entrypoint supervising `sleep` after wait + migrations.
# Writes the "startup" section of bench/RESULTS.md.
. "$(dirname "$0")/../scripts/lib.sh"
. "$ROOT/bench/lib.sh"
"$ROOT/scripts/setup" >/dev/null
"$ROOT/scripts/build-static" >/dev/null
cargo build -q --locked -p dockhand-tests --example pgctl
export ENTRYPOINT_FILE_VARS=none
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$ROOT/bench/startup.py" "$ROOT" "$work" >"$work/section.md"
machine_line >>"$work/section.md"
echo "Run: \`bench/startup.sh\`." >>"$work/section.md"
write_section startup "$work/section.md"
sed -n '/startup:start/,/startup:end/p' "$RESULTS"
