#!/usr/bin/env bash
# sge-up.sh -- (htex CI) install (when missing), configure and start a single-node
# (Son of) Grid Engine 8.1.9 cluster on localhost (Debian's gridengine-*),
# without systemd. Idempotent: if it is already up it only checks it.
# Must run as root.
#
# Environment knobs (all optional):
#   SGE_CI_SLOTS=N     slots of all.q@localhost (default: nproc)
#   SGE_CI_FRESH=1     re-create the cell (job ids restart at 1)
#   SGE_CI_TIMEOUT=60  seconds to wait for each daemon
#
# Result: qmaster on localhost:6444, execd on localhost:6445, queue all.q
# (hostlist localhost), parallel environment "smp" ($pe_slots), root may run
# jobs (min_uid 0), scheduler runs every second, no load thresholds.
# Clients (qsub/qstat/qdel/qacct/qconf) need no environment: Debian's wrapper
# defaults to SGE_ROOT=/var/lib/gridengine SGE_CELL=default.
# PIDs of daemons started here are recorded in /run/sge-ci/*.pid;
# sge-down.sh stops exactly those. Adapted for htex from the shared recipe
# (shared/schedulers/sge-up.sh): no bc, and the htex tests rely on queue
# all.q, PE smp and a 1 s scheduler interval.
set -euo pipefail

SLOTS="${SGE_CI_SLOTS:-$(nproc)}"
FRESH="${SGE_CI_FRESH:-0}"
TIMEOUT="${SGE_CI_TIMEOUT:-60}"
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
RUN=/run/sge-ci
CFG=$RUN/config

T0=$(date +%s%N)
log() { printf '[sge-up %5.1fs] %s\n' "$(( ($(date +%s%N) - T0) / 1000000 ))e-3" "$*"; }
die() {
    log "ERROR: $*"
    for f in $SPOOL/qmaster/messages $SPOOL/execd/localhost/messages /tmp/qmaster_messages /tmp/execd_messages; do
        [ -f "$f" ] && { echo "--- tail $f"; tail -n 15 "$f"; }
    done
    exit 1
}
[ "$(id -u)" = 0 ] || { echo "sge-up.sh must run as root" >&2; exit 1; }

