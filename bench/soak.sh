#!/usr/bin/env bash
# Bounded soak: a few catalog instances under steady mixed load, watched for
# leaks (memory, file descriptors, Redis and PostgreSQL connections) and
# checked for consistency at the end.
#
# Starts a private redis-server, a fresh PostgreSQL database, and INSTANCES
# catalog instances sharing both (one CACHE_PREFIX, the default `invalidate`
# strategy), fills Redis (`catalog warm --all`; each L1 fills from the reads,
# so L1 expiries are spread out as in production rather than all due at once
# after a warm), then for DURATION seconds drives GET
# /products/{id} over uniformly random ids with one modest wrk a instance
# (bench/chaos_reads.lua) while a writer (bench/chaos_client.py) PUTs and
# PATCHes the written set (ids 1..WRITTEN) a few times a second, rotating over
# the instances. Every SAMPLE_SECS it records per instance the RSS (VmRSS) and
# open file descriptors, and globally Redis `connected_clients` and the
# PostgreSQL connections to the database, into a CSV.
# Checks: after the warm-up (the first 20 % of the run) every series stays
# within 10 % of its first post-warm-up value (fds and connections: or ±2,
# whichever is wider); at the end every acknowledged write is in the store and
# every instance answers every written product at the store's version
# (allowing the 1 s bus bound); no read answered 5xx and no write failed
# (nothing is broken on purpose here).
#
# Usage: nice -n 10 bench/soak.sh         (from anywhere)
# Env:   DURATION (600 s), INSTANCES (3), PRODUCTS (10000), WRITTEN (100),
#        CONNECTIONS (4: wrk connections per instance), WRK_DELAY_MS (4),
#        WRITE_RATE (4 writes/s in all), SAMPLE_SECS (10),
#        L1_TTL_SECS (DURATION / 10, within 5..30: the warm-up then spans two
#        L1 lifetimes, so the first waves of L1 reloads, which size the
#        database pool, are behind it),
#        L1_MAX_ENTRIES (5000: half the products, so L1 evicts),
#        CATALOG_BIN (target/release/catalog, built if missing),
#        PG_URL (postgres://postgres@127.0.0.1:5432/postgres: admin URL),
#        REDIS_PORT, BASE_PORT (free ports by default; instance k listens on
#        BASE_PORT + k), KEEP_WORK (1: keep the work directory).
# Output: the CSV's path (kept when KEEP_WORK=1, else printed in full), the
#        per-metric summary (first/min/max/last after the warm-up), a verdict.
# Exit:  0 when every check holds, 1 when one fails (each named), 2 when the
#        setup fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
CATALOG_BIN=${CATALOG_BIN:-target/release/catalog}
DURATION=${DURATION:-600}
INSTANCES=${INSTANCES:-3}
PRODUCTS=${PRODUCTS:-10000}
WRITTEN=${WRITTEN:-100}
CONNECTIONS=${CONNECTIONS:-4}
WRK_DELAY_MS=${WRK_DELAY_MS:-4}
WRITE_RATE=${WRITE_RATE:-4}
SAMPLE_SECS=${SAMPLE_SECS:-10}
L1_TTL_SECS=${L1_TTL_SECS:-$(( DURATION / 10 < 5 ? 5 : (DURATION / 10 > 30 ? 30 : DURATION / 10) ))}
L1_MAX_ENTRIES=${L1_MAX_ENTRIES:-5000}
KEEP_WORK=${KEEP_WORK:-0}
export PGOPTIONS="-c client_min_messages=warning"
TOKEN=soak-$$
PREFIX="soak:$$:"
DB=soak_$$
WORK=$(mktemp -d /tmp/soak.XXXXXX)
CLIENT=bench/chaos_client.py
CSV=$WORK/samples.csv
T0=$(date +%s.%N)

NAME=soak.sh
source bench/harness.sh
[ "$WRITTEN" -lt "$PRODUCTS" ] || die "WRITTEN must be below PRODUCTS"
[ "$INSTANCES" -ge 2 ] || die "INSTANCES must be at least 2"
if [ ! -x "$CATALOG_BIN" ]; then
  log "building $CATALOG_BIN"
  cargo build --release -p catalog --bin catalog >&2
fi

