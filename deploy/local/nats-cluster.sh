#!/usr/bin/env bash
# nats-cluster.sh: a 3-node NATS JetStream cluster on loopback, for `make run
# TOPOLOGY=cluster` and the Go tests (testkit/testenv.Scripts.NATSCluster). It follows
# the contract of testkit/testenv/cluster.go:
#
#   nats-cluster.sh start <dir> [c1 c2 c3 h1 h2 h3 r1 r2 r3]
#                                     client, monitoring and cluster route ports of
#                                     nodes 1-3 (free ports when omitted)
#   nats-cluster.sh stop <dir>        stop every node (idempotent)
#   nats-cluster.sh start-node <dir> <i>   start node i again, same ports and data
#   nats-cluster.sh stop-node <dir> <i>    stop node i gracefully (SIGTERM)
#
# Nodes are named n1, n2, n3 (server_name, which JetStream reports as a stream's
# Cluster.Leader), in the cluster "qyai". Node i keeps its JetStream store in
# <dir>/node<i>/jetstream (kept across stop and start), its PID in <dir>/node<i>/pid
# and its log in <dir>/node<i>/server.log. Once started, <dir>/addrs holds
# 127.0.0.1:<client port> of each node, one a line, <dir>/http_addrs the monitoring
# addresses, <dir>/ports all nine ports (start-node reads them). start returns once
# every node is healthy and JetStream has a meta leader.
# The binary is <repo>/.bin/nats-server (built by install.sh) unless NATS_SERVER names
# another. NATS_CONFIG, when set, names a server config file passed with -c to every
# node (authorization, tls); the command-line ports, names and cluster flags win over it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NATS_SERVER=${NATS_SERVER:-$QYAI_REPO_ROOT/.bin/nats-server}
NODES=3
READY_TIMEOUT=20
STOP_TIMEOUT=10

usage() {
	log "usage: $(basename "$0") start <dir> [c1 c2 c3 h1 h2 h3 r1 r2 r3] | stop <dir> | start-node <dir> <i> | stop-node <dir> <i>"
	exit 2
}

