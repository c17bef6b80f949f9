# shellcheck shell=bash
# lib.sh: helpers shared by the deploy/local scripts. Source it; do not run it.
#
# Conventions for every server script (redis.sh, clickhouse.sh, nats.sh), all of
# which are hooks around server_main:
#   <script> start <dir> [port...]   start in the background, data in <dir>, log in
#                                    <dir>/server.log; writes <dir>/pid and <dir>/port
#   <script> stop <dir>              SIGTERM, wait, SIGKILL after a timeout; idempotent
# The server runs in its own session (setsid), so a Ctrl-C in the terminal reaches
# only the caller, which decides when to stop it. When QYAI_OWNER_PID is set, a small
# watchdog stops the server once that process is gone, so a test binary that dies
# (timeout, Ctrl-C, kill -9) cannot leak servers.

QYAI_LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
QYAI_REPO_ROOT=$(cd "$QYAI_LOCAL_DIR/../.." && pwd)
# Debian installs clickhouse-server into /usr/sbin, which a non-root PATH lacks.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
# Debian's zookeeper package: the jar (the package puts no command on PATH).
# shellcheck disable=SC2034 # used by the scripts that source this file
ZOOKEEPER_JAR=/usr/share/java/zookeeper.jar

log() { printf '%s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# free_port prints a TCP port on 127.0.0.1 that was free a moment ago. perl-base is
# essential on Debian, so it is always there; the port can still be taken before the
# server binds it, which is why start_attempts tries again.
free_port() {
	perl -MIO::Socket::INET -e '
		my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0)
			or die "bind 127.0.0.1:0: $!\n";
		print $s->sockport, "\n";'
}

# port_free <port> succeeds when nothing listens on 127.0.0.1:<port>.
port_free() {
	perl -MIO::Socket::INET -e '
		exit(IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => $ARGV[0], ReuseAddr => 1) ? 0 : 1);' "$1"
}

# pick_port <preferred>: the preferred port when it is free, else a free one.
pick_port() {
	if port_free "$1"; then echo "$1"; else free_port; fi
}

# spawn <logfile> <pidfile> <cmd...>: start cmd detached in its own session with its
# output in logfile; write its PID to pidfile. Scripts run without job control, so the
# background child is not a process-group leader and setsid execs in place: $! is the
# PID of the command itself.
spawn() {
	local logfile=$1 pidfile=$2
	shift 2
	setsid "$@" >>"$logfile" 2>&1 </dev/null &
	local pid=$!
	echo "$pid" >"$pidfile"
	if [[ -n ${QYAI_OWNER_PID:-} ]]; then
		watchdog "$QYAI_OWNER_PID" "$pid" "$pidfile"
	fi
}

# watchdog <owner> <pid> <pidfile>: stop pid once owner is gone, and remove its
# pidfile (so that a later stop cannot signal a process that reused the PID). It
# polls once a second and exits by itself when pid is gone first. Its output is
# /dev/null so that callers reading the script's output (Go's exec) see EOF when the
# script exits. Callers that wait for their jobs must wait for PIDs, not with a bare
# `wait`, which would also wait for the watchdogs of services still running.
watchdog() {
	local owner=$1 pid=$2 pidfile=$3
	(
		trap '' INT HUP TERM
		while running "$owner" && running "$pid"; do sleep 1; done
		if running "$pid"; then
			kill -TERM "$pid" 2>/dev/null || true
			for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
			running "$pid" && kill -KILL "$pid" 2>/dev/null
			[[ $(cat "$pidfile" 2>/dev/null) == "$pid" ]] && rm -f "$pidfile"
		fi
	) >/dev/null 2>&1 </dev/null &
	disown 2>/dev/null || true
}

