#!/usr/bin/env bash
# Instructions per request of the hit paths, counted by callgrind: a
# regression guard that holds on a noisy machine, where timings do not.
#
# Runs the release catalog as deployed (PostgreSQL, a private Redis, the bus
# on, an L1 of 1,000 entries over PRODUCTS products) under
# `valgrind --tool=callgrind` with collection off, and from outside sends
# REQUESTS sequential GET /products/{id} on one keep-alive connection per
# path, collecting only while they run:
#   l1_hit  ids cycling over 1..500, every one in L1 (read before)
#   l2_hit  ids from 5,001 up, each read once, after a warm-up on ids from
#           3,001 (so L1 is full and evicting): none is in L1, all were put
#           in Redis by POST /cache/warm; the run fails if L2 did not answer
#           at least 90 % of them
# Instructions are the server's, all threads, per request (the client is
# not counted): what hyper, the middleware, the handler and the cache do.
#
# Usage: bench/instructions.sh            compare with bench/instructions.tsv:
#                                         fail when a path grew by more than 10 %
#        bench/instructions.sh --record   write the figures to bench/instructions.tsv
# Env:   PG_URL (default postgres://postgres@127.0.0.1:5432/postgres),
#        REDIS_PORT (16392), PORT (18082), REQUESTS (2000, at most 5000),
#        PRODUCTS (10000),
#        CATALOG_BIN: a catalog binary to measure instead of building this tree's
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-check}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_PORT=${REDIS_PORT:-16392}
PORT=${PORT:-18082}
REQUESTS=${REQUESTS:-2000}
PRODUCTS=${PRODUCTS:-10000}
RECORD=bench/instructions.tsv
# How much a path may grow before the check fails.
TOLERANCE=1.10
export PGOPTIONS="-c client_min_messages=warning"
BIN=${CATALOG_BIN:-target/release/catalog}
TOKEN=bench
PG_DB=catalog_instructions_$$

case $MODE in
  check | --record) ;;
  *) echo "usage: bench/instructions.sh [--record]" >&2; exit 2 ;;
esac

# WORK, the EXIT trap and the private services.
# shellcheck source=bench/private_services.sh
source bench/private_services.sh

command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
# The same build as bench/load.sh, so that both share one set of artifacts
# (unless CATALOG_BIN names another build, e.g. an earlier commit's).
[ -n "${CATALOG_BIN:-}" ] || cargo build --release -p catalog --bin catalog --example floor >&2

start_private_redis "$REDIS_PORT" "$WORK"

create_seeded_database "$PG_URL" "$PG_DB" "$PRODUCTS"

env DATABASE_URL="$DB_URL" BIND_ADDR="127.0.0.1:$PORT" RUST_LOG=warn \
  CATALOG_API_TOKEN=$TOKEN REDIS_URL="redis://127.0.0.1:$REDIS_PORT" L1_MAX_ENTRIES=1000 \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
  "$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "catalog exited" >&2; exit 1; }
  sleep 0.5
done
curl -fs "http://127.0.0.1:$PORT/health" >/dev/null || { echo "catalog did not become healthy under valgrind" >&2; exit 1; }

api() { # api METHOD PATH [JSON]
  curl -fsS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    ${3:+-d "$3"} "http://127.0.0.1:$PORT$2"
}
api POST /cache/warm '{"all":true}' >/dev/null

# measure NAME WARM_FIRST WARM_LAST FIRST LAST: instructions per request
# over REQUESTS requests cycling over ids FIRST..LAST, after REQUESTS untimed
# ones cycling over WARM_FIRST..WARM_LAST; prints the figure and the levels
# that answered.
measure() {
  python3 - "$PORT" "$REQUESTS" "$SERVER_PID" "$WORK/callgrind.out" "$TOKEN" "$@" <<'PY'
import glob, http.client, json, subprocess, sys
port, requests, pid, out, token, name, warm_first, warm_last, first, last = sys.argv[1:]
port, requests = int(port), int(requests)
warm_first, warm_last, first, last = map(int, (warm_first, warm_last, first, last))
conn = http.client.HTTPConnection("127.0.0.1", port)
def get(path, headers={}):
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"GET {path}: {r.status} {body[:200]!r}")
    return body
