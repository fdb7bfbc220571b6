#!/usr/bin/env bash
# What client tracking costs: L1-hit reads and writes with
# CACHE_CLIENT_TRACKING on and off, alternated in one run.
#
# The deployed shape: PostgreSQL, Redis on, the bus on, the default L1
# (10,000 entries) holding every product, two instances A and B on one
# prefix. Each round, for each setting:
#   reads   wrk GET /products/{id} on A, every request an L1 hit (warmed)
#   writes  wrk PATCH /products/{id} on A (invalidate strategy) while B
#           receives the bus messages and, with tracking on, the
#           invalidations Redis sends it
# Printed per run: req/s, p99, and CPU µs per request of A, of B and of
# redis-server (from /proc/PID/stat, utime+stime over the run).
#
# Usage: bench/tracking.sh   (from the repository root)
# Env:   PG_URL (postgres://postgres@127.0.0.1:5432/postgres),
#        REDIS_URL (redis://127.0.0.1:6379), DURATION (10s),
#        CONNECTIONS (32), PRODUCTS (10000), ROUNDS (2), PORT_A (18081), PORT_B (18082)
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
PRODUCTS=${PRODUCTS:-10000}
ROUNDS=${ROUNDS:-2}
PORT_A=${PORT_A:-18081}
PORT_B=${PORT_B:-18082}
export PGOPTIONS="-c client_min_messages=warning"
BIN=target/release/catalog
export TOKEN=bench
PG_DB=catalog_tracking_$$
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in wrk redis-cli psql curl python3; do
  command -v "$tool" >/dev/null || { echo "tracking.sh: $tool is missing" >&2; exit 2; }
done
cargo build --release -p catalog --bin catalog >&2
REDIS_PID=$(redis-cli -u "$REDIS_URL" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')

psql "$PG_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
DB_URL="${PG_URL%/*}/$PG_DB?sslmode=disable"
RUST_LOG=warn "$BIN" seed --database-url "$DB_URL" "$PRODUCTS" >/dev/null
psql "$DB_URL" -qc "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null

ticks() { # ticks PID: utime+stime of a process, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

wait_healthy() { # wait_healthy PORT
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$1/health" | grep -q '"ok"' && return 0
    sleep 0.2
  done
  echo "instance on $1 did not become healthy" >&2
  exit 1
}

start() { # start PORT PREFIX TRACKING: prints the pid
  env DATABASE_URL="$DB_URL" BIND_ADDR="127.0.0.1:$1" RUST_LOG=warn CATALOG_API_TOKEN=$TOKEN \
    REDIS_URL="$REDIS_URL" CACHE_PREFIX="$2" CACHE_CLIENT_TRACKING="$3" \
    "$BIN" serve >>"$WORK/$1.log" 2>&1 &
  echo $!
}

# run NAME SCRIPT PORT A_PID B_PID: one wrk run, with CPU per request.
run() {
  local name=$1 script=$2 port=$3 a=$4 b=$5 out="$WORK/run.wrk"
  local a0 b0 r0 a1 b1 r1
  a0=$(ticks "$a"); b0=$(ticks "$b"); r0=$(ticks "$REDIS_PID")
  MAX_ID=$PRODUCTS wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "bench/$script" \
    "http://127.0.0.1:$port" >"$out"
  a1=$(ticks "$a"); b1=$(ticks "$b"); r1=$(ticks "$REDIS_PID")
  python3 - "$name" "$out" "$a0" "$a1" "$b0" "$b1" "$r0" "$r1" "$(getconf CLK_TCK)" <<'PY'
import re, sys
name, out, a0, a1, b0, b1, r0, r1, hz = sys.argv[1:]
text = open(out).read()
requests = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
p99 = re.search(r"99%\s+(\S+)", text).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
us = lambda t0, t1: (int(t1) - int(t0)) / int(hz) * 1e6 / max(requests, 1)
print(f"{name:<24} {rps:>10.0f} req/s  p99 {p99:>9}  CPU µs/req: A {us(a0, a1):6.1f}  B {us(b0, b1):6.1f}"
      f"  redis {us(r0, r1):5.1f}  non-2xx {bad.group(1) if bad else 0}")
PY
}

echo "$PRODUCTS products, $CONNECTIONS connections, $DURATION per run, wrk -t2, $(nproc) cores; A and B share Redis and PostgreSQL"
for round in $(seq 1 "$ROUNDS"); do
  for tracking in true false; do
    prefix="bench:$$:$round:$tracking:"
    a=$(start "$PORT_A" "$prefix" "$tracking"); PIDS+=("$a")
    b=$(start "$PORT_B" "$prefix" "$tracking"); PIDS+=("$b")
    wait_healthy "$PORT_A"; wait_healthy "$PORT_B"
    curl -fsS -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
      -d '{"all":true}' "http://127.0.0.1:$PORT_A/cache/warm" >/dev/null
    MAX_ID=$PRODUCTS wrk -t2 -c"$CONNECTIONS" -d2s -s bench/random_ids.lua "http://127.0.0.1:$PORT_A" >/dev/null
    run "reads, tracking $tracking #$round" random_ids.lua "$PORT_A" "$a" "$b"
    run "writes, tracking $tracking #$round" random_patches.lua "$PORT_A" "$a" "$b"
    kill "$a" "$b"; wait "$a" "$b" 2>/dev/null || true
    PIDS=()
    redis-cli -u "$REDIS_URL" --scan --pattern "$prefix*" | xargs -r redis-cli -u "$REDIS_URL" unlink >/dev/null
  done
done
