#!/usr/bin/env bash
# Two broker nodes on one highly available PostgreSQL, all on this machine
# and without containers: the topology of compose.yaml, for development and
# for trying a failover.
#
#   broker/deploy/cluster-local.sh start [DIR]   set up and start everything in DIR
#                                                (default: a new temporary directory)
#   broker/deploy/cluster-local.sh status DIR    each node's health, each database's role
#   broker/deploy/cluster-local.sh failover DIR  stop the primary at once, promote the standby
#   broker/deploy/cluster-local.sh stop DIR      stop the nodes, then both databases
#
# PostgreSQL: a primary on 127.0.0.1:$PG_PRIMARY_PORT and a streaming
# standby on 127.0.0.1:$PG_STANDBY_PORT that is its synchronous one (a
# commit returns once the standby has it), trust authentication on
# 127.0.0.1 only, database and user `samverkan`.
#
# Nodes (development PKI certs-dev/ and policies/ of this repository):
#   node-a  MQTT 127.0.0.1:8883, admin 127.0.0.1:9883, console 127.0.0.1:9443
#   node-b  MQTT 127.0.0.1:8884, admin 127.0.0.1:9884, console 127.0.0.1:9444
# both with [store] url = the two databases' multi-host URL.
#
# Environment:
#   PG_BIN           PostgreSQL server programs (default /usr/lib/postgresql/15/bin)
#   PG_PRIMARY_PORT  default 55432
#   PG_STANDBY_PORT  default 55433
#   SAMVERKAN_BIN    the broker binary (default: samverkan of `cargo build` in
#                    $CARGO_TARGET_DIR or target/, debug before release, else PATH)
#
# Run as root, the databases run as the `postgres` user and DIR must be
# reachable by it (a directory under /tmp is).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
primary_port=${PG_PRIMARY_PORT:-55432}
standby_port=${PG_STANDBY_PORT:-55433}
nodes=(node-a node-b)
declare -A gateway_port=([node-a]=8883 [node-b]=8884)
declare -A admin_port=([node-a]=9883 [node-b]=9884)
declare -A console_port=([node-a]=9443 [node-b]=9444)
standby_name=standby1
# Seconds (in steps of 0.2 s) to wait for a database or a node.
wait_steps=150

# The caller's PG… variables would redirect psql and the brokers.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS PGSSLMODE PGTARGETSESSIONATTRS

die() {
    echo "cluster-local: $*" >&2
    exit 1
}

usage() {
    sed -n '6,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

# A PostgreSQL program, as the postgres user when run as root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# psql against the server on port $1, database postgres, SQL $2.
sql() {
    as_pg "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
        -d "host=127.0.0.1 port=$1 user=postgres dbname=postgres connect_timeout=3" -c "$2"
}

# Whether something listens on 127.0.0.1:$1.
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

broker_binary() {
    if [ -n "${SAMVERKAN_BIN:-}" ]; then
        [ -x "$SAMVERKAN_BIN" ] || die "SAMVERKAN_BIN=$SAMVERKAN_BIN is not executable"
        echo "$SAMVERKAN_BIN"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$repo/target}
    local candidate
    for candidate in "$target/debug/samverkan" "$target/release/samverkan"; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    command -v samverkan ||
        die "no samverkan binary: run \`cargo build -p samverkan-broker\` first or set SAMVERKAN_BIN"
}

# The directory argument of status, failover and stop, made absolute.
existing_dir() {
    [ -n "${1:-}" ] || die "name the directory given to start"
    [ -d "$1/pg" ] || die "$1 holds no topology started by this script"
    (cd "$1" && pwd)
}

