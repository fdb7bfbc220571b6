#!/usr/bin/env bash
# Load figures for GET /products/{id}, every ratio from one run.
#
# Seeds 100,000 products, then drives the route with wrk (64 connections,
# 15 s each) against release binaries. The headline runs use the shape a
# deployment has: Redis and the bus on, an L1 of L1_ENTRIES (1,000) over
# all the products.
#   floor        examples/floor.rs: a plain axum handler serving precomputed
#                bodies of the same shape (no catalog code; same allocator)
#   L1 hit       catalog + Redis, hot set of HOT_IDS (500) ids inside the L1;
#                floor and L1 hit alternate ROUNDS times; ratios of the means
#   L2 hit       catalog + Redis holding every product (warmed), ids uniform
#                over all of them, so nearly every request is an L2 hit that
#                fills L1 and evicts
#   extra rows   (SECTIONS "l1-only l2-only") the earlier shapes: an L1 holding
#                every product without Redis, and a one-entry L1 in front of
#                Redis (every L2 hit skips the L1 insert)
#   no cache     catalog, one-entry L1 and no Redis: every request reads the store
#                (PostgreSQL, and SQLite as the embedded default); concurrent
#                reads share batch queries (DB_READ_LANES), mean batch printed
#   Zipf mix     catalog with the default L1 (10,000) + Redis, ids ~ Zipf(1.0);
#                hit rate from /cache/stats over the measured run, after warm-up
#   cluster      L2 hits (one-entry L1) on a local Redis Cluster of 6 nodes
#                (3 primaries + 3 replicas, started here) against the single
#                node, alternated ROUNDS times; then write-behind PATCH
#                latency on the cluster with and without the replica wait
#                (bench/write_behind_latency.sh)
# plus the reference points the targets are ratios of, each run right after
# its counterpart: redis-benchmark GET (-c 50, -P 1) after the L2-hit run and
# pgbench primary-key SELECT (-c 8, prepared) after the no-cache PostgreSQL
# run; the ratios are printed under the runs.
#
# Usage: bench/load.sh            (from the repository root)
# Env:   PG_URL    admin URL of PostgreSQL (default postgres://postgres@127.0.0.1:5432/postgres)
#        REDIS_URL (default redis://127.0.0.1:6379)
#        DURATION (15s), CONNECTIONS (64), PRODUCTS (100000), PORT (18080),
#        ROUNDS (2): floor and L1-hit runs, alternated (and the cluster's)
#        L1_ENTRIES (1000), HOT_IDS (500): the headline runs' L1 and hot set
#        SECTIONS ("l1 l2 nocache zipf cluster l1-only l2-only"): which runs to make
#        CLUSTER_PORT (30100): first of the cluster's six ports (bench/local_cluster.sh)
# Each run also reports the server's CPU time per request (user + system,
# from /proc/PID/stat), steadier under a noisy machine than throughput, and
# its context switches per request (all threads, /proc/PID/task/*/status):
# each is a thread parking or waking, which a hit path should rarely need;
# and the machine's CPU steal over the run (/proc/stat), which explains a
# slow day.
# Client and server share this machine's cores: compare runs of one
# invocation with each other, not with other machines.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
PRODUCTS=${PRODUCTS:-100000}
PORT=${PORT:-18080}
ROUNDS=${ROUNDS:-2}
SECTIONS=${SECTIONS:-l1 l2 nocache zipf cluster l1-only l2-only}
L1_ENTRIES=${L1_ENTRIES:-1000}
HOT_IDS=${HOT_IDS:-500}
CLK_TCK=$(getconf CLK_TCK)
CLUSTER_PORT=${CLUSTER_PORT:-30100}
export PGOPTIONS="-c client_min_messages=warning"
BIN=target/release/catalog
FLOOR=target/release/examples/floor
TOKEN=bench
PREFIX="bench:$$:"
PG_DB=catalog_bench_$$
WORK=$(mktemp -d)
SERVER_PID=

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  stop_cluster
  # What DELETE /cache keeps (the bus's change logs) under this run's prefix.
  redis-cli -u "$REDIS_URL" --scan --pattern "${PREFIX}*" 2>/dev/null \
    | xargs -r redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=bench/local_cluster.sh
