#!/usr/bin/env bash
# A three-node cluster on this one machine, for the multi-node tests (tests/test_multinode.py):
# network namespaces node1..node3 with their own addresses and host names, joined by a
# bridge, and a three-node SLURM cluster on them.
#
#   scripts/multinode.sh up       build it (idempotent; a half-built one is torn down first)
#   scripts/multinode.sh down     tear everything down: jobs, daemons (by PID file), every
#                                 process left in the namespaces, namespaces, links, bridge.
#                                 Safe to run any time, also after a failed 'up' (idempotent)
#   scripts/multinode.sh status   what runs (exit status 3 when it is not (fully) up)
#
# Run as root (Debian 12). The measured facts behind every choice are in
# /work/shared/ENVIRONMENT.md, "Several nodes on one machine (network namespaces)".
#
# Network (only addresses of these namespaces and loopback are used):
#   bridge  acme77br in the root namespace, 10.77.0.254/24 (the "login node")
#   nodeN   namespace /run/netns/nodeN, eth0 = 10.77.0.N/24 (peer v77-N on the bridge), lo up
# Host names: a network namespace has no host name of its own, so every process that
# stands for a node (slurmd, Open MPI's orted and the ranks) is started in a fresh UTS
# namespace with hostname nodeN: slurmd here, the ranks of mpiexec by scripts/multinode_rsh.sh
# (Open MPI's rsh agent), job steps inherit it from slurmd.
#
# SLURM: slurmctld in the root namespace (SlurmctldHost=<hostname>(10.77.0.254)), one slurmd
# per namespace (nsenter --net, not 'ip netns exec': that remounts /sys and hides the cgroup
# mounts), %n in the slurmd spool/TmpFS/PID/log paths. It runs beside the one-node cluster
# of scripts/slurm_cluster.sh without touching it: its own configuration (use it with
# SLURM_CONF=$ACME_MULTINODE_DIR/slurm.conf; /etc/slurm/slurm.conf is never written), its
# own munged (socket $ACME_MULTINODE_DIR/munge/munge.socket, AuthInfo=socket=...), its own
# ports (6827 controller, 6828 slurmd), its own state folders.
#
# Files (ACME_MULTINODE_DIR, default /tmp/acme-multinode):
#   slurm.conf   the cluster's configuration      hostfile   Open MPI hostfile of the nodes
#   env.sh       'source' it for SLURM_CONF and the Open MPI TCP settings of this cluster
#   log/         slurmctld.log, slurmd-nodeN.log  munge/     munged's socket, log, PID
#
# Environment: ACME_MULTINODE_DIR; ACME_MULTINODE_START_TIMEOUT (s, default 30) for 'up';
# ACME_MULTINODE_SLURMD_TIMEOUT (s, default 6): how long slurmctld waits for a silent node
# before it marks it DOWN and ends its jobs (NODE_FAIL) -- short, for the lost-node test.
set -euo pipefail

DIR=${ACME_MULTINODE_DIR:-/tmp/acme-multinode}
CONF=$DIR/slurm.conf
MUNGE_DIR=$DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MUNGE_KEY=/etc/munge/munge.key
START_TIMEOUT=${ACME_MULTINODE_START_TIMEOUT:-30}
SLURMD_TIMEOUT=${ACME_MULTINODE_SLURMD_TIMEOUT:-6}
NODES=(node1 node2 node3)
SUBNET=10.77.0
BRIDGE=acme77br
CTL_PORT=6827
NODE_PORT=6828
HOST=$(hostname -s)
export SLURM_CONF=$CONF

log() { printf '[multinode] %s\n' "$*"; }
now_ms() { date +%s%3N; }

node_index() { echo "${1#node}"; }
node_addr() { echo "$SUBNET.$(node_index "$1")"; }
veth() { echo "v77-$(node_index "$1")"; }

pid_file() {
    case $1 in
        munged)    echo "$MUNGE_DIR/munged.pid" ;;
        slurmctld) echo "$DIR/run/slurmctld.pid" ;;
        slurmd@*)  echo "$DIR/run/slurmd-${1#slurmd@}.pid" ;;
    esac
}

# PID of a daemon from our PID file, only if that process is alive and still is that
# daemon (a PID can be reused after a crash: never signal a stranger). A zombie is not
# alive: here PID 1 does not reap orphans, so a killed daemon stays a zombie.
running_pid() {
    local f pid comm=${1%%@*}
    f=$(pid_file "$1")
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' < "$f")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    is_zombie "$pid" && return 1
    echo "$pid"
}

