"""Driven by bench/livemigrate.sh; prints the markdown section."""
import os, subprocess, sys, threading, time, urllib.parse

root, work = sys.argv[1], sys.argv[2]
ep = os.path.join(root, "target/static/entrypoint")
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
scenario("plain `psql -f` (no lock_timeout)", psql_f)
scenario("refinery / drizzle behaviour (no lock_timeout: dockhand `--ddl-lock-timeout 0`)", dockhand("0"))
scenario("dockhand, default `--ddl-lock-timeout 5s`", dockhand("5s"))
scenario("dockhand, `--ddl-lock-timeout 500ms`", dockhand("500ms"))
scenario("dockhand, `--ddl-lock-timeout 200ms`", dockhand("200ms"))
pgctl.stdin.write("quit\n")
pgctl.stdin.flush()

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