source bench/local_cluster.sh

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v pgbench >/dev/null || missing+=(postgresql-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..." >&2
  (apt-get update -qq && apt-get install -y -qq "${missing[@]}") >&2
fi

cargo build --release -p catalog --bin catalog --example floor >&2

wait_healthy() { # wait_healthy NAME
  for _ in $(seq 1 1200); do
    if curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      cat "$WORK/$1.log" >&2
      echo "server $1 exited" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "server $1 did not become healthy" >&2
  exit 1
}

# start_catalog NAME DATABASE_URL [VAR=value...]: the catalog answering on
# $PORT.
start_catalog() {
  local name=$1 url=$2
  shift 2
  env "$@" DATABASE_URL="$url" BIND_ADDR="127.0.0.1:$PORT" RUST_LOG=warn \
    CATALOG_API_TOKEN=$TOKEN CACHE_PREFIX="$PREFIX" \
    "$BIN" serve >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  wait_healthy "$name"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

api() { # api METHOD PATH [JSON]
  curl -fsS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    ${3:+-d "$3"} "http://127.0.0.1:$PORT$2"
}

counter() { # counter NAME: an unlabelled counter from /metrics
  curl -fsS "http://127.0.0.1:$PORT/metrics" | awk -v name="$1" '$1 == name {print $2}'
}

batches() { # the store reads of the run so far and their mean batch size
  local reads queries
  reads=$(counter db_batched_reads_total); queries=$(counter db_read_batches_total)
  python3 -c "import sys; r,q=map(float,sys.argv[1:]); print(f'    store reads {r:.0f} in {q:.0f} queries, mean batch {r/max(q,1):.1f}')" "$reads" "$queries"
}

stat() { # stat JSON-PATH...: a number from /cache/stats
  api GET /cache/stats | python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1:]: d=d[k]
print(d)' "$@"
}

cpu_ticks() { # cpu_ticks PID: user + system time of the process, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

ctx_switches() { # ctx_switches PID: context switches of all its threads so far
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'
}

cpu_times() { # the machine's CPU time so far: "steal total", in clock ticks
  awk '$1 == "cpu" {t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t}' /proc/stat
}

# drive NAME LUA [MAX_ID]: one wrk run over ids 1..MAX_ID (default: every
# product), summarised on one line with the server's CPU µs per request.
drive() {
  local name=$1 script=$2 max=${3:-$PRODUCTS} out="$WORK/$1.wrk"
  local before after switches_before switches_after
  local steal_before total_before steal_after total_after
  before=$(cpu_ticks "$SERVER_PID") switches_before=$(ctx_switches "$SERVER_PID")
  read -r steal_before total_before < <(cpu_times)
  MAX_ID=$max wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "bench/$script" "http://127.0.0.1:$PORT" >"$out"
  after=$(cpu_ticks "$SERVER_PID") switches_after=$(ctx_switches "$SERVER_PID")
  read -r steal_after total_after < <(cpu_times)
  local rps p50 p99 errors requests
  rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  errors=$(awk '/Non-2xx or 3xx/ {print $5}' "$out")
  requests=$(awk '/requests in/ {print $1}' "$out")
  CPU=$(python3 -c "import sys; t,r,hz=map(float,sys.argv[1:]); print(f'{t*1e6/hz/max(r,1):.1f}')" \
    "$((after - before))" "$requests" "$CLK_TCK")
  SWITCHES=$(python3 -c "import sys; s,r=map(float,sys.argv[1:]); print(f'{s/max(r,1):.2f}')" \
    "$((switches_after - switches_before))" "$requests")
  # CPU time the hypervisor gave to other guests: on a day it is high,
  # every run of this machine is slower, and runs with more busy processes
  # (catalog, Redis and wrk) more so.
  local steal
  steal=$(python3 -c "import sys; s,t=map(float,sys.argv[1:]); print(f'{100*s/max(t,1):.0f}')" \
    "$((steal_after - steal_before))" "$((total_after - total_before))")
  printf '%-30s %10s req/s   p50 %9s   p99 %9s   CPU %6s µs/req   %5s switches/req   steal %s %%   non-2xx %s\n' \
    "$name" "$rps" "$p50" "$p99" "$CPU" "$SWITCHES" "$steal" "${errors:-0}"
  RPS=$rps P99=$p99
}

# ratio LABEL A B TARGET: prints A / B, where A and B are wrk figures or
# space-separated lists of them (then the ratio is of their means);
# latencies such as 383.00us, 4.35ms or 1.20s are compared in one unit.
ratio() {
  python3 - "$@" <<'PY'
import re, sys
def value(text):
    number, unit = re.fullmatch(r"([0-9.]+)([a-z]*)", text).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}.get(unit, 1.0)
def mean(figures):
    values = [value(v) for v in figures.split()]
    return sum(values) / len(values)
label, a, b, target = sys.argv[1:]
print(f"    {label}: {mean(a) / mean(b):.2f} (target {target})")
PY
}

warmup() { # warmup LUA [MAX_ID]: a short untimed wrk pass
  MAX_ID=${2:-$PRODUCTS} wrk -t2 -c"$CONNECTIONS" -d3s -s "bench/$1" "http://127.0.0.1:$PORT" >/dev/null
}

want() { [[ " $SECTIONS " == *" $1 "* ]]; }

echo "GET /products/{id}, $PRODUCTS products, $CONNECTIONS connections, $DURATION per run, wrk -t2, $(nproc) cores"

psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null
psql "$PG_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
# TLS off on loopback, for the catalog and pgbench alike (libpq and sqlx
# both default to `sslmode=prefer`, which encrypts even on 127.0.0.1).
PG_BENCH_URL="${PG_URL%/*}/$PG_DB?sslmode=disable"
SQLITE_URL="sqlite://$WORK/bench.db?mode=rwc"
# Seeded before any run, and PostgreSQL vacuumed and checkpointed, so that
# no run shares the machine with the aftermath of 100,000 inserts.
for url in "$PG_BENCH_URL" "$SQLITE_URL"; do
  RUST_LOG=warn "$BIN" seed --database-url "$url" "$PRODUCTS" >/dev/null
done
psql "$PG_BENCH_URL" -qc "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null

# (a) the floor and (b) every request an L1 hit, alternated ROUNDS times:
# the machine's speed drifts by more than the gap being measured, and
# alternating makes a drift hit both alike. The ratios are of the means.
# The catalog runs as deployed: Redis and the bus on, an L1 of L1_ENTRIES;
# the hot set (ids 1..HOT_IDS) fits in it.
if want l1; then
FLOOR_RPS=() FLOOR_P99=() FLOOR_CPU=() L1_RPS=() L1_P99=() L1_CPU=()
for round in $(seq 1 "$ROUNDS"); do
  "$FLOOR" "127.0.0.1:$PORT" "$PRODUCTS" >"$WORK/floor.log" 2>&1 &
  SERVER_PID=$!
  wait_healthy floor
  warmup random_ids.lua "$HOT_IDS"
  drive "floor #$round" random_ids.lua "$HOT_IDS"
  FLOOR_RPS+=("$RPS") FLOOR_P99+=("$P99") FLOOR_CPU+=("$CPU")
  stop_server

  start_catalog l1 "$PG_BENCH_URL" REDIS_URL="$REDIS_URL" L1_MAX_ENTRIES="$L1_ENTRIES"
  warmup random_ids.lua "$HOT_IDS"
  drive "catalog L1 hit #$round" random_ids.lua "$HOT_IDS"
  L1_RPS+=("$RPS") L1_P99+=("$P99") L1_CPU+=("$CPU")
  echo "    L1 hits $(stat levels l1 hits), L1 misses $(stat levels l1 misses), L2 $(stat levels l2 state)"
  api DELETE /cache >/dev/null
  stop_server
done
ratio "L1 hit / floor, req/s (means)" "${L1_RPS[*]}" "${FLOOR_RPS[*]}" "≥ 0.85"
ratio "L1 hit / floor, CPU µs/req (means)" "${L1_CPU[*]}" "${FLOOR_CPU[*]}" "≤ 1.35"
ratio "L1 hit / floor, p99 (means)" "${L1_P99[*]}" "${FLOOR_P99[*]}" "≤ 1.25"
fi

# (c) L2 hits as deployed: an L1 of L1_ENTRIES in front of a warmed Redis,
# ids uniform over every product, so nearly every request is an L2 hit that
# fills L1 and evicts.
if want l2; then
start_catalog l2 "$PG_BENCH_URL" REDIS_URL="$REDIS_URL" L1_MAX_ENTRIES="$L1_ENTRIES"
api POST /cache/warm '{"all":true}' >/dev/null
warmup random_ids.lua
drive "catalog L2 hit" random_ids.lua
echo "    L1 hits $(stat levels l1 hits), L2 hits $(stat levels l2 hits), L2 misses $(stat levels l2 misses), L2 errors $(stat levels l2 errors)"
L2_RPS=$RPS
api DELETE /cache >/dev/null
stop_server
# Each reference point runs right after the run it is the reference of, so
# that both see the machine in the same state.
redis_host=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.hostname or '127.0.0.1', p.port or 6379)" "$REDIS_URL")
read -r rhost rport <<<"$redis_host"
redis-benchmark -h "$rhost" -p "$rport" -c 50 -P 1 -n 500000 -t get -q --csv 2>/dev/null >"$WORK/redis.csv"
read -r REDIS_RPS redis_p50 redis_p99 < <(awk -F'"' '$2 == "GET" {print $4, $10, $14}' "$WORK/redis.csv")
printf '%-30s %10s req/s   p50 %7s ms   p99 %7s ms\n' "redis-benchmark GET" "$REDIS_RPS" "$redis_p50" "$redis_p99"
ratio "L2 hit / redis-benchmark GET" "$L2_RPS" "$REDIS_RPS" "≥ 0.5"
fi

