#!/usr/bin/env bash
# run.sh: the whole QYAI stack on this machine; what `make run` calls.
#
#   deploy/local/run.sh
#
# Installs what is missing (install.sh), builds the binaries into .bin/, starts Redis,
# NATS JetStream and ClickHouse with their data under .run/, then the upstream
# simulator (unless UPSTREAM_BASE_URL is set), meter, admin on 127.0.0.1:8081 and
# GATEWAY_REPLICAS gateways (default 1) on 127.0.0.1:8080, :8180, :8280, ..., each with
# its internal metrics listener (GATEWAY_METRICS_ADDR) on 127.0.0.1:9464, :9564, ... It creates
# a demo API key, prints it with a ready line, and stops everything on Ctrl-C (exit
# 0), SIGTERM (exit 143) or SIGHUP (exit 129).
#
# TOPOLOGY=cluster runs the engines clustered instead, on fixed loopback ports:
#   NATS JetStream, 3 nodes: client 4222-4224, monitoring 8222-8224, routes 6222-6224;
#     the usage streams with 3 replicas (STREAM_REPLICAS=3)
#   Redis Cluster, 3 masters + 3 replicas: 7001-7006 (cluster bus 17001-17006)
#   ZooKeeper on 2181 and ClickHouse 18.16 as 2 shards x 2 replicas (cluster "qyai"):
#     native 9000-9003, HTTP 8123-8126, interserver 9009-9012; the schema in its
#     cluster form (ON CLUSTER, Replicated*MergeTree, Distributed)
# and 3 gateways, 2 meters (127.0.0.1:8082, :8182), admin and the simulator on them.
# A node that dies is reported, not fatal: the engines are there to survive it.
#
# Environment:
#   TOPOLOGY             single (default) or cluster
#   METER_REPLICAS       number of meters (default 1; 2 with TOPOLOGY=cluster)
#   ADMIN_TOKEN          admin API token (default: a printed dev value)
#   UPSTREAM_BASE_URL    a real upstream (e.g. https://api.deepseek.com) instead of the
#   UPSTREAM_API_KEY       simulator, and its key
#   GATEWAY_REPLICAS     number of gateways (default 1; 3 with TOPOLOGY=cluster)
#   SKIP_BUILD=1         use the binaries already in .bin/
#   KEY_PEPPER           the key hashing secret; when unset, QYAI_DEV=1 is exported
#                        and the services use the public development pepper
#   LOG_LEVEL and the other service variables pass through.
#
# Data persists across runs in .run/ (rm -rf .run for a clean slate); service logs
# are in .run/logs/<name>.log, the clustered engines' as .run/logs/<engine>-<node>.log.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$QYAI_REPO_ROOT
BIN=$ROOT/.bin
RUN=$ROOT/.run
LOGS=$RUN/logs
PIDS=$RUN/pids

DEV_ADMIN_TOKEN=qyai-dev-admin-token
TOPOLOGY=${TOPOLOGY:-single}
case $TOPOLOGY in
single)
	GATEWAY_REPLICAS=${GATEWAY_REPLICAS:-1}
	METER_REPLICAS=${METER_REPLICAS:-1}
	;;
cluster)
	GATEWAY_REPLICAS=${GATEWAY_REPLICAS:-3}
	METER_REPLICAS=${METER_REPLICAS:-2}
	;;
*) die "TOPOLOGY=$TOPOLOGY: want single or cluster" ;;
esac
# The fixed ports of TOPOLOGY=cluster, in the order the <engine>-cluster.sh scripts
# take them.
NATS_CLUSTER_PORTS=(4222 4223 4224 8222 8223 8224 6222 6223 6224)
REDIS_CLUSTER_PORTS=(7001 7002 7003 7004 7005 7006)
CLICKHOUSE_CLUSTER_PORTS=(2181 9000 9001 9002 9003 8123 8124 8125 8126 9009 9010 9011 9012)
ADMIN_ADDR=127.0.0.1:8081
# SHUTDOWN_TIMEOUT of the gateway is 25 s by default: give it a little more.
SERVICE_STOP_TIMEOUT=30

gateway_ports=()
metrics_ports=() # GATEWAY_METRICS_ADDR of each gateway, in the order of gateway_ports
services=() # started services, in start order
servers=()  # started servers: their deploy/local script names (redis, nats-cluster, ...)

