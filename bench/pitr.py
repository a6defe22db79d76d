"""Driven by bench/pitr.sh; prints the markdown section (progress goes to stderr)."""
import os, pwd, signal, socket, subprocess, sys, threading, time

root, work, scale, wal_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bk = os.environ.get("DOCKHAND_BENCH_BACKUP") or os.path.join(root, "target/static/backup")
bindir = subprocess.run(["sh", "-c", "ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1"],
                        capture_output=True, text=True).stdout.strip()
pg = lambda tool: os.path.join(bindir, tool)
sock = os.path.join(work, "sock")
os.makedirs(sock)
os.chmod(sock, 0o777)
PW = "b3nch/p?w#d@x:y%z"  # hostile characters, percent-encoded in the URL
PW_URL = "b3nch%2Fp%3Fw%23d%40x%3Ay%25z"


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    return p


port = free_port()
url = f"postgres://app:{PW_URL}@127.0.0.1:{port}/app"
conninfo = f"host=127.0.0.1 port={port} user=app dbname=app"
pgenv = {**os.environ, "PGPASSWORD": PW}


def as_postgres(args, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--"] + args, check=True, **kw)


def psql(sql, db="app"):
    r = subprocess.run([pg("psql"), "-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-h", sock, "-p", str(port),
                        "-U", "postgres", "-d", db, "-c", sql], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"psql {sql!r}: {r.stderr}")
    return r.stdout.strip()


class Server:
    """PostgreSQL on `data`, as the user postgres, in its own process group."""

    def __init__(self, data):
        self.data = data
        self.log = open(os.path.join(work, f"pg-{os.path.basename(data)}.log"), "a")
        u = pwd.getpwnam("postgres")
        self.p = subprocess.Popen(["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups",
                                   pg("postgres"), "-D", data, "-p", str(port),
                                   "-c", f"unix_socket_directories={sock}", "-c", "listen_addresses=127.0.0.1"],
                                  stdout=self.log, stderr=self.log, start_new_session=True)

    def wait_open(self, timeout=3600):
        """Seconds until the server accepts writes (promoted when recovering)."""
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.p.poll() is not None:
                raise RuntimeError(f"postgres exited; see {self.log.name}")
            try:
                if psql("SELECT pg_is_in_recovery()", "postgres") == "f":
                    return time.monotonic() - t
            except RuntimeError:
                pass
            time.sleep(0.05)
        raise RuntimeError("postgres did not open")

    def kill(self):
        """The volume is lost: SIGKILL to every process of the server at once."""
        os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()
        time.sleep(0.5)

    def stop(self):
        os.killpg(self.p.pid, signal.SIGINT)
        self.p.wait()


def new_data(name):
    d = os.path.join(work, name)
    os.makedirs(d, mode=0o700)
    subprocess.run(["chown", "postgres:postgres", d], check=True)
    return d


def rss_kib(pid, field="VmHWM:"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    try:
        return [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    except OSError:
        return []


def wal_lsn():
    return psql("SELECT pg_current_wal_lsn()", "postgres")


def wal_bytes_since(lsn):
    return int(psql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn}')", "postgres"))


def slot_lag(slot):
    v = psql(f"SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
             f"FROM pg_replication_slots WHERE slot_name = '{slot}'", "postgres")
    return int(v or 0)


def wait(cond, timeout, what):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if cond():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out: {what}")


# --- the cluster ---
data = new_data("data")
as_postgres([pg("initdb"), "-D", data, "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256"], stdout=subprocess.DEVNULL)
with open(os.path.join(data, "postgresql.conf"), "a") as f:
    f.write("max_wal_size = 4GB\n")
server = Server(data)
server.wait_open(60)
psql(f"CREATE ROLE app LOGIN REPLICATION PASSWORD '{PW.replace(chr(39), chr(39) * 2)}'", "postgres")
psql("CREATE DATABASE app OWNER app", "postgres")
say(f"seeding pgbench scale {scale}")
subprocess.run([pg("pgbench"), "-q", "-i", "-s", str(scale), "-h", "127.0.0.1", "-p", str(port), "-U", "app", "app"],
               env=pgenv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
psql("CREATE TABLE ticks (id bigint PRIMARY KEY, at timestamptz NOT NULL)")
psql("ALTER TABLE ticks OWNER TO app")
db_bytes = int(psql("SELECT pg_database_size('app')"))


def pgbench(secs):
    r = subprocess.run([pg("pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(secs), "-h", "127.0.0.1", "-p", str(port),
                        "-U", "app", "app"], env=pgenv, check=True, capture_output=True, text=True)
    return float(next(l for l in r.stdout.splitlines() if l.startswith("tps")).split()[2])


say("pgbench without the sidecar")
start = wal_lsn()
tps_alone = pgbench(30)
wal_rate_alone = wal_bytes_since(start) / 30

# --- S3 (s3s-fs) and the sidecar ---
s3_port = free_port()
s3_root = os.path.join(work, "s3")
os.makedirs(os.path.join(s3_root, "bench"))
s3 = subprocess.Popen([os.path.join(root, ".cache/tools/bin/s3s-fs"), "--host", "127.0.0.1", "--port", str(s3_port),
                       "--access-key", "testing", "--secret-key", "testing", s3_root],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def listening(p):
    try:
        socket.create_connection(("127.0.0.1", p), 0.2).close()
        return True
    except OSError:
        return False


wait(lambda: listening(s3_port), 30, "s3s-fs")
s3env = {"BACKUP_S3_BUCKET": "bench", "BACKUP_S3_PREFIX": "pitr", "BACKUP_S3_ENDPOINT": f"http://127.0.0.1:{s3_port}",
         "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
folder = os.path.join(work, "backups")
sidecar_env = {**os.environ, **s3env, "DIRECT_URL": url, "BACKUP_DIR": folder, "BACKUP_SCHEDULE": "@yearly",
               "BACKUP_WAL": "on", "BACKUP_WAL_RPO": "60s", "RUST_LOG": "info"}


def start_sidecar():
    log = open(os.path.join(work, "sidecar.log"), "a")
    return subprocess.Popen([bk, "daemon"], env=sidecar_env, stdout=log, stderr=log)


def streaming(slot):
    return psql(f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active",
                "postgres") == "1"


sidecar = start_sidecar()
wait(lambda: streaming("dockhand"), 60, "the sidecar's slot")
# What a team would run without dockhand: pg_receivewal into a local archive.
archive = new_data("archive")
as_postgres([pg("pg_receivewal"), "--create-slot", "--slot=baseline", "-d", conninfo], env=pgenv)
baseline_rx = subprocess.Popen(["runuser", "-u", "postgres", "--", pg("pg_receivewal"), "-D", archive,
                                "--slot=baseline", "--no-loop", "-d", conninfo], env=pgenv,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
wait(lambda: streaming("baseline"), 60, "the baseline's slot")

say("base backups")
subprocess.run([bk, "base"], env=sidecar_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base_plain = new_data("base_plain")
as_postgres([pg("pg_basebackup"), "-D", base_plain, "-X", "none", "-c", "fast", "-d", conninfo], env=pgenv)
base_start = wal_lsn()

say("pgbench with the sidecar streaming")
lags, peak, rss_now = [], {"daemon": 0, "receivewal": 0}, []
running = True


def sample():
    while running:
        lags.append(slot_lag("dockhand"))
        rss_now.append(rss_kib(sidecar.pid, "VmRSS:"))
        peak["daemon"] = max(peak["daemon"], rss_kib(sidecar.pid))
        for c in children(sidecar.pid):
            peak["receivewal"] = max(peak["receivewal"], rss_kib(c))
        time.sleep(0.5)


sampler = threading.Thread(target=sample)
sampler.start()
start = wal_lsn()
tps_streaming = pgbench(60)
wal_rate_streaming = wal_bytes_since(start) / 60
t = time.monotonic()
wait(lambda: slot_lag("dockhand") < 16 << 20, 600, "the slot to catch up")
catch_up = time.monotonic() - t
running = False
sampler.join()

say(f"writing WAL up to {wal_mb} MiB after the base backup")
while wal_bytes_since(base_start) < wal_mb << 20:
    psql("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) "
         "SELECT 1, 1, i, i, now(), left(md5(i::text), 22) FROM generate_series(1, 200000) i")
wal_after_base = wal_bytes_since(base_start)


class Writer:
    """Commits a timestamped row every 100 ms; remembers the last acknowledged."""

    def __init__(self, first):
        self.p = subprocess.Popen([pg("psql"), "-X", "-qtA", "-h", sock, "-p", str(port), "-U", "postgres", "-d", "app"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  bufsize=1)
        self.acked, self.next, self.go = first - 1, first, True
        self.reader = threading.Thread(target=self.read)
        self.reader.start()
        self.writer = threading.Thread(target=self.write)
        self.writer.start()

    def write(self):
        while self.go:
            try:
                self.p.stdin.write(f"INSERT INTO ticks VALUES ({self.next}, clock_timestamp()) RETURNING id;\n")
                self.p.stdin.flush()
            except OSError:
                return
            self.next += 1
            time.sleep(0.1)

    def read(self):
        for line in self.p.stdout:
            if line.strip().isdigit():
                self.acked = int(line)

    def stop(self):
        self.go = False
        self.writer.join()
        self.p.kill()
        self.reader.join()


def recovered_ticks():
    return int(psql("SELECT coalesce(max(id), 0) FROM ticks"))


def recover(args, env, target_dir):
    t = time.monotonic()
    subprocess.run([bk, "recover", "--to-time", "latest", "--data-dir", target_dir] + args, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "recover.log"), "a"))
    secs = time.monotonic() - t
    subprocess.run(["chown", "-R", "postgres:postgres", target_dir], check=True)
    return secs


# --- the PostgreSQL volume lost; the sidecar stopped as the runbook says ---
say("RPO: the PostgreSQL volume lost")
w = Writer(1)
time.sleep(10)
server.kill()
w.stop()
lost_at_ack = w.acked  # read to its end: nothing can be acknowledged after the kill
baseline_rx.wait(timeout=60)  # its server is gone: it ends
subprocess.run(["rm", "-rf", data])
sidecar.send_signal(signal.SIGTERM)
sidecar.wait(timeout=120)
# The baseline's archive: its last segment is still `.partial`: in place under its own name
for f in os.listdir(archive):
    if f.endswith(".partial"):
        os.rename(os.path.join(archive, f), os.path.join(archive, f[:-8]))

recovered1 = new_data("recovered1")
folder_env = {**os.environ, "BACKUP_DIR": folder}
recover_secs = recover(["--from", "local"], folder_env, recovered1)
server = Server(recovered1)
replay_secs = server.wait_open()
folder_lost = lost_at_ack - recovered_ticks()
server.stop()

say("RTO baseline: pg_basebackup's copy and the local archive")
baseline = os.path.join(work, "baseline")
t = time.monotonic()
subprocess.run(["cp", "-a", base_plain, baseline], check=True)
with open(os.path.join(baseline, "postgresql.auto.conf"), "a") as f:
    f.write(f"restore_command = 'cp \"{archive}/%f\" \"%p\"'\nrecovery_target_action = 'promote'\n")
open(os.path.join(baseline, "recovery.signal"), "w").close()
subprocess.run(["chown", "-R", "postgres:postgres", baseline], check=True)
copy_secs = time.monotonic() - t
server = Server(baseline)
baseline_replay = server.wait_open()
baseline_lost = lost_at_ack - recovered_ticks()
server.stop()

# --- the host lost: the recovered cluster is the primary; sidecar and server killed together ---
say("RPO: the host lost (S3 alone)")
server = Server(recovered1)
server.wait_open(120)
sidecar = start_sidecar()
wait(lambda: streaming("dockhand"), 120, "the sidecar's slot on the new timeline")
first = recovered_ticks() + 1
w = Writer(first)
time.sleep(75)
subprocess.run(["pkill", "-KILL", "-P", str(sidecar.pid)])
sidecar.kill()
server.kill()
w.stop()
host_lost_ack = w.acked
sidecar.wait()
recovered2 = new_data("recovered2")
recover(["--from", "s3"], {**os.environ, **s3env}, recovered2)
server = Server(recovered2)
server.wait_open()
s3_lost = host_lost_ack - recovered_ticks()
server.stop()
s3.terminate()

mib = lambda b: b / (1 << 20)
print("### Point-in-time recovery (`bench/pitr.sh`)\n")
print(f"One PostgreSQL {os.path.basename(os.path.dirname(bindir))} cluster on loopback: pgbench's database at scale {scale} "
      f"({mib(db_bytes):.0f} MiB), the sidecar (`backup daemon`, static release binary) streaming WAL with "
      "`BACKUP_WAL=on` to a folder and to S3 (s3s-fs on loopback), `BACKUP_WAL_RPO=60s`. Beside it, what a team "
      "would run without dockhand: `pg_basebackup` and a second `pg_receivewal` into a local archive. The app "
      "role's password holds `/ ? # @ : %`.\n")
print("**Throughput** (pgbench, 4 clients, full speed on these 2 cores):\n")
print("| | TPS | WAL written | slot lag, max | slot lag, median | caught up after pgbench |")
print("|---|---:|---:|---:|---:|---:|")
lags.sort()
print(f"| pgbench alone (30 s) | {tps_alone:.0f} | {mib(wal_rate_alone):.1f} MiB/s | | | |")
print(f"| pgbench with the sidecar streaming (60 s) | {tps_streaming:.0f} ({tps_streaming / tps_alone:.2f}x) | "
      f"{mib(wal_rate_streaming):.1f} MiB/s | {mib(lags[-1]):.0f} MiB | {mib(lags[len(lags) // 2]):.0f} MiB | "
      f"{catch_up:.1f} s |")
tenth = max(1, len(rss_now) // 10)
print(f"\nSidecar memory while streaming: `backup daemon` peak RSS {peak['daemon'] / 1024:.1f} MiB (its RSS "
      f"{sum(rss_now[:tenth]) / tenth / 1024:.1f} MiB in the first tenth of the run, "
      f"{sum(rss_now[-tenth:]) / tenth / 1024:.1f} MiB in the last), its `pg_receivewal` "
      f"{peak['receivewal'] / 1024:.1f} MiB (goal: the sidecar at most 64 MiB, flat).\n")
print(f"**RTO**: the base backup and {mib(wal_after_base):.0f} MiB of WAL after it, recovered to the end:\n")
print("| | fetch and unpack | replay until open | total |")
print("|---|---:|---:|---:|")
ours = recover_secs + replay_secs
theirs = copy_secs + baseline_replay
print(f"| **dockhand `backup recover --to-time latest --from local`** (zstd, checked) | {recover_secs:.1f} s | "
      f"{replay_secs:.1f} s | {ours:.1f} s ({ours / theirs:.2f}x) |")
print(f"| `pg_basebackup` copy (`cp -a`) and `restore_command = cp` from pg_receivewal's archive | {copy_secs:.1f} s | "
      f"{baseline_replay:.1f} s | {theirs:.1f} s |")
print("\nThe second pgbench run writes more WAL at the same speed: the base backup's checkpoint just before it makes "
      "each page's first change a full-page write. RTO: `recover` fetches, checks (SHA-256) and decodes (zstd) the base "
      "backup and each segment one after another on one core, where `cp` copies files already in the page cache.")
print("\n**RPO**: a writer commits a row every 100 ms; rows acknowledged to it but missing after recovery:\n")
print("| what was lost | recovered from | rows lost | committed work lost | goal |")
print("|---|---|---:|---:|---:|")
print(f"| the PostgreSQL volume (the sidecar stopped with SIGTERM, as the runbook says) | the sidecar's folder | "
      f"{folder_lost} | {folder_lost * 0.1:.1f} s | 1 s |")
print(f"| the same, baseline | pg_receivewal's local archive | {baseline_lost} | {baseline_lost * 0.1:.1f} s | |")
print(f"| the whole host (server and sidecar killed together, after 75 s of writes) | S3 alone | {s3_lost} | "
      f"{s3_lost * 0.1:.1f} s | `BACKUP_WAL_RPO` (60 s) |")