# running <pid> succeeds when the process exists and is not a zombie. A detached
# server is reparented to PID 1 (or a subreaper), which may reap it late, and kill -0
# succeeds on a zombie.
running() {
	local stat
	kill -0 "$1" 2>/dev/null || return 1
	if [[ -d /proc/$1 ]]; then
		{ read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
		stat=${stat##*) }
		[[ ${stat:0:1} != Z ]]
	else
		[[ $(ps -o stat= -p "$1" 2>/dev/null) != Z* ]]
	fi
}

# read_pid <pidfile> prints the PID in pidfile, or nothing. It uses read, not $(<f):
# under set -e a failed $(<f) ends the script even on the left of ||, and pidfiles
# come and go while other jobs stop things.
read_pid() {
	local pid=
	{ read -r pid <"$1"; } 2>/dev/null || true
	printf '%s' "$pid"
}

# alive <pidfile> succeeds when the PID in pidfile names a running process.
alive() {
	local pid
	pid=$(read_pid "$1")
	[[ -n $pid ]] && running "$pid"
}

# stop_pidfile <pidfile> <name> [timeout seconds]: SIGTERM, wait, then SIGKILL.
# Idempotent: a missing pidfile or a dead process is success.
stop_pidfile() {
	local pidfile=$1 name=$2 timeout=${3:-10} pid i
	if ! alive "$pidfile"; then
		rm -f "$pidfile"
		return 0
	fi
	pid=$(read_pid "$pidfile")
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < timeout * 10; i++)); do
		if ! running "$pid"; then
			rm -f "$pidfile"
			return 0
		fi
		sleep 0.1
	done
	log "$name (pid $pid, state $(ps -o stat= -p "$pid" 2>/dev/null)) still running after ${timeout}s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		running "$pid" || break
		sleep 0.1
	done
	rm -f "$pidfile"
}

