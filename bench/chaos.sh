#!/usr/bin/env bash
# Fault injection: two catalog instances under load while Redis and the store
# fail, checked against the bounds of SPEC §3, §4 and §8.
#
# Starts a private redis-server, a fresh PostgreSQL database reached through
# bench/tcp_proxy.py, and two catalog instances A and B sharing both (one
# CACHE_PREFIX, L1_TTL_SECS=5, L1_MAX_ENTRIES=2000 over 5,000 products, the
# default `invalidate` strategy). Throughout, wrk reads the hot set (ids
# 1..HOT, cached on both instances before every phase) on A and on B
# (bench/chaos_reads.lua counts answers by status), a reader samples the
# written set (ids HOT+1..HOT+WRITTEN) and a few uncached ids on both, and in
# every phase a writer PUTs/PATCHes the written set on A (bench/chaos_client.py).
# Phases, each DURATION seconds of fault followed by a recovery window:
#   baseline     no fault
#   redis-kill   kill -9 of Redis, restarted on the same port (data lost)
#   redis-stop   SIGSTOP of Redis, then SIGCONT (a hung Redis)
#   store-cut    the proxy resets every store connection and refuses new ones
#   store-hang   the proxy stops forwarding bytes, then forwards again
#   both-down    Redis killed and the store cut at once: only the L1 can
#                answer (the fail-safe's STALE), since in the store phases
#                above Redis still holds the hot set
# After each heal: recovery time (both /health `ok` and every written product
# served by A and B at the store's version, read with psql), divergence at
# heal + 1 s and at heal + L1_TTL + 1 s. At the end: every acknowledged write
# is in the store and A, B and the store agree. Prints one table row a phase.
#
# Usage: nice -n 10 bench/chaos.sh        (from anywhere; ~2.5 minutes)
# Env:   CATALOG_BIN (target/release/catalog, built if missing),
#        PG_URL (postgres://postgres@127.0.0.1:5432/postgres: admin URL),
#        DURATION (7: seconds of each fault), PRODUCTS (5000), HOT (1000),
#        WRITTEN (40), CONNECTIONS (16: wrk connections per instance),
#        WRK_DELAY_MS (2: pause between a wrk connection's requests),
#        WRITE_RATE (20 writes/s), READ_RATE (100 reads/s per instance),
#        L1_TTL_SECS (5), L1_MAX_ENTRIES (2000), RECOVERY_TIMEOUT (30 s),
#        PHASES (baseline redis-kill redis-stop store-cut store-hang both-down),
#        PORT_A, PORT_B, REDIS_PORT, PROXY_PORT, CONTROL_PORT (free ports
#        by default), KEEP_WORK (1: keep the work directory with the logs).
#        Other catalog settings (DB_ACQUIRE_TIMEOUT_SECS, FAIL_SAFE_SECS, …)
#        pass through from the environment.
# Exit:  0 when every check holds; 1 when one fails, each failure named:
#        an acknowledged write lost (or its fields not in the store); a 5xx
#        answered for the hot, pre-cached set; a divergence still present at
#        heal + L1_TTL + 1 s (or at the end); a stale read beyond the bound;
#        no recovery within RECOVERY_TIMEOUT. 2 when the setup fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
CATALOG_BIN=${CATALOG_BIN:-target/release/catalog}
DURATION=${DURATION:-7}
PRODUCTS=${PRODUCTS:-5000}
HOT=${HOT:-1000}
WRITTEN=${WRITTEN:-40}
CONNECTIONS=${CONNECTIONS:-16}
WRK_DELAY_MS=${WRK_DELAY_MS:-2}
WRITE_RATE=${WRITE_RATE:-20}
READ_RATE=${READ_RATE:-100}
L1_TTL_SECS=${L1_TTL_SECS:-5}
L1_MAX_ENTRIES=${L1_MAX_ENTRIES:-2000}
RECOVERY_TIMEOUT=${RECOVERY_TIMEOUT:-30}
PHASES=${PHASES:-baseline redis-kill redis-stop store-cut store-hang both-down}
KEEP_WORK=${KEEP_WORK:-0}
export PGOPTIONS="-c client_min_messages=warning"
TOKEN=chaos-$$
PREFIX="chaos:$$:"
DB=chaos_$$
WORK=$(mktemp -d /tmp/chaos.XXXXXX)
CLIENT=bench/chaos_client.py
REDIS_PID=
T0=$(date +%s.%N)

NAME=chaos.sh
# A stopped Redis is continued first, so that it can be stopped.
before_cleanup() { if [ -n "$REDIS_PID" ]; then kill -CONT "$REDIS_PID" 2>/dev/null; fi; }
source bench/harness.sh
[ $((HOT + WRITTEN)) -lt "$PRODUCTS" ] || die "HOT + WRITTEN must be below PRODUCTS"
if [ ! -x "$CATALOG_BIN" ]; then
  log "building $CATALOG_BIN"
  cargo build --release -p catalog --bin catalog >&2
fi

