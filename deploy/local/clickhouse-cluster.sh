#!/usr/bin/env bash
# clickhouse-cluster.sh: a throwaway ClickHouse 18.16 cluster on loopback, 2 shards x
# 2 replicas coordinated by one ZooKeeper, for tests and `make run TOPOLOGY=cluster`.
# It follows the cluster-script contract of testkit/testenv/cluster.go:
#
#   clickhouse-cluster.sh start <dir> [zk n1 n2 n3 n4 h1 h2 h3 h4 i1 i2 i3 i4]
#       start ZooKeeper (client port zk, data in <dir>/zk), then the 4 ClickHouse
#       nodes (native ports n1..n4, HTTP ports h1..h4, interserver ports i1..i4, data
#       in <dir>/node<i>); free ports when omitted
#   clickhouse-cluster.sh stop <dir>            stop every node, then ZooKeeper (idempotent)
#   clickhouse-cluster.sh start-node <dir> <i>  start node i again, same ports and data
#   clickhouse-cluster.sh stop-node <dir> <i>   stop node i gracefully (SIGTERM)
#
# Node 1 is shard 1 replica 1, node 2 shard 1 replica 2, node 3 shard 2 replica 1,
# node 4 shard 2 replica 2 (macros shard=1|2, replica=node<i>). The cluster is named
# qyai (written to <dir>/cluster), with internal_replication: a Distributed table
# writes each block to one replica of its shard and replication copies it to the
# other. Once started, <dir>/addrs holds the native host:port of node 1..4, one a
# line, <dir>/http_addrs their HTTP host:port, <dir>/zk_addr ZooKeeper's, and
# <dir>/node<i>/pid the PID of node i. Each node is a clickhouse.sh server (its
# config.xml, users.xml, server.log, pid, port, http_port under <dir>/node<i>) with
# the cluster settings in <dir>/node<i>/config.d/cluster.xml, which ClickHouse merges
# into config.xml.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=qyai
NODES=4

usage() {
	log "usage: $(basename "$0") start <dir> [zk n1 n2 n3 n4 h1 h2 h3 h4 i1 i2 i3 i4] | stop <dir> | start-node <dir> <i> | stop-node <dir> <i>"
	exit 2
}

# ---- ZooKeeper ---------------------------------------------------------------

zk_check() {
	[[ -e $ZOOKEEPER_JAR ]] || die "$ZOOKEEPER_JAR not found; run deploy/local/install.sh"
	need java "a Java runtime for ZooKeeper"
}

# zk_ruok <port>: ZooKeeper serves sessions. ruok answers imok as soon as the process
# runs, before it serves ("imok does not mean it has joined the quorum"), and a
# ClickHouse connecting then fails its handshake; srvr reports "Mode: standalone"
# only once it serves.
zk_ruok() {
	local answer=
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'srvr' >&3
	answer=$(timeout 2 cat <&3) || true
	exec 3>&-
	[[ $answer == *"Mode: standalone"* ]]
}

# zk_start <dir> <port>: ZooKeeper standalone in <dir>/zk. The jar's manifest names
# its dependency jars (netty, jute, slf4j-api, ...); slf4j-simple makes it log to
# stderr, that is <dir>/zk/server.log. The admin server is off (it would take port
# 8080, the gateway's), and the client port listens on loopback only.
zk_start() {
	local zk=$1/zk port=$2
	mkdir -p "$zk/data"
	if alive "$zk/pid"; then
		log "zookeeper already running in $zk"
		return 0
	fi
	cat >"$zk/zoo.cfg" <<CFG
tickTime=500
initLimit=10
syncLimit=5
dataDir=$zk/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr,stat
maxClientCnxns=0
CFG
	local from
	from=$(line_count "$zk/server.log")
	spawn "$zk/server.log" "$zk/pid" java -Xms32m -Xmx256m \
		-Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
		-cp "$ZOOKEEPER_JAR:/usr/share/java/slf4j-simple.jar" \
		org.apache.zookeeper.server.ZooKeeperServerMain "$zk/zoo.cfg"
	local rc=0
	wait_ready "$zk/pid" 30 zk_ruok "$port" || rc=$?
	if ((rc != 0)); then
		log "zookeeper not ready on 127.0.0.1:$port (see $zk/server.log)"
		stop_pidfile "$zk/pid" zookeeper 5
		log_tail "$zk/server.log"
		# A taken port: the caller may retry on fresh ports.
		if bind_failed "$zk/server.log" "$from"; then return 3; fi
		return 1
	fi
	echo "$port" >"$zk/port"
	log "zookeeper ready on 127.0.0.1:$port (pid $(read_pid "$zk/pid"))"
}

# ---- ClickHouse nodes --------------------------------------------------------

# node_shard <i>: the shard (1 or 2) of node i; its replica is named node<i>.
node_shard() { echo $((($1 + 1) / 2)); }