# wait_ready <pidfile> <deadline seconds> <probe...>: poll probe every 50 ms until it
# succeeds (0), the process dies (1) or the deadline passes (2).
wait_ready() {
	local pidfile=$1 deadline=$2 end
	shift 2
	end=$((SECONDS + deadline))
	while ((SECONDS < end)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		alive "$pidfile" || return 1
		sleep 0.05
	done
	"$@" >/dev/null 2>&1 && return 0
	return 2
}

# http_ok <url>: GET succeeds with a 2xx. Uses curl when present, else bash /dev/tcp.
http_ok() {
	if command -v curl >/dev/null; then
		curl -fsS --max-time 1 -o /dev/null "$1"
		return
	fi
	local rest=${1#http://} hostport path status
	hostport=${rest%%/*}
	path=/${rest#*/}
	[[ $rest == */* ]] || path=/
	exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
	IFS= read -r -t 1 status <&3 || status=
	exec 3>&-
	[[ $status == HTTP/1.?\ 2* ]]
}

# log_tail <file>: the last lines of a server log, for error messages.
log_tail() {
	log "--- last lines of $1 ---"
	tail -n 30 "$1" >&2 2>/dev/null || true
	log "---"
}

# need <command> <hint>: fail with a hint when a command is missing.
need() {
	command -v "$1" >/dev/null || die "$1 not found; run deploy/local/install.sh${2:+ ($2)}"
}

usage_server() {
	log "usage: $(basename "$0") start <dir> [port...] | stop <dir>"
	exit 2
}

# bind_failed <logfile> <from line>: the server's log since line <from> reports a port
# that was taken (between free_port and the bind, or by another server).
bind_failed() {
	tail -n +"$(($2 + 1))" "$1" 2>/dev/null | grep -qi 'address already in use'
}

# line_count <file>: number of lines in file (0 when missing).
line_count() {
	if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi
}

# server_main <name> "<port names>" <ready timeout> <stop timeout> "$@": the whole
# command line of a server script (redis.sh, nats.sh, clickhouse.sh), that is
#   <script> start <dir> [port...]   <script> stop <dir>
# with one optional port argument per port name, in order. Port names are also the
# files under <dir> that receive the ports once the server is ready ("port" first:
# the main protocol). The script defines these hooks, which get everything they need
# as arguments and share no variables with the skeleton:
#   <name>_check                          fail (die) when the server is not installed
#   <name>_launch <dir> <port>...         spawn the server with spawn, PID in <dir>/pid
#   <name>_probe <dir> <from> <port>...   succeed once the server answers and is ours,
#                                         not another one on a port it could not take;
#                                         <from> is the line count of <dir>/server.log
#                                         before this attempt
#   <name>_ready_line <pid> <elapsed> <port>...   print the line logged once ready
# stop waits <stop timeout> seconds after SIGTERM, then sends SIGKILL.
server_main() {
	local name=$1 ready_timeout=$3 stop_timeout=$4 port_names=()
	read -r -a port_names <<<"$2"
	shift 4
	local cmd=${1:-} dir=${2:-}
	[[ -n $dir ]] || usage_server
	case $cmd in
	start) server_start "$name" "$dir" "$ready_timeout" "${#port_names[@]}" "${port_names[@]}" "${@:3}" ;;
	stop) stop_pidfile "$dir/pid" "$name" "$stop_timeout" ;;
	*) usage_server ;;
	esac
}

# server_start <name> <dir> <ready timeout> <n> <port name>x<n> [port...]: the start
# command of server_main. A server that dies because its port was taken is retried on
# fresh ports, up to 5 times; only once when the caller fixed the first port. Ports
# not given are free ones, distinct from one another.
server_start() {
	local name=$1 dir=$2 deadline=$3 n=$4
	shift 4
	local port_names=("${@:1:n}")
	shift "$n"
	local fixed=("$@")
	"${name}_check"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	if alive "$dir/pid"; then
		log "$name already running in $dir on port $(cat "$dir/port" 2>/dev/null)"
		return 0
	fi
	local attempts=5 t0=$EPOCHREALTIME i j p from rc ports=()
	[[ -n ${fixed[0]:-} ]] && attempts=1
	for ((i = 1; i <= attempts; i++)); do
		ports=()
		for ((j = 0; j < n; j++)); do
			p=${fixed[j]:-}
			if [[ -z $p ]]; then p=$(free_port); fi
			while [[ " ${ports[*]} " == *" $p "* ]]; do p=$(free_port); done
			ports+=("$p")
		done
		from=$(line_count "$dir/server.log")
		"${name}_launch" "$dir" "${ports[@]}"
		rc=0
		wait_ready "$dir/pid" "$deadline" "${name}_probe" "$dir" "$from" "${ports[@]}" || rc=$?
		if ((rc == 0)); then
			for ((j = 0; j < n; j++)); do echo "${ports[j]}" >"$dir/${port_names[j]}"; done
			log "$("${name}_ready_line" "$(read_pid "$dir/pid")" "$(elapsed "$t0")" "${ports[@]}")"
			return 0
		fi
		if ((rc == 1 && i < attempts)) && bind_failed "$dir/server.log" "$from"; then
			log "$name: port taken, retrying on another one"
			rm -f "$dir/pid"
			continue
		fi
		if ((rc == 1)); then
			log "$name exited during startup (see $dir/server.log)"
		else
			log "$name not ready within ${deadline}s (see $dir/server.log)"
		fi
		stop_pidfile "$dir/pid" "$name" 5
		log_tail "$dir/server.log"
		# Servers with their own log file (ClickHouse) write early errors to stdout.
		[[ -s $dir/stdout.log ]] && log_tail "$dir/stdout.log"
		exit 1
	done
}

# start_servers_in <dir> <name>...: start the named servers (redis, nats,
# clickhouse: <name>.sh) at once, each on free ports in <dir>/<name>; dies when
# one does not start. The benchmarks' throwaway stacks use it.
start_servers_in() {
	local dir=$1 name pid pids=() failed=0
	shift
	for name in "$@"; do
		"$QYAI_LOCAL_DIR/$name.sh" start "$dir/$name" &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
	((failed == 0)) || die "a server did not start (see above)"
}

# stop_servers_in <dir> <name>...: stop servers start_servers_in started, at once.
stop_servers_in() {
	local dir=$1 name
	shift
	for name in "$@"; do
		"$QYAI_LOCAL_DIR/$name.sh" stop "$dir/$name" &
	done
	wait
}

# elapsed <start>: seconds since start (an $EPOCHREALTIME value), e.g. "0.12s".
elapsed() {
	perl -e 'printf "%.2fs", $ARGV[1] - $ARGV[0]' "$1" "$EPOCHREALTIME"
}
