#!/usr/bin/env bash
# Memory figures of the product L1: what 1,000,000 cached products cost.
#
# Seeds PRODUCTS (1,000,000) products into PostgreSQL, starts a private Redis
# and the release catalog as deployed (Redis and the bus on), then two runs:
#   all     an L1 large enough for every product (L1_MAX_ENTRIES 2,000,000,
#           L1_MAX_BYTES 1 GiB): POST /cache/warm {"all":true} puts every
#           product in L1. Reports the RSS growth over the server's RSS before
#           warming, per product and against (a) the bytes of the products'
#           bodies (fetched back through the batch endpoint, which embeds
#           each body as GET /products/{id} serves it) and (b) the bytes L1 reports in
#           /cache/stats.
#   bounded the same with L1_MAX_BYTES of BOUNDED_MB (256 MiB), which holds
#           only part of the products: the RSS growth against that bound and
#           against what /cache/stats reports, with the evictions.
# The warm request may take minutes on a loaded machine: the request timeout
# is raised for it. RSS (VmRSS) is read twice, each time once it has been
# steady for 3 s:
#   idle     right after the warm;
#   serving  after READ_LOAD (5s) of GET /products/{id} over every product
#            (wrk, 64 connections): L1 hits in the first run, L2 hits that
#            fill L1 and evict in the bounded one.
# They differ by what the allocator still holds: mimalloc gives pages freed
# while warming (its buffers, quick_cache's outgrown tables) back to the OS
# a second after they are freed, but only when the thread that owns them
# next allocates, so an idle process keeps them (MIMALLOC_PURGE_DELAY=0
# makes the idle figure the serving one). The serving figure is the one a
# running service shows.
#
# Usage: bench/memory.sh            (from the repository root)
# Env:   PG_URL (default postgres://postgres@127.0.0.1:5432/postgres),
#        PRODUCTS (1000000), PORT (18081), REDIS_PORT (16391), BOUNDED_MB (256),
#        READ_LOAD (5s)
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PRODUCTS=${PRODUCTS:-1000000}
PORT=${PORT:-18081}
REDIS_PORT=${REDIS_PORT:-16391}
BOUNDED_MB=${BOUNDED_MB:-256}
READ_LOAD=${READ_LOAD:-5s}
export PGOPTIONS="-c client_min_messages=warning"
BIN=target/release/catalog
TOKEN=bench
PG_DB=catalog_memory_$$

# WORK, the EXIT trap and the private services.
# shellcheck source=bench/private_services.sh
source bench/private_services.sh

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
# The same build as bench/load.sh, so that both share one set of artifacts.
cargo build --release -p catalog --bin catalog --example floor >&2

start_private_redis "$REDIS_PORT" "$WORK"

echo "seeding $PRODUCTS products..." >&2
create_seeded_database "$PG_URL" "$PG_DB" "$PRODUCTS"

api() { # api METHOD PATH [JSON]
  curl -fsS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    ${3:+-d "$3"} "http://127.0.0.1:$PORT$2"
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }

steady_rss_kb() { # the RSS once it has not moved by more than 1 MB for 3 s
  local last now steady=0
  last=$(rss_kb)
  while [ "$steady" -lt 3 ]; do
    sleep 1
    now=$(rss_kb)
    if [ $((now > last ? now - last : last - now)) -le 1024 ]; then steady=$((steady + 1)); else steady=0; fi
    last=$now
  done
  echo "$last"
}

start_catalog() { # start_catalog NAME L1_MAX_BYTES
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  env DATABASE_URL="$DB_URL" BIND_ADDR="127.0.0.1:$PORT" RUST_LOG=warn \
    CATALOG_API_TOKEN=$TOKEN REDIS_URL="redis://127.0.0.1:$REDIS_PORT" REQUEST_TIMEOUT_SECS=600 \
    L1_MAX_ENTRIES=$((PRODUCTS * 2)) L1_MAX_BYTES="$2" \
    "$BIN" serve >"$WORK/$1.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/$1.log" >&2; echo "catalog exited" >&2; exit 1; }
    sleep 0.5
  done
  echo "catalog did not become healthy" >&2
  exit 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# What L1 reports holding: its entries' bytes and its ghosts' (the keys of