def levels():
    l = json.loads(get("/cache/stats", {"Authorization": f"Bearer {token}"}))["levels"]
    return l["l1"]["hits"], l["l2"]["hits"]
def control(*args):
    subprocess.run(["callgrind_control", *args, pid], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def cycle(lo, hi):
    return [lo + i % (hi - lo + 1) for i in range(requests)]
# The warm-up, repeated (up to 10 times) until a whole pass is L1 hits when
# the measured ids are the warm-up's: the warm before may still be settling.
for _ in range(10):
    before = levels()
    for i in cycle(warm_first, warm_last):
        get(f"/products/{i}")
    if (warm_first, warm_last) != (first, last) or levels()[0] - before[0] == requests:
        break
ids = cycle(first, last)
l1_0, l2_0 = levels()
control("--zero")
control("--instr=on")
for i in ids:
    get(f"/products/{i}")
control("--instr=off")
before = set(glob.glob(out + "*"))
control(f"--dump={name}")
l1_1, l2_1 = levels()
dumps = set(glob.glob(out + "*")) - before
total = 0
for dump in dumps:
    for line in open(dump):
        if line.startswith("totals:"):
            total += int(line.split()[1])
if total == 0:
    sys.exit(f"callgrind wrote no counts for {name} (new dumps: {sorted(dumps)})")
l1, l2 = l1_1 - l1_0, l2_1 - l2_0
print(f"{name}\t{total // requests}\t{l1}\t{l2}")
PY
}

# L1 hits: a hot set of 500 ids, read before.
l1=$(measure l1_hit 1 500 1 500)
# L2 hits: ids read once, none of them in L1 (it holds the 1,000 most
# recent of the warm-up's, and the hot set).
l2=$(measure l2_hit 3001 $((3000 + REQUESTS)) 5001 $((5000 + REQUESTS)))
python3 - "$MODE" "$RECORD" "$TOLERANCE" "$REQUESTS" "$l1" "$l2" <<'PY'
import sys
mode, record, tolerance, requests = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
measured = {}
for line in sys.argv[5:]:
    name, per_request, l1, l2 = line.split("\t")
    per_request, l1, l2 = int(per_request), int(l1), int(l2)
    print(f"{name} run: {per_request:,} instructions per request ({l1} L1 hits, {l2} L2 hits of {requests})")
    if name == "l1_hit":
        if l1 < requests:
            sys.exit("the l1_hit run was not all L1 hits: the figure would not be the L1-hit path's")
        measured[name] = per_request
    if name == "l2_hit":
        if l2 < 0.9 * requests:
            sys.exit("the l2_hit run had under 90 % L2 hits: the figure would not be the L2-hit path's")
        # The few L1 hits among them (a few ids the warm left in L1) at the
        # L1-hit figure, so that the mix does not move the L2-hit one.
        measured[name] = round((per_request * requests - l1 * measured["l1_hit"]) / l2)
        print(f"l2_hit: {measured[name]:,} instructions per L2 hit")
if mode == "--record":
    with open(record, "w") as f:
        f.write("# path\tinstructions per request (bench/instructions.sh --record)\n")
        for name, value in measured.items():
            f.write(f"{name}\t{value}\n")
    print(f"recorded in {record}")
    sys.exit(0)
recorded = {}
for line in open(record):
    if line.startswith("#") or not line.strip():
        continue
    name, value = line.split("\t")
    recorded[name] = int(value)
failed = False
for name, value in measured.items():
    ratio = value / recorded[name]
    verdict = "ok" if ratio <= tolerance else "REGRESSION"
    print(f"{name}: {ratio:.3f} × the recorded {recorded[name]:,} (fails above {tolerance}): {verdict}")
    failed |= ratio > tolerance
if failed:
    sys.exit("instructions per request grew by more than 10 %: find the cause, or record the new figure with --record if it is intended")
PY
