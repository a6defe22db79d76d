#!/usr/bin/env bash
# Point-in-time recovery, measured (issue 21): one PostgreSQL cluster (the newest
# installed major), the sidecar streaming WAL to a folder and to S3 (s3s-fs on
# loopback), and beside it what a team would run without dockhand: pg_basebackup and
# a second pg_receivewal into a local archive.
#   - Throughput: pgbench at full speed without and with the sidecar streaming; the
#     slot's lag and the sidecar's memory while it runs.
#   - RTO: the bench database plus about 1 GiB of WAL recovered to its end, by
#     `backup recover` from the folder against pg_basebackup's copy and local WAL.
#   - RPO: a writer commits a timestamped row every 100 ms; the PostgreSQL volume is
#     destroyed (sidecar stopped as the runbook says, then recovery from its folder),
#     and later the whole host (sidecar killed with it, recovery from S3 alone).
# PITR_BENCH_SCALE sets pgbench's scale (default 20, about 300 MB); PITR_BENCH_WAL_MB
# the WAL written after the base backup (default 1024). Writes the "pitr" section of
# bench/RESULTS.md.
. "$(dirname "$0")/../scripts/lib.sh"
. "$ROOT/bench/lib.sh"
"$ROOT/scripts/setup" >/dev/null
"$ROOT/scripts/build-static" >/dev/null
[ -x "$ROOT/.cache/tools/bin/s3s-fs" ] || cargo install -q --locked s3s-fs --version 0.14.1 --features binary --root "$ROOT/.cache/tools"
work=$(mktemp -d)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
python3 "$ROOT/bench/pitr.py" "$ROOT" "$work" "${PITR_BENCH_SCALE:-20}" "${PITR_BENCH_WAL_MB:-1024}" >"$work/section.md"
{
  echo
  echo "Load average (1 min) when the run ended: $(cut -d' ' -f1 /proc/loadavg)."
  echo
  machine_line
  echo "Run: \`bench/pitr.sh\`."
} >>"$work/section.md"
write_section pitr "$work/section.md"
sed -n '/pitr:start/,/pitr:end/p' "$RESULTS"
