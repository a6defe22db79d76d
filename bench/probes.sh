#!/usr/bin/env bash
# Health probe cost, side by side in one run against one local HTTP server (busybox
# httpd): dockhand's static healthcheck, curl -fsS, wget -q --spider, busybox wget,
# and the node one-liner users put in HEALTHCHECK. Wall time by hyperfine (no shell),
# peak RSS by GNU time (median of 15 runs), binary size and what each crate costs
# (cargo bloat). Writes the "probes" section of bench/RESULTS.md.
. "$(dirname "$0")/../scripts/lib.sh"
. "$ROOT/bench/lib.sh"
"$ROOT/scripts/setup" >/dev/null
[ -x "$STATIC_DIR/healthcheck" ] || "$ROOT/scripts/build-static"
HC="$STATIC_DIR/healthcheck"

work=$(mktemp -d)
trap 'kill $httpd_pid 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/www" && echo ok >"$work/www/index.html"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
busybox httpd -f -p "127.0.0.1:$port" -h "$work/www" & httpd_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
URL="http://127.0.0.1:$port/"

names=(healthcheck "curl -fsS" "wget --spider" "busybox wget" "node one-liner")
cmds=("$HC $URL" "curl -fsS -o /dev/null $URL" "wget -q --spider $URL" "busybox wget -q --spider $URL")
if command -v node >/dev/null; then
  cat >"$work/probe.js" <<JS
require('http').get('$URL', r => process.exit(r.statusCode === 200 ? 0 : 1))
JS
  cmds+=("node $work/probe.js")
else
  names=("${names[@]:0:4}")
fi
for c in "${cmds[@]}"; do $c >/dev/null || die "probe failed: $c"; done

say "timing ${#cmds[@]} probes with hyperfine"
hyperfine -N --warmup 5 --min-runs 50 --export-json "$work/h.json" "${cmds[@]}" >/dev/null

say "measuring peak RSS"
rss=()
for c in "${cmds[@]}"; do rss+=("$(peak_rss_kib 15 $c)"); done

size=$(stat -c %s "$HC")
out="$work/section.md"
python3 - "$work/h.json" "$size" "${rss[*]}" "${names[@]}" >"$out" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))["results"]
size = int(sys.argv[2]); rss = [int(x) for x in sys.argv[3].split()]; names = sys.argv[4:]
base = h[0]["mean"]
print("## Health probes (`bench/probes.sh`)\n")
print("One HTTP GET of a static page from busybox httpd on 127.0.0.1, each tool run")
print("directly (hyperfine -N, 5 warm-ups, at least 50 runs); peak RSS is the median of")
print("15 runs of GNU time's %M.\n")
print("| probe | mean wall | ± σ | × healthcheck | peak RSS |")
print("|---|---:|---:|---:|---:|")
for n, r, k in zip(names, h, rss):
    print(f"| {n} | {r['mean']*1000:.2f} ms | {r['stddev']*1000:.2f} ms | {r['mean']/base:.1f}× | {k/1024:.1f} MiB |")
curl = h[1]["mean"]; node = h[-1]["mean"] if names[-1] == "node one-liner" else None
print()
print(f"Budget checks: static binary {size/1048576:.2f} MiB with TLS (≤ 2 MiB: {'yes' if size <= 2*1048576 else 'NO'}); "
      f"wall time {base/curl:.2f}× curl's (≤ 1: {'yes' if base <= curl else 'NO'})"
      + (f"; {node/base:.0f}× faster than node (≥ 20: {'yes' if node/base >= 20 else 'NO'})" if node else "")
      + f"; peak RSS {rss[0]/1024:.1f} MiB (< 3 MiB: {'yes' if rss[0] < 3*1024 else 'NO'}).")
PY
if cargo bloat --version >/dev/null 2>&1 || cargo install -q cargo-bloat --locked >/dev/null 2>&1; then
  say "measuring what each crate costs (cargo bloat)"
  {
    echo
    echo "What each crate adds to healthcheck's code (\`cargo bloat --crates\`, same profile, unstripped; .text only):"
    echo
    echo '```'
    cd "$ROOT" && CARGO_PROFILE_SMALL_STRIP=false cargo bloat --profile small --target "$MUSL_TARGET" -p healthcheck --crates -n 12 2>/dev/null | sed -n '/File/,$p' | head -16
    echo '```'
  } >>"$out"
fi
machine_line >>"$out"
echo "Run: \`bench/probes.sh\`." >>"$out"
write_section probes "$out"
sed -n '/probes:start/,/probes:end/p' "$RESULTS"