# (d) no cache: one-entry L1, no Redis; every request reads the store.
if want nocache; then
start_catalog nocache-pg "$PG_BENCH_URL" L1_MAX_ENTRIES=1
warmup random_ids.lua
drive "no cache, PostgreSQL" random_ids.lua
batches
PG_RPS=$RPS
stop_server
pgbench -n -M prepared -c 8 -T "${DURATION%s}" -D maxid="$PRODUCTS" -f bench/pk_select.sql "$PG_BENCH_URL" 2>/dev/null >"$WORK/pgbench.out"
read -r PGBENCH_TPS pgbench_latency < <(awk '/^tps/ {tps=$3} /latency average/ {lat=$4} END {print tps, lat}' "$WORK/pgbench.out")
printf '%-30s %10s tps     avg latency %s ms\n' "pgbench primary-key SELECT" "$PGBENCH_TPS" "$pgbench_latency"
ratio "no cache PostgreSQL / pgbench" "$PG_RPS" "$PGBENCH_TPS" "≥ 0.5"
start_catalog nocache-sqlite "$SQLITE_URL" L1_MAX_ENTRIES=1
warmup random_ids.lua
drive "no cache, SQLite" random_ids.lua
batches
stop_server
fi

# (e) Zipf(1.0) with the default L1 and Redis.
if want zipf; then
start_catalog zipf "$PG_BENCH_URL" REDIS_URL="$REDIS_URL"
api POST /cache/warm '{"all":true}' >/dev/null
warmup zipf_ids.lua
hits0=$(stat cache_hits); total0=$(stat total_requests)
l1_0=$(stat levels l1 hits); l2_0=$(stat levels l2 hits)
drive "catalog Zipf(1.0) mix" zipf_ids.lua
hits1=$(stat cache_hits); total1=$(stat total_requests)
l1_1=$(stat levels l1 hits); l2_1=$(stat levels l2 hits)
python3 -c "import sys; h,t,a,b=map(int,sys.argv[1:]); print(f'    hit rate over the run {h/t:.4f} (L1 {a/t:.4f}, L2 {b/t:.4f}) of {t} requests (target ≥ 0.95)')" \
  $((hits1 - hits0)) $((total1 - total0)) $((l1_1 - l1_0)) $((l2_1 - l2_0))
