#!/usr/bin/env bash
# nats.sh: a throwaway NATS server with JetStream on loopback, for end-to-end tests
# and `make run`. Go tests embed nats-server instead (pkg/testenv.NATS).
#
#   nats.sh start <dir> [port [monitor_port]]   default: free ports
#   nats.sh stop <dir>                          stop it (idempotent)
#
# JetStream data lives in <dir>/jetstream; writes <dir>/pid, <dir>/port and
# <dir>/http_port (monitoring), logs to <dir>/server.log. Ready when
# /healthz?js-enabled-only=true answers on the monitoring port. The binary is
# <repo>/.bin/nats-server (built by install.sh) unless NATS_SERVER names another.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NATS_SERVER=${NATS_SERVER:-$QYAI_REPO_ROOT/.bin/nats-server}

choose_ports() {
	port=${fixed_port:-$(free_port)}
	http_port=${fixed_http_port:-$(free_port)}
	while [[ $http_port == "$port" ]]; do http_port=$(free_port); done
}

launch() {
	spawn "$dir/server.log" "$dir/pid" "$NATS_SERVER" \
		-a 127.0.0.1 -p "$port" -m "$http_port" -n "qyai-local-$port" \
		-js -sd "$dir/jetstream" --ports_file_dir "$dir"
}

# probe: healthy, and the server is ours: nats-server writes <name>_<pid>.ports into
# --ports_file_dir once it listens (another server may hold the port).
probe() {
	local ports=("$dir"/*_"$(read_pid "$dir/pid")".ports)
	[[ -e ${ports[0]} ]] && http_ok "http://127.0.0.1:$http_port/healthz?js-enabled-only=true"
}

save_ports() {
	echo "$port" >"$dir/port"
	echo "$http_port" >"$dir/http_port"
}

start() {
	[[ -x $NATS_SERVER ]] || die "$NATS_SERVER not found; run deploy/local/install.sh"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	if alive "$dir/pid"; then
		log "nats already running in $dir on port $(cat "$dir/port" 2>/dev/null)"
		return 0
	fi
	local attempts=5 t0=$EPOCHREALTIME
	[[ -n $fixed_port ]] && attempts=1
	start_attempts nats "$dir" 10 "$attempts"
	log "nats ready on nats://127.0.0.1:$port (monitor $http_port, pid $(read_pid "$dir/pid"), $(elapsed "$t0"))"
}

cmd=${1:-}
dir=${2:-}
fixed_port=${3:-}
fixed_http_port=${4:-}
[[ -n $dir ]] || usage_server
case $cmd in
start) start ;;
stop) stop_pidfile "$dir/pid" nats 10 ;;
*) usage_server ;;
esac