# Free ports (each checked by binding it), unless given.
read -r free1 free2 free3 free4 free5 < <("$PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
PORT_A=${PORT_A:-$free1} PORT_B=${PORT_B:-$free2} REDIS_PORT=${REDIS_PORT:-$free3}
PROXY_PORT=${PROXY_PORT:-$free4} CONTROL_PORT=${CONTROL_PORT:-$free5}
URL_A=http://127.0.0.1:$PORT_A URL_B=http://127.0.0.1:$PORT_B
# The store's address, the database URL through the proxy, and directly.
read -r PG_TARGET VIA_PROXY DIRECT < <("$PYTHON" - "$PG_URL" "$DB" "$PROXY_PORT" <<'PY'
import sys, urllib.parse as u
url, db, proxy_port = sys.argv[1:]
p = u.urlsplit(url)
host, port = p.hostname or "127.0.0.1", p.port or 5432
auth = p.netloc.rsplit("@", 1)[0] + "@" if "@" in p.netloc else ""
print(f"{host}:{port}",
      u.urlunsplit((p.scheme, f"{auth}127.0.0.1:{proxy_port}", "/" + db, "sslmode=disable", "")),
      u.urlunsplit((p.scheme, p.netloc, "/" + db, "sslmode=disable", "")))
PY
)
WRITTEN_IDS=$((HOT + 1))-$((HOT + WRITTEN))
COLD_IDS=$((HOT + WRITTEN + 1))-$PRODUCTS

now() { date +%s.%N; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no >>"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then return 0; fi
    sleep 0.05
  done
  die "redis-server on $REDIS_PORT did not start (see $WORK/redis.log)"
}

proxy() { # proxy MODE
  curl -fsS -XPOST "http://127.0.0.1:$CONTROL_PORT/$1" >"$WORK/proxy.last" || die "proxy control failed"
}

# start_catalog NAME PORT: sets CATALOG_PID. The environment passes through,
# RUST_BACKTRACE included: a 5xx must stay cheap with it set.
start_catalog() {
  env DATABASE_URL="$VIA_PROXY" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" CACHE_PREFIX="$PREFIX" \
    CATALOG_API_TOKEN="$TOKEN" BIND_ADDR="127.0.0.1:$2" L1_TTL_SECS="$L1_TTL_SECS" \
    L1_MAX_ENTRIES="$L1_MAX_ENTRIES" RUST_LOG=warn \
    "$CATALOG_BIN" serve >"$WORK/$1.log" 2>&1 &
  CATALOG_PID=$!
}

wait_healthy() { # wait_healthy NAME PORT PID
  for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$2/health" 2>/dev/null | grep -q '"status":"ok"'; then return 0; fi
    kill -0 "$3" 2>/dev/null || { cat "$WORK/$1.log" >&2; die "instance $1 exited"; }
    sleep 0.1
  done
  die "instance $1 did not become healthy"
}

warm() { # warm URL: the hot and written sets into Redis and this instance's L1
  curl -fsS -XPOST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"ids\":[$(seq -s, 1 $((HOT + WRITTEN)))]}" "$1/cache/warm" >/dev/null ||
    echo "warm of $1 failed" >>"$WORK/failures.txt"
}

# wrk_start PHASE WINDOW SECONDS: one wrk a instance, pids in WRK_PIDS.
wrk_start() {
  WRK_PIDS=()
  local name url
  for name in A B; do
    if [ $name = A ]; then url=$URL_A; else url=$URL_B; fi
    FIRST_ID=1 LAST_ID=$HOT DELAY_MS=$WRK_DELAY_MS \
      wrk -t1 -c"$CONNECTIONS" -d"${3}s" --timeout 30s -s bench/chaos_reads.lua "$url" \
      >"$WORK/$1.$2.$name.wrk" 2>&1 &
    WRK_PIDS+=($!)
  done
}
wrk_wait() {
  local pid
  for pid in "${WRK_PIDS[@]}"; do wait "$pid" || echo "wrk $pid exited with $?" >>"$WORK/failures.txt"; done
}

# The faults: inject_KIND / heal_KIND.
inject_none() { :; }
heal_none() { :; }
inject_redis_kill() { kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; }
heal_redis_kill() { start_redis; }
inject_redis_stop() { kill -STOP "$REDIS_PID"; }
heal_redis_stop() { kill -CONT "$REDIS_PID"; }
inject_store_cut() { proxy cut; }
heal_store_cut() { proxy forward; }
inject_store_hang() { proxy hang; }
heal_store_hang() { proxy forward; }
# Redis killed and the store cut together: only L1 can answer (fail-safe).
inject_both_down() { inject_redis_kill; proxy cut; }
heal_both_down() { proxy forward; start_redis; }

# run_phase NAME KIND FAULT: KIND is none, redis or store; FAULT names the
# inject_/heal_ pair.
run_phase() {
  local name=$1 kind=$2 fault=$3 t_start t_fault t_heal t_end rss0 writer measure
  # Warming fills Redis and the warming instance's L1; another instance that
  # sees those Redis writes may drop its own copies (SPEC §8), so a short
  # read pass after both warms puts the hot set back in every L1.
  warm "$URL_A"
  warm "$URL_B"
  sleep 1.5
  wrk_start "$name" prepass 2
  wrk_wait
  t_start=$(now)
  rss0="$(rss "$PID_A")	$(rss "$PID_B")"
  "$PYTHON" "$CLIENT" writer --urls "$URL_A" --ids "$WRITTEN_IDS" --token "$TOKEN" \
    --log "$WORK/writes-$name.jsonl" --tag "$name" --rate "$WRITE_RATE" \
    --stop-file "$WORK/stop-writer-$name" --max-seconds $((DURATION + 60)) &
  writer=$!
  sleep 1 # writes acknowledged just before the fault, too
  wrk_start "$name" fault "$DURATION"
  t_fault=$(now)
  "inject_$fault"
  log "$name: fault injected"
  sleep "$DURATION"
  "heal_$fault"
  t_heal=$(now)
  log "$name: healed"
  touch "$WORK/stop-writer-$name"
  "$PYTHON" "$CLIENT" measure --urls "$URL_A,$URL_B" --ids "$WRITTEN_IDS" --dsn "$DIRECT" \
    --heal "$t_heal" --ttl "$L1_TTL_SECS" --recovery-timeout "$RECOVERY_TIMEOUT" \
    --out "$WORK/$name.measure.json" &
  measure=$!
  wrk_wait
  wrk_start "$name" recovery $((L1_TTL_SECS + 2))
  wait "$measure" || echo "$name: measurement failed ($?)" >>"$WORK/failures.txt"
  wrk_wait
  wait "$writer" || echo "$name: writer failed ($?)" >>"$WORK/failures.txt"
  t_end=$(now)
  curl -fsS "$URL_A/metrics" >"$WORK/$name.A.metrics" 2>/dev/null || true
  curl -fsS "$URL_B/metrics" >"$WORK/$name.B.metrics" 2>/dev/null || true
  for pid in "$PID_A" "$PID_B"; do
    kill -0 "$pid" 2>/dev/null || echo "$name: instance $pid died" >>"$WORK/failures.txt"
  done
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$t_start" "$t_fault" \
    "$t_heal" "$t_end" "$rss0" "$(rss "$PID_A")" "$(rss "$PID_B")" >>"$WORK/events.tsv"
  log "$name: done ($("$PYTHON" -c 'import json,sys; m=json.load(open(sys.argv[1])); print("recovery", m["recovery_s"], "s, diverged", m["div1"]["count"], "/", m["div2"]["count"])' "$WORK/$name.measure.json" 2>/dev/null || echo 'no measurement'))"
}

log "work directory $WORK; A :$PORT_A, B :$PORT_B, Redis :$REDIS_PORT, proxy :$PROXY_PORT (control :$CONTROL_PORT)"
psql "$PG_URL" -qc "CREATE DATABASE $DB" >/dev/null || die "cannot create database $DB"
RUST_LOG=warn "$CATALOG_BIN" seed --database-url "$DIRECT" "$PRODUCTS" >/dev/null
start_redis
"$PYTHON" bench/tcp_proxy.py --listen "127.0.0.1:$PROXY_PORT" --target "$PG_TARGET" \
  --control "127.0.0.1:$CONTROL_PORT" 2>"$WORK/proxy.log" &
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$CONTROL_PORT/status" >/dev/null 2>&1 && break; sleep 0.1; done
start_catalog A "$PORT_A"; PID_A=$CATALOG_PID
start_catalog B "$PORT_B"; PID_B=$CATALOG_PID
wait_healthy A "$PORT_A" "$PID_A"
wait_healthy B "$PORT_B" "$PID_B"
log "seeded $PRODUCTS products; A (pid $PID_A) and B (pid $PID_B) healthy; binary $CATALOG_BIN"

"$PYTHON" "$CLIENT" reader --urls "$URL_A,$URL_B" --ids "$WRITTEN_IDS" --cold "$COLD_IDS" \
  --rate "$READ_RATE" --log "$WORK/reads.csv" --stop-file "$WORK/stop-reader" &
READER_PID=$!

for phase in $PHASES; do
  case $phase in
    baseline) run_phase baseline none none ;;
    redis-kill) run_phase redis-kill redis redis_kill ;;
    redis-stop) run_phase redis-stop redis redis_stop ;;
    store-cut) run_phase store-cut store store_cut ;;
    store-hang) run_phase store-hang store store_hang ;;
    both-down) run_phase both-down redis both_down ;;
    *) die "unknown phase $phase" ;;
  esac
done

touch "$WORK/stop-reader"
wait "$READER_PID" || true
status=0
"$PYTHON" "$CLIENT" report --work "$WORK" --urls "$URL_A,$URL_B" --ids "$WRITTEN_IDS" \
  --dsn "$DIRECT" --ttl "$L1_TTL_SECS" --hot "$HOT" --recovery-timeout "$RECOVERY_TIMEOUT" || status=$?
# (The report lists harness problems, failures.txt, among the failures.)
if [ -s "$WORK/failures.txt" ] && [ "$status" = 0 ]; then status=1; fi
exit "$status"