start_databases() {
    local pg=$1/pg
    mkdir -p "$pg"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$pg"
        runuser -u postgres -- test -w "$pg" ||
            die "the postgres user cannot reach $pg: choose a directory under /tmp"
    fi
    chmod 700 "$pg"

    echo "PostgreSQL primary on 127.0.0.1:$primary_port"
    as_pg "$pg_bin/initdb" -D "$pg/primary" -U postgres --auth=trust -E UTF8 --locale=C >"$pg/initdb.log"
    cat >"$pg/primary/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 trust
local replication all trust
host replication all 127.0.0.1/32 trust
EOF
    cat >>"$pg/primary/postgresql.conf" <<EOF

# cluster-local.sh
listen_addresses = '127.0.0.1'
port = $primary_port
unix_socket_directories = '$pg'
wal_level = replica
max_wal_senders = 4
hot_standby = on
synchronous_commit = on
EOF
    as_pg "$pg_bin/pg_ctl" -D "$pg/primary" -l "$pg/primary.log" -w -t 30 start >/dev/null ||
        die "the primary did not start: $(tail -5 "$pg/primary.log")"
    sql "$primary_port" "CREATE ROLE samverkan LOGIN" >/dev/null
    sql "$primary_port" "CREATE DATABASE samverkan OWNER samverkan" >/dev/null

    echo "PostgreSQL standby on 127.0.0.1:$standby_port (synchronous, streaming from the primary)"
    as_pg "$pg_bin/pg_basebackup" -D "$pg/standby" -R -X stream --checkpoint=fast \
        -d "host=127.0.0.1 port=$primary_port user=postgres application_name=$standby_name"
    echo "port = $standby_port" >>"$pg/standby/postgresql.conf"
    as_pg "$pg_bin/pg_ctl" -D "$pg/standby" -l "$pg/standby.log" -w -t 30 start >/dev/null ||
        die "the standby did not start: $(tail -5 "$pg/standby.log")"

    # Named only now, and in the primary's file alone: a promoted standby
    # has no standby to wait for.
    echo "synchronous_standby_names = 'FIRST 1 ($standby_name)'" >>"$pg/primary/postgresql.conf"
    sql "$primary_port" "SELECT pg_reload_conf()" >/dev/null
    local step state=""
    for ((step = 0; step < wait_steps; step++)); do
        state=$(sql "$primary_port" "SELECT sync_state FROM pg_stat_replication
            WHERE application_name = '$standby_name' AND state = 'streaming'" || true)
        [ "$state" = sync ] && return
        sleep 0.2
    done
    die "the standby did not become the synchronous one (sync_state: '${state}'); logs in $pg"
}

write_config() {
    local node=$1 dir=$2
    local certs=$repo/certs-dev
    mkdir -p "$dir/$node/state"
    cat >"$dir/$node/samverkan.toml" <<EOF
# $node of the local topology (broker/deploy/cluster-local.sh).

[gateway]
listen = "127.0.0.1:${gateway_port[$node]}"

[tls]
ca = "$certs/ca.pem"
cert = "$certs/broker.pem"
key = "$certs/broker.key"
crl = "$certs/crl.pem"

[signing]
key = "$certs/broker-signing.key"
key_id = "broker-dev-1"

[policy]
dir = "$repo/policies"

[store]
url = "postgres://samverkan@127.0.0.1:$primary_port,127.0.0.1:$standby_port/samverkan"

[admin]
listen = "127.0.0.1:${admin_port[$node]}"

[console]
listen = "127.0.0.1:${console_port[$node]}"

[audit]
subject_key = "$certs/subject-hash.key"

[cluster]
node = "$node"
state_dir = "state"
EOF
}

start_node() {
    local node=$1 dir=$2 bin=$3
    local home=$dir/$node
    "$bin" serve --check-config --config "$home/samverkan.toml" >/dev/null ||
        die "the configuration of $node is refused; stop the databases with: $0 stop $dir"
    nohup "$bin" serve --config "$home/samverkan.toml" >"$home/broker.log" 2>&1 &
    echo $! >"$home/broker.pid"
}

wait_for_node() {
    local node=$1 dir=$2 bin=$3
    local home=$dir/$node step
    for ((step = 0; step < wait_steps; step++)); do
        if "$bin" admin --admin "127.0.0.1:${admin_port[$node]}" health >/dev/null 2>&1; then
            echo "$node healthy: mqtts://127.0.0.1:${gateway_port[$node]}, http://127.0.0.1:${admin_port[$node]}/health"
            return 0
        fi
        kill -0 "$(cat "$home/broker.pid")" 2>/dev/null || break
        sleep 0.2
    done
    echo "cluster-local: $node did not become healthy; the end of $home/broker.log:" >&2
    tail -20 "$home/broker.log" >&2
    return 1
}

cmd_start() {
    local dir=${1:-}
    if [ -z "$dir" ]; then
        dir=$(mktemp -d "${TMPDIR:-/tmp}/samverkan-cluster.XXXXXX")
        chmod 755 "$dir"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ ! -e "$dir/pg" ] || die "$dir already holds a topology: stop it ($0 stop $dir) or choose another directory"
    [ -x "$pg_bin/initdb" ] || die "no PostgreSQL server programs in $pg_bin (Debian: apt-get install postgresql-15; or set PG_BIN)"
    local bin port node
    bin=$(broker_binary)
    for port in "$primary_port" "$standby_port" "${gateway_port[@]}" "${admin_port[@]}" "${console_port[@]}"; do
        if listening "$port"; then
            die "port $port on 127.0.0.1 is in use"
        fi
    done
    cd /

    start_databases "$dir"
    # One node after the other: the first one to start creates the schema.
    local healthy=0
    for node in "${nodes[@]}"; do
        write_config "$node" "$dir"
        start_node "$node" "$dir" "$bin"
        wait_for_node "$node" "$dir" "$bin" || healthy=1
    done
    cat <<EOF

Everything is in $dir (configurations, logs, database files).
  databases  postgres://samverkan@127.0.0.1:$primary_port,127.0.0.1:$standby_port/samverkan
  health     $bin admin --admin 127.0.0.1:${admin_port[node-a]} health
             $bin admin --admin 127.0.0.1:${admin_port[node-b]} health
  status     $0 status $dir
  failover   $0 failover $dir
  stop       $0 stop $dir
EOF
    return "$healthy"
}