main() {
	[[ $GATEWAY_REPLICAS =~ ^[1-9][0-9]*$ ]] || die "GATEWAY_REPLICAS=$GATEWAY_REPLICAS: want a positive integer"
	[[ $METER_REPLICAS =~ ^[1-9][0-9]*$ ]] || die "METER_REPLICAS=$METER_REPLICAS: want a positive integer"
	local i
	for ((i = 0; i < GATEWAY_REPLICAS; i++)); do
		gateway_ports+=($((8080 + 100 * i)))
		metrics_ports+=($((9464 + 100 * i)))
	done
	stop_leftovers
	local fixed=()
	if [[ $TOPOLOGY == cluster ]]; then
		fixed=("${NATS_CLUSTER_PORTS[@]}" "${REDIS_CLUSTER_PORTS[@]}" "${CLICKHOUSE_CLUSTER_PORTS[@]}")
		for port in "${REDIS_CLUSTER_PORTS[@]}"; do fixed+=($((port + 10000))); done
	fi
	for port in "${gateway_ports[@]}" "${metrics_ports[@]}" "${ADMIN_ADDR##*:}" "${fixed[@]}"; do
		port_free "$port" || die "127.0.0.1:$port is in use (another make run?); stop what listens there first"
	done

	"$QYAI_LOCAL_DIR/install.sh"
	build

	mkdir -p "$LOGS" "$PIDS"
	trap cleanup EXIT
	# Ctrl-C is how the user stops the stack: success. SIGTERM and SIGHUP come from
	# something else (a supervisor, a closed terminal): exit 128 + the signal number,
	# as a process the signal had killed would, so that the caller sees it.
	trap 'exit 0' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP
	# Every server and service gets a watchdog that stops it should this script die
	# without cleaning up (kill -9).
	export QYAI_OWNER_PID=$$

	start_servers
	start_services
	create_demo_key
	supervise
}

build() {
	if [[ ${SKIP_BUILD:-0} == 1 ]]; then
		log "SKIP_BUILD=1: using the binaries in .bin/"
		return
	fi
	log "building gateway, meter, admin, upstream-sim into .bin/"
	(cd "$ROOT" && go build -o "$BIN/" ./gateway/cmd/gateway ./meter/cmd/meter ./admin/cmd/admin ./deploy/cmd/upstream-sim)
}

# stop_leftovers stops what a previous run left behind, should its cleanup not have
# run (its watchdogs normally do that already).
stop_leftovers() {
	local pidfile
	for pidfile in "$PIDS"/*.pid; do
		[[ -e $pidfile ]] && stop_pidfile "$pidfile" "$(basename "$pidfile" .pid)" "$SERVICE_STOP_TIMEOUT"
	done
	local name
	for name in redis nats clickhouse redis-cluster nats-cluster clickhouse-cluster; do
		[[ -d $RUN/$name ]] && "$QYAI_LOCAL_DIR/$name.sh" stop "$RUN/$name"
	done
	return 0
}

start_servers() {
	if [[ $TOPOLOGY == cluster ]]; then
		start_cluster_servers
	else
		start_single_servers
	fi
}

# start_single_servers starts Redis, NATS and ClickHouse on their usual ports when free.
start_single_servers() {
	servers+=(redis)
	REDIS_PERSIST=1 "$QYAI_LOCAL_DIR/redis.sh" start "$RUN/redis" "$(pick_port 6379)"
	servers+=(nats)
	"$QYAI_LOCAL_DIR/nats.sh" start "$RUN/nats" "$(pick_port 4222)" "$(pick_port 8222)"
	servers+=(clickhouse)
	"$QYAI_LOCAL_DIR/clickhouse.sh" start "$RUN/clickhouse" "$(pick_port 9000)" "$(pick_port 8123)"
	local name
	for name in redis nats clickhouse; do
		ln -sfn "../$name/server.log" "$LOGS/$name.log"
	done

	REDIS_ADDR=127.0.0.1:$(<"$RUN/redis/port")
	NATS_URL=nats://127.0.0.1:$(<"$RUN/nats/port")
	CLICKHOUSE_ADDR=127.0.0.1:$(<"$RUN/clickhouse/port")
	CLICKHOUSE_DATABASE=${CLICKHOUSE_DATABASE:-qyai}
	export REDIS_ADDR NATS_URL CLICKHOUSE_ADDR CLICKHOUSE_DATABASE
}

# start_cluster_servers starts the clustered engines on their fixed ports, all at
# once, and points every service at all of their nodes.
start_cluster_servers() {
	servers+=(nats-cluster redis-cluster clickhouse-cluster)
	local pids=() pid failed=0
	REDIS_PERSIST=1 "$QYAI_LOCAL_DIR/redis-cluster.sh" start "$RUN/redis-cluster" "${REDIS_CLUSTER_PORTS[@]}" &
	pids+=($!)
	"$QYAI_LOCAL_DIR/nats-cluster.sh" start "$RUN/nats-cluster" "${NATS_CLUSTER_PORTS[@]}" &
	pids+=($!)
	"$QYAI_LOCAL_DIR/clickhouse-cluster.sh" start "$RUN/clickhouse-cluster" "${CLICKHOUSE_CLUSTER_PORTS[@]}" &
	pids+=($!)
	for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
	((failed == 0)) || die "a clustered engine did not start (see above)"
	local name node
	for name in nats redis clickhouse; do
		for node in "$RUN/$name-cluster"/node*/; do
			node=${node%/}
			[[ -e $node/server.log ]] && ln -sfn "../$name-cluster/${node##*/}/server.log" "$LOGS/$name-${node##*/node}.log"
		done
	done
	[[ -e $RUN/clickhouse-cluster/zk/server.log ]] && ln -sfn ../clickhouse-cluster/zk/server.log "$LOGS/zookeeper.log"

	REDIS_ADDR=$(paste -sd, "$RUN/redis-cluster/addrs")
	NATS_URL=$(sed 's|^|nats://|' "$RUN/nats-cluster/addrs" | paste -sd,)
	CLICKHOUSE_ADDR=$(paste -sd, "$RUN/clickhouse-cluster/addrs")
	CLICKHOUSE_CLUSTER=$(<"$RUN/clickhouse-cluster/cluster")
	CLICKHOUSE_DATABASE=${CLICKHOUSE_DATABASE:-qyai}
	STREAM_REPLICAS=3
	export REDIS_ADDR NATS_URL CLICKHOUSE_ADDR CLICKHOUSE_CLUSTER CLICKHOUSE_DATABASE STREAM_REPLICAS
	log "cluster: REDIS_ADDR=$REDIS_ADDR"
	log "cluster: NATS_URL=$NATS_URL STREAM_REPLICAS=3"
	log "cluster: CLICKHOUSE_ADDR=$CLICKHOUSE_ADDR CLICKHOUSE_CLUSTER=$CLICKHOUSE_CLUSTER"
}

