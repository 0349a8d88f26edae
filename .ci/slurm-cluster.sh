# A real single-node SLURM on this machine, for the SLURM CI study (.ci/slurm-study sources this).
#   slurm_up     installs slurm-wlm and munge if missing (apt-get), writes /etc/slurm/slurm.conf if
#                it has none, starts munged (as user munge), slurmctld and slurmd unless they run, and
#                waits until the node takes jobs; idempotent
#   slurm_down   stops exactly the daemons slurm_up started, by PID, and removes the slurm.conf it
#                wrote (with a slurm.conf and no controller, every `scontrol` waits 9 s for one, and
#                the SLURM executor plugin calls it whenever Snakemake starts)
# No systemd here: the daemons are started by hand. One node with this machine's CPUs and memory,
# no cgroups (proctrack/linuxproc, task/none), no accounting database; MinJobAge is high so that
# squeue still knows a finished job (the plugin's status query on clusters without sacct).

SLURM_STARTED=${SLURM_STARTED:-/run/propetl-ci-slurm.started}
SLURM_CONF=/etc/slurm/slurm.conf

_slurm_log() { echo "slurm-cluster: $*" >&2; }

_slurm_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat <<EOF
# Written by propetl-bench .ci/slurm-cluster.sh: a single-node SLURM for CI.
ClusterName=propetl-ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MinJobAge=86400
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

# Start a daemon unless its process runs; remember the ones started here (name pid).
_slurm_start() {
    local name=$1 pidfile=$2
    shift 2
    if pgrep -x -r S,R,D,T,I "$name" > /dev/null; then  # a zombie of an earlier run does not count
        _slurm_log "$name already runs; leaving it alone"
        return
    fi
    "$@"
    for _ in $(seq 50); do
        [[ -s $pidfile ]] && break
        sleep 0.2
    done
    [[ -s $pidfile ]] || { _slurm_log "$name did not start (no $pidfile)"; return 1; }
    echo "$name $(cat "$pidfile")" >> "$SLURM_STARTED"
    _slurm_log "started $name (pid $(cat "$pidfile"))"
}

slurm_up() {
    if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
        _slurm_log "installing slurm-wlm and munge"
        apt-get update -qq > /dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge > /dev/null
    fi
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
    install -d -o munge -g munge -m 0755 /run/munge
    # ours (first line) is rewritten for this machine's name, CPUs and memory; a site's own is kept
    if [[ ! -f $SLURM_CONF ]] || head -n1 "$SLURM_CONF" | grep -q "propetl-bench"; then
        _slurm_conf > "$SLURM_CONF"
        _slurm_log "wrote $SLURM_CONF"
    else
        _slurm_log "$SLURM_CONF is not ours; using it as it is"
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    : > "$SLURM_STARTED"
    _slurm_start munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
    _slurm_start slurmctld /run/slurm/slurmctld.pid /usr/sbin/slurmctld
    _slurm_start slurmd /run/slurm/slurmd.pid /usr/sbin/slurmd
    local state
    for _ in $(seq 60); do
        state=$(sinfo -h -N -o %T 2> /dev/null | head -n1)
        case $state in
            idle|mixed|allocated) _slurm_log "node is $state"; return 0 ;;
            down*|drain*) scontrol update nodename="$(hostname -s)" state=resume 2> /dev/null || true ;;
        esac
        sleep 1
    done
    _slurm_log "the node never became idle (state: ${state:-none}); see /var/log/slurm/"
    return 1
}

slurm_down() {
    [[ -f $SLURM_STARTED ]] || return 0
    local name pid
    # reverse order: slurmd, slurmctld, then munged
    tac "$SLURM_STARTED" | while read -r name pid; do
        if kill "$pid" 2> /dev/null; then
            _slurm_log "stopped $name (pid $pid)"
        fi
    done
    if [[ -f $SLURM_CONF ]] && head -n1 "$SLURM_CONF" | grep -q "propetl-bench"; then
        rm -f "$SLURM_CONF"
        _slurm_log "removed $SLURM_CONF"
    fi
    rm -f "$SLURM_STARTED"
}