cmd_status() {
    local dir bin node port role
    dir=$(existing_dir "${1:-}")
    bin=$(broker_binary)
    for port in "$primary_port" "$standby_port"; do
        case $(sql "$port" "SELECT pg_is_in_recovery()" 2>/dev/null || true) in
        t) role="standby (in recovery)" ;;
        f) role="primary (accepts writes)" ;;
        *) role="not answering" ;;
        esac
        echo "database 127.0.0.1:$port: $role"
    done
    for node in "${nodes[@]}"; do
        echo "$node: $("$bin" admin --admin "127.0.0.1:${admin_port[$node]}" health 2>&1 || true)"
    done
}

cmd_failover() {
    local dir
    dir=$(existing_dir "${1:-}")
    cd /
    echo "stopping the primary at once (as a crash would)"
    as_pg "$pg_bin/pg_ctl" -D "$dir/pg/primary" -m immediate -w -t 30 stop >/dev/null || true
    echo "promoting the standby on 127.0.0.1:$standby_port"
    as_pg "$pg_bin/pg_ctl" -D "$dir/pg/standby" -w -t 30 promote
}

cmd_stop() {
    local dir node pid step server
    dir=$(existing_dir "${1:-}")
    cd /
    for node in "${nodes[@]}"; do
        [ -f "$dir/$node/broker.pid" ] || continue
        pid=$(cat "$dir/$node/broker.pid")
        if kill -TERM "$pid" 2>/dev/null; then
            # It finishes committing and answering what it received, then exits.
            for ((step = 0; step < wait_steps; step++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            if kill -0 "$pid" 2>/dev/null; then
                echo "$node did not stop within $((wait_steps / 5)) s: killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            echo "$node stopped"
        fi
        rm -f "$dir/$node/broker.pid"
    done
    for server in primary standby; do
        if [ -f "$dir/pg/$server/postmaster.pid" ]; then
            as_pg "$pg_bin/pg_ctl" -D "$dir/pg/$server" -m fast -w -t 30 stop >/dev/null || true
            echo "PostgreSQL $server stopped"
        fi
    done
    echo "The data stays in $dir; remove it with: rm -rf $dir"
}

case ${1:-} in
start) cmd_start "${2:-}" ;;
status) cmd_status "${2:-}" ;;
failover) cmd_failover "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
*) usage ;;
esac