alive() {
    local pf="$RUN/$1.pid" pid
    [ -s "$pf" ] || return 1
    pid=$(cat "$pf")
    [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] &&
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
stop() {
    local pf="$RUN/$1.pid" pid i
    if alive "$1" "$2"; then
        pid=$(cat "$pf")
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 200); do alive "$1" "$2" || break; sleep 0.1; done
        alive "$1" "$2" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pf"
}
wait_for() {
    local secs=$1; shift
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.2
    done
}
record() { # record NAME PIDFILE COMM
    local i
    for i in $(seq 1 100); do [ -s "$2" ] && alive_pid "$(cat "$2")" "$3" && break; sleep 0.1; done
    [ -s "$2" ] || die "$1 did not write $2"
    cp "$2" "$RUN/$1.pid"
    alive "$1" "$3" || die "$1 (pid $(cat "$2")) is not running"
}
alive_pid() { [ -d "/proc/$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }

# --------------------------------------------------------------- hostname
# SGE's commlib compares the name a client claims (its hostname) with the
# name its source IP reverse-resolves to (127.0.0.1 -> "localhost") and
# rejects mismatches ("access denied (client IP resolved to host name
# "localhost". This is not identical to clients host name "vm")").
# We therefore use "localhost" as the one SGE host name and declare the real
# hostname an alias of it in host_aliases. The hostname must resolve at all:
HN=$(hostname)
if ! getent hosts "$HN" >/dev/null; then
    echo "127.0.0.1 $HN" >> /etc/hosts
    log "added '127.0.0.1 $HN' to /etc/hosts"
fi

# --------------------------------------------------------------- install
if [ ! -x /usr/lib/gridengine/sge_qmaster ] || [ ! -x /usr/lib/gridengine/sge_execd ] || [ ! -x /usr/lib/gridengine/qsub ]; then
    echo "[sge-up] installing gridengine-master gridengine-exec gridengine-client"
    export DEBIAN_FRONTEND=noninteractive
    debconf-set-selections <<'EOF'
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string localhost
EOF
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gridengine-master gridengine-exec gridengine-client >/dev/null
fi
log "packages present"
mkdir -p "$RUN"

healthy() {
    alive qmaster sge_qmaster && alive execd sge_execd || return 1
    qstat -f -q all.q 2>/dev/null | awk '$1=="all.q@localhost" {found=1; if (NF>5) bad=1} END {exit !(found && !bad)}'
}
if [ "$FRESH" != 1 ] && healthy && [ "$(cat "$RUN/slots" 2>/dev/null)" = "$SLOTS" ] &&
   qconf -sconf global 2>/dev/null | grep -qE '^login_shells +NONE$'; then
    log "already up"; qstat -f; exit 0
fi
stop execd sge_execd
stop qmaster sge_qmaster

# --------------------------------------------------------------- cell
if [ "$FRESH" = 1 ] || [ ! -s "$COMMON/bootstrap" ] || [ -z "$(ls -A $SPOOL/spooldb 2>/dev/null)" ]; then
    log "creating cell $SGE_CELL"
    rm -rf "${SPOOL:?}"/spooldb/* "${SPOOL:?}"/qmaster/* "${SPOOL:?}"/execd/* "$SGE_ROOT/$SGE_CELL"
    for d in $SPOOL/qmaster $SPOOL/qmaster/job_scripts $SPOOL/spooldb $SPOOL/execd \
             $SGE_ROOT/$SGE_CELL $COMMON; do
        mkdir -p "$d"; chown sgeadmin:sgeadmin "$d"; chmod 755 "$d"
    done
    # as gridengine-common's postinst does
    install -m0644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap "$COMMON/bootstrap"
    su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL $SPOOL/spooldb sgeadmin" sgeadmin \
        >"$RUN/init_cluster.log" 2>&1 || { cat "$RUN/init_cluster.log"; die "init_cluster failed"; }
fi
echo localhost > "$COMMON/act_qmaster"
echo "localhost $HN $(hostname -f 2>/dev/null || true)" > "$COMMON/host_aliases"
chown sgeadmin:sgeadmin "$COMMON/act_qmaster" "$COMMON/host_aliases"
mkdir -p /var/run/gridengine && chown sgeadmin:sgeadmin /var/run/gridengine

# --------------------------------------------------------------- qmaster
rm -f $SPOOL/qmaster/qmaster.pid $SPOOL/qmaster/lock
/usr/sbin/sge_qmaster
record qmaster $SPOOL/qmaster/qmaster.pid sge_qmaster
wait_for "$TIMEOUT" qconf -sh || die "qmaster does not answer"
log "qmaster ok"

# --------------------------------------------------------------- configuration
mkdir -p "$CFG"
# global config: allow root (uid/gid 0) jobs, no login shells; file name = config name
qconf -sconf global > "$CFG/global"
sed -i -E 's/^(min_uid|min_gid)( +).*/\1\20/' "$CFG/global"
# Jobs run non-login shells (as under Slurm): a login bash sources root's
# profile, whose `pyenv rehash` waits up to 60 s on a lock file left behind
# whenever a job is killed in the middle of it (seen here: jobs stuck in 'r').
sed -i -E 's/^(login_shells +).*/\1NONE/' "$CFG/global"
qconf -Mconf "$CFG/global" >/dev/null 2>&1 || die "qconf -Mconf failed"
# scheduler: dispatch every second instead of every 15 s
qconf -ssconf > "$CFG/sched"
sed -i -E 's/^(schedule_interval +).*/\10:0:1/; s/^(flush_submit_sec +).*/\11/; s/^(flush_finish_sec +).*/\11/' "$CFG/sched"
qconf -Msconf "$CFG/sched" >/dev/null 2>&1 || die "qconf -Msconf failed"
qconf -sh | grep -qx localhost || qconf -ah localhost >/dev/null 2>&1
qconf -ss 2>/dev/null | grep -qx localhost || qconf -as localhost >/dev/null 2>&1
cat > "$CFG/smp" <<'EOF'
pe_name            smp
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     TRUE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
if qconf -spl 2>/dev/null | grep -qx smp; then op=-Mp; else op=-Ap; fi
qconf $op "$CFG/smp" >/dev/null 2>&1 || die "qconf $op smp failed"
cat > "$CFG/all.q" <<EOF
qname                 all.q
hostlist              localhost
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $SLOTS
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
if qconf -sql 2>/dev/null | grep -qx all.q; then op=-Mq; else op=-Aq; fi
qconf $op "$CFG/all.q" >/dev/null 2>&1 || die "qconf $op all.q failed"
echo "$SLOTS" > "$RUN/slots"
log "configured (all.q: $SLOTS slots, pe smp)"

# --------------------------------------------------------------- execd
mkdir -p $SPOOL/execd && chown sgeadmin:sgeadmin $SPOOL/execd
rm -f $SPOOL/execd/localhost/execd.pid
/usr/sbin/sge_execd
record execd $SPOOL/execd/localhost/execd.pid sge_execd
# ready when the queue instance exists and has no state flag (u = unknown,
# a = alarm, E = error, d = disabled ...)
wait_for "$TIMEOUT" healthy || { qstat -f; die "all.q@localhost not usable"; }
# clear an error state left over from an older run
qmod -c 'all.q@localhost' >/dev/null 2>&1 || true
log "Grid Engine is up"
qstat -f