# ports_of <dir>: load the nine ports of <dir>/ports into the array PORTS.
ports_of() {
	[[ -f $1/ports ]] || die "$1/ports not found: start the cluster first"
	mapfile -t PORTS <"$1/ports"
	((${#PORTS[@]} == 3 * NODES)) || die "$1/ports: want $((3 * NODES)) ports, found ${#PORTS[@]}"
}

# launch <dir> <i>: spawn node i with the ports in PORTS.
launch() {
	local dir=$1 i=$2 j routes=() config=()
	local node=$dir/node$i
	local client=${PORTS[i - 1]} http=${PORTS[NODES + i - 1]} route=${PORTS[2 * NODES + i - 1]}
	for ((j = 1; j <= NODES; j++)); do
		((j == i)) || routes+=("nats://127.0.0.1:${PORTS[2 * NODES + j - 1]}")
	done
	[[ -z ${NATS_CONFIG:-} ]] || config=(-c "$NATS_CONFIG")
	mkdir -p "$node"
	rm -f "$node"/*.ports
	local IFS=,
	spawn "$node/server.log" "$node/pid" "$NATS_SERVER" "${config[@]}" \
		-a 127.0.0.1 -p "$client" -m "$http" -n "n$i" \
		-js -sd "$node/jetstream" --ports_file_dir "$node" \
		--cluster_name qyai --cluster "nats://127.0.0.1:$route" --routes "${routes[*]}"
}

# node_up <dir> <i>: node i is ours (it wrote <name>_<pid>.ports, so it listens: another
# server may hold the port) and JetStream is enabled on it.
node_up() {
	local node=$1/node$2
	local files=("$node"/*_"$(read_pid "$node/pid")".ports)
	[[ -e ${files[0]} ]] && http_ok "http://127.0.0.1:${PORTS[NODES + $2 - 1]}/healthz?js-enabled-only=true"
}

# node_current <dir> <i>: node i sees a JetStream meta leader and its assets are
# current (plain /healthz answers 503 until then).
node_current() {
	local http=${PORTS[NODES + $2 - 1]}
	http_ok "http://127.0.0.1:$http/healthz" || return 1
	command -v curl >/dev/null || return 0
	curl -fsS --max-time 1 "http://127.0.0.1:$http/jsz" | grep -q '"leader": *"n[0-9]'
}

# cluster_ready <dir>: every node is up and current.
cluster_ready() {
	local i
	for ((i = 1; i <= NODES; i++)); do
		node_up "$1" "$i" && node_current "$1" "$i" || return 1
	done
}

any_bind_failed() {
	local i
	for ((i = 1; i <= NODES; i++)); do
		grep -qi 'address already in use' "$1/node$i/server.log" 2>/dev/null && return 0
	done
	return 1
}

stop_all() {
	local dir=$1 i pids=()
	for ((i = 1; i <= NODES; i++)); do
		stop_pidfile "$dir/node$i/pid" "nats node $i" "$STOP_TIMEOUT" &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i"; done
}

# wait_all <dir>: poll until cluster_ready (0), a node died (1) or the deadline (2).
wait_all() {
	local dir=$1 end=$((SECONDS + READY_TIMEOUT)) i
	while ((SECONDS < end)); do
		cluster_ready "$dir" >/dev/null 2>&1 && return 0
		for ((i = 1; i <= NODES; i++)); do
			alive "$dir/node$i/pid" || return 1
		done
		sleep 0.05
	done
	cluster_ready "$dir" >/dev/null 2>&1 && return 0
	return 2
}

cmd_start() {
	local dir=$1
	shift
	[[ -x $NATS_SERVER ]] || die "$NATS_SERVER not found; run deploy/local/install.sh"
	(($# == 0 || $# == 3 * NODES)) || usage
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	local i p rc attempts=5 t0=$EPOCHREALTIME
	(($# == 0)) || attempts=1
	local up=0
	for ((i = 1; i <= NODES; i++)); do
		if alive "$dir/node$i/pid"; then up=$((up + 1)); fi
	done
	if ((up == NODES)); then
		log "nats cluster already running in $dir"
		return 0
	fi
	((up == 0)) || die "nats cluster in $dir is partly running ($up of $NODES nodes): start-node the others, or stop it first"
	local attempt
	for ((attempt = 1; attempt <= attempts; attempt++)); do
		PORTS=("$@")
		if (($# == 0)); then
			for ((i = 0; i < 3 * NODES; i++)); do
				p=$(free_port)
				while [[ " ${PORTS[*]} " == *" $p "* ]]; do p=$(free_port); done
				PORTS+=("$p")
			done
		fi
		printf '%s\n' "${PORTS[@]}" >"$dir/ports"
		for ((i = 1; i <= NODES; i++)); do
			mkdir -p "$dir/node$i"
			: >"$dir/node$i/server.log"
			launch "$dir" "$i"
		done
		rc=0
		wait_all "$dir" || rc=$?
		if ((rc == 0)); then
			: >"$dir/addrs"
			: >"$dir/http_addrs"
			for ((i = 1; i <= NODES; i++)); do
				echo "127.0.0.1:${PORTS[i - 1]}" >>"$dir/addrs"
				echo "127.0.0.1:${PORTS[NODES + i - 1]}" >>"$dir/http_addrs"
			done
			log "nats cluster ready on $(paste -sd, "$dir/addrs") (monitor $(paste -sd, "$dir/http_addrs"), $(elapsed "$t0"))"
			return 0
		fi
		stop_all "$dir"
		if ((attempt < attempts)) && any_bind_failed "$dir"; then
			log "nats cluster: a port was taken, retrying on other ones"
			continue
		fi
		if ((rc == 1)); then
			log "a nats node exited during startup"
		else
			log "nats cluster not ready within ${READY_TIMEOUT}s"
		fi
		for ((i = 1; i <= NODES; i++)); do log_tail "$dir/node$i/server.log"; done
		exit 1
	done
}

# valid_node <i>: i is a node number, 1..NODES.
valid_node() { [[ $1 =~ ^[1-9]$ ]] && (($1 <= NODES)); }

cmd_start_node() {
	local dir=$1 i=$2 rc=0
	valid_node "$i" || usage
	[[ -x $NATS_SERVER ]] || die "$NATS_SERVER not found; run deploy/local/install.sh"
	dir=$(cd "$dir" && pwd)
	ports_of "$dir"
	alive "$dir/node$i/pid" && return 0
	local from t0=$EPOCHREALTIME
	from=$(line_count "$dir/node$i/server.log")
	launch "$dir" "$i"
	wait_ready "$dir/node$i/pid" "$READY_TIMEOUT" node_up "$dir" "$i" || rc=$?
	if ((rc != 0)); then
		log "nats node $i did not start (see $dir/node$i/server.log)"
		stop_pidfile "$dir/node$i/pid" "nats node $i" 5
		tail -n +"$((from + 1))" "$dir/node$i/server.log" | tail -n 30 >&2
		exit 1
	fi
	# Catching up with the cluster needs the others; without them the node still
	# runs, so this wait is not fatal.
	if ! wait_ready "$dir/node$i/pid" "$READY_TIMEOUT" node_current "$dir" "$i"; then
		log "nats node $i runs but is not current with the cluster yet"
	fi
	log "nats node $i ready on 127.0.0.1:${PORTS[i - 1]} (pid $(read_pid "$dir/node$i/pid"), $(elapsed "$t0"))"
}

cmd_stop_node() {
	local dir=$1 i=$2
	valid_node "$i" || usage
	stop_pidfile "$dir/node$i/pid" "nats node $i" "$STOP_TIMEOUT"
}

main() {
	local cmd=${1:-} dir=${2:-}
	[[ -n $dir ]] || usage
	case $cmd in
	start) cmd_start "$dir" "${@:3}" ;;
	stop) [[ ! -d $dir ]] || stop_all "$dir" ;;
	start-node) cmd_start_node "$dir" "${3:-}" ;;
	stop-node) cmd_stop_node "$dir" "${3:-}" ;;
	*) usage ;;
	esac
}

main "$@"