is_zombie() { [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]; }

DAEMONS=(slurmd@node1 slurmd@node2 slurmd@node3 slurmctld munged)   # stop order

# Wait up to $1 seconds for the command in the remaining arguments to succeed.
wait_for() {
    local limit=$1 t0
    t0=$(now_ms)
    shift
    until "$@" >/dev/null 2>&1; do
        [ $(( $(now_ms) - t0 )) -lt $((limit * 1000)) ] || return 1
        sleep 0.1
    done
}

show_logs() {
    local f
    for f in "$DIR/log/slurmctld.log" "$DIR"/log/slurmd-node*.log "$MUNGE_DIR/munged.log"; do
        [ -f "$f" ] || continue
        printf '\n===== tail %s =====\n' "$f" >&2
        tail -n 20 "$f" >&2
    done
}

fail() {
    printf '[multinode] ERROR: %s\n' "$*" >&2
    show_logs
    do_down >&2 || true
    exit 1
}

# --------------------------------------------------------------------- tools
ensure_tools() {
    local missing=() pkgs=() t
    declare -A pkg=([ip]=iproute2 [nsenter]=util-linux [unshare]=util-linux
                    [munged]=munge [munge]=munge [slurmctld]=slurmctld [slurmd]=slurmd
                    [srun]=slurm-client [sinfo]=slurm-client [mpiexec]=openmpi-bin
                    [flock]=util-linux)
    for t in "${!pkg[@]}"; do
        command -v "$t" >/dev/null || { missing+=("$t"); pkgs+=("${pkg[$t]}"); }
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${pkgs[*]} (missing: ${missing[*]})"
    # Keep the packages' scripts from starting system munge/slurm services (they would
    # take the ports of the one-node cluster).
    local added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 install \
        $(printf '%s\n' "${pkgs[@]}" | sort -u) </dev/null >/dev/null || true
    [ "$added" = 1 ] && rm -f /usr/sbin/policy-rc.d
    for t in "${missing[@]}"; do
        command -v "$t" >/dev/null || fail "$t still missing after apt-get install"
    done
}

# ------------------------------------------------------------------- network
netns_exists() { [ -e "/run/netns/$1" ]; }
link_exists() { ip link show "$1" >/dev/null 2>&1; }

build_network() {
    # The subnet must be ours alone: an address of it anywhere else would mix traffic.
    if ! link_exists "$BRIDGE" && ip -4 -o addr show | grep -q " $SUBNET\."; then
        fail "$SUBNET.0/24 is already used on this machine: $(ip -4 -o addr show | grep " $SUBNET\.")"
    fi
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.254/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local n
    for n in "${NODES[@]}"; do
        ip netns add "$n"
        ip -n "$n" link set lo up
        ip link add "$(veth "$n")" type veth peer name eth0 netns "$n"
        ip link set "$(veth "$n")" master "$BRIDGE" up
        ip -n "$n" addr add "$(node_addr "$n")/24" dev eth0
        ip -n "$n" link set eth0 up
    done
}

# Each node reaches the login node's address (10.77.0.254) and the other nodes.
network_works() {
    local n
    for n in "${NODES[@]}"; do
        nsenter --net="/run/netns/$n" -- bash -c "exec 3<>/dev/tcp/$SUBNET.254/$CTL_PORT" 2>/dev/null || return 1
    done
}

# ------------------------------------------------------------------- SLURM
write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/tmp"
    local n
    for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n" "$DIR/tmp/$n"; done
    cat > "$CONF.tmp" <<CONF
# Generated by acme scripts/multinode.sh -- a three-node test cluster made of network
# namespaces on one machine. Do not edit: every 'up' rewrites it. Scratch folder: $DIR
ClusterName=acmemulti
SlurmctldHost=$HOST($SUBNET.254)
SlurmctldPort=$CTL_PORT
SlurmdPort=$NODE_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET

# Open MPI under srun needs PMIx (Debian ships the PMIx v4 plugin).
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
EnforcePartLimits=ANY
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Nodes advertise 2 CPUs each (the machine has 2 cores in all).
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
# A node silent for SlurmdTimeout seconds is DOWN and its jobs end with NODE_FAIL; no
# requeue, so the lost-node test sees the job end instead of starting again.
SlurmdTimeout=$SLURMD_TIMEOUT
MessageTimeout=5
JobRequeue=0

StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
TmpFS=$DIR/tmp/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

NodeName=node[1-3] NodeAddr=$SUBNET.[1-3] CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=multi Nodes=ALL Default=YES MaxTime=10 State=UP
CONF
    mv "$CONF.tmp" "$CONF"
    # Open MPI: the nodes by address, two slots each (the scheduling rank 0 plus workers).
    for n in "${NODES[@]}"; do echo "$(node_addr "$n") slots=2"; done > "$DIR/hostfile"
    cat > "$DIR/env.sh" <<ENV
# source this: clients of the multi-node cluster, Open MPI on TCP between the nodes
export SLURM_CONF=$CONF
export OMPI_MCA_btl=self,tcp OMPI_MCA_pml=ob1
export OMPI_MCA_btl_tcp_if_include=$SUBNET.0/24 OMPI_MCA_oob_tcp_if_include=$SUBNET.0/24
ENV
}

ensure_munge_key() {
    id munge >/dev/null 2>&1 || fail "no 'munge' user (apt-get install munge)"
    if [ ! -s "$MUNGE_KEY" ]; then
        log "creating $MUNGE_KEY"
        install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
            chown munge:munge "$MUNGE_KEY"
            chmod 0400 "$MUNGE_KEY"
        fi
    fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
munge_works() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
slurmctld_up() { running_pid slurmctld >/dev/null && scontrol ping; }
nodes_idle() {
    local states
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | tr '\n' ' ')
    [ "$states" = "node1 idle node2 idle node3 idle " ]
}

# Start slurmd for node $1 in its network namespace and in a UTS namespace named after it.
start_slurmd() {
    local n=$1
    nsenter --net="/run/netns/$n" -- unshare --uts -- \
        /bin/sh -c 'hostname "$1" && shift && exec "$@"' sh "$n" \
        slurmd -N "$n" -f "$CONF" 9>&-
}

all_up() {
    local d n
    for d in "${DAEMONS[@]}"; do running_pid "$d" >/dev/null || return 1; done
    for n in "${NODES[@]}"; do netns_exists "$n" || return 1; done
    link_exists "$BRIDGE"
}

anything_left() {
    local d n
    for d in "${DAEMONS[@]}"; do running_pid "$d" >/dev/null && return 0; done
    for n in "${NODES[@]}"; do netns_exists "$n" && return 0; link_exists "$(veth "$n")" && return 0; done
    link_exists "$BRIDGE"
}

do_up() {
    local t0 t1 n
    t0=$(now_ms)
    if all_up && nodes_idle; then
        log "already up: $(describe)"
        return 0
    fi
    if anything_left; then
        log "partly up: tearing the rest down before a clean start"
        do_down
        t0=$(now_ms)
    fi
    ensure_tools
    [ -e /run/netns ] || mkdir -p /run/netns
    for p in $CTL_PORT $NODE_PORT; do
        port_busy "$p" && fail "port $p is in use on 127.0.0.1 (another cluster?)"
    done
    local f
    for f in "$DIR/log/slurmctld.log" "$DIR"/log/slurmd-node*.log "$MUNGE_DIR/munged.log"; do
        [ -f "$f" ] && mv -f "$f" "$f.old"
    done

    build_network
    t1=$(now_ms)
    log "network: bridge $BRIDGE $SUBNET.254/24, namespaces ${NODES[*]} at $SUBNET.1-3 ($((t1 - t0)) ms)"

    ensure_munge_key
    install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
    write_conf
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$(pid_file munged)" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        --key-file="$MUNGE_KEY" 9>&- || fail "munged did not start"
    wait_for 10 munge_works || fail "munged does not answer on $MUNGE_SOCKET"

    # -c: a clean controller state (no jobs or node states of an earlier run)
    slurmctld -c -f "$CONF" 9>&- || fail "slurmctld did not start"
    wait_for 15 slurmctld_up || fail "slurmctld does not answer 'scontrol ping'"
    wait_for 5 network_works || fail "the namespaces cannot reach $SUBNET.254:$CTL_PORT"
    for n in "${NODES[@]}"; do
        start_slurmd "$n" || fail "slurmd of $n did not start"
    done
    wait_for "$START_TIMEOUT" nodes_idle \
        || fail "nodes not idle after ${START_TIMEOUT}s: $(sinfo -h -N -o '%N %T %E' 2>&1 | tr '\n' ';')"
    for f in "${DAEMONS[@]}"; do
        running_pid "$f" >/dev/null || fail "$f is not running after start"
    done
    log "up in $(( $(now_ms) - t0 )) ms: $(describe)"
    log "use: source $DIR/env.sh (SLURM_CONF=$CONF); Open MPI: --hostfile $DIR/hostfile" \
        "--mca plm_rsh_agent $(cd "$(dirname "$0")" && pwd)/multinode_rsh.sh"
}

