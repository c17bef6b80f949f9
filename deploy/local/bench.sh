#!/usr/bin/env bash
# bench.sh: measure what the gateway adds over its upstream; what `make bench` calls.
#
#   deploy/local/bench.sh
#
# Installs what is missing (install.sh), builds the binaries into .bin/, starts a
# throwaway stack in a temporary directory, every part on a free port: Redis, NATS
# JetStream, ClickHouse, the upstream simulator, meter, admin and ONE gateway in its
# normal configuration (authentication, rate limits and metering on, LOG_LEVEL=warn).
# It also starts refproxy, a bare net/http/httputil reverse proxy in front of the
# same simulator (no authentication, limits or metering): a reference for what any
# Go HTTP proxy costs on this machine, not a part of the product. It creates an
# enterprise key whose limits never bind, runs .bin/loadgen (the same workload
# straight to the simulator, through the reference proxy in the non-stream phases,
# and through the gateway, phase by phase) and prints its Markdown tables on stdout,
# among them the whole system's CPU time per request: the gateway's own and that of
# every other process of ours (Redis, NATS, meter, ClickHouse, admin; each node when
# clustered), read from /proc round by round (see package loadgen).
# Everything it started is stopped on exit, Ctrl-C included, and the temporary
# directory removed.
#
# Environment:
#   BENCH_DURATION              measurement per target and phase (default 10s)
#   BENCH_CONCURRENCY           workers of the non-stream closed loop (default 32)
#   BENCH_RATE                  requests per second of the open loop (default 500)
#   BENCH_STREAM_CONCURRENCY    workers of the streaming phase (default 16)
#   BENCH_ROUNDS                split each phase into this many alternating direct/gateway
#                               slices, the reference between them (default 5: five 2 s
#                               slices of a 10 s phase, so that noise from other work on a
#                               shared machine falls on every target alike; 1: direct,
#                               reference, then gateway, each in one piece)
#   BENCH_REFERENCE             1 (default): also measure the bare reverse proxy as a
#                               reference; 0: do not build, start or measure it
#   BENCH_TOPOLOGY              single (default) or cluster: the engines clustered as in
#                               `make run TOPOLOGY=cluster` (NATS x3 with R3 streams,
#                               Redis Cluster 3+3, ClickHouse 2 shards x 2 replicas), on
#                               free ports; still one gateway, meter and admin
#   BENCH_CACHE                 1 (default): after the load generator, measure cache-aware
#                               routing: a second simulator with 4 upstream keys (a prompt
#                               cache each), two more gateways with a 4-member pool of it,
#                               one UPSTREAM_AFFINITY=true, one false (round robin), and
#                               .bin/cachebench through both; 0: skip it; only: skip the
#                               load generator and run just this phase
#   BENCH_CACHE_CONVERSATIONS   conversations of the cache phase (default 200)
#   BENCH_CACHE_TURNS           turns per conversation (default 5)
#   BENCH_OPEN_STREAMS          after the three phases, hold this many slow streams open on
#                               the gateway at once (default 8000; 60 chunks, one a second:
#                               about 75 s), each on its own connection, with a key of its own
#                               whose billing is then checked exactly, while 20 non-stream
#                               requests a second probe the gateway; 0: skip it. The gateway
#                               gets UPSTREAM_MAX_CONNS above that count (one upstream
#                               connection per HTTP/1.1 stream) and a PPROF_ADDR for its
#                               goroutine count
#
# A benchmark, not a test: it fails only when the stack cannot start or nothing
# answers; the targets in the table say PASS or MISS.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$QYAI_REPO_ROOT
BIN=$ROOT/.bin
DURATION=${BENCH_DURATION:-10s}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
RATE=${BENCH_RATE:-500}
STREAM_CONCURRENCY=${BENCH_STREAM_CONCURRENCY:-16}
ROUNDS=${BENCH_ROUNDS:-5}
REFERENCE=${BENCH_REFERENCE:-1}
TOPOLOGY=${BENCH_TOPOLOGY:-single}
CACHE=${BENCH_CACHE:-1}
CACHE_CONVERSATIONS=${BENCH_CACHE_CONVERSATIONS:-200}
CACHE_TURNS=${BENCH_CACHE_TURNS:-5}
OPEN_STREAMS=${BENCH_OPEN_STREAMS:-8000}
ADMIN_TOKEN=qyai-bench-admin-token
SIM_KEY=sk-sim-bench
SERVICE_STOP_TIMEOUT=30