start_services() {
	if [[ -n ${UPSTREAM_BASE_URL:-} ]]; then
		log "upstream: $UPSTREAM_BASE_URL (no simulator)"
	else
		local sim_addr
		sim_addr=127.0.0.1:$(pick_port 8090)
		UPSTREAM_API_KEY=sk-sim-local
		start_service upstream-sim "http://$sim_addr/_sim/healthz" \
			env SIM_ADDR="$sim_addr" SIM_API_KEY="$UPSTREAM_API_KEY" "$BIN/upstream-sim"
		UPSTREAM_BASE_URL=http://$sim_addr
	fi
	export UPSTREAM_BASE_URL UPSTREAM_API_KEY=${UPSTREAM_API_KEY:-}

	if [[ -z ${ADMIN_TOKEN:-} ]]; then
		ADMIN_TOKEN=$DEV_ADMIN_TOKEN
		log "ADMIN_TOKEN not set: using the dev token $ADMIN_TOKEN"
	fi
	export ADMIN_TOKEN
	if [[ -z ${KEY_PEPPER:-}${KEY_PEPPER_FILE:-} ]]; then
		export QYAI_DEV=1
		log "KEY_PEPPER not set: QYAI_DEV=1, the services use the public development pepper"
	fi

	local meter_addr i name
	for ((i = 0; i < METER_REPLICAS; i++)); do
		meter_addr=127.0.0.1:$(pick_port $((8082 + 100 * i)))
		name=meter
		((i == 0)) || name=meter-$((i + 1))
		start_service "$name" "http://$meter_addr/healthz" env METER_ADDR="$meter_addr" "$BIN/meter"
	done
	start_service admin "http://$ADMIN_ADDR/healthz" env ADMIN_ADDR="$ADMIN_ADDR" "$BIN/admin"

	local port
	for i in "${!gateway_ports[@]}"; do
		port=${gateway_ports[i]}
		name=gateway
		((port == 8080)) || name=gateway-$port
		# Metrics are on an internal listener of their own, one per replica.
		start_service "$name" "http://127.0.0.1:$port/healthz" \
			env GATEWAY_ADDR="127.0.0.1:$port" GATEWAY_METRICS_ADDR="127.0.0.1:${metrics_ports[i]}" \
			LIMIT_FALLBACK_REPLICAS="${LIMIT_FALLBACK_REPLICAS:-$GATEWAY_REPLICAS}" \
			ADMIN_URL="http://$ADMIN_ADDR" SPOOL_DIR="$RUN/spool/$name" "$BIN/gateway"
	done
}

