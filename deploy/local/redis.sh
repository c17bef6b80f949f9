#!/usr/bin/env bash
# redis.sh: a throwaway Redis on loopback for tests and `make run`.
#
#   redis.sh start <dir> [port]   start on port (default: a free one), data in <dir>
#   redis.sh stop <dir>           stop it (idempotent)
#
# Writes <dir>/pid, <dir>/port and logs to <dir>/server.log. Without persistence
# (--save "" --appendonly no) by default; REDIS_PERSIST=1 keeps the data in an
# append-only file under <dir>, so it survives a stop and start. The start and stop
# logic is server_main in lib.sh; this file holds the Redis hooks.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

redis_check() {
	need redis-server
	need redis-cli
}

# redis_launch <dir> <port>
redis_launch() {
	local dir=$1 port=$2 persist=(--appendonly no)
	if [[ ${REDIS_PERSIST:-0} == 1 ]]; then
		persist=(--appendonly yes --appendfsync everysec)
	fi
	spawn "$dir/server.log" "$dir/pid" redis-server \
		--bind 127.0.0.1 --port "$port" --protected-mode no --unixsocket "" \
		--dir "$dir" --logfile "" --daemonize no --save "" "${persist[@]}"
}

# redis_probe <dir> <from> <port>: the Redis answering on the port is ours (another
# one may hold the port) and has loaded its data. A Redis answers INFO and PING
# while it loads an append-only file, but refuses every data command with
# LOADING until it is done, so "ready" waits for loading:0 (and async_loading:0,
# Redis 7 and later).
redis_probe() {
	local dir=$1 port=$3 info
	# INFO without a section: the default ones, server and persistence among them.
	info=$(timeout 0.5 redis-cli -h 127.0.0.1 -p "$port" info 2>/dev/null) || return 1
	[[ $info == *"process_id:$(read_pid "$dir/pid")"$'\r'* ]] || return 1
	[[ $info == *$'\n'"loading:0"$'\r'* ]] || return 1
	[[ $info != *$'\n'"async_loading:"[!0]* ]]
}

# redis_ready_line <pid> <elapsed> <port>
redis_ready_line() { echo "redis ready on 127.0.0.1:$3 (pid $1, $2)"; }

# The ready timeout covers loading the append-only file of a persistent Redis
# (about a second per 50 MB).
server_main redis "port" 60 10 "$@"