describe() {
    local d out=""
    for d in "${DAEMONS[@]}"; do
        out+="$d $(running_pid "$d" || echo '-') "
    done
    echo "PIDs: $out; SLURM_CONF=$CONF"
}

# ------------------------------------------------------------------- down
stop_pid() {   # stop_pid NAME PID: TERM, up to 10 s, then KILL
    local name=$1 pid=$2 comm t0
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    t0=$(now_ms)
    while [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]; do
        is_zombie "$pid" && break    # gone for our purposes
        if [ $(( $(now_ms) - t0 )) -ge 10000 ]; then
            log "$name (PID $pid) ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.05
    done
}

cancel_jobs() {
    running_pid slurmctld >/dev/null || return 0
    local jobs
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null) || return 0
    [ -n "$jobs" ] || return 0
    log "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    wait_for 8 test -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" || log "some jobs did not end in 8 s"
}

# Every process still living in one of our namespaces (job steps, orted, ranks, a slurmd
# whose PID file is gone): they belong to this cluster. TERM, then KILL what is left.
kill_namespace_processes() {
    local n pids=() pid t0
    for n in "${NODES[@]}"; do
        netns_exists "$n" || continue
        for pid in $(ip netns pids "$n" 2>/dev/null); do pids+=("$pid"); done
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    log "stopping ${#pids[@]} process(es) left in the namespaces: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    t0=$(now_ms)
    while [ $(( $(now_ms) - t0 )) -lt 1500 ]; do
        local alive=0
        for pid in "${pids[@]}"; do
            [ -d "/proc/$pid" ] && ! is_zombie "$pid" && alive=1
        done
        [ $alive = 0 ] && return 0
        sleep 0.05
    done
    for n in "${NODES[@]}"; do
        netns_exists "$n" || continue
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    sleep 0.2
}

do_down() {
    local t0 d pid n
    t0=$(now_ms)
    cancel_jobs
    for d in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$d"); then
            stop_pid "$d" "$pid"
        fi
        rm -f "$(pid_file "$d")"
    done
    kill_namespace_processes
    # (deleting a namespace also deletes its veth pair, a moment later: either may win)
    for n in "${NODES[@]}"; do
        if netns_exists "$n"; then ip netns del "$n" 2>/dev/null || log "could not delete namespace $n"; fi
        if link_exists "$(veth "$n")"; then ip link del "$(veth "$n")" 2>/dev/null || true; fi
    done
    if link_exists "$BRIDGE"; then ip link del "$BRIDGE" 2>/dev/null || true; fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    if anything_left; then
        log "ERROR: not everything is gone: $(do_status 2>&1 | tr '\n' ' ')"
        return 1
    fi
    log "down in $(( $(now_ms) - t0 )) ms"
}

do_status() {
    local d n pid up=1
    for d in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$d"); then log "$d running (PID $pid)"; else log "$d not running"; up=0; fi
    done
    for n in "${NODES[@]}"; do
        if netns_exists "$n"; then
            log "namespace $n: $(ip -n "$n" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}'), $(ip netns pids "$n" | wc -l) process(es)"
        else
            log "namespace $n: absent"; up=0
        fi
    done
    link_exists "$BRIDGE" && log "bridge $BRIDGE present" || { log "bridge $BRIDGE absent"; up=0; }
    if [ $up = 1 ]; then
        sinfo -N -o '%N %T %c %m' 2>&1 || true
        return 0
    fi
    anything_left && echo "partly up (run 'down')" || echo "not running"
    return 3
}

[ $# -eq 1 ] || { echo "usage: $0 up|down|status" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (namespaces, daemons)" >&2; exit 1; }
mkdir -p "$DIR"
# One up/down at a time. The daemons get 9>&- so they do not hold the lock.
exec 9>"$DIR/.lock"
flock -w 120 9 || { echo "$0: $DIR/.lock is held by another up/down" >&2; exit 1; }
case $1 in
    up)     do_up ;;
    down)   do_down ;;
    status) do_status ;;
    *)      echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
