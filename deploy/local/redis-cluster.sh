#!/usr/bin/env bash
# redis-cluster.sh: a Redis Cluster of 3 masters + 3 replicas on loopback, for tests
# and `make run TOPOLOGY=cluster`. It follows the contract of testenv.Cluster
# (testkit/testenv/cluster.go):
#
#   redis-cluster.sh start <dir> [p1 ... p6]   start the six nodes (client ports p1..p6,
#                                              free ones when omitted), create the
#                                              cluster on first start, wait until it
#                                              is ok on every node
#   redis-cluster.sh stop <dir>                stop every node (idempotent)
#   redis-cluster.sh start-node <dir> <i>      start node i again, same ports and data
#   redis-cluster.sh stop-node <dir> <i>       stop node i gracefully (SIGTERM)
#
# Writes <dir>/addrs (127.0.0.1:port of nodes 1-6, one a line) and, per node,
# <dir>/node<i>/{pid,port,bus_port,server.log,nodes.conf} plus its append-only file.
# Node data is kept across restarts, so a restarted node rejoins: an old master that
# was failed over comes back as a replica of the node that was promoted.
# The cluster bus port is set explicitly (--cluster-port): p+10000 when the client
# ports are fixed, a free port otherwise. --cluster-node-timeout 2000 makes a killed
# master's replica take over in about 2-4 s.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODES=6
READY_TIMEOUT=60

usage() {
	log "usage: $(basename "$0") start <dir> [p1 ... p6] | stop <dir> | start-node <dir> <i> | stop-node <dir> <i>"
	exit 2
}

# node_launch <dir> <i>: spawn node i on the ports saved in <dir>/node<i>.
node_launch() {
	local nd=$1/node$2 port bus
	port=$(<"$nd/port")
	bus=$(<"$nd/bus_port")
	spawn "$nd/server.log" "$nd/pid" redis-server \
		--bind 127.0.0.1 --port "$port" --cluster-port "$bus" --protected-mode no --unixsocket "" \
		--cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
		--dir "$nd" --logfile "" --daemonize no --save "" \
		--appendonly yes --appendfsync everysec
}

# node_probe <nodedir>: the Redis on the node's port is ours and has loaded its data
# (see redis_probe in redis.sh).
node_probe() {
	local nd=$1 info
	info=$(timeout 0.5 redis-cli -h 127.0.0.1 -p "$(<"$nd/port")" info 2>/dev/null) || return 1
	[[ $info == *"process_id:$(read_pid "$nd/pid")"$'\r'* ]] || return 1
	[[ $info == *$'\n'"loading:0"$'\r'* ]] || return 1
	[[ $info != *$'\n'"async_loading:"[!0]* ]]
}

# node_ok <nodedir>: the node sees the cluster ok with every slot served, knows all
# six nodes and, when it is a replica, is in sync with its master.
node_ok() {
	local port info repl
	port=$(<"$1/port")
	info=$(timeout 0.5 redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null) || return 1
	[[ $info == *"cluster_state:ok"* ]] || return 1
	[[ $info == *"cluster_slots_ok:16384"* ]] || return 1
	[[ $info == *"cluster_known_nodes:$NODES"* ]] || return 1
	repl=$(timeout 0.5 redis-cli -h 127.0.0.1 -p "$port" info replication 2>/dev/null) || return 1
	[[ $repl != *"role:slave"* || $repl == *"master_link_status:up"* ]]
}

# start_node <dir> <i> <fixed>: launch node i and wait until it answers. With free
# ports (fixed=0) a port taken between free_port and the bind is retried on fresh
# ports, as server_start does for single servers.
start_node() {
	local dir=$1 i=$2 fixed=$3 nd=$1/node$2 attempt from rc
	if alive "$nd/pid"; then
		log "redis node $i already running in $nd"
		return 0
	fi
	for ((attempt = 1; attempt <= 5; attempt++)); do
		from=$(line_count "$nd/server.log")
		node_launch "$dir" "$i"
		rc=0
		wait_ready "$nd/pid" "$READY_TIMEOUT" node_probe "$nd" || rc=$?
		((rc == 0)) && return 0
		if ((rc == 1 && fixed == 0 && attempt < 5)) && [[ ! -s $nd/nodes.conf ]] && bind_failed "$nd/server.log" "$from"; then
			log "redis node $i: port taken, retrying on another one"
			rm -f "$nd/pid"
			free_port >"$nd/port"
			free_port >"$nd/bus_port"
			continue
		fi
		log "redis node $i did not start (see $nd/server.log)"
		stop_pidfile "$nd/pid" "redis node $i" 5
		log_tail "$nd/server.log"
		return 1
	done
}

