# Shared helpers for the benchmarks. Source it after scripts/lib.sh.
RESULTS="$ROOT/bench/RESULTS.md"

# write_section NAME FILE: replaces the section between
# <!-- NAME:start --> and <!-- NAME:end --> in bench/RESULTS.md with FILE's content
# (appending the section when it is new), so each benchmark owns its part.
write_section() {
  local name="$1" body="$2"
  [ -f "$RESULTS" ] || printf '# Benchmark results\n\nWritten by the scripts in bench/; each section says how it was measured. Run them again with the command in each section.\n' >"$RESULTS"
  python3 - "$RESULTS" "$name" "$body" <<'PY'
import sys, re
path, name, body_path = sys.argv[1:4]
text = open(path).read()
body = open(body_path).read().rstrip() + "\n"
start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
block = f"{start}\n{body}{end}\n"
if start in text and end in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end) + "\n?", lambda m: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n" + block
open(path, "w").write(text)
PY
}

# peak_rss_kib RUNS CMD...: median of the peak resident set sizes (KiB) over RUNS runs.
peak_rss_kib() {
  local runs="$1"; shift
  for _ in $(seq "$runs"); do
    /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1
  done | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

machine_line() {
  printf 'Machine: %s, %s cores, %s; %s.\n' "$(uname -m)" "$(nproc)" \
    "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)" "$(date -u +%Y-%m-%d)"
}
