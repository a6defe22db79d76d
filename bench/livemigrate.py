"""Driven by bench/livemigrate.sh; prints the markdown section."""
import os, subprocess, sys, threading, time, urllib.parse

root, work = sys.argv[1], sys.argv[2]
ep = os.environ.get("DOCKHAND_BENCH_ENTRYPOINT") or os.path.join(root, "target/static/entrypoint")
# The lint's demonstration: rows in the indexed table (2 million; smaller for a smoke run).
ROWS = int(os.environ.get("LIVEMIGRATE_ROWS", "2000000"))
# LIVEMIGRATE_ONLY_LINT=1 skips the lock_timeout scenarios (a smoke run of the lint part).
ONLY_LINT = os.environ.get("LIVEMIGRATE_ONLY_LINT") == "1"
pgctl = subprocess.Popen([os.path.join(root, "target/debug/examples/pgctl")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, bufsize=1)
env = {}
for _ in range(2):
    k, v = pgctl.stdout.readline().strip().split("=", 1)
    env[k] = v
direct = env["DIRECT"]
u = urllib.parse.urlparse(direct)
bindir = subprocess.run(["sh", "-c", "ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1"],
                        capture_output=True, text=True).stdout.strip()
psql_env = {**os.environ, "PGHOST": u.hostname, "PGPORT": str(u.port), "PGUSER": u.username,
            "PGPASSWORD": urllib.parse.unquote(u.password), "PGDATABASE": u.path.lstrip("/")}
PSQL = [os.path.join(bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
HOLD = 10.0


def sql(q):
    subprocess.run(PSQL + ["-c", q], env=psql_env, check=True, stdout=subprocess.DEVNULL)


class Reader(threading.Thread):
    """One persistent session querying the table every 50 ms; records each latency."""

    def __init__(self, table):
        super().__init__(daemon=True)
        self.table, self.lat, self.stop = table, [], threading.Event()
        self.p = subprocess.Popen(PSQL + ["-A", "-t"], env={**psql_env, "PGAPPNAME": "app-reader"},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            self.p.stdin.write(f"SELECT count(*) FROM {self.table};\n\\echo DONE\n")
            self.p.stdin.flush()
            while self.p.stdout.readline().strip() != "DONE":
                pass
            self.lat.append(time.monotonic() - t)
            time.sleep(0.05)
        self.p.stdin.close()
        self.p.wait()


def scenario(name, migrate):
    table = f"t_{len(results)}"
    sql(f"CREATE TABLE {table} (id int); INSERT INTO {table} SELECT generate_series(1, 1000);")
    blocker = subprocess.Popen(PSQL + ["-c", f"BEGIN; SELECT count(*) FROM {table}; SELECT pg_sleep({HOLD}); COMMIT;"],
                               env={**psql_env, "PGAPPNAME": "nightly-dump"}, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    reader = Reader(table)
    reader.start()
    time.sleep(0.5)
    t = time.monotonic()
    ok = migrate(table) == 0
    took = time.monotonic() - t
    blocker.wait()
    time.sleep(0.5)
    reader.stop.set()
    reader.join()
    done = subprocess.run(PSQL + ["-A", "-t", "-c", f"SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' AND column_name = 'note'"],
                          env=psql_env, capture_output=True, text=True).stdout.strip() == "1"
    results.append((name, max(reader.lat) * 1000, len(reader.lat), took, ok and done))


def folder(table):
    d = os.path.join(work, table)
    os.makedirs(d)
    open(os.path.join(d, "V1__add_note.sql"), "w").write(f"ALTER TABLE {table} ADD COLUMN note text;\n")
    return d


def psql_f(table):
    f = os.path.join(work, f"{table}.sql")
    open(f, "w").write(f"ALTER TABLE {table} ADD COLUMN note text;\n")
    return subprocess.run(PSQL + ["-f", f], env=psql_env, stdout=subprocess.DEVNULL).returncode


def dockhand(ddl):
    def run(table):
        # each scenario is a history of its own
        sql("DROP TABLE IF EXISTS refinery_schema_history")
        return subprocess.run([ep, "--migrations", folder(table), "--ddl-lock-timeout", ddl, "--", "true"],
                              env={**os.environ, "DIRECT_URL": direct}, stderr=subprocess.DEVNULL).returncode
    return run


results = []
if not ONLY_LINT:
    scenario("plain `psql -f` (no lock_timeout)", psql_f)
    scenario("refinery / drizzle behaviour (no lock_timeout: dockhand `--ddl-lock-timeout 0`)", dockhand("0"))
    scenario("dockhand, default `--ddl-lock-timeout 5s`", dockhand("5s"))
    scenario("dockhand, `--ddl-lock-timeout 500ms`", dockhand("500ms"))
    scenario("dockhand, `--ddl-lock-timeout 200ms`", dockhand("200ms"))


# ---- The migration lint: an index build against writers, and the lint's own cost ----

# A database of its own: Prisma (which runs a one-statement migration outside a
# transaction, so CONCURRENTLY can run) refuses a schema that already has tables.
sql("DROP DATABASE IF EXISTS lintbench")
sql("CREATE DATABASE lintbench")
lint_url = direct.rsplit("/", 1)[0] + "/lintbench"
lint_env = {**psql_env, "PGDATABASE": "lintbench"}


def lsql(q):
    subprocess.run(PSQL + ["-c", q], env=lint_env, check=True, stdout=subprocess.DEVNULL)


def entry(args):
    return subprocess.run([ep] + args, env={**os.environ, "DIRECT_URL": lint_url},
                          capture_output=True, text=True)


class Writer(threading.Thread):
    """One persistent session inserting a row every 20 ms; records each latency."""

    def __init__(self, start_id):
        super().__init__(daemon=True)
        self.next, self.lat, self.stop = start_id, [], threading.Event()
        self.p = subprocess.Popen(PSQL + ["-A", "-t"], env={**lint_env, "PGAPPNAME": "app-writer"},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            self.p.stdin.write(f"INSERT INTO items VALUES ({self.next}, 'w{self.next}');\n\\echo DONE\n")
            self.p.stdin.flush()
            while self.p.stdout.readline().strip() != "DONE":
                pass
            self.lat.append(time.monotonic() - t)
            self.next += 1
            time.sleep(0.02)
        self.p.stdin.close()
        self.p.wait()


prisma = os.path.join(work, "prisma")
os.makedirs(prisma)
open(os.path.join(prisma, "migration_lock.toml"), "w").write('provider = "postgresql"\n')


def migration(name, text):
    os.makedirs(os.path.join(prisma, name))
    open(os.path.join(prisma, name, "migration.sql"), "w").write(text)


migration("20260101000000_init", "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL);\n")
assert entry(["--migrate-only", "--migrations", prisma]).returncode == 0
lsql(f"INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g; ANALYZE items;")
size = subprocess.run(PSQL + ["-A", "-t", "-c", "SELECT pg_size_pretty(pg_total_relation_size('items'))"],
                      env=lint_env, capture_output=True, text=True).stdout.strip()
index_runs, next_id = [], ROWS + 1
for name, stmt in [("`CREATE INDEX`", "CREATE INDEX items_v ON items (v);"),
                   ("`CREATE INDEX CONCURRENTLY`", "CREATE INDEX CONCURRENTLY items_v2 ON items (v);")]:
    migration(f"2026010{2 + len(index_runs)}000000_index", stmt + "\n")
    # what CI (or the migrate Job) sees before anything runs
    status = entry(["--migrate-status", "--migrations", prisma, "--migrate-lint", "error"])
    flagged = "[require-concurrent-index-creation]" in status.stdout
    writer = Writer(next_id)
    writer.start()
    time.sleep(1.0)
    t = time.monotonic()
    applied = entry(["--migrate-only", "--migrations", prisma]).returncode == 0
    took = time.monotonic() - t
    time.sleep(1.0)
    writer.stop.set()
    writer.join()
    next_id = writer.next + 1
    quiet = sorted(writer.lat)[len(writer.lat) // 2] * 1000
    index_runs.append((name, status.returncode, flagged, max(writer.lat) * 1000, quiet, len(writer.lat), took, applied))

# The lint's cost at start-up: 200 applied and 5 pending migrations, `--migrate-status`
# (it applies nothing, so it repeats) with the lint on against off.
sql("DROP DATABASE IF EXISTS lintcost")
sql("CREATE DATABASE lintcost")
cost_url = direct.rsplit("/", 1)[0] + "/lintcost"
cost = os.path.join(work, "cost")
os.makedirs(cost)
for i in range(1, 201):
    open(os.path.join(cost, f"V{i}__m{i}.sql"), "w").write(f"CREATE TABLE t{i} (id int, v text);\n")
subprocess.run([ep, "--migrate-only", "--migrations", cost], env={**os.environ, "DIRECT_URL": cost_url},
               check=True, stderr=subprocess.DEVNULL)
pending = ["CREATE INDEX t1_v ON t1 (v);", "ALTER TABLE t2 ADD COLUMN n int DEFAULT 0;",
           "ALTER TABLE t3 ALTER COLUMN v TYPE varchar(40);", "ALTER TABLE t4 ADD CONSTRAINT t4_fk FOREIGN KEY (id) REFERENCES t5 (id) NOT VALID;",
           "CREATE TABLE t201 (id int);\nCREATE INDEX t201_id ON t201 (id);"]
for i, stmt in enumerate(pending, start=201):
    open(os.path.join(cost, f"V{i}__p{i}.sql"), "w").write(stmt + "\n")


def median_ms(args, runs=30):
    times = []
    for _ in range(runs + 3):
        t = time.monotonic()
        subprocess.run([ep] + args, env={**os.environ, "DIRECT_URL": cost_url},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - t)
    times = sorted(times[3:])
    return times[len(times) // 2] * 1000


lint_off = median_ms(["--migrate-status", "--migrations", cost, "--migrate-lint", "off"])
lint_on = median_ms(["--migrate-status", "--migrations", cost, "--migrate-lint", "warn"])
pgctl.stdin.write("quit\n")
pgctl.stdin.flush()

if not ONLY_LINT:
    print("### A migration against live traffic\n")
    print(f"A session holds ACCESS SHARE on a table for {HOLD:.0f} s (what pg_dump does for its whole run); "
          "a migration then runs `ALTER TABLE ... ADD COLUMN`, and a reader queries the table every 50 ms "
          "on its own connection. Worst reader latency while it happens, and whether the migration "
          "completed once the blocker ended:\n")
    print("| migrator | reader's worst latency | queries | migration took | completed |")
    print("|---|---:|---:|---:|---|")
    for name, worst, n, took, ok in results:
        print(f"| {name} | {worst:.0f} ms | {n} | {took:.1f} s | {'yes' if ok else 'NO'} |")
    print()
    print("Without lock_timeout the ALTER waits for ACCESS EXCLUSIVE behind the dump, and every later "
          "read of the table queues behind the ALTER: the app stalls for as long as the dump lasts. "
          "With dockhand the ALTER gives up after the ddl lock timeout, the queued reads go through, "
          "and it retries with backoff until the blocker is gone. Goal: worst stall <= ddl lock "
          "timeout + 100 ms.\n")

print("### The migration lint: an index build against live writers\n")
print(f"`items` holds {ROWS:,} rows ({size}); a writer inserts a row every 20 ms on its own connection "
      "while a Prisma migration builds an index on `v`. `--migrate-status --migrate-lint error` runs first, "
      "as CI or the migrate Job would, before anything is applied:\n")
print("| migration | lint (`--migrate-status`, exit) | writer's worst latency | median | inserts | migration took | applied |")
print("|---|---|---:|---:|---:|---:|---|")
for name, code, flagged, worst, med, n, took, ok in index_runs:
    print(f"| {name} | {'flagged, exit ' + str(code) if flagged else 'no finding, exit ' + str(code)} | {worst:.0f} ms | {med:.0f} ms | {n} | {took:.1f} s | {'yes' if ok else 'NO'} |")
print()
print("`CREATE INDEX` holds a SHARE lock for the whole build: every INSERT waits for it, so the writer's "
      "worst latency is about the build time. `CONCURRENTLY` lets writes through. The lint names the "
      "first before it runs, with the table's size, and `--migrate-lint error` refuses it (exit 4).\n")
print(f"The lint's cost at start-up, 200 applied and 5 pending migrations (`--migrate-status`, median of "
      f"30): {lint_on:.1f} ms with the lint against {lint_off:.1f} ms without: {lint_on - lint_off:.1f} ms "
      f"(goal < 20 ms: {'yes' if lint_on - lint_off < 20 else 'NO'}). With nothing pending the lint does not run.\n")
