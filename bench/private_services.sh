# shellcheck shell=bash
# Sourced by the bench scripts that run the catalog against services of
# their own, so that a run never touches the shared Redis and leaves nothing
# behind. Sourcing it makes a scratch directory, WORK, and an EXIT trap
# that stops the catalog the script started (SERVER_PID), the services
# below, and removes WORK.
#
#   start_private_redis PORT DIR     a redis-server on PORT (no persistence,
#                                    files in DIR); sets REDIS_PID
#   create_seeded_database PG_URL NAME PRODUCTS
#                                    creates database NAME next to PG_URL's
#                                    and seeds PRODUCTS products into it with
#                                    $BIN; sets DB_URL (TLS off on loopback)

REDIS_PID= PRIVATE_DB= PRIVATE_PG_URL= SERVER_PID=
WORK=$(mktemp -d)

start_private_redis() {
  local port=$1 dir=$2
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" >"$dir/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  cat "$dir/redis.log" >&2
  echo "private redis-server on port $port did not start (port taken? set another)" >&2
  exit 1
}

create_seeded_database() {
  local pg_url=$1 name=$2 products=$3
  psql "$pg_url" -qc "CREATE DATABASE $name" >/dev/null || {
    echo "PostgreSQL at $pg_url is not reachable; start it with: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
    exit 1
  }
  PRIVATE_PG_URL=$pg_url PRIVATE_DB=$name
  DB_URL="${pg_url%/*}/$name?sslmode=disable"
  RUST_LOG=warn "$BIN" seed --database-url "$DB_URL" "$products" >/dev/null
}

stop_private_services() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  if [ -n "$PRIVATE_DB" ]; then
    psql "$PRIVATE_PG_URL" -qc "DROP DATABASE IF EXISTS $PRIVATE_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap stop_private_services EXIT
