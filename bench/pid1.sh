#!/usr/bin/env bash
# PID 1 cost, side by side in one run: dockhand's static entrypoint against Debian's
# tini (static build, as tini's releases ship it), dumb-init and catatonit:
# - size of the binary as shipped;
# - resident memory while supervising `sleep` (VmRSS from /proc/PID/status, median of 5);
# - the overhead of `X -- true` over plain `true` (hyperfine, no shell);
# - SIGTERM-to-exit latency as PID 1 of a PID namespace supervising `sleep` (median of 20).
# Writes the "pid1" section of bench/RESULTS.md.
. "$(dirname "$0")/../scripts/lib.sh"
. "$ROOT/bench/lib.sh"
"$ROOT/scripts/setup" >/dev/null
[ -x "$STATIC_DIR/entrypoint" ] || "$ROOT/scripts/build-static"
# This machine's environment may hold *_FILE variables that are not secrets.
export ENTRYPOINT_FILE_VARS=none
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

names=(entrypoint tini-static dumb-init catatonit)
bins=("$STATIC_DIR/entrypoint" /usr/bin/tini-static /usr/bin/dumb-init /usr/bin/catatonit)
seps=("--" "--" "--" "--")

rss_of() { # BIN: VmRSS (KiB) of BIN supervising sleep, median of 5
  for _ in 1 2 3 4 5; do
    "$1" -- sleep 30 & local pid=$!
    sleep 0.3
    awk '/VmRSS/ {print $2}' "/proc/$pid/status"
    kill -TERM $pid; wait $pid 2>/dev/null || true
  done | sort -n | sed -n 3p
}

say "measuring size and idle RSS"
sizes=(); rss=()
for b in "${bins[@]}"; do sizes+=("$(stat -c %s "$b")"); rss+=("$(rss_of "$b")"); done
sleep_rss=$(sleep 30 & p=$!; sleep 0.3; awk '/VmRSS/ {print $2}' /proc/$p/status; kill $p)

say "timing X -- true against true"
cmds=("true")
for b in "${bins[@]}"; do cmds+=("$b -- true"); done
hyperfine -N --warmup 10 --min-runs 200 --export-json "$work/h.json" "${cmds[@]}" >/dev/null

say "timing SIGTERM to exit as PID 1"
python3 - "$work/lat.txt" "${bins[@]}" <<'PY'
import os, signal, subprocess, sys, time
out = open(sys.argv[1], "w")
for b in sys.argv[2:]:
    samples = []
    for _ in range(20):
        p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", b, "--", "sleep", "1000"])
        init = None
        while init is None:
            try:
                kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
                if kids:
                    init = int(kids[0])
                    if open(f"/proc/{init}/task/{init}/children").read().split():
                        break
                    init = None
            except OSError:
                pass
            time.sleep(0.005)
        t0 = time.perf_counter()
        os.kill(init, signal.SIGTERM)
        p.wait()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    out.write(f"{samples[len(samples)//2]*1000:.2f}\n")
PY

python3 - "$work/h.json" "$work/lat.txt" "${sizes[*]}" "${rss[*]}" "$sleep_rss" "${names[@]}" >"$work/section.md" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))["results"]
lat = [float(x) for x in open(sys.argv[2]).read().split()]
sizes = [int(x) for x in sys.argv[3].split()]; rss = [int(x) for x in sys.argv[4].split()]
sleep_rss = int(sys.argv[5]); names = sys.argv[6:]
true_mean = h[0]["mean"]
print("## PID 1 (`bench/pid1.sh`)\n")
print("Binaries as shipped: dockhand's static `entrypoint`, Debian's `tini-static`, `dumb-init`")
print("and `catatonit`. Idle RSS is VmRSS while supervising `sleep` (median of 5); the")
print("overhead is the mean of `X -- true` minus that of `true` (hyperfine -N, ≥ 200 runs);")
print("the latency is from SIGTERM sent to PID 1 of a PID namespace supervising `sleep`")
print("until the namespace has exited (median of 20).\n")
print("| init | size | idle RSS | `X -- true` | overhead over `true` | SIGTERM → exit as PID 1 |")
print("|---|---:|---:|---:|---:|---:|")
for i, n in enumerate(names):
    r = h[i + 1]
    print(f"| {n} | {sizes[i]/1024:.0f} KiB | {rss[i]/1024:.2f} MiB | {r['mean']*1000:.2f} ms | "
          f"{(r['mean']-true_mean)*1000:.2f} ms | {lat[i]:.2f} ms |")
print(f"\n`true` alone: {true_mean*1000:.2f} ms; `sleep` alone: {sleep_rss/1024:.2f} MiB RSS.")
e = rss[0]
print(f"Budget: entrypoint idle RSS {e/1024:.2f} MiB (≤ 1 MiB: {'yes' if e <= 1024 else 'NO'}; "
      f"tini-static {rss[1]/1024:.2f} MiB).")
PY
machine_line >>"$work/section.md"
echo "Run: \`bench/pid1.sh\`." >>"$work/section.md"
write_section pid1 "$work/section.md"
sed -n '/pid1:start/,/pid1:end/p' "$RESULTS"
