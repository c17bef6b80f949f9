#!/usr/bin/env bash
# redis.sh: a throwaway Redis on loopback for tests and `make run`.
#
#   redis.sh start <dir> [port]   start on port (default: a free one), data in <dir>
#   redis.sh stop <dir>           stop it (idempotent)
#
# Writes <dir>/pid, <dir>/port and logs to <dir>/server.log. Without persistence
# (--save "" --appendonly no) by default; REDIS_PERSIST=1 keeps the data in an
# append-only file under <dir>, so it survives a stop and start.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

choose_ports() { port=${fixed_port:-$(free_port)}; }

launch() {
	local persist=(--appendonly no)
	if [[ ${REDIS_PERSIST:-0} == 1 ]]; then
		persist=(--appendonly yes --appendfsync everysec)
	fi
	spawn "$dir/server.log" "$dir/pid" redis-server \
		--bind 127.0.0.1 --port "$port" --protected-mode no --unixsocket "" \
		--dir "$dir" --logfile "" --daemonize no --save "" "${persist[@]}"
}

# probe: the Redis answering on the port is ours (another one may hold the port).
probe() {
	local info
	info=$(timeout 0.5 redis-cli -h 127.0.0.1 -p "$port" info server 2>/dev/null) || return 1
	[[ $info == *"process_id:$(read_pid "$dir/pid")"$'\r'* ]]
}

save_ports() { echo "$port" >"$dir/port"; }

start() {
	need redis-server
	need redis-cli
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	if alive "$dir/pid"; then
		log "redis already running in $dir on port $(cat "$dir/port" 2>/dev/null)"
		return 0
	fi
	local attempts=5 t0=$EPOCHREALTIME
	[[ -n $fixed_port ]] && attempts=1
	start_attempts redis "$dir" 10 "$attempts"
	log "redis ready on 127.0.0.1:$port (pid $(read_pid "$dir/pid"), $(elapsed "$t0"))"
}

cmd=${1:-}
dir=${2:-}
fixed_port=${3:-}
[[ -n $dir ]] || usage_server
case $cmd in
start) start ;;
stop) stop_pidfile "$dir/pid" redis 10 ;;
*) usage_server ;;
esac
