#!/usr/bin/env bash
# Zero-downtime deploys on Docker Swarm, measured: runs tests/tests/swarm.rs (a
# single-node swarm made for the run and left again; examples/swarm deployed as
# written) with DOCKHAND_SWARM_CAUSES=1, and writes the "swarm" section of
# bench/RESULTS.md: requests, failures and latency per phase (steady state, the v2
# rollout with its migration, the v3 rollback, scaling to 6 and back), the rollout
# time, and the failures of rolling restarts whose stopping tasks lack one shutdown
# setting.
. "$(dirname "$0")/../scripts/lib.sh"
. "$ROOT/bench/lib.sh"
"$ROOT/scripts/setup" >/dev/null
"$ROOT/scripts/build-static" >/dev/null
cargo build -q --locked --workspace
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
DOCKHAND_SWARM_RESULTS="$work/table.md" DOCKHAND_SWARM_CAUSES=1 \
  cargo test -q --locked -p dockhand-tests --test swarm -- --nocapture >&2
{
  echo "### Rolling updates on Docker Swarm"
  echo
  echo "examples/swarm on a single-node swarm: 3 app tasks (Node, under the entrypoint) behind PgBouncer and PostgreSQL. A load generator inside the overlay network sends 500 requests/s over 16 kept-alive connections, each connection resolving \`tasks.app\` anew and living 5 to 15 s; every request updates a row, 1 in 20 waits 200 ms first (in flight when a task stops). No request is retried: a failure is any request without a 2xx answer. Latencies are those of the fast requests, from the load generator's side. The rollout to v2 applies a migration (a nullable column, then an index built CONCURRENTLY on the 20,000-row table); v3's migration fails, its task exits 4 and Swarm rolls back by itself. Goal: 0 failed of at least 5,000 requests per phase; p99 during the rollout within 2x of steady state."
  echo
  cat "$work/table.md"
  echo
  echo "Failure kinds: \`connect-refused\`, a connection to an address resolved (or cached) before the task left DNS, after it stopped listening; \`closed-reused\`, a kept-alive connection the server closed as the request went out (http's close drops idle connections at once); \`reset-reused\`, the app exited with requests in flight. Swarm removes a stopping task from DNS 2 s before its SIGTERM, so a client resolving for each connection needs no stop delay for new connections; connections kept alive longer than that delay, and cached DNS answers, do: the stop delay moves them away before the app stops, and draining (\`Connection: close\` on each answer after SIGTERM, idle connections closed a second later) ends the rest cleanly."
  echo
  echo "Load average (1 min) when the run ended: $(cut -d' ' -f1 /proc/loadavg) on $(nproc) cores; the rollout's p99 includes the CPU the starting containers take from the app."
  echo
  machine_line
  echo "Run: \`bench/swarm.sh\`."
} >"$work/section.md"
write_section swarm "$work/section.md"
sed -n '/swarm:start/,/swarm:end/p' "$RESULTS"
