# shellcheck shell=bash
# Sourced by the bench scripts: a local Redis Cluster of six nodes, three
# primaries with a replica each, no persistence, node timeout 1 s.
#
#   start_cluster FIRST_PORT DIR   nodes on FIRST_PORT..+5, cluster-bus ports
#                                  FIRST_PORT+10..+15 (not Redis's port + 10000,
#                                  which lands in Linux's ephemeral range), one
#                                  directory each under DIR; returns once every
#                                  node says the cluster is whole and every
#                                  replica's link is up; sets CLUSTER_URL
#                                  (redis+cluster://…) and CLUSTER_PIDS
#                                  (an inherited CLUSTER_URL is left alone until then)
#   stop_cluster                   kills the nodes (call it from the EXIT trap)

CLUSTER_PIDS=()

start_cluster() {
  local first=$1 dir=$2 seeds=() port seed
  for i in 0 1 2 3 4 5; do
    port=$((first + i))
    mkdir -p "$dir/node-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
      --cluster-enabled yes --cluster-port $((port + 10)) --cluster-node-timeout 1000 \
      --repl-diskless-sync-delay 0 --cluster-config-file "$dir/node-$port/nodes.conf" \
      --dir "$dir/node-$port" --logfile "$dir/node-$port/redis.log" &
    CLUSTER_PIDS+=($!)
    seeds+=("127.0.0.1:$port")
  done
  for seed in "${seeds[@]}"; do
    for _ in $(seq 1 100); do
      redis-cli -p "${seed#*:}" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    redis-cli -p "${seed#*:}" ping >/dev/null 2>&1 || {
      tail -5 "$dir/node-${seed#*:}/redis.log" >&2
      echo "cluster node $seed did not start (port taken? choose another first port)" >&2
      exit 2
    }
  done
  redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; exit 2; }
  cluster_whole() {
    local seed
    for seed in "${seeds[@]}"; do
      redis-cli -p "${seed#*:}" cluster info | grep -q '^cluster_state:ok' || return 1
      if redis-cli -p "${seed#*:}" info replication | grep -q '^role:slave'; then
        redis-cli -p "${seed#*:}" info replication | grep -q '^master_link_status:up' || return 1
      fi
    done
  }
  for _ in $(seq 1 300); do cluster_whole && break; sleep 0.1; done
  cluster_whole || { echo "the cluster did not become whole" >&2; exit 2; }
  # shellcheck disable=SC2034 # read by the scripts that source this
  CLUSTER_URL="redis+cluster://$(IFS=,; echo "${seeds[*]}")"
}

stop_cluster() {
  local pid
  for pid in "${CLUSTER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  CLUSTER_PIDS=()
}
