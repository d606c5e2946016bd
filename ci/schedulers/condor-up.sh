#!/usr/bin/env bash
# condor-up.sh -- (htex CI, adapted from shared/schedulers) run a real single-machine ("personal") HTCondor pool on
# loopback, for CI. Must run as root.
#
# Debian bookworm has no HTCondor package (and PyPI's `htcondor` wheel has only
# the Python bindings, no daemons). Debian trixie has condor 23.9.6, but it
# needs glibc >= 2.38, so it cannot be installed on bookworm. We therefore:
#   1. build a minimal Debian trixie root file system with `condor` in it, with
#      mmdebstrap from Debian's own archive (~35 s, ~310 MB, once per machine);
#   2. run condor_master inside it (chroot) in a private mount namespace in
#      which /tmp /var/tmp /root /home /opt /mnt of the host, and the top folder
#      of the directory the script is called from, are
#      bind-mounted, so submit files, job scripts and interpreters have the
#      same paths inside and outside (nothing is mounted in the host namespace);
#   3. install wrappers /usr/local/bin/condor_{submit,q,rm,status,history,...}
#      that run the real command inside that namespace + chroot, in the
#      caller's current directory.
# HTCondor refuses jobs owned by root ("Cannot allocate a cluster id"), so
# when root calls a wrapper the command runs as the unprivileged user
# $CONDOR_CI_USER (default condorci, uid 2900, created on host and in the
# rootfs). Jobs therefore run as condorci: submit files, the directory of
# the user log and of output/error files must be readable/writable by it.
#
# Environment knobs (all optional):
#   CONDOR_CI_ROOT=/var/lib/condor-ci/rootfs   where the trixie rootfs lives
#   CONDOR_CI_SUITE=trixie                     Debian suite to take condor from
#   CONDOR_CI_MIRROR=http://deb.debian.org/debian
#   CONDOR_CI_USER=condorci CONDOR_CI_UID=2900 the unprivileged job owner
#   CONDOR_CI_CPUS=N        CPUs the startd advertises (default nproc; may be more)
#   CONDOR_CI_MEM_MB=N      memory the startd advertises (default: detected)
#   CONDOR_CI_BINDS="..."   extra host directories to bind into the rootfs
#   CONDOR_CI_OPEN_ROOT=1   chmod o+x /root so condorci can reach the pyenv interpreters
#                           (set 0 to leave /root alone)
#   CONDOR_CI_TIMEOUT=90    seconds to wait for the pool
# The PID of condor_master is recorded in /run/condor-ci/condor_master.pid;
# condor-down.sh stops exactly that process tree.
set -euo pipefail

ROOTFS="${CONDOR_CI_ROOT:-/var/lib/condor-ci/rootfs}"
SUITE="${CONDOR_CI_SUITE:-trixie}"
MIRROR="${CONDOR_CI_MIRROR:-http://deb.debian.org/debian}"
CUSER="${CONDOR_CI_USER:-condorci}"
CUID="${CONDOR_CI_UID:-2900}"
CPUS="${CONDOR_CI_CPUS:-$(nproc)}"
MEM_MB="${CONDOR_CI_MEM_MB:-}"
TIMEOUT="${CONDOR_CI_TIMEOUT:-90}"
OPEN_ROOT="${CONDOR_CI_OPEN_ROOT:-1}"
TOPDIR="$(pwd -P | cut -d/ -f2)"   # the caller's tree (e.g. a CI clone) must be visible to jobs
case "$TOPDIR" in ""|tmp|var|root|home|opt|mnt|usr|etc|proc|sys|dev|run|bin|sbin|lib*|boot) TOPDIR="" ;; *) TOPDIR="/$TOPDIR" ;; esac
BINDS="/tmp /var/tmp /root /home /opt /mnt $TOPDIR ${CONDOR_CI_BINDS:-}"
RUN=/run/condor-ci
WRAPPER=/usr/local/bin/condor-ci-exec
COMMANDS="condor_submit condor_q condor_rm condor_status condor_history condor_hold
          condor_release condor_qedit condor_wait condor_config_val condor_reconfig
          condor_userprio condor_version condor_who condor_tail condor_transfer_data
          condor_watch_q condor_submit_dag condor_ping"

