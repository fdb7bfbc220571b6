#!/usr/bin/env bash
# Memory figures of the product L1: what 1,000,000 cached products cost.
#
# Seeds PRODUCTS (1,000,000) products into PostgreSQL, starts a private Redis
# and the release catalog as deployed (Redis and the bus on), then two runs:
#   all     an L1 large enough for every product (L1_MAX_ENTRIES 2,000,000,
#           L1_MAX_BYTES 1 GiB): POST /cache/warm {"all":true} puts every
#           product in L1. Reports the RSS growth over the server's RSS before
#           warming, per product and against (a) the bytes of the products'
#           rendered bodies (fetched back through the batch endpoint, which
#           embeds each cached body as it is) and (b) the bytes L1 reports in
#           /cache/stats.
#   bounded the same with L1_MAX_BYTES of BOUNDED_MB (256 MiB), which holds
#           only part of the products: the RSS growth against that bound and
#           against what /cache/stats reports, with the evictions.
# The warm request may take minutes on a loaded machine: the request timeout
# is raised for it. RSS is read (VmRSS) after the warm, once it has been steady for 3 s
# (mimalloc returns freed pages a little after they are freed).
#
# Usage: bench/memory.sh            (from the repository root)
# Env:   PG_URL (default postgres://postgres@127.0.0.1:5432/postgres),
#        PRODUCTS (1000000), PORT (18081), REDIS_PORT (16391), BOUNDED_MB (256)
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PRODUCTS=${PRODUCTS:-1000000}
PORT=${PORT:-18081}
REDIS_PORT=${REDIS_PORT:-16391}
BOUNDED_MB=${BOUNDED_MB:-256}
export PGOPTIONS="-c client_min_messages=warning"
BIN=target/release/catalog
TOKEN=bench
PG_DB=catalog_memory_$$
WORK=$(mktemp -d)
SERVER_PID= REDIS_PID=

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The same build as bench/load.sh, so that both share one set of artifacts.
cargo build --release -p catalog --bin catalog --example floor >&2

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping >/dev/null || { cat "$WORK/redis.log" >&2; echo "private redis-server did not start" >&2; exit 1; }

psql "$PG_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
DB_URL="${PG_URL%/*}/$PG_DB?sslmode=disable"
echo "seeding $PRODUCTS products..." >&2
RUST_LOG=warn "$BIN" seed --database-url "$DB_URL" "$PRODUCTS" >/dev/null

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

l1_stats() { api GET /cache/stats | python3 -c 'import json,sys; l1=json.load(sys.stdin)["levels"]["l1"]; print(l1["entries"], l1["bytes"], l1["evictions"])'; }

# (a) every product in L1.
start_catalog all $((1024 * 1024 * 1024))
rss0=$(steady_rss_kb)
api POST /cache/warm '{"all":true}' >/dev/null
rss1=$(steady_rss_kb)
read -r entries l1_bytes evictions < <(l1_stats)
# The bodies L1 serves, summed from batch responses: each one is
# {"items":[body,body,...],"missing":[...]} with the cached bodies as they are.
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
python3 - "$PRODUCTS" "$rss0" "$rss1" "$entries" "$l1_bytes" "$body_bytes" <<'PY'
import sys
products, rss0, rss1, entries, l1_bytes, body = map(int, sys.argv[1:])
growth = (rss1 - rss0) * 1024
mb = lambda b: f"{b / 1e6:.1f} MB"
print(f"every product in L1: {entries} entries, RSS {mb(rss0 * 1024)} -> {mb(rss1 * 1024)}, growth {mb(growth)} ({growth / entries:.0f} B per product)")
print(f"    bodies {mb(body)} ({body / entries:.0f} B per product): RSS growth / bodies {growth / body:.2f} (target <= 1.5)")
print(f"    L1 reports {mb(l1_bytes)}: RSS growth / reported {growth / l1_bytes:.3f} (target within 5%)")
PY

# (b) an L1 bounded by bytes below what every product needs.
bound=$((BOUNDED_MB * 1024 * 1024))
start_catalog bounded "$bound"
rss0=$(steady_rss_kb)
api POST /cache/warm '{"all":true}' >/dev/null
rss1=$(steady_rss_kb)
read -r entries l1_bytes evictions < <(l1_stats)
stop_server
python3 - "$bound" "$rss0" "$rss1" "$entries" "$l1_bytes" "$evictions" <<'PY'
import sys
bound, rss0, rss1, entries, l1_bytes, evictions = map(int, sys.argv[1:])
growth = (rss1 - rss0) * 1024
mb = lambda b: f"{b / 1e6:.1f} MB"
print(f"L1_MAX_BYTES {mb(bound)}: {entries} entries, {evictions} evictions, L1 reports {mb(l1_bytes)}")
print(f"    RSS growth {mb(growth)}: / bound {growth / bound:.3f}, / reported {growth / l1_bytes:.3f} (target within 5%)")
PY
