"""Driven by bench/backup.sh; prints the markdown section."""
import os, socket, subprocess, sys, time, urllib.request

root, work, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
bk = os.path.join(root, "target/static/backup")
pgctl = subprocess.Popen([os.path.join(root, "target/debug/examples/pgctl")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, bufsize=1)
urls = dict(pgctl.stdout.readline().strip().split("=", 1) for _ in range(2))
direct = urls["DIRECT"]
bindir = subprocess.run(["sh", "-c", "ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1"],
                        capture_output=True, text=True).stdout.strip()
pg = lambda tool: os.path.join(bindir, tool)

def psql(sql, db_url=direct):
    subprocess.run([pg("psql"), "-q", "-v", "ON_ERROR_STOP=1", db_url, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)

def seed(db_url, megabytes):
    # Half hex text (~130 bytes a row, compresses about 2:1) and half request-log rows
    # with jsonb (~180 bytes a row, compresses about 6:1), by size.
    rows = megabytes * 1024 * 1024 // 2 // 130
    events = megabytes * 1024 * 1024 // 2 // 180
    psql("DROP TABLE IF EXISTS bulk, events", db_url)
    psql(f"CREATE TABLE bulk AS SELECT i AS id, md5(i::text) || md5((i * 7)::text) AS a, md5((i * 13)::text) AS b, "
         f"now() - i * interval '1 second' AS at FROM generate_series(1, {rows}) i", db_url)
    psql("CREATE TABLE events AS SELECT i AS id, now() - i * interval '7 seconds' AS ts, "
         "'user' || (i * 7919 % 50000) AS usr, jsonb_build_object("
         "'path', '/api/v1/' || (ARRAY['orders','users','items','cart','checkout'])[1 + i % 5] || '/' || (i * 31 % 100000), "
         "'status', (ARRAY[200,200,200,201,404,500])[1 + i % 6], 'ms', (i * 17) % 900, "
         "'agent', (ARRAY['Mozilla/5.0 (X11; Linux x86_64)','Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)','curl/8.5.0'])[1 + i % 3], "
         "'ip', '10.' || (i % 255) || '.' || (i * 7 % 255) || '.' || (i * 13 % 255)) AS meta, "
         f"round((i * 1.37) % 1000, 2) AS amount FROM generate_series(1::bigint, {events}) i", db_url)
    psql("VACUUM ANALYZE bulk, events", db_url)

def timed(cmd, env=None, log=None):
    """Wall seconds and peak RSS (KiB, the largest process of the command's tree)."""
    out = os.path.join(work, "time.txt")
    t = time.monotonic()
    subprocess.run(["/usr/bin/time", "-o", out, "-f", "%M", "sh", "-c", cmd], check=True,
                   env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                   stderr=open(log, "w") if log else subprocess.DEVNULL)
    return time.monotonic() - t, int(open(out).read().split()[-1])

def median3(cmd, env=None, prepare=None, log=None):
    """Median wall time (and the peak RSS of that run) of 3 runs; `prepare` runs before each."""
    runs = []
    for i in range(3):
        if prepare:
            prepare(i)
        runs.append(timed(cmd, env, log))
    return sorted(runs)[1]

def size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if not f.endswith(".json")) if os.path.isdir(path) else os.path.getsize(path)

def fresh(name):
    p = os.path.join(work, name)
    subprocess.run(["rm", "-rf", p])
    os.makedirs(p)
    return p

seed(direct, mb)
db_bytes = int(subprocess.run([pg("psql"), "-tA", direct, "-c", "SELECT pg_database_size(current_database())"],
                              capture_output=True, text=True).stdout)
env = {"DIRECT_URL": direct, "PGPASSWORD": direct.split(":")[2].split("@")[0]}
conn = direct.replace("postgres://", "postgresql://")
out = fresh("out")
runs = [
    ("`pg_dump -Fc -Z0 > /dev/null` (the limit)", f"{pg('pg_dump')} -Fc -Z0 '{conn}' > /dev/null", None),
    ("`pg_dump > /dev/null` (plain)", f"{pg('pg_dump')} '{conn}' > /dev/null", None),
    ("`pg_dump | gzip` (today's sidecars)", f"{pg('pg_dump')} '{conn}' | gzip > {out}/plain.sql.gz", f"{out}/plain.sql.gz"),
    ("`pg_dump -Fc`", f"{pg('pg_dump')} -Fc '{conn}' > {out}/custom.dump", f"{out}/custom.dump"),
    ("`pg_dump | zstd -3 -T0`", f"{pg('pg_dump')} '{conn}' | zstd -q -3 -T0 > {out}/plain.sql.zst", f"{out}/plain.sql.zst"),
]
results = []
timed(f"{pg('pg_dump')} -Fc -Z0 '{conn}' > /dev/null")  # warm the caches
for name, cmd, path in runs:
    secs, rss = median3(cmd)
    results.append((name, secs, rss, size(path) if path else None))
level1cli = fresh("cli1")
secs, rss = median3(f"{pg('pg_dump')} -Fc -Z0 '{conn}' | zstd -q -1 -T0 > {level1cli}/x.zst")
results.append(("`pg_dump -Fc -Z0 | zstd -1 -T0`", secs, rss, size(level1cli)))

def one_backup(folder):
    # Each run starts from an empty folder, so the output size is one backup's.
    return lambda i: fresh(folder)

local = os.path.join(work, "local")
secs, rss = median3(f"{bk} now", {**env, "BACKUP_DIR": local}, one_backup("local"))
results.append(("**dockhand `backup now`**, local folder (zstd level 1, the default)", secs, rss, size(local)))
# The cost of the exact row counts (issue 20): the same run without them.
nocount = os.path.join(work, "nocount")
secs, rss = median3(f"{bk} now", {**env, "BACKUP_DIR": nocount, "BACKUP_COUNT_ROWS": "false"}, one_backup("nocount"))
results.append(("dockhand `backup now --count-rows false`, local folder (no row counts)", secs, rss, size(nocount)))
level3 = os.path.join(work, "level3")
secs, rss = median3(f"{bk} now", {**env, "BACKUP_DIR": level3, "BACKUP_ZSTD_LEVEL": "3"}, one_backup("level3"))
results.append(("dockhand `backup now --zstd-level 3`, local folder", secs, rss, size(level3)))

# S3: moto on loopback.
port = socket.socket(); port.bind(("127.0.0.1", 0)); s3port = port.getsockname()[1]; port.close()
moto = subprocess.Popen([os.path.join(root, ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(s3port)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", s3port), 0.2).close(); break
    except OSError:
        time.sleep(0.1)
req = urllib.request.Request(f"http://127.0.0.1:{s3port}/bench", method="PUT", headers={
    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"})
urllib.request.urlopen(req).read()
s3env = {**env, "BACKUP_S3_BUCKET": "bench", "BACKUP_S3_ENDPOINT": f"http://127.0.0.1:{s3port}",
         "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
secs, rss = median3(f"{bk} now", s3env)
results.append(("**dockhand `backup now`**, S3 (moto on loopback)", secs, rss, None))

both = os.path.join(work, "both")
secs, rss = median3(f"{bk} now", {**s3env, "BACKUP_DIR": both}, one_backup("both"))
results.append(("**dockhand `backup now`**, local folder and S3 at once", secs, rss, size(both)))
moto.terminate()

# The same upload to a lighter S3-compatible server (s3s-fs, Rust, files on disk; bench/backup.sh
# installs it): what moto's own cost is on these 2 cores, and what is ours.
s3s_bin = os.path.join(root, ".cache/tools/bin/s3s-fs")
port = socket.socket(); port.bind(("127.0.0.1", 0)); s3s_port = port.getsockname()[1]; port.close()
s3s_root = fresh("s3s")
os.makedirs(os.path.join(s3s_root, "bench"))
s3s = subprocess.Popen([s3s_bin, "--host", "127.0.0.1", "--port", str(s3s_port), "--access-key", "testing",
                        "--secret-key", "testing", s3s_root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", s3s_port), 0.2).close(); break
    except OSError:
        time.sleep(0.1)
s3s_env = {**s3env, "BACKUP_S3_ENDPOINT": f"http://127.0.0.1:{s3s_port}"}
def empty_bucket(i):
    subprocess.run(["rm", "-rf", os.path.join(s3s_root, "bench")]); os.makedirs(os.path.join(s3s_root, "bench"))
secs, rss = median3(f"{bk} now", s3s_env, empty_bucket)
results.append(("**dockhand `backup now`**, S3 (s3s-fs on loopback)", secs, rss, None))
s3s.terminate()

# Restore, side by side: pg_restore single and with 2 jobs from an uncompressed custom
# file (the tools' own best case), against `backup restore --jobs 1` (streamed) and
# `--jobs 2` (decoded to a temporary file, checked, then pg_restore -j 2), each from the
# local zstd copy, decode and checksum included.
def new_db(i):
    psql("DROP DATABASE IF EXISTS r0")
    psql("CREATE DATABASE r0")
r0 = direct.rsplit("/", 1)[0] + "/r0"
r0c = r0.replace('postgres://', 'postgresql://')
raw = os.path.join(work, "raw.dump")
subprocess.run(f"{pg('pg_dump')} -Fc -Z0 '{conn}' > {raw}", shell=True, check=True)
rs_secs, rs_rss = median3(f"{pg('pg_restore')} --no-owner -d '{r0c}' {raw}", prepare=new_db)
rj_secs, rj_rss = median3(f"{pg('pg_restore')} --no-owner -j 2 -d '{r0c}' {raw}", prepare=new_db)
# The same archive as pg_dump writes it into a pipe (a backup's stream): no data offsets,
# so each job reads its way to its table (what `restore --jobs` fills in first).
piped = os.path.join(work, "piped.dump")
subprocess.run(f"{pg('pg_dump')} -Fc -Z0 '{conn}' | cat > {piped}", shell=True, check=True)
rp_secs, rp_rss = median3(f"{pg('pg_restore')} --no-owner -j 2 -d '{r0c}' {piped}", prepare=new_db)
restore_log = os.path.join(work, "restore.log")

def drop_restored():
    # each run restores into a new database: drop the ones made so far
    out = subprocess.run([pg("psql"), "-tA", direct, "-c",
                          "SELECT datname FROM pg_database WHERE datname LIKE '%\\_restore\\_%'"],
                         capture_output=True, text=True).stdout.split()
    for d in out:
        psql(f'DROP DATABASE IF EXISTS "{d}"')

def backup_restore(jobs):
    runs = []
    for i in range(3):
        drop_restored()
        t, m = timed(f"{bk} restore latest --jobs {jobs}", {**env, "BACKUP_DIR": local}, restore_log)
        # The report line ends "in X s": the restore itself, before the rows are counted.
        runs.append((t, m, float(open(restore_log).read().rsplit(" in ", 1)[1].split()[0])))
    drop_restored()
    return sorted(runs)[1]
br_secs, br_rss, br_only = backup_restore(1)
bj_secs, bj_rss, bj_only = backup_restore(2)

# The drill: restore into a scratch database, count every table, compare, drop.
def drill(jobs):
    runs = []
    for i in range(3):
        t, m = timed(f"{bk} drill latest --jobs {jobs}", {**env, "BACKUP_DIR": local}, restore_log)
        runs.append((t, m))
    return sorted(runs)[1]
dr1_secs, dr1_rss = drill(1)
dr2_secs, dr2_rss = drill(2)

# Memory on a database 4x larger.
seed(direct, mb * 4)
big = fresh("big")
big_secs, big_rss = timed(f"{bk} now", {**env, "BACKUP_DIR": big})
pgctl.stdin.write("quit\n"); pgctl.stdin.flush()

limit = results[0][1]
gzip_row = next(r for r in results if "gzip" in r[0])
print("## Backup (`bench/backup.sh`)\n")
print(f"A database of {db_bytes / 2**20:.0f} MiB (`pg_database_size`; half hex text, half request-log "
      "rows with jsonb), the median of 3 runs of each command, side by side (warm caches). Peak memory is the "
      "largest process of the command (for `backup now` that is `backup` itself or its `pg_dump`). "
      "`backup` is the static release binary, zstd on all cores. On this 2-core machine PostgreSQL's "
      "backend and pg_dump already use about one core; compression competes with them for the other, "
      "so the zstd level decides the time.\n")
print("| command | time | vs the limit | vs `pg_dump \\| gzip` | output | peak memory |")
print("|---|---:|---:|---:|---:|---:|")
for name, secs, rss, sz in results:
    print(f"| {name} | {secs:.1f} s | {secs / limit:.2f}x | {secs / gzip_row[1]:.2f}x | "
          f"{(f'{sz / 2**20:.0f} MiB') if sz else '-'} | {rss / 1024:.1f} MiB |")
print()
local_rss = next(r[2] for r in results if "the default" in r[0])
print(f"Peak memory of `backup now` on a database 4x larger ({mb * 4} MB of rows): "
      f"{big_rss / 1024:.1f} MiB in {big_secs:.1f} s ({big_rss / max(local_rss, 1):.2f}x the smaller run's).\n")
print("| restore | time | vs `pg_restore -d` | vs `pg_restore -j 2` | peak memory |")
print("|---|---:|---:|---:|---:|")
print(f"| `pg_restore -d` from an uncompressed `pg_dump -Fc -Z0` file | {rs_secs:.1f} s | 1.00x | {rs_secs / rj_secs:.2f}x | {rs_rss / 1024:.1f} MiB |")
print(f"| `pg_restore -j 2 -d` from the same file | {rj_secs:.1f} s | {rj_secs / rs_secs:.2f}x | 1.00x | {rj_rss / 1024:.1f} MiB |")
print(f"| `pg_restore -j 2 -d` from the same archive written to a pipe (no data offsets) | {rp_secs:.1f} s | {rp_secs / rs_secs:.2f}x | {rp_secs / rj_secs:.2f}x | {rp_rss / 1024:.1f} MiB |")
print(f"| **dockhand `backup restore latest --jobs 1`** (local zstd copy streamed: decompress, checksum, pg_restore) | "
      f"{br_only:.1f} s | {br_only / rs_secs:.2f}x | {br_only / rj_secs:.2f}x | {br_rss / 1024:.1f} MiB |")
print(f"| **dockhand `backup restore latest --jobs 2`** (decoded to a checked temporary file, its data offsets filled in, then pg_restore -j 2) | "
      f"{bj_only:.1f} s | {bj_only / rs_secs:.2f}x | {bj_only / rj_secs:.2f}x | {bj_rss / 1024:.1f} MiB |")
print(f"| `--jobs 2` with its exact row count of every table afterwards | "
      f"{bj_secs:.1f} s | {bj_secs / rs_secs:.2f}x | {bj_secs / rj_secs:.2f}x | |")
print(f"| **dockhand `backup drill latest --jobs 1`** (restore into a scratch database, count and compare every table, drop it) | "
      f"{dr1_secs:.1f} s | {dr1_secs / rs_secs:.2f}x | {dr1_secs / rj_secs:.2f}x | {dr1_rss / 1024:.1f} MiB |")
print(f"| **dockhand `backup drill latest --jobs 2`** | "
      f"{dr2_secs:.1f} s | {dr2_secs / rs_secs:.2f}x | {dr2_secs / rj_secs:.2f}x | {dr2_rss / 1024:.1f} MiB |")
print()
folder = next(r[1] for r in results if "the default" in r[0])
on_moto = next(r[1] for r in results if "moto on loopback" in r[0])
on_s3s = next(r[1] for r in results if "s3s-fs on loopback" in r[0])
print(f"S3 against the folder: {on_moto / folder:.2f}x with moto (Python; it takes CPU from pg_dump and zstd on "
      f"these 2 cores), {on_s3s / folder:.2f}x with s3s-fs: the difference, {on_moto - on_s3s:+.1f} s, is the "
      f"server's; the rest, {on_s3s - folder:+.1f} s, is the upload's own cost (HTTP, signing, parts in flight).\n")
counted = next(r[1] for r in results if "the default" in r[0])
uncounted = next(r[1] for r in results if "no row counts" in r[0])
print(f"The exact row counts (issue 20) cost {100 * (counted / uncounted - 1):+.0f}% on `backup now` "
      f"({counted:.1f} s with them, {uncounted:.1f} s with `BACKUP_COUNT_ROWS=false`): one more scan of "
      "each table by a second backend, in the dump's snapshot while pg_dump runs.\n")