api DELETE /cache >/dev/null
stop_server
fi

# (f) Redis Cluster: L2 hits on the local cluster against the single node,
# alternated; then write-behind write latency on it.
if want cluster; then
start_cluster "$CLUSTER_PORT" "$WORK/cluster"
SINGLE_RPS=() CLUSTER_RPS=()
for round in $(seq 1 "$ROUNDS"); do
  for target in single cluster; do
    url=$REDIS_URL
    [ "$target" = cluster ] && url=$CLUSTER_URL
    start_catalog "l2-$target" "$PG_BENCH_URL" L1_MAX_ENTRIES=1 REDIS_URL="$url"
    api POST /cache/warm '{"all":true}' >/dev/null
    warmup random_ids.lua
    drive "L2 hit, $target Redis #$round" random_ids.lua
    echo "    L2 hits $(stat levels l2 hits), L2 misses $(stat levels l2 misses), L2 errors $(stat levels l2 errors)"
    if [ "$target" = cluster ]; then CLUSTER_RPS+=("$RPS"); else SINGLE_RPS+=("$RPS"); fi
    api DELETE /cache >/dev/null
    stop_server
  done
done
ratio "L2 hit cluster / single node, req/s (means)" "${CLUSTER_RPS[*]}" "${SINGLE_RPS[*]}" "report"
# Write-behind latency with and without the replica wait, on this cluster.
PG_URL=$PG_URL ROUNDS=$ROUNDS CLUSTER_URL=$CLUSTER_URL bash bench/write_behind_latency.sh
fi

# Extra rows: the shapes earlier rounds measured, which skip work a
# deployment does (no Redis behind a huge L1; a one-entry L1 that refuses
# every L2 hit). Not the headline.
if want l1-only; then
start_catalog l1-only "$PG_BENCH_URL" L1_MAX_ENTRIES=$((PRODUCTS * 2)) L1_MAX_BYTES=$((1024 * 1024 * 1024))
api POST /cache/warm '{"all":true}' >/dev/null
warmup random_ids.lua
drive "extra: L1 of every product, no Redis" random_ids.lua
stop_server
fi
if want l2-only; then
start_catalog l2-only "$PG_BENCH_URL" L1_MAX_ENTRIES=1 REDIS_URL="$REDIS_URL"
api POST /cache/warm '{"all":true}' >/dev/null
warmup random_ids.lua
drive "extra: L2 hit, one-entry L1" random_ids.lua
api DELETE /cache >/dev/null
stop_server
fi