# write_cluster_config <dir> <zk port> <n1..n4> <h1..h4> <i1..i4>: config.d/cluster.xml
# of every node: ZooKeeper, the qyai cluster (native ports of all nodes), the node's
# macros and interserver port, and the ON CLUSTER queue.
write_cluster_config() {
	local dir=$1 zk=$2
	shift 2
	local native=("${@:1:4}") http=("${@:5:4}") inter=("${@:9:4}") i s r shards=""
	for s in 1 2; do
		shards+="            <shard>
                <internal_replication>true</internal_replication>
"
		for r in 1 2; do
			i=$(((s - 1) * 2 + r))
			shards+="                <replica><host>127.0.0.1</host><port>${native[i - 1]}</port></replica>
"
		done
		shards+="            </shard>
"
	done
	for ((i = 1; i <= NODES; i++)); do
		mkdir -p "$dir/node$i/config.d"
		echo "${native[i - 1]}" >"$dir/node$i/port"
		echo "${http[i - 1]}" >"$dir/node$i/http_port"
		echo "${inter[i - 1]}" >"$dir/node$i/interserver_port"
		cat >"$dir/node$i/config.d/cluster.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>${inter[i - 1]}</interserver_http_port>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$zk</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <macros>
        <cluster>$CLUSTER</cluster>
        <shard>$(node_shard "$i")</shard>
        <replica>node$i</replica>
    </macros>
    <remote_servers>
        <$CLUSTER>
$shards        </$CLUSTER>
    </remote_servers>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
</yandex>
XML
	done
}

# node_start <dir> <i>: start node i with clickhouse.sh on the ports recorded at
# cluster start. clickhouse.sh rewrites config.xml and users.xml; config.d stays.
node_start() {
	local nd=$1/node$2
	[[ -f $nd/port && -f $nd/http_port && -f $nd/config.d/cluster.xml ]] ||
		die "node $2 of $1 was never started (no $nd/port); run start first"
	"$QYAI_LOCAL_DIR/clickhouse.sh" start "$nd" "$(cat "$nd/port")" "$(cat "$nd/http_port")"
}

node_stop() { "$QYAI_LOCAL_DIR/clickhouse.sh" stop "$1/node$2"; }

check_index() {
	[[ $1 =~ ^[1-4]$ ]] || die "node index must be 1..$NODES, not '$1'"
}

# ---- the whole cluster -------------------------------------------------------

# cluster_start <dir> [13 ports]: ZooKeeper, then the 4 nodes at once. When the ports
# are not given, a start that fails on a taken port is retried on fresh ones.
cluster_start() {
	local dir=$1
	shift
	local fixed=("$@")
	((${#fixed[@]} == 0 || ${#fixed[@]} == 13)) || usage
	need clickhouse-server
	zk_check
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	local t0=$EPOCHREALTIME attempts=3 attempt i p rc ports pids failed
	((${#fixed[@]} > 0)) && attempts=1
	for ((attempt = 1; attempt <= attempts; attempt++)); do
		ports=()
		for ((i = 0; i < 13; i++)); do
			p=${fixed[i]:-}
			[[ -n $p ]] || p=$(free_port)
			while [[ " ${ports[*]} " == *" $p "* ]]; do p=$(free_port); done
			ports+=("$p")
		done
		rc=0
		zk_start "$dir" "${ports[0]}" || rc=$?
		if ((rc == 3 && attempt < attempts)); then continue; fi
		((rc == 0)) || exit 1
		write_cluster_config "$dir" "$(cat "$dir/zk/port")" "${ports[@]:1}"
		pids=()
		for ((i = 1; i <= NODES; i++)); do
			node_start "$dir" "$i" &
			pids+=($!)
		done
		failed=0
		for p in "${pids[@]}"; do wait "$p" || failed=1; done
		if ((failed == 0)); then break; fi
		cluster_stop "$dir"
		if ((attempt < attempts)); then
			log "clickhouse cluster: a node did not start, retrying on other ports"
			continue
		fi
		die "clickhouse cluster did not start (see the node logs under $dir)"
	done
	: >"$dir/addrs.tmp"
	: >"$dir/http_addrs.tmp"
	for ((i = 1; i <= NODES; i++)); do
		echo "127.0.0.1:$(cat "$dir/node$i/port")" >>"$dir/addrs.tmp"
		echo "127.0.0.1:$(cat "$dir/node$i/http_port")" >>"$dir/http_addrs.tmp"
	done
	mv "$dir/addrs.tmp" "$dir/addrs"
	mv "$dir/http_addrs.tmp" "$dir/http_addrs"
	echo "127.0.0.1:$(cat "$dir/zk/port")" >"$dir/zk_addr"
	echo "$CLUSTER" >"$dir/cluster"
	log "clickhouse cluster $CLUSTER ready: 2 shards x 2 replicas on $(paste -sd, "$dir/addrs"), zookeeper $(cat "$dir/zk_addr") ($(elapsed "$t0"))"
}

# cluster_stop <dir>: every node at once, then ZooKeeper last (a node stopping
# still talks to it).
cluster_stop() {
	local dir=$1 i pids=() p
	[[ -d $dir ]] || return 0
	for ((i = 1; i <= NODES; i++)); do
		if [[ -d $dir/node$i ]]; then
			node_stop "$dir" "$i" &
			pids+=($!)
		fi
	done
	for p in "${pids[@]}"; do wait "$p" || true; done
	stop_pidfile "$dir/zk/pid" zookeeper 10
}

main() {
	local cmd=${1:-} dir=${2:-}
	[[ -n $dir ]] || usage
	case $cmd in
	start) cluster_start "$dir" "${@:3}" ;;
	stop) cluster_stop "$dir" ;;
	start-node)
		[[ $# -eq 3 ]] || usage
		check_index "$3"
		alive "$dir/zk/pid" || die "zookeeper of $dir is not running; run start first"
		node_start "$dir" "$3"
		;;
	stop-node)
		[[ $# -eq 3 ]] || usage
		check_index "$3"
		node_stop "$dir" "$3"
		;;
	*) usage ;;
	esac
}

main "$@"
