#!/usr/bin/env bash
# clickhouse.sh: a throwaway ClickHouse 18.16 on loopback for tests and `make run`.
#
#   clickhouse.sh start <dir> [tcp_port [http_port]]   default: free ports
#   clickhouse.sh stop <dir>                           stop it (idempotent)
#
# Writes <dir>/config.xml and <dir>/users.xml (rewritten on every start), keeps the
# data in <dir>/data, logs to <dir>/server.log, and writes <dir>/pid, <dir>/port
# (native protocol) and <dir>/http_port. Ready when GET /ping answers on the HTTP port.
# The start and stop logic is server_main in lib.sh; this file holds the ClickHouse
# hooks.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

clickhouse_check() { need clickhouse-server; }

# clickhouse_write_config <dir> <tcp port> <http port> writes a minimal
# config.xml/users.xml. 18.16 still uses the <yandex> root element. No
# interserver_http_port: without it the server opens no replication port. Caches are
# small: this is a laptop/CI server, not a production one.
clickhouse_write_config() {
	local dir=$1 port=$2 http_port=$3
	mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
	# The directory as XML text (Go test names may hold &, <, >); \& because a bare &
	# in the replacement means the match in bash 5.2.
	local x=${dir//&/\&amp;}
	x=${x//</\&lt;}
	x=${x//>/\&gt;}
	cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$x/server.log</log>
        <errorlog>$x/server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$port</tcp_port>
    <http_port>$http_port</http_port>
    <path>$x/data/</path>
    <tmp_path>$x/tmp/</tmp_path>
    <user_files_path>$x/user_files/</user_files_path>
    <format_schema_path>$x/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
	cat >"$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
            <!-- Idle native connections notice a shutdown after poll_interval seconds
                 (default 10), which would make every stop take that long. -->
            <poll_interval>1</poll_interval>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
XML
}

# clickhouse_launch <dir> <tcp port> <http port>
clickhouse_launch() {
	local dir=$1
	clickhouse_write_config "$@"
	# The server's own logger writes server.log; stdout/stderr (early failures, before
	# the logger is up) go to stdout.log.
	spawn "$dir/stdout.log" "$dir/pid" clickhouse-server --config-file="$dir/config.xml"
}

# clickhouse_probe <dir> <from> <tcp port> <http port>: /ping answers and our own log
# says ready since line <from> (another server may hold the port).
clickhouse_probe() {
	local dir=$1 from=$2 http_port=$4
	http_ok "http://127.0.0.1:$http_port/ping" &&
		tail -n +"$((from + 1))" "$dir/server.log" | grep -q 'Ready for connections'
}

# clickhouse_ready_line <pid> <elapsed> <tcp port> <http port>
clickhouse_ready_line() { echo "clickhouse ready on 127.0.0.1:$3 (http $4, pid $1, $2)"; }

server_main clickhouse "port http_port" 30 20 "$@"
