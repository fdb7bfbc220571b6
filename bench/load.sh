#!/usr/bin/env bash
# Load figures for GET /products/{id}: seeds 100,000 products, then drives
# random ids with wrk (64 connections, 15 s) against the release binary, on
# PostgreSQL and on SQLite. Prints req/s, p50 and p99 per run.
#
# Usage: bench/load.sh            (from the repository root)
# Env:   PG_URL  admin URL of PostgreSQL (default postgres://postgres@127.0.0.1:5432/postgres)
#        DURATION (15s), CONNECTIONS (64), PRODUCTS (100000), PORT (18080)
# Client and server share this machine's cores: compare runs of one script
# invocation with each other, not with other machines.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export PGOPTIONS="-c client_min_messages=warning"
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
PRODUCTS=${PRODUCTS:-100000}
PORT=${PORT:-18080}
BIN=target/release/catalog
WORK=$(mktemp -d)
SERVER_PID=

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
  echo "installing wrk..." >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >&2
fi

cargo build --release -p catalog >&2

# start_server NAME DATABASE_URL [extra env...]: runs the catalog seeded with
# $PRODUCTS products and waits until it answers.
start_server() {
  local name=$1 url=$2
  shift 2
  env "$@" DATABASE_URL="$url" BIND_ADDR="127.0.0.1:$PORT" RUST_LOG=warn \
    CATALOG_API_TOKEN=bench "$BIN" serve --seed "$PRODUCTS" >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      cat "$WORK/$name.log" >&2
      echo "server $name exited" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "server $name did not become healthy" >&2
  exit 1
}

stop_server() {
  kill "$SERVER_PID" && wait "$SERVER_PID" || true
  SERVER_PID=
}

# drive NAME: one wrk run over random ids, summarised on one line.
drive() {
  local name=$1 out="$WORK/$1.wrk"
  MAX_ID=$PRODUCTS wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s bench/random_ids.lua "http://127.0.0.1:$PORT" >"$out"
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  errors=$(awk '/Non-2xx or 3xx/ {print $5}' "$out")
  printf '%-28s %12s req/s   p50 %9s   p99 %9s   non-2xx %s\n' \
    "$name" "$rps" "$p50" "$p99" "${errors:-0}"
}

echo "GET /products/{id}, $PRODUCTS products, $CONNECTIONS connections, $DURATION, wrk -t2 on $(nproc) cores"

# PostgreSQL: a fresh database so that ids are exactly 1..$PRODUCTS.
PG_DB=catalog_bench_$$
psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null
psql "$PG_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
start_server postgres "${PG_URL%/*}/$PG_DB"
drive "no cache, PostgreSQL"
stop_server
psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null

start_server sqlite "sqlite://$WORK/bench.db?mode=rwc"
drive "no cache, SQLite"
stop_server
