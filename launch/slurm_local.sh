#!/usr/bin/env bash
# A single-host SLURM cluster on 127.0.0.1 for development and tests: munged, slurmctld and one slurmd per node
# (several nodes on one host, each its own slurmd and port, so multi-node jobs run for real), all with their config,
# keys, sockets, logs and state in one directory, so nothing under /etc or /run is touched.
#
#   launch/slurm_local.sh start    # installs Debian's slurm-wlm + munge if missing (root), starts the daemons
#   launch/slurm_local.sh status   # daemons, node and queue
#   launch/slurm_local.sh env      # `eval "$(launch/slurm_local.sh env)"` points sbatch/squeue/... at this cluster
#   launch/slurm_local.sh stop     # cancels jobs, then stops the daemons by the pids they recorded
#
# Environment: SLURM_LOCAL_DIR (state directory, default /tmp/slurm-local), SLURM_LOCAL_NODES (default 2),
# SLURM_LOCAL_CPUS (per node, default 2), SLURM_LOCAL_MEMORY_MB (per node, default 8192), SLURM_LOCAL_CTLD_PORT
# (default 6817), SLURM_LOCAL_SLURMD_PORT (first node's port, default 6818; node k uses that + k - 1).
# Nodes are node1..nodeN, all at 127.0.0.1, in the default partition `debug`; requeue is enabled. Keep the state
# directory between runs: job ids then keep increasing, so run directories named after job ids never collide.
set -euo pipefail

STATE_DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
NODES=${SLURM_LOCAL_NODES:-2}
CPUS=${SLURM_LOCAL_CPUS:-2}
MEMORY_MB=${SLURM_LOCAL_MEMORY_MB:-8192}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
START_TIMEOUT_S=60

CONF=$STATE_DIR/etc/slurm.conf
MUNGE_SOCKET=$STATE_DIR/munge/munged.sock
MUNGE_PID=$STATE_DIR/run/munged.pid
CTLD_PID=$STATE_DIR/run/slurmctld.pid
NODE_NAMES=$(seq -f 'node%g' 1 "$NODES")

export SLURM_CONF=$CONF

die() { echo "slurm_local: $*" >&2; exit 1; }
log() { echo "slurm_local: $*" >&2; }

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them (apt-get install slurm-wlm munge) or run as root"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_config() {
    mkdir -p "$STATE_DIR"/{etc,munge,run,log,spool/ctld}
    local node
    for node in $NODE_NAMES; do mkdir -p "$STATE_DIR/spool/d-$node"; done
    chmod 700 "$STATE_DIR/munge"
    if [ ! -s "$STATE_DIR/munge/munge.key" ]; then
        # Same key for every daemon and client on this host: that is all munge authentication needs here.
        dd if=/dev/urandom of="$STATE_DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$STATE_DIR/munge/munge.key"
    cat >"$CONF" <<EOF
# Written by launch/slurm_local.sh; rewritten on every start.
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE_DIR/spool/ctld
# %n: one spool directory, pid file and log per node (slurmd).
SlurmdSpoolDir=$STATE_DIR/spool/d-%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
# No cgroup hierarchy is assumed (containers): track processes by ancestry, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Look for newly eligible jobs (e.g. requeued ones) every few seconds rather than every 30-60 s.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the node line below rather than the probed hardware, so CPUs=$CPUS works on any host.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Keep finished jobs visible to scontrol (no accounting database here) long enough for tests to inspect them.
MinJobAge=600
KillWait=30
NodeName=node[1-$NODES] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$SLURMD_PORT-$((SLURMD_PORT + NODES - 1))] CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP
EOF
}

pid_alive() { [ -s "$1" ] && [ -d "/proc/$(cat "$1")" ]; }  # not kill -0: status works for non-root users too

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll COMMAND until it succeeds or START_TIMEOUT_S passes
    local what=$1; shift
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs in $STATE_DIR/log)"
        sleep 0.5
    done
}

slurmd_pidfiles() { ls "$STATE_DIR"/run/slurmd-*.pid 2>/dev/null; }

all_slurmd_alive() {
    local node
    for node in $NODE_NAMES; do pid_alive "$STATE_DIR/run/slurmd-$node.pid" || return 1; done
}

nodes_ready() {  # every slurmd running, every node registered and usable
    all_slurmd_alive && [ "$(sinfo -h -N -p debug -o '%N %t' | grep -cE ' (idle|mix|alloc)$')" -eq "$NODES" ]
}

start() {
    [ "$(id -u)" -eq 0 ] || die "slurmd must run as root to start jobs; run this script as root"
    install_packages
    if pid_alive "$MUNGE_PID" && pid_alive "$CTLD_PID" && all_slurmd_alive; then
        log "already running ($STATE_DIR)"
        return 0
    fi
    stop_daemons
    write_config
    munged --force --key-file="$STATE_DIR/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_PID" \
        --log-file="$STATE_DIR/log/munged.log" --seed-file="$STATE_DIR/munge/munged.seed"
    wait_for munged test -S "$MUNGE_SOCKET"
    slurmctld -f "$CONF"
    wait_for slurmctld scontrol ping
    local node
    for node in $NODE_NAMES; do slurmd -f "$CONF" -N "$node"; done
    wait_for "the nodes to register" sinfo -h
    # Nodes that were up when the cluster was last stopped come back DOWN; they are ours, so resume them.
    if ! nodes_ready; then
        scontrol update NodeName="node[1-$NODES]" State=RESUME >/dev/null 2>&1 || true
    fi
    wait_for "$NODES idle node(s)" nodes_ready
    log "running: SLURM_CONF=$CONF (partition debug, nodes node[1-$NODES] at 127.0.0.1, $CPUS CPUs each)"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM the recorded pid, SIGKILL after 20 s
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) ignored SIGTERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

stop_daemons() {
    local pidfile
    for pidfile in $(slurmd_pidfiles); do stop_pidfile slurmd "$pidfile"; done
    stop_pidfile slurmctld "$CTLD_PID"
    stop_pidfile munged "$MUNGE_PID"
}

stop() {
    if pid_alive "$CTLD_PID" && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
        # Cancel through SLURM so job steps end cleanly instead of being orphaned by a dead slurmd.
        squeue -h -o %i | xargs scancel
        local deadline=$((SECONDS + 40))
        while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    fi
    stop_daemons
    log "stopped"
}

status() {  # one line per daemon; exit status 0 only when all of them run
    local name pidfile node all_running=0 pidfiles=("$MUNGE_PID" "$CTLD_PID")
    for node in $NODE_NAMES; do pidfiles+=("$STATE_DIR/run/slurmd-$node.pid"); done
    for pidfile in "${pidfiles[@]}"; do
        name=$(basename "$pidfile" .pid)
        if pid_alive "$pidfile"; then
            echo "$name: running (pid $(cat "$pidfile"))"
        else
            echo "$name: stopped"; all_running=1
        fi
    done
    if [ $all_running -eq 0 ]; then
        sinfo
        squeue
    fi
    return $all_running
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 start|stop|status|env" ;;
esac