# start_service <name> <health url> <cmd...>: start a service detached, log to
# .run/logs/<name>.log, and wait until its health URL answers.
start_service() {
	local name=$1 url=$2 t0=$EPOCHREALTIME rc=0
	shift 2
	services+=("$name")
	: >"$LOGS/$name.log" # a fresh log per run
	spawn "$LOGS/$name.log" "$PIDS/$name.pid" "$@"
	wait_ready "$PIDS/$name.pid" 30 http_ok "$url" || rc=$?
	if ((rc != 0)); then
		if ((rc == 1)); then
			log "$name exited during startup"
		else
			log "$name not ready within 30s ($url)"
		fi
		log_tail "$LOGS/$name.log"
		exit 1
	fi
	log "$name ready at ${url%/*} (pid $(read_pid "$PIDS/$name.pid"), $(elapsed "$t0"), log .run/logs/$name.log)"
}

create_demo_key() {
	local resp key base=http://127.0.0.1:${gateway_ports[0]}/v1
	resp=$(curl -sS --max-time 10 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \
		-H 'Content-Type: application/json' "http://$ADMIN_ADDR/admin/v1/keys" \
		-d '{"name":"demo","tier":"enterprise"}') || die "create the demo key: admin did not answer"
	key=$(sed -n 's/.*"key"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' <<<"$resp")
	[[ -n $key ]] || die "create the demo key: unexpected answer: $resp"

	cat <<EOF

Demo API key (enterprise tier; shown once): $key
Admin token: $ADMIN_TOKEN
Logs: .run/logs/<name>.log, one per service and server

Try it:
curl $base/chat/completions \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $key" \\
  -d '{
    "model": "deepseek-v4-flash",
    "messages": [
      {"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "Write a haiku about programming."}
    ],
    "temperature": 0.7
  }'

EOF
	local gateways=() port
	for port in "${gateway_ports[@]}"; do gateways+=("http://127.0.0.1:$port/v1"); done
	local metrics=()
	for port in "${metrics_ports[@]}"; do metrics+=("http://127.0.0.1:$port/metrics"); done
	echo "Gateway metrics (internal listener): ${metrics[*]}"
	echo "QYAI ready: gateway ${gateways[*]}  admin http://$ADMIN_ADDR"
	echo "Press Ctrl-C to stop."
}

# supervise waits for Ctrl-C; it stops everything when a process dies on its own. A
# node of a clustered engine that dies is reported once (and again once it is back):
# surviving that is what the cluster is for, and trying it is worth a make run.
supervise() {
	local name node down=" "
	while true; do
		for name in "${services[@]}"; do
			alive "$PIDS/$name.pid" || die "$name exited unexpectedly; see .run/logs/$name.log"
		done
		for name in "${servers[@]}"; do
			if [[ $name != *-cluster ]]; then
				alive "$RUN/$name/pid" || die "$name exited unexpectedly; see .run/logs/$name.log"
				continue
			fi
			for node in "$RUN/$name"/node*; do
				if ! alive "$node/pid"; then
					[[ $down == *" $node "* ]] || log "warning: ${name%-cluster} node ${node##*/node} is down; the cluster carries on without it"
					down+="$node "
				elif [[ $down == *" $node "* ]]; then
					log "${name%-cluster} node ${node##*/node} is back"
					down=${down/" $node "/" "}
				fi
			done
		done
		# In the background, so that a signal interrupts the wait at once.
		sleep 1 &
		wait $! || true
	done
}

# cleanup stops the services (gateways first, so that they flush their usage events
# while NATS and the meter are still up), then the servers.
cleanup() {
	local rc=$? name
	trap - EXIT
	trap '' INT TERM HUP
	set +e # stop all that can be stopped, whatever fails on the way
	log ""
	log "stopping..."
	local gateways=() others=()
	for name in "${services[@]}"; do
		if [[ $name == gateway* ]]; then gateways+=("$name"); else others+=("$name"); fi
	done
	stop_all_services "${gateways[@]}"
	stop_all_services "${others[@]}"
	local pids=()
	for name in "${servers[@]}"; do
		"$QYAI_LOCAL_DIR/$name.sh" stop "$RUN/$name" &
		pids+=($!)
	done
	# Wait for these jobs only: a bare wait would also wait for the watchdogs.
	((${#pids[@]} == 0)) || wait "${pids[@]}"
	log "stopped"
	exit "$rc"
}

# stop_all_services <name...>: stop these services in parallel.
stop_all_services() {
	local name pids=()
	for name in "$@"; do
		stop_pidfile "$PIDS/$name.pid" "$name" "$SERVICE_STOP_TIMEOUT" &
		pids+=($!)
	done
	((${#pids[@]} == 0)) || wait "${pids[@]}"
}

main "$@"