T0=$(date +%s%N)
log() { printf '[condor-up %5.1fs] %s\n' "$(( ($(date +%s%N) - T0) / 1000000 ))e-3" "$*"; }
die() {
    log "ERROR: $*"
    for f in "$RUN/condor_master.out" "$ROOTFS"/var/log/condor/{MasterLog,SchedLog,StartLog,CollectorLog}; do
        [ -f "$f" ] && { echo "--- tail $f"; tail -n 15 "$f"; }
    done
    exit 1
}
[ "$(id -u)" = 0 ] || { echo "condor-up.sh must run as root" >&2; exit 1; }
mkdir -p "$RUN"

master_alive() {
    local pid
    pid=$(cat "$RUN/condor_master.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = condor_master ] &&
        [ "$(awk '{print $3}' /proc/$pid/stat 2>/dev/null)" != Z ]
}
# run a command inside the pool's namespace + chroot (as root)
inside() { nsenter -t "$(cat "$RUN/condor_master.pid")" -m -r -w -- "$@"; }
wait_for() {
    local secs=$1; shift
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.25
    done
}

# ------------------------------------------------------------------ host side
HN=$(hostname)
if ! getent hosts "$HN" >/dev/null; then
    echo "127.0.0.1 $HN" >> /etc/hosts
    log "added '127.0.0.1 $HN' to /etc/hosts"
fi
if ! getent passwd "$CUSER" >/dev/null; then
    groupadd -g "$CUID" "$CUSER" 2>/dev/null || groupadd "$CUSER"
    useradd -m -u "$CUID" -g "$CUSER" -s /bin/bash "$CUSER"
    log "created host user $CUSER"
fi
CUID=$(id -u "$CUSER"); CGID=$(id -g "$CUSER")
if [ "$OPEN_ROOT" = 1 ] && [ -d /root ]; then chmod o+x /root; fi

# ------------------------------------------------------------------ rootfs
if [ ! -x "$ROOTFS/usr/sbin/condor_master" ]; then
    if ! command -v mmdebstrap >/dev/null; then
        log "installing mmdebstrap"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
    fi
    log "building $SUITE rootfs with condor in $ROOTFS (takes ~35 s)"
    rm -rf "$ROOTFS.tmp"; mkdir -p "$(dirname "$ROOTFS")"
    mmdebstrap --quiet --variant=minbase --include=condor,util-linux \
        --aptopt='APT::Install-Recommends "false"' \
        "$SUITE" "$ROOTFS.tmp" "$MIRROR" >"$RUN/mmdebstrap.log" 2>&1 \
        || { tail -n 30 "$RUN/mmdebstrap.log"; die "mmdebstrap failed"; }
    rm -rf "$ROOTFS"; mv "$ROOTFS.tmp" "$ROOTFS"
fi
log "rootfs ready ($(chroot "$ROOTFS" condor_version | head -n1 | awk '{print $2}'))"

# name resolution and the job owner inside the rootfs
cp /etc/hosts "$ROOTFS/etc/hosts"
echo "$HN" > "$ROOTFS/etc/hostname"
if ! chroot "$ROOTFS" getent passwd "$CUSER" >/dev/null; then
    chroot "$ROOTFS" groupadd -g "$CGID" "$CUSER" 2>/dev/null || true
    chroot "$ROOTFS" useradd -M -d "/home/$CUSER" -u "$CUID" -g "$CGID" -s /bin/bash "$CUSER"
fi
for d in $BINDS; do mkdir -p "$ROOTFS$d"; done

if [ -z "$MEM_MB" ]; then MEM_MB=$(awk '/^MemTotal:/ {printf "%d", $2/1024*0.9}' /proc/meminfo); fi
conf_tmp=$(mktemp)
cat > "$conf_tmp" <<EOF
# Generated by condor-up.sh: single-machine pool on loopback for CI
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = False
# without this, clients reach the daemons over IPv6 and host-based
# authorization of 127.0.0.1 denies them
ENABLE_IPV6 = False
use ROLE : CentralManager
use ROLE : Submit
use ROLE : Execute
use SECURITY : HOST_BASED
ALLOW_ADMINISTRATOR = 127.0.0.1 \$(IP_ADDRESS)
ALLOW_NEGOTIATOR = 127.0.0.1 \$(IP_ADDRESS)
ALLOW_DAEMON = 127.0.0.1 \$(IP_ADDRESS)
use FEATURE : PartitionableSlot
NUM_CPUS = $CPUS
MEMORY = $MEM_MB
# always run jobs, never suspend or preempt them
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE
RUNBENCHMARKS = False
# the starter cannot unshare a mount namespace inside the chroot
# ("Failed to unshare the mount namespace", errno 22)
MOUNT_UNDER_SCRATCH =
# fast scheduling for tests
SCHEDD_INTERVAL = 2
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 1
NEGOTIATOR_MIN_INTERVAL = 1
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
UPDATE_INTERVAL = 2
EOF
CONF="$ROOTFS/etc/condor/config.d/50-ci-personal.config"

# ------------------------------------------------------------------ wrappers
cat > "$WRAPPER.tmp" <<EOF
#!/bin/sh
# Generated by condor-up.sh: run an HTCondor command inside the condor-ci
# rootfs/namespace, in the caller's directory. Called by root, the command runs
# as $CUSER (HTCondor refuses jobs owned by root); CONDOR_CI_AS_ROOT=1 keeps root.
name=\$(basename "\$0")
if [ "\$name" = condor-ci-exec ]; then name=\$1; shift; fi
pid=\$(cat $RUN/condor_master.pid 2>/dev/null)
if [ -z "\$pid" ] || [ "\$(cat /proc/\$pid/comm 2>/dev/null)" != condor_master ]; then
    echo "condor-ci: HTCondor is not running (run condor-up.sh)" >&2; exit 1
fi
if [ "\$(id -u)" != 0 ]; then
    echo "condor-ci: the condor_* wrappers must be called by root" >&2; exit 1
fi
if [ "\${CONDOR_CI_AS_ROOT:-0}" != 1 ]; then
    set -- setpriv --reuid=$CUID --regid=$CGID --init-groups \\
        env HOME=/home/$CUSER USER=$CUSER LOGNAME=$CUSER "\$name" "\$@"
else
    set -- "\$name" "\$@"
fi
exec nsenter -t "\$pid" -m -r -w -- env -u CONDOR_CONFIG /bin/sh -c '
    cd "\$1" 2>/dev/null || { echo "condor-ci: \$1 is not visible inside the condor rootfs (bind-mounted: $BINDS)" >&2; cd /; }
    shift; exec "\$@"' sh "\$PWD" "\$@"
EOF
chmod 755 "$WRAPPER.tmp"; mv "$WRAPPER.tmp" "$WRAPPER"
for c in $COMMANDS; do
    [ -x "$ROOTFS/usr/bin/$c" ] || continue
    t=/usr/local/bin/$c
    if [ -e "$t" ] && [ "$(readlink "$t")" != condor-ci-exec ]; then
        log "warning: $t exists and is not ours; not replacing it"; continue
    fi
    ln -sfn condor-ci-exec "$t"
done

# ------------------------------------------------------------------ up already?
healthy() {
    master_alive || return 1
    [ "$(inside condor_status -af Name 2>/dev/null | wc -l)" -ge 1 ] || return 1
    inside condor_q -totals >/dev/null 2>&1
}
if cmp -s "$conf_tmp" "$CONF" && healthy; then
    rm -f "$conf_tmp"; log "already up"; exit 0
fi
mv "$conf_tmp" "$CONF"; chmod 644 "$CONF"

# ------------------------------------------------------------------ (re)start
# stop a running master and any orphaned pool processes (e.g. after a crash)
master_alive && log "restarting condor_master"
"$(dirname "$0")/condor-down.sh" >/dev/null 2>&1 || true
rm -f "$RUN/condor_master.pid"
# private mount namespace: bind mounts exist only for the pool's processes and
# vanish with them; exec chain unshare -> sh -> chroot -> condor_master keeps
# the PID, so $! is condor_master's PID.
setsid unshare -m --propagation private -- sh -c '
    R=$1; shift
    mount --rbind /dev "$R/dev"
    mount -t proc proc "$R/proc"
    mount -t sysfs sysfs "$R/sys" 2>/dev/null || true
    for d in "$@"; do
        [ -d "$d" ] && mount --rbind "$d" "$R$d"
    done
    exec chroot "$R" /usr/sbin/condor_master -f
' sh "$ROOTFS" $BINDS </dev/null >"$RUN/condor_master.out" 2>&1 &
echo $! > "$RUN/condor_master.pid"
wait_for 10 master_alive || die "condor_master did not start"
log "condor_master started (pid $(cat "$RUN/condor_master.pid"))"
wait_for "$TIMEOUT" sh -c "[ \$(nsenter -t $(cat "$RUN/condor_master.pid") -m -r -w -- condor_status -af Name 2>/dev/null | wc -l) -ge 1 ]" \
    || die "no slot in the collector after ${TIMEOUT}s"
wait_for "$TIMEOUT" inside condor_q -totals || die "schedd does not answer"
log "HTCondor is up"
inside condor_status