# recent evictions, which it remembers once it evicts).
l1_stats() { api GET /cache/stats | python3 -c 'import json,sys; l1=json.load(sys.stdin)["levels"]["l1"]; print(l1["entries"], l1["bytes"] + l1["ghost_bytes"], l1["evictions"])'; }

# warm_all NAME L1_MAX_BYTES: starts the catalog, warms every product into
# L1, reads every product for READ_LOAD, and sets IDLE and GROWTH (bytes of
# RSS growth over the server's RSS before the warm: right after it, and
# after the reads) and ENTRIES, L1_BYTES and EVICTIONS (from /cache/stats,
# after the reads); leaves the server running.
warm_all() {
  start_catalog "$1" "$2"
  local rss0 rss1
  rss0=$(steady_rss_kb)
  api POST /cache/warm '{"all":true}' >/dev/null
  rss1=$(steady_rss_kb)
  IDLE=$(((rss1 - rss0) * 1024))
  MAX_ID=$PRODUCTS wrk -t2 -c64 -d"$READ_LOAD" -s bench/random_ids.lua "http://127.0.0.1:$PORT" >"$WORK/$1.wrk"
  rss1=$(steady_rss_kb)
  GROWTH=$(((rss1 - rss0) * 1024))
  read -r ENTRIES L1_BYTES EVICTIONS < <(l1_stats)
}

mb() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6:.1f} MB')" "$1"; }
ratio() { python3 -c "import sys; a, b = map(int, sys.argv[1:]); print(f'{a / b:.3f}')" "$1" "$2"; }

# (a) every product in L1.
warm_all all $((1024 * 1024 * 1024))
# The bodies L1 serves, summed from batch responses: each one is
# {"items":[body,body,...],"missing":[...]} with each body as a GET serves it.
body_bytes=$(python3 - "$PORT" "$PRODUCTS" <<'PY'
import json, sys, urllib.request
port, products = int(sys.argv[1]), int(sys.argv[2])
total = 0
for start in range(1, products + 1, 100):
    ids = ",".join(str(i) for i in range(start, min(start + 100, products + 1)))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/products?ids={ids}") as r:
        raw = r.read()
    doc = json.loads(raw)
    items = raw[len(b'{"items":['):raw.rindex(b'],"missing":')]
    total += len(items) - max(len(doc["items"]) - 1, 0)  # minus the commas
print(total)
PY
)
stop_server
echo "every product in L1: $ENTRIES entries, bodies $(mb "$body_bytes") ($((body_bytes / ENTRIES)) B per product), L1 reports $(mb "$L1_BYTES")"
for state in idle serving; do
  growth=$GROWTH; [ "$state" = idle ] && growth=$IDLE
  echo "    $state: RSS growth $(mb "$growth") ($((growth / ENTRIES)) B per product): / bodies $(ratio "$growth" "$body_bytes") (target <= 1.5), / reported $(ratio "$growth" "$L1_BYTES") (target within 5 %)"
done

# (b) an L1 bounded by bytes below what every product needs.
bound=$((BOUNDED_MB * 1024 * 1024))
warm_all bounded "$bound"
stop_server
echo "L1_MAX_BYTES $(mb "$bound"): $ENTRIES entries, $EVICTIONS evictions, L1 reports $(mb "$L1_BYTES") (after the reads)"
echo "    idle: RSS growth $(mb "$IDLE"): / bound $(ratio "$IDLE" "$bound") (target within 5 %)"
echo "    serving: RSS growth $(mb "$GROWTH"): / bound $(ratio "$GROWTH" "$bound"), / reported $(ratio "$GROWTH" "$L1_BYTES") (target within 5 %)"
