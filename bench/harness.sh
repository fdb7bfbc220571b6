# Shared by bench/chaos.sh and bench/soak.sh (sourced, not run): logging,
# the cleanup trap and the tool check.
#
# The sourcing script sets NAME (for messages), T0 (`date +%s.%N` at its
# start), PG_URL, DB (the database it made), WORK (its scratch directory)
# and KEEP_WORK, and may define `before_cleanup` (run first on exit). It
# starts every process as one of its jobs, so that cleanup can find them.

log() { awk -v now="$(date +%s.%N)" -v t0="$T0" -v msg="$*" 'BEGIN {printf "[%6.1fs] %s\n", now - t0, msg}' >&2; }
die() { echo "$NAME: $*" >&2; exit 2; }

# Stops the jobs still running (kills what outlives 10 s), drops the
# database, and removes the scratch directory unless it is to be kept (or
# the setup failed, status 2).
cleanup() {
  local status=$? pids
  set +e
  if declare -F before_cleanup >/dev/null; then before_cleanup; fi
  pids=$(jobs -pr)
  if [ -n "$pids" ]; then
    kill $pids 2>/dev/null
    for _ in $(seq 1 50); do [ -z "$(jobs -pr)" ] && break; sleep 0.2; done
    pids=$(jobs -pr)
    if [ -n "$pids" ]; then kill -9 $pids 2>/dev/null; fi
    wait 2>/dev/null
  fi
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  if [ "$KEEP_WORK" = 1 ] || [ "$status" = 2 ]; then
    echo "work directory (logs): $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

for tool in wrk redis-server redis-cli psql curl python3; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
# The interpreter itself, not a version manager's shim (a shim would be the
# background job's pid, and killing it would leave the interpreter running).
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
