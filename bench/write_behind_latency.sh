#!/usr/bin/env bash
# What write-behind's replica wait costs: PATCH latency and throughput on a
# Redis Cluster with WRITE_BEHIND_REPLICA_WAIT_MS unset (the library's
# default on a cluster: WAIT 1 up to 100 ms after queueing) and 0 (no wait),
# alternated in one run.
#
# Runs on the cluster at CLUSTER_URL, else starts its own local one on
# CLUSTER_PORT.. (bench/local_cluster.sh), seeds PostgreSQL, then
# each round, for each setting: one release `catalog serve` with
# CACHE_WRITE_STRATEGY=write-behind on the cluster under a fresh prefix, the
# products warmed into the cache, a 2 s untimed pass, and one wrk run of
# PATCH /products/{id} (random ids, bench/random_patches.lua). Printed per
# run: req/s, p50, p99, non-2xx answers and the instance's `unreplicated`
# count (writes acknowledged without a replica); then the means per setting.
#
# Usage: bench/write_behind_latency.sh   (from the repository root)
# Env:   PG_URL (postgres://postgres@127.0.0.1:5432/postgres), DURATION (10s),
#        CONNECTIONS (16), PRODUCTS (10000), ROUNDS (2), PORT (18083),
#        CLUSTER_URL (unset: a cluster of its own), CLUSTER_PORT (31000)
# Client, service, PostgreSQL and all six Redis nodes share this machine's
# cores, and replication is over loopback: compare the two settings of one
# run with each other; a real network adds its round trip to every wait.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
PRODUCTS=${PRODUCTS:-10000}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18083}
CLUSTER_PORT=${CLUSTER_PORT:-31000}
export PGOPTIONS="-c client_min_messages=warning"
BIN=target/release/catalog
export TOKEN=bench
PG_DB=catalog_wb_latency_$$
WORK=$(mktemp -d)
SERVER_PID=

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  stop_cluster
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=bench/local_cluster.sh
source bench/local_cluster.sh

for tool in wrk redis-server redis-cli psql curl python3; do
  command -v "$tool" >/dev/null || { echo "write_behind_latency.sh: $tool is missing" >&2; exit 2; }
done
# The same build as bench/load.sh, so that both share one set of artifacts.
cargo build --release -p catalog --bin catalog --example floor >&2

# The cluster: CLUSTER_URL when given (bench/load.sh passes its own), else
# one of this script's (so that WAIT has a replica from the first write).
if [ -n "${CLUSTER_URL:-}" ]; then
  REDIS_URL=$CLUSTER_URL
else
  start_cluster "$CLUSTER_PORT" "$WORK"
  REDIS_URL=$CLUSTER_URL
fi

psql "$PG_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
DB_URL="${PG_URL%/*}/$PG_DB?sslmode=disable"
RUST_LOG=warn "$BIN" seed --database-url "$DB_URL" "$PRODUCTS" >/dev/null
psql "$DB_URL" -qc "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null

wait_healthy() {
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/catalog.log" >&2; echo "catalog exited" >&2; exit 1; }
    sleep 0.2
  done
  echo "catalog did not become healthy" >&2
  exit 1
}

# start WAIT PREFIX: the instance on $PORT; WAIT empty leaves
# WRITE_BEHIND_REPLICA_WAIT_MS unset (the library's default).
start() {
  env DATABASE_URL="$DB_URL" BIND_ADDR="127.0.0.1:$PORT" RUST_LOG=warn CATALOG_API_TOKEN=$TOKEN \
    REDIS_URL="$REDIS_URL" CACHE_PREFIX="$2" CACHE_WRITE_STRATEGY=write-behind \
    ${1:+WRITE_BEHIND_REPLICA_WAIT_MS="$1"} \
    "$BIN" serve >>"$WORK/catalog.log" 2>&1 &
  SERVER_PID=$!
  wait_healthy
}

# SIGTERM drains the queue into PostgreSQL before the process exits.
stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

unreplicated() {
  curl -fsS "http://127.0.0.1:$PORT/cache/stats" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["write_behind"]["unreplicated"])'
}

# run NAME: one wrk run of PATCHes, one line; appended to $WORK/results.
run() {
  local name=$1 out="$WORK/run.wrk"
  MAX_ID=$PRODUCTS wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/random_patches.lua \
    "http://127.0.0.1:$PORT" >"$out"
  python3 - "$name" "$out" "$(unreplicated)" "$WORK/results" <<'PY'
import re, sys
name, out, unreplicated, results = sys.argv[1:]
text = open(out).read()
def ms(figure):
    number, unit = re.fullmatch(r"([0-9.]+)([a-z]*)", figure).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}.get(unit, 1.0)
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
# The latency distribution's lines (not a "+/- Stdev" figure such as 85.50%).
p50 = ms(re.search(r"^\s*50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s*99%\s+(\S+)", text, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
bad = int(bad.group(1)) if bad else 0
print(f"{name:<26} {rps:>9.0f} {p50:>9.2f} {p99:>9.2f} {bad:>8} {unreplicated:>13}")
setting = name.rsplit(" #", 1)[0]
with open(results, "a") as f:
    f.write(f"{setting}\t{rps}\t{p50}\t{p99}\n")
PY
}

echo "PATCH /products/{id} (write-behind) on a local 6-node cluster: $PRODUCTS products, $CONNECTIONS connections, $DURATION per run, wrk -t2, $(nproc) cores"
printf '%-26s %9s %9s %9s %8s %13s\n' "run" "req/s" "p50 ms" "p99 ms" "non-2xx" "unreplicated"
for round in $(seq 1 "$ROUNDS"); do
  for wait in "" 0; do
    name="replica wait ${wait:-default}"
    prefix="bench:$$:$round:${wait:-default}:"
    start "$wait" "$prefix"
    curl -fsS -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
      -d '{"all":true}' "http://127.0.0.1:$PORT/cache/warm" >/dev/null
    MAX_ID=$PRODUCTS wrk -t2 -c"$CONNECTIONS" -d2s -s bench/random_patches.lua "http://127.0.0.1:$PORT" >/dev/null
    run "$name #$round"
    stop
  done
done
python3 - "$WORK/results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    setting, rps, p50, p99 = line.split("\t")
    rows.setdefault(setting, []).append((float(rps), float(p50), float(p99)))
mean = lambda values: sum(values) / len(values)
print()
print(f"{'means':<26} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
for setting, runs in rows.items():
    print(f"{setting:<26} {mean([r[0] for r in runs]):>9.0f} {mean([r[1] for r in runs]):>9.2f} {mean([r[2] for r in runs]):>9.2f}")
on, off = rows.get("replica wait default"), rows.get("replica wait 0")
if on and off:
    print(f"    wait on / off: req/s {mean([r[0] for r in on]) / mean([r[0] for r in off]):.2f}, "
          f"p50 {mean([r[1] for r in on]) / mean([r[1] for r in off]):.2f}, "
          f"p99 {mean([r[2] for r in on]) / mean([r[2] for r in off]):.2f}")
PY
