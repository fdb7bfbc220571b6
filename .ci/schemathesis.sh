#!/usr/bin/env bash
# schemathesis against running instances of the catalog: every check
# (.ci/schemathesis.toml), bounded examples and time, the bearer token
# passed in. Fails on any server error, schema violation or undocumented
# answer. Runs the service as deployed (PostgreSQL + Redis), then on the
# embedded default (SQLite, no Redis).
#
# Usage: .ci/schemathesis.sh   (from anywhere; needs PostgreSQL and Redis up)
# Env:   PG_URL (postgres://postgres@127.0.0.1:5432/postgres),
#        REDIS_URL (redis://127.0.0.1:6379),
#        SCHEMATHESIS_MAX_TIME (seconds per store, 150),
#        SCHEMATHESIS_SEED (1: the same cases every run),
#        SCHEMATHESIS_VENV (target/schemathesis-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-150}
SEED=${SCHEMATHESIS_SEED:-1}
VENV=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
case $VENV in /*) ;; *) VENV=$ROOT/$VENV ;; esac
TOKEN=schemathesis-$$
PORT=${SCHEMATHESIS_PORT:-18555}
PG_DB=catalog_st_$$
WORK=$(mktemp -d)
SERVER_PID=
export PGOPTIONS="-c client_min_messages=warning"

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "st:$$:*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r .ci/schemathesis-requirements.txt
fi
cargo build -q -p catalog --bin catalog

# run_against NAME DATABASE_URL [VAR=value...]
run_against() {
  local name=$1 url=$2
  shift 2
  env "$@" DATABASE_URL="$url" BIND_ADDR="127.0.0.1:$PORT" CATALOG_API_TOKEN="$TOKEN" RUST_LOG=warn \
    target/debug/catalog serve --seed 50 >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 240); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/$name.log" >&2; echo "catalog ($name) exited" >&2; exit 1; fi
    sleep 0.5
  done
  echo "schemathesis against catalog on $name (up to ${MAX_TIME} s)"
  local status=0
  # From the scratch directory: schemathesis keeps a `.schemathesis/` cache there.
  (cd "$WORK" && "$VENV/bin/st" --config-file "$ROOT/.ci/schemathesis.toml" --no-color run \
    "http://127.0.0.1:$PORT/openapi.json" \
    -H "Authorization: Bearer $TOKEN" \
    --max-examples 50 --max-time "$MAX_TIME" --seed "$SEED" \
    --generation-database none --workers 1) >"$WORK/$name.st" 2>&1 || status=$?
  kill "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=
  if [ "$status" -ne 0 ]; then
    cat "$WORK/$name.st"
    echo "--- catalog log ($name) ---"; tail -50 "$WORK/$name.log"
    echo "schemathesis failed against catalog on $name" >&2
    exit 1
  fi
  grep -E "Test cases|generated" -A1 "$WORK/$name.st" | tail -2
}

psql "$PG_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
run_against postgres "${PG_URL%/*}/$PG_DB" REDIS_URL="$REDIS_URL" CACHE_PREFIX="st:$$:"
run_against sqlite "sqlite://$WORK/st.db?mode=rwc"
echo "schemathesis: no failures"
