#!/usr/bin/env bash
# Backup throughput, size and memory, side by side in one run on a database of
# several hundred MB (real PostgreSQL from the test harness, moto and s3s-fs as S3 servers):
# `backup now` to a folder and to S3 against pg_dump to /dev/null (the limit),
# `pg_dump | gzip` (what sidecars do today), `pg_dump -Fc` and `pg_dump | zstd`;
# peak memory on that database and one 4x larger; `backup restore --jobs 1` and
# `--jobs 2` against `pg_restore -d` and `pg_restore -j 2 -d` from an uncompressed file. BENCH_BACKUP_MB sets the size (default 500).
# Writes the "backup" section of bench/RESULTS.md.
. "$(dirname "$0")/../scripts/lib.sh"
. "$ROOT/bench/lib.sh"
"$ROOT/scripts/setup" >/dev/null
"$ROOT/scripts/build-static" >/dev/null
cargo build -q --locked -p dockhand-tests --example pgctl
# a second, lighter S3-compatible server beside moto, to tell its cost from ours
[ -x "$ROOT/.cache/tools/bin/s3s-fs" ] || cargo install -q --locked s3s-fs --version 0.14.1 --features binary --root "$ROOT/.cache/tools"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$ROOT/bench/backup.py" "$ROOT" "$work" "${BENCH_BACKUP_MB:-500}" >"$work/section.md"
machine_line >>"$work/section.md"
echo "Run: \`bench/backup.sh\`." >>"$work/section.md"
write_section backup "$work/section.md"
sed -n '/backup:start/,/backup:end/p' "$RESULTS"