# Free ports: Redis, and INSTANCES consecutive ones for the instances.
REDIS_PORT=${REDIS_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
BASE_PORT=${BASE_PORT:-$("$PYTHON" - "$INSTANCES" <<'PY'
import socket, sys
n = int(sys.argv[1])
for base in range(20000, 60000, 97):
    socks = []
    try:
        for k in range(1, n + 1):
            s = socket.socket()
            s.bind(("127.0.0.1", base + k))
            socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    if len(socks) == n:
        print(base)
        break
PY
)}
DIRECT="${PG_URL%/*}/$DB?sslmode=disable"
WRITTEN_IDS=1-$WRITTEN

log "work directory $WORK; Redis :$REDIS_PORT, instances :$((BASE_PORT + 1))..:$((BASE_PORT + INSTANCES)), $DURATION s, L1_TTL_SECS $L1_TTL_SECS"
psql "$PG_URL" -qc "CREATE DATABASE $DB" >/dev/null || die "cannot create database $DB"
RUST_LOG=warn "$CATALOG_BIN" seed --database-url "$DIRECT" "$PRODUCTS" >/dev/null
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no >"$WORK/redis.log" 2>&1 &
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.05
done

PIDS=() URLS=()
for k in $(seq 1 "$INSTANCES"); do
  port=$((BASE_PORT + k))
  env DATABASE_URL="$DIRECT" \
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT" CACHE_PREFIX="$PREFIX" CATALOG_API_TOKEN="$TOKEN" \
    BIND_ADDR="127.0.0.1:$port" L1_TTL_SECS="$L1_TTL_SECS" L1_MAX_ENTRIES="$L1_MAX_ENTRIES" \
    RUST_LOG=warn "$CATALOG_BIN" serve >"$WORK/instance-$k.log" 2>&1 &
  PIDS+=($!)
  URLS+=("http://127.0.0.1:$port")
done
for k in $(seq 1 "$INSTANCES"); do
  pid=${PIDS[$((k - 1))]} url=${URLS[$((k - 1))]}
  for _ in $(seq 1 600); do
    curl -fs "$url/health" 2>/dev/null | grep -q '"status":"ok"' && break
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/instance-$k.log" >&2; die "instance $k exited"; }
    sleep 0.1
  done
  curl -fs "$url/health" 2>/dev/null | grep -q '"status":"ok"' || die "instance $k did not become healthy"
done
ALL_URLS=$(IFS=,; echo "${URLS[*]}")
env DATABASE_URL="$DIRECT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  CACHE_PREFIX="$PREFIX" RUST_LOG=warn "$CATALOG_BIN" warm --all >/dev/null || die "catalog warm failed"
log "seeded $PRODUCTS products; Redis warmed; $INSTANCES instances healthy"

WRK_PIDS=()
for k in $(seq 1 "$INSTANCES"); do
  FIRST_ID=1 LAST_ID=$PRODUCTS DELAY_MS=$WRK_DELAY_MS \
    wrk -t1 -c"$CONNECTIONS" -d"$((DURATION + 3))s" --timeout 30s -s bench/chaos_reads.lua \
    "${URLS[$((k - 1))]}" >"$WORK/wrk-$k.out" 2>&1 &
  WRK_PIDS+=($!)
done
"$PYTHON" "$CLIENT" writer --urls "$ALL_URLS" --ids "$WRITTEN_IDS" --token "$TOKEN" \
  --log "$WORK/writes.jsonl" --tag soak --rate "$WRITE_RATE" --threads 2 \
  --stop-file "$WORK/stop-writer" --max-seconds "$((DURATION + 3))" &
WRITER_PID=$!

header=t
for k in $(seq 1 "$INSTANCES"); do header+=",rss_kb_$k,fds_$k"; done
echo "$header,redis_clients,pg_connections" >"$CSV"
sample() {
  local row k pid
  row=$(date +%s.%N)
  for k in $(seq 1 "$INSTANCES"); do
    pid=${PIDS[$((k - 1))]}
    row+=",$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null),$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)"
  done
  row+=",$(redis-cli -p "$REDIS_PORT" info clients | awk -F: '/^connected_clients/ {print $2+0}')"
  row+=",$(psql "$PG_URL" -Atc "select count(*) from pg_stat_activity where datname = '$DB'")"
  echo "$row" >>"$CSV"
}
# Samples at 0, SAMPLE_SECS, … up to DURATION, all while the load runs (it
# runs 3 s longer, so that its end is not sampled).
start=$(date +%s)
for offset in $(seq 0 "$SAMPLE_SECS" "$DURATION"); do
  while [ "$(date +%s)" -lt $((start + offset)) ]; do sleep 0.2; done
  sample
done
touch "$WORK/stop-writer"
for pid in "${WRK_PIDS[@]}"; do wait "$pid" || true; done
wait "$WRITER_PID" || true
log "load finished"

failures=()
for k in $(seq 1 "$INSTANCES"); do
  kill -0 "${PIDS[$((k - 1))]}" 2>/dev/null || failures+=("instance $k died")
done
if [ "$KEEP_WORK" = 1 ]; then
  echo "samples: $CSV"
else
  echo "samples ($CSV, removed at exit):"
  cat "$CSV"
fi
echo
"$PYTHON" "$CLIENT" soak-summary "$CSV" --warmup 0.2 || failures+=("a series left its band (above)")
echo
# Reads: wrk's answers by status; no 5xx expected on a healthy stack.
for k in $(seq 1 "$INSTANCES"); do
  line=$(grep '^CHAOS ' "$WORK/wrk-$k.out" || true)
  [ -n "$line" ] || { failures+=("wrk on instance $k printed no result"); continue; }
  echo "instance $k reads: $(echo "$line" | tr ' ' '\n' | grep -E '^(requests|p99_us|max_us|status|timeout)=' | tr '\n' ' ')"
  if echo "$line" | grep -Eo 'status=[^ ]*' | grep -Eq '[,=]5[0-9][0-9]:'; then
    failures+=("instance $k answered 5xx to reads")
  fi
done
"$PYTHON" - "$WORK/writes.jsonl" <<'PY' || failures+=("writes failed (above)")
import collections, json, sys
writes = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
statuses = collections.Counter(str(w["status"]) for w in writes)
print(f"writes: {len(writes)} by status {dict(statuses)}")
sys.exit(0 if writes and all(s.startswith("2") for s in statuses) else 1)
PY
"$PYTHON" "$CLIENT" final --urls "$ALL_URLS" --ids "$WRITTEN_IDS" --dsn "$DIRECT" \
  --writes "$WORK/writes.jsonl" || failures+=("lost writes or divergence at the end (above)")

echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "soak: FAILED"
  printf '  - %s\n' "${failures[@]}"
  exit 1
fi
echo "soak: ok ($DURATION s, $INSTANCES instances)"
