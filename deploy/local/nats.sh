#!/usr/bin/env bash
# nats.sh: a throwaway NATS server with JetStream on loopback, for end-to-end tests
# and `make run`. Go tests that restart NATS often embed it instead (testkit/embednats).
#
#   nats.sh start <dir> [port [monitor_port]]   default: free ports
#   nats.sh stop <dir>                          stop it (idempotent)
#
# JetStream data lives in <dir>/jetstream; writes <dir>/pid, <dir>/port and
# <dir>/http_port (monitoring), logs to <dir>/server.log. Ready when
# /healthz?js-enabled-only=true answers on the monitoring port. The binary is
# <repo>/.bin/nats-server (built by install.sh) unless NATS_SERVER names another.
# NATS_CONFIG, when set, names a server config file passed with -c (for example
# authorization and tls blocks); the command-line listen, port, name and
# JetStream flags above still win over it.
# The start and stop logic is server_main in lib.sh; this file holds the NATS hooks.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NATS_SERVER=${NATS_SERVER:-$QYAI_REPO_ROOT/.bin/nats-server}

nats_check() {
	[[ -x $NATS_SERVER ]] || die "$NATS_SERVER not found; run deploy/local/install.sh"
}

# nats_launch <dir> <port> <monitor port>
nats_launch() {
	local dir=$1 port=$2 http_port=$3
	local config=()
	[[ -z ${NATS_CONFIG:-} ]] || config=(-c "$NATS_CONFIG")
	spawn "$dir/server.log" "$dir/pid" "$NATS_SERVER" "${config[@]}" \
		-a 127.0.0.1 -p "$port" -m "$http_port" -n "qyai-local-$port" \
		-js -sd "$dir/jetstream" --ports_file_dir "$dir"
}

# nats_probe <dir> <from> <port> <monitor port>: healthy, and the server is ours:
# nats-server writes <name>_<pid>.ports into --ports_file_dir once it listens
# (another server may hold the port).
nats_probe() {
	local dir=$1 http_port=$4
	local ports=("$dir"/*_"$(read_pid "$dir/pid")".ports)
	[[ -e ${ports[0]} ]] && http_ok "http://127.0.0.1:$http_port/healthz?js-enabled-only=true"
}

# nats_ready_line <pid> <elapsed> <port> <monitor port>
nats_ready_line() { echo "nats ready on nats://127.0.0.1:$3 (monitor $4, pid $1, $2)"; }

server_main nats "port http_port" 10 10 "$@"