# wait_cluster_ok <dir> <nodes...>: wait until node_ok holds on each listed node.
wait_cluster_ok() {
	local dir=$1 i end
	shift
	end=$((SECONDS + READY_TIMEOUT))
	for i in "$@"; do
		until node_ok "$dir/node$i"; do
			if ((SECONDS >= end)); then
				log "redis cluster not ok on node $i within ${READY_TIMEOUT}s:"
				redis-cli -h 127.0.0.1 -p "$(<"$dir/node$i/port")" cluster info >&2 2>/dev/null || true
				log_tail "$dir/node$i/server.log"
				return 1
			fi
			sleep 0.1
		done
	done
}

cmd_start() {
	local dir=$1 i p bus fixed=0 t0=$EPOCHREALTIME pids=() failed=0 addrs=() used=()
	shift
	need redis-server
	need redis-cli
	if (($# != 0 && $# != NODES)); then die "start takes no ports or all $NODES"; fi
	(($# == NODES)) && fixed=1
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	for ((i = 1; i <= NODES; i++)); do
		mkdir -p "$dir/node$i"
		# Ports are chosen once; a later start reuses them with the data.
		if [[ ! -s $dir/node$i/port ]]; then
			if ((fixed)); then
				p=${!i}
				bus=$((p + 10000))
			else
				p=$(free_port)
				while [[ " ${used[*]} " == *" $p "* ]]; do p=$(free_port); done
				used+=("$p")
				bus=$(free_port)
				while [[ " ${used[*]} " == *" $bus "* ]]; do bus=$(free_port); done
				used+=("$bus")
			fi
			echo "$p" >"$dir/node$i/port"
			echo "$bus" >"$dir/node$i/bus_port"
		fi
	done
	for ((i = 1; i <= NODES; i++)); do
		start_node "$dir" "$i" "$fixed" &
		pids+=($!)
	done
	# Wait for PIDs, not a bare wait: that would also wait for the watchdogs.
	for p in "${pids[@]}"; do wait "$p" || failed=1; done
	((failed == 0)) || die "a redis node did not start"
	for ((i = 1; i <= NODES; i++)); do addrs+=("127.0.0.1:$(<"$dir/node$i/port")"); done
	if [[ ! -e $dir/created ]]; then
		# Nodes 1-3 become masters, 4-6 their replicas (redis-cli's order); all on one
		# host, which it warns about and --cluster-yes accepts.
		redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
			>"$dir/create.log" 2>&1 || {
			log_tail "$dir/create.log"
			die "redis-cli --cluster create failed"
		}
		touch "$dir/created"
	fi
	wait_cluster_ok "$dir" $(seq "$NODES") || die "redis cluster not ready"
	printf '%s\n' "${addrs[@]}" >"$dir/addrs"
	log "redis cluster ready on ${addrs[*]} ($(elapsed "$t0"))"
}

cmd_stop() {
	local dir=$1 i
	[[ -d $dir ]] || return 0
	for ((i = 1; i <= NODES; i++)); do
		stop_pidfile "$dir/node$i/pid" "redis node $i" 10 &
	done
	wait
}

node_index() {
	[[ $1 =~ ^[1-6]$ ]] || die "node index must be 1..$NODES, not '$1'"
}

cmd_start_node() {
	local dir=$1 i=$2 t0=$EPOCHREALTIME
	node_index "$i"
	[[ -s $dir/node$i/port ]] || die "no node $i in $dir (start the cluster first)"
	start_node "$dir" "$i" 1 || die "redis node $i did not start"
	wait_cluster_ok "$dir" "$i" || die "redis node $i did not rejoin the cluster"
	log "redis node $i ready on 127.0.0.1:$(<"$dir/node$i/port") (pid $(read_pid "$dir/node$i/pid"), $(elapsed "$t0"))"
}

cmd_stop_node() {
	local dir=$1 i=$2
	node_index "$i"
	stop_pidfile "$dir/node$i/pid" "redis node $i" 10
}

main() {
	local cmd=${1:-} dir=${2:-}
	[[ -n $dir ]] || usage
	case $cmd in
	start) cmd_start "$dir" "${@:3}" ;;
	stop) cmd_stop "$dir" ;;
	start-node) [[ $# == 3 ]] || usage; cmd_start_node "$dir" "$3" ;;
	stop-node) [[ $# == 3 ]] || usage; cmd_stop_node "$dir" "$3" ;;
	*) usage ;;
	esac
}

main "$@"