tmp=""
loadgen_pid=""
services=() # started services, in start order
servers=()  # started servers

main() {
	[[ $DURATION =~ ^[0-9]+(\.[0-9]+)?(ms|s|m)$ ]] || die "BENCH_DURATION=$DURATION: want a Go duration such as 10s"
	for v in CONCURRENCY RATE STREAM_CONCURRENCY ROUNDS; do
		[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v=${!v}: want a positive integer"
	done
	[[ $REFERENCE == 0 || $REFERENCE == 1 ]] || die "BENCH_REFERENCE=$REFERENCE: want 0 or 1"
	[[ $TOPOLOGY == single || $TOPOLOGY == cluster ]] || die "BENCH_TOPOLOGY=$TOPOLOGY: want single or cluster"
	[[ $OPEN_STREAMS =~ ^[0-9]+$ ]] || die "BENCH_OPEN_STREAMS=$OPEN_STREAMS: want a non-negative integer"
	[[ $CACHE == 0 || $CACHE == 1 || $CACHE == only ]] || die "BENCH_CACHE=$CACHE: want 0, 1 or only"
	for v in CACHE_CONVERSATIONS CACHE_TURNS; do
		[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v=${!v}: want a positive integer"
	done

	"$QYAI_LOCAL_DIR/install.sh"
	local pkgs=(./gateway/cmd/gateway ./meter/cmd/meter ./admin/cmd/admin ./deploy/cmd/upstream-sim ./deploy/cmd/loadgen ./deploy/cmd/cachebench)
	if ((REFERENCE)); then
		pkgs+=(./deploy/cmd/refproxy)
		log "building gateway, meter, admin, upstream-sim, loadgen, cachebench, refproxy into .bin/"
	else
		log "building gateway, meter, admin, upstream-sim, loadgen, cachebench into .bin/"
	fi
	(cd "$ROOT" && go build -o "$BIN/" "${pkgs[@]}")

	tmp=$(mktemp -d "${TMPDIR:-/tmp}/qyai-bench.XXXXXX")
	mkdir -p "$tmp/logs" "$tmp/pids"
	trap cleanup EXIT
	trap 'exit 130' INT TERM HUP
	# Watchdogs stop every server and service should this script die without
	# cleaning up (kill -9).
	export QYAI_OWNER_PID=$$

	start_servers
	start_services
	if [[ $CACHE != 0 ]]; then start_cache_services; fi
	local key
	key=$(create_key)
	if [[ $CACHE != only ]]; then run_loadgen "$key"; fi
	if [[ $CACHE != 0 ]]; then run_cachebench "$key"; fi
}

# start_servers starts Redis, NATS and ClickHouse on free ports, in parallel, single
# or clustered.
start_servers() {
	CLUSTER_ENV=()
	if [[ $TOPOLOGY == cluster ]]; then
		servers=(redis-cluster nats-cluster clickhouse-cluster)
		start_servers_in "$tmp" "${servers[@]}"
		REDIS_ADDR=$(paste -sd, "$tmp/redis-cluster/addrs")
		NATS_URL=$(sed 's|^|nats://|' "$tmp/nats-cluster/addrs" | paste -sd,)
		CLICKHOUSE_ADDR=$(paste -sd, "$tmp/clickhouse-cluster/addrs")
		CLUSTER_ENV=(STREAM_REPLICAS=3 CLICKHOUSE_CLUSTER="$(<"$tmp/clickhouse-cluster/cluster")")
		return
	fi
	servers=(redis nats clickhouse)
	start_servers_in "$tmp" "${servers[@]}"
	REDIS_ADDR=127.0.0.1:$(<"$tmp/redis/port")
	NATS_URL=nats://127.0.0.1:$(<"$tmp/nats/port")
	CLICKHOUSE_ADDR=127.0.0.1:$(<"$tmp/clickhouse/port")
}

start_services() {
	local sim_addr meter_addr admin_addr gateway_addr gateway_metrics_addr ref_addr
	sim_addr=127.0.0.1:$(free_port)
	meter_addr=127.0.0.1:$(free_port)
	admin_addr=127.0.0.1:$(free_port)
	gateway_addr=127.0.0.1:$(free_port)
	gateway_metrics_addr=127.0.0.1:$(free_port)
	SIM_URL=http://$sim_addr
	ADMIN_URL=http://$admin_addr
	GATEWAY_URL=http://$gateway_addr
	REFPROXY_URL=""

	# Shared by every service; each reads only its own variables.
	local common=(
		REDIS_ADDR="$REDIS_ADDR" NATS_URL="$NATS_URL" CLICKHOUSE_ADDR="$CLICKHOUSE_ADDR"
		CLICKHOUSE_DATABASE=qyai KEY_PEPPER=qyai-bench-pepper LOG_LEVEL=warn "${CLUSTER_ENV[@]}"
	)
	spawn_service upstream-sim env SIM_ADDR="$sim_addr" SIM_API_KEY="$SIM_KEY" LOG_LEVEL=warn "$BIN/upstream-sim"
	if ((REFERENCE)); then
		ref_addr=127.0.0.1:$(free_port)
		REFPROXY_URL=http://$ref_addr
		spawn_service refproxy env REFPROXY_ADDR="$ref_addr" REFPROXY_UPSTREAM="$SIM_URL" "$BIN/refproxy"
	fi
	spawn_service meter env "${common[@]}" METER_ADDR="$meter_addr" "$BIN/meter"
	spawn_service admin env "${common[@]}" ADMIN_ADDR="$admin_addr" ADMIN_TOKEN="$ADMIN_TOKEN" "$BIN/admin"
	GATEWAY_PPROF_URL=http://127.0.0.1:$(free_port)
	spawn_service gateway env "${common[@]}" GATEWAY_ADDR="$gateway_addr" GATEWAY_METRICS_ADDR="$gateway_metrics_addr" GATEWAY_INSTANCE=bench \
		ADMIN_URL="$ADMIN_URL" UPSTREAM_BASE_URL="$SIM_URL" UPSTREAM_API_KEY="$SIM_KEY" \
		UPSTREAM_MAX_CONNS=$((OPEN_STREAMS > 2048 ? OPEN_STREAMS + 256 : 2048)) PPROF_ADDR="${GATEWAY_PPROF_URL#http://}" \
		SPOOL_DIR="$tmp/spool" "$BIN/gateway"

	wait_service upstream-sim "$SIM_URL/_sim/healthz"
	if ((REFERENCE)); then wait_service refproxy "$REFPROXY_URL/healthz"; fi
	wait_service meter "http://$meter_addr/healthz"
	wait_service admin "$ADMIN_URL/readyz"
	wait_service gateway "$GATEWAY_URL/readyz"
}

# start_cache_services starts what the cache phase measures: a simulator with
# four upstream keys, each an account with its own prompt cache, and two
# gateways whose pool is those four keys, one routing with affinity, one by
# round robin (UPSTREAM_AFFINITY=false). They share Redis, NATS and the meter
# with the main gateway.
start_cache_services() {
	local sim_addr keys urls name affinity addr
	sim_addr=127.0.0.1:$(free_port)
	POOL_SIM_URL=http://$sim_addr
	keys=sk-sim-pool-1,sk-sim-pool-2,sk-sim-pool-3,sk-sim-pool-4
	urls=$POOL_SIM_URL,$POOL_SIM_URL,$POOL_SIM_URL,$POOL_SIM_URL
	spawn_service upstream-sim-pool env SIM_ADDR="$sim_addr" SIM_API_KEY="$keys" LOG_LEVEL=warn "$BIN/upstream-sim"
	local common=(
		REDIS_ADDR="$REDIS_ADDR" NATS_URL="$NATS_URL" KEY_PEPPER=qyai-bench-pepper LOG_LEVEL=warn "${CLUSTER_ENV[@]}"
	)
	local affinity_addr rr_addr
	affinity_addr=127.0.0.1:$(free_port)
	rr_addr=127.0.0.1:$(free_port)
	CACHE_AFFINITY_URL=http://$affinity_addr
	CACHE_RR_URL=http://$rr_addr
	for name in affinity round-robin; do
		affinity=true addr=$affinity_addr
		if [[ $name == round-robin ]]; then affinity=false addr=$rr_addr; fi
		spawn_service "gateway-$name" env "${common[@]}" GATEWAY_ADDR="$addr" GATEWAY_METRICS_ADDR="127.0.0.1:$(free_port)" \
			GATEWAY_INSTANCE="bench-$name" ADMIN_URL="$ADMIN_URL" UPSTREAM_BASE_URL="$urls" UPSTREAM_API_KEY="$keys" \
			UPSTREAM_AFFINITY="$affinity" SPOOL_DIR="$tmp/spool-$name" "$BIN/gateway"
	done
	wait_service upstream-sim-pool "$POOL_SIM_URL/_sim/healthz"
	wait_service gateway-affinity "$CACHE_AFFINITY_URL/readyz"
	wait_service gateway-round-robin "$CACHE_RR_URL/readyz"
}

# run_cachebench <key>: the cache phase's table, affinity first.
run_cachebench() {
	local key=$1 command
	command="BENCH_CACHE=only BENCH_CACHE_CONVERSATIONS=$CACHE_CONVERSATIONS BENCH_CACHE_TURNS=$CACHE_TURNS make bench"
	log "running cachebench: $CACHE_CONVERSATIONS conversations x $CACHE_TURNS turns, affinity then round robin"
	"$BIN/cachebench" -targets "affinity=$CACHE_AFFINITY_URL,round-robin=$CACHE_RR_URL" \
		-key "$key" -sim "$POOL_SIM_URL" -conversations "$CACHE_CONVERSATIONS" -turns "$CACHE_TURNS" -command "$command" &
	loadgen_pid=$!
	wait "$loadgen_pid"
	loadgen_pid=""
}

# spawn_service <name> <cmd...>: start a service detached, its output in
# $tmp/logs/<name>.log and its PID in $tmp/pids/<name>.pid.
spawn_service() {
	local name=$1
	shift
	services+=("$name")
	spawn "$tmp/logs/$name.log" "$tmp/pids/$name.pid" "$@"
}

# wait_service <name> <url>: wait until url answers 2xx.
wait_service() {
	local name=$1 url=$2 rc=0
	wait_ready "$tmp/pids/$name.pid" 60 http_ok "$url" || rc=$?
	if ((rc != 0)); then
		if ((rc == 1)); then log "$name exited during startup"; else log "$name not ready within 60s ($url)"; fi
		log_tail "$tmp/logs/$name.log"
		exit 1
	fi
	log "$name ready at ${url%/*} (pid $(<"$tmp/pids/$name.pid"))"
}

# create_key prints a new enterprise key whose limits never bind during a run:
# rpm at admin's maximum (1,000,000 a minute, far above what one machine sends)
# and the largest monthly limit.
create_key() {
	local resp key
	resp=$(curl -sS --max-time 10 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \
		-H 'Content-Type: application/json' "$ADMIN_URL/admin/v1/keys" \
		-d '{"name":"bench","tier":"enterprise","rpm":1000000,"monthly_limit":1000000000}') ||
		die "create the bench key: admin did not answer"
	key=$(sed -n 's/.*"key"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' <<<"$resp")
	[[ -n $key ]] || die "create the bench key: unexpected answer: $resp"
	echo "$key"
}

run_loadgen() {
	local key=$1 gateway_pid ref_pid revision command targets="direct, gateway" reference=()
	gateway_pid=$(<"$tmp/pids/gateway.pid")
	# spawn execs in place (setsid, then env), so the PID is the gateway itself.
	[[ $(cat "/proc/$gateway_pid/comm" 2>/dev/null) == gateway ]] ||
		die "pid $gateway_pid is not the gateway; cannot read its CPU time"
	if ((REFERENCE)); then
		ref_pid=$(<"$tmp/pids/refproxy.pid")
		[[ $(cat "/proc/$ref_pid/comm" 2>/dev/null) == refproxy ]] ||
			die "pid $ref_pid is not refproxy; cannot read its CPU time"
		reference=(-reference "$REFPROXY_URL" -reference-key "$SIM_KEY" -reference-pid "$ref_pid")
		targets="direct, reference (non-stream phases), gateway"
	fi
	local system=() open=()
	mapfile -t system < <(system_flags)
	if ((OPEN_STREAMS > 0)); then
		open=(-open-streams "$OPEN_STREAMS" -open-streams-key "$(create_key)" -gateway-pprof "$GATEWAY_PPROF_URL")
		targets+="; then $OPEN_STREAMS open streams"
	fi
	revision=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]]; then
		revision+=" with uncommitted changes"
	fi
	command="BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS BENCH_CONCURRENCY=$CONCURRENCY BENCH_RATE=$RATE make bench"
	if [[ $STREAM_CONCURRENCY != 16 ]]; then command="BENCH_STREAM_CONCURRENCY=$STREAM_CONCURRENCY $command"; fi
	if ((!REFERENCE)); then command="BENCH_REFERENCE=0 $command"; fi
	if [[ $TOPOLOGY != single ]]; then command="BENCH_TOPOLOGY=$TOPOLOGY $command"; fi
	if [[ $OPEN_STREAMS != 8000 ]]; then command="BENCH_OPEN_STREAMS=$OPEN_STREAMS $command"; fi
	log "running the load generator: 3 phases x ($targets), $DURATION each"
	# In the background and waited for, so that a signal to this script runs the
	# cleanup at once instead of after the run; cleanup stops the load generator.
	"$BIN/loadgen" -gateway "$GATEWAY_URL" -key "$key" -direct "$SIM_URL" -direct-key "$SIM_KEY" \
		-gateway-pid "$gateway_pid" -duration "$DURATION" -concurrency "$CONCURRENCY" -rate "$RATE" \
		-stream-concurrency "$STREAM_CONCURRENCY" -rounds "$ROUNDS" -command "$command" -revision "$revision" \
		"${reference[@]}" "${system[@]}" "${open[@]}" &
	loadgen_pid=$!
	wait "$loadgen_pid"
	loadgen_pid=""
}

