#!/usr/bin/env bash
# bench-meter.sh: measure the metering pipeline end to end; what `make bench-meter` calls.
#
#   deploy/local/bench-meter.sh
#
# Installs what is missing (install.sh), builds the meter and the load tool into .bin/,
# starts NATS JetStream and ClickHouse in a temporary directory on free ports, starts ONE
# meter in its normal configuration (LOG_LEVEL=warn), and runs .bin/benchmeter: usage
# events published to JetStream as the gateway does (async, Nats-Msg-Id = event id), at a
# fixed rate and then as fast as possible, with the lag from publish to row visible in
# ClickHouse. It prints a Markdown table on stdout. Everything it started is stopped on
# exit, Ctrl-C included, and the temporary directory removed.
#
# Environment:
#   BENCH_METER_RATES      phases: events per second, or max (default 20000,max)
#   BENCH_METER_DURATION   publishing time of each phase (default 30s)
#   METER_*                passed to the meter as they are (e.g. METER_BATCH_SIZE=10000)
#   BENCH_TOPOLOGY         single (default) or cluster: NATS x3 with R3 streams and
#                          ClickHouse 2 shards x 2 replicas, as `make run TOPOLOGY=cluster`
#
# A benchmark, not a test: it fails only when the stack cannot start or nothing is
# measured; the table says PASS or MISS against the target (>= 20,000 events/s with a
# lag p99 under 2 s).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$QYAI_REPO_ROOT
BIN=$ROOT/.bin
RATES=${BENCH_METER_RATES:-20000,max}
DURATION=${BENCH_METER_DURATION:-30s}
TOPOLOGY=${BENCH_TOPOLOGY:-single}
SERVICE_STOP_TIMEOUT=30

tmp=""
servers=()
meter_started=0

main() {
	[[ $DURATION =~ ^[0-9]+(\.[0-9]+)?(ms|s|m)$ ]] || die "BENCH_METER_DURATION=$DURATION: want a Go duration such as 30s"
	[[ $TOPOLOGY == single || $TOPOLOGY == cluster ]] || die "BENCH_TOPOLOGY=$TOPOLOGY: want single or cluster"
	[[ $RATES =~ ^(max|[1-9][0-9]*)(,(max|[1-9][0-9]*))*$ ]] || die "BENCH_METER_RATES=$RATES: want e.g. 20000,max"

	"$QYAI_LOCAL_DIR/install.sh"
	log "building meter and benchmeter into .bin/"
	(cd "$ROOT" && go build -o "$BIN/" ./meter/cmd/meter ./deploy/cmd/benchmeter)

	tmp=$(mktemp -d "${TMPDIR:-/tmp}/qyai-bench-meter.XXXXXX")
	mkdir -p "$tmp/logs"
	trap cleanup EXIT
	trap 'exit 130' INT TERM HUP
	export QYAI_OWNER_PID=$$

	start_servers
	start_meter
	run_bench
}

# start_servers starts NATS and ClickHouse on free ports, single or clustered
# (BENCH_TOPOLOGY=cluster), and says which processes to report the CPU of.
start_servers() {
	CLUSTER_ENV=()
	if [[ $TOPOLOGY == cluster ]]; then
		servers=(nats-cluster clickhouse-cluster)
		start_servers_in "$tmp" "${servers[@]}"
		NATS_URL=$(sed 's|^|nats://|' "$tmp/nats-cluster/addrs" | paste -sd,)
		CLICKHOUSE_ADDR=$(paste -sd, "$tmp/clickhouse-cluster/addrs")
		CLICKHOUSE_CLUSTER=$(<"$tmp/clickhouse-cluster/cluster")
		CLUSTER_ENV=(STREAM_REPLICAS=3 CLICKHOUSE_CLUSTER="$CLICKHOUSE_CLUSTER")
		SERVER_PIDS=""
		local f n
		for f in "$tmp"/nats-cluster/node*/pid; do
			n=${f%/pid}
			SERVER_PIDS+=",nats-${n##*/node}=$(<"$f")"
		done
		for f in "$tmp"/clickhouse-cluster/node*/pid; do
			n=${f%/pid}
			SERVER_PIDS+=",clickhouse-${n##*/node}=$(<"$f")"
		done
		[[ -e $tmp/clickhouse-cluster/zk/pid ]] && SERVER_PIDS+=",zookeeper=$(<"$tmp/clickhouse-cluster/zk/pid")"
		return
	fi
	servers=(nats clickhouse)
	start_servers_in "$tmp" "${servers[@]}"
	NATS_URL=nats://127.0.0.1:$(<"$tmp/nats/port")
	CLICKHOUSE_ADDR=127.0.0.1:$(<"$tmp/clickhouse/port")
	SERVER_PIDS=",nats=$(<"$tmp/nats/pid"),clickhouse=$(<"$tmp/clickhouse/pid")"
}

start_meter() {
	local addr rc=0
	addr=127.0.0.1:$(free_port)
	meter_started=1
	spawn "$tmp/logs/meter.log" "$tmp/meter.pid" env NATS_URL="$NATS_URL" CLICKHOUSE_ADDR="$CLICKHOUSE_ADDR" \
		"${CLUSTER_ENV[@]}" CLICKHOUSE_DATABASE=qyai METER_ADDR="$addr" LOG_LEVEL="${LOG_LEVEL:-warn}" "$BIN/meter"
	wait_ready "$tmp/meter.pid" 60 http_ok "http://$addr/readyz" || rc=$?
	if ((rc != 0)); then
		log "meter did not become ready"
		log_tail "$tmp/logs/meter.log"
		exit 1
	fi
	log "meter ready at $addr (pid $(<"$tmp/meter.pid"))"
}

run_bench() {
	local revision command vars=""
	revision=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]]; then
		revision+=" with uncommitted changes"
	fi
	# The command line that reproduces this run, with the settings that differ.
	[[ $RATES != 20000,max ]] && vars+="BENCH_METER_RATES=$RATES "
	[[ $DURATION != 30s ]] && vars+="BENCH_METER_DURATION=$DURATION "
	[[ $TOPOLOGY != single ]] && vars+="BENCH_TOPOLOGY=$TOPOLOGY "
	while IFS='=' read -r k v; do vars+="$k=$v "; done < <(env | grep '^METER_[A-Z_]*=.' | sort || true)
	command="${vars}make bench-meter"
	"$BIN/benchmeter" -nats "$NATS_URL" -clickhouse "$CLICKHOUSE_ADDR" -database qyai \
		-rates "$RATES" -duration "$DURATION" \
		-pids "meter=$(<"$tmp/meter.pid")$SERVER_PIDS" \
		-command "$command" -revision "$revision"
}

# cleanup stops the meter, then the servers, and removes $tmp.
cleanup() {
	local rc=$?
	trap - EXIT
	trap '' INT TERM HUP
	[[ -n $tmp ]] || exit "$rc"
	if ((rc != 0)) && [[ -s $tmp/logs/meter.log ]]; then
		log_tail "$tmp/logs/meter.log"
	fi
	log "stopping the bench stack..."
	((meter_started)) && stop_pidfile "$tmp/meter.pid" meter "$SERVICE_STOP_TIMEOUT"
	stop_servers_in "$tmp" "${servers[@]}"
	rm -rf "$tmp"
	log "stopped"
	exit "$rc"
}

main "$@"
