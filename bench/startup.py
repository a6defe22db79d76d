"""Driven by bench/startup.sh; prints the markdown section."""
import json, os, random, statistics, subprocess, sys, time

root, work = sys.argv[1], sys.argv[2]
ep = os.path.join(root, "target/static/entrypoint")
pgctl = subprocess.Popen([os.path.join(root, "target/debug/examples/pgctl")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, bufsize=1)
env = {}
for _ in range(2):
    k, v = pgctl.stdout.readline().strip().split("=", 1)
    env[k] = v
direct = env["DIRECT"]
port = direct.rsplit(":", 1)[1].split("/")[0]
psql = subprocess.run(["sh", "-c", "ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1"], capture_output=True, text=True).stdout.strip()

def ctl(cmd):
    pgctl.stdin.write(cmd + "\n")
    return pgctl.stdout.readline().strip()

stamp = os.path.join(work, "stamp")
app = ["sh", "-c", f"date +%s.%N > {stamp}"]
waiters = {
    "dockhand `--wait postgres`": [ep, "--wait", "postgres", "--"] + app,
    "wait-for-it (TCP only)": ["wait-for-it", "-q", "-h", "127.0.0.1", "-p", port, "-t", "60", "--"] + app,
    "2 s `pg_isready` loop": ["sh", "-c", f"for i in $(seq 30); do {psql}/pg_isready -q -h 127.0.0.1 -p {port} && break; sleep 2; done; date +%s.%N > {stamp}"],
}
rows = []
rng = random.Random(7)
for name, cmd in waiters.items():
    lat = []
    for _ in range(8):
        ctl("stop")
        if os.path.exists(stamp):
            os.remove(stamp)
        p = subprocess.Popen(cmd, env={**os.environ, "DIRECT_URL": direct}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 1.5))
        ready = float(ctl("start").split()[1])
        p.wait(timeout=120)
        lat.append((float(open(stamp).read()) - ready) * 1000)
    rows.append((name, statistics.median(lat), max(lat)))

# 200 applied migrations, nothing pending.
mig = os.path.join(work, "mig")
os.makedirs(mig)
for i in range(1, 201):
    open(os.path.join(mig, f"V{i}__m{i}.sql"), "w").write(f"CREATE TABLE t{i} (id int);\n")
subprocess.run([ep, "--migrations", mig, "--", "true"], env={**os.environ, "DIRECT_URL": direct}, check=True, stderr=subprocess.DEVNULL)
h = os.path.join(work, "h.json")
subprocess.run(["hyperfine", "-N", "--warmup", "3", "--runs", "30", "--export-json", h,
                f"{ep} -- true", f"{ep} --migrations {mig} -- true"],
               env={**os.environ, "DIRECT_URL": direct}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
res = json.load(open(h))["results"]
base, migr = res[0]["mean"] * 1000, res[1]["mean"] * 1000

# Resident memory while supervising after start-up.
p = subprocess.Popen([ep, "--wait", "postgres", "--migrations", mig, "--", "sleep", "30"],
                     env={**os.environ, "DIRECT_URL": direct}, stderr=subprocess.DEVNULL)
time.sleep(1.5)
status = dict(l.split(":", 1) for l in open(f"/proc/{p.pid}/status").read().splitlines() if ":" in l)
rss, anon, filerss = (int(status[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile"))
p.terminate(); p.wait()
ctl("quit")

print("## Start-up (`bench/startup.sh`)\n")
print("Readiness latency: PostgreSQL stopped, the waiter started, PostgreSQL started 0.5–1.5 s")
print("later; latency is from pg_isready's first success (polled every 20 ms, so ±20 ms) to the")
print("app's first instruction. 8 runs each.\n")
print("| waiter | median latency | worst |")
print("|---|---:|---:|")
for n, med, worst in rows:
    print(f"| {n} | {med:.0f} ms | {worst:.0f} ms |")
print("\nwait-for-it only sees the TCP port open, which PostgreSQL does before it accepts queries")
print("(\"the database system is starting up\"); dockhand waits for a real `SELECT 1`.\n")
print(f"Migration phase with 200 applied migrations and nothing pending (connect, pooler check")
print(f"with a second connection, history read; no lock taken): {migr - base:.1f} ms over")
print(f"`entrypoint -- true` ({migr:.1f} ms against {base:.1f} ms; target < 50 ms: {'yes' if migr - base < 50 else 'NO'}).\n")
print(f"Resident memory while supervising `sleep` after `--wait postgres --migrations` (re-executed,")
print(f"start-up code pages dropped): {rss/1024:.2f} MiB ({anon} KiB anonymous, {filerss} KiB file-backed);")
print(f"budget 1 MiB: {'yes' if rss <= 1024 else 'NO'}.")