# system_flags prints the load generator's -system arguments, one per line: the
# PIDs of every process of ours behind the gateway (each node of a clustered
# engine; ZooKeeper with the ClickHouse cluster), whose CPU time counts toward the
# whole system's cost per request. spawn execs in place, so each pidfile names the
# server itself.
system_flags() {
	local name dir pids
	for name in redis nats clickhouse; do
		if [[ $TOPOLOGY == cluster ]]; then
			dir=$tmp/$name-cluster
			pids=$(cat "$dir"/node*/pid | paste -sd,)
		else
			pids=$(<"$tmp/$name/pid")
		fi
		[[ -n $pids ]] || die "no PID of $name under $tmp"
		printf '%s\n' -system "$name=$pids"
	done
	if [[ $TOPOLOGY == cluster ]]; then
		printf '%s\n' -system "zookeeper=$(<"$tmp/clickhouse-cluster/zk/pid")"
	fi
	for name in meter admin; do
		printf '%s\n' -system "$name=$(<"$tmp/pids/$name.pid")"
	done
}

# cleanup stops the gateway first (it flushes its usage events while NATS and the
# meter are up), then the other services, then the servers, and removes $tmp.
cleanup() {
	local rc=$? name
	trap - EXIT
	trap '' INT TERM HUP
	[[ -n $tmp ]] || exit "$rc"
	if ((rc != 0)); then
		for name in "${services[@]}"; do
			[[ -s $tmp/logs/$name.log ]] && log_tail "$tmp/logs/$name.log"
		done
	fi
	log "stopping the bench stack..."
	if [[ -n $loadgen_pid ]]; then
		kill -TERM "$loadgen_pid" 2>/dev/null || true
		wait "$loadgen_pid" 2>/dev/null || true
	fi
	if [[ " ${services[*]} " == *" gateway "* ]]; then
		stop_pidfile "$tmp/pids/gateway.pid" gateway "$SERVICE_STOP_TIMEOUT"
	fi
	for name in "${services[@]}"; do
		[[ $name == gateway ]] || stop_pidfile "$tmp/pids/$name.pid" "$name" "$SERVICE_STOP_TIMEOUT" &
	done
	wait
	stop_servers_in "$tmp" "${servers[@]}"
	rm -rf "$tmp"
	log "stopped"
	exit "$rc"
}

main "$@"
