#!/usr/bin/env bash
# condor-down.sh -- (htex CI) stop the HTCondor pool started by condor-up.sh: SIGTERM to
# the condor_master PID recorded in /run/condor-ci/condor_master.pid (it shuts
# its daemons and jobs down), then SIGKILL to any process left whose root
# directory is the condor-ci rootfs (only the pool's own processes have it).
# Never kills by name. Idempotent.
#   --purge          also clear the job queue, history and logs
#   --purge-rootfs   also delete the trixie rootfs (next condor-up rebuilds it)
#   --remove-wrappers  also delete /usr/local/bin/condor-ci-exec and its links
set -uo pipefail
ROOTFS="${CONDOR_CI_ROOT:-/var/lib/condor-ci/rootfs}"
RUN=/run/condor-ci
[ "$(id -u)" = 0 ] || { echo "condor-down.sh must run as root" >&2; exit 1; }

alive() { [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
in_rootfs_pids() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$r" = "$ROOTFS" ] && alive "${p#/proc/}" && echo "${p#/proc/}"
    done
}

pid=$(cat "$RUN/condor_master.pid" 2>/dev/null || true)
if [ -n "$pid" ] && alive "$pid" && [ "$(cat /proc/$pid/comm 2>/dev/null)" = condor_master ]; then
    echo "[condor-down] stopping condor_master (pid $pid)"
    kill "$pid"
    for i in $(seq 1 150); do alive "$pid" || break; sleep 0.2; done
    alive "$pid" && { echo "[condor-down] condor_master ignored SIGTERM; SIGKILL"; kill -9 "$pid"; }
fi
rm -f "$RUN/condor_master.pid"
# leftovers of the pool (daemons, starters, jobs) -- give them a moment first
for i in $(seq 1 25); do [ -z "$(in_rootfs_pids)" ] && break; sleep 0.2; done
left=$(in_rootfs_pids)
if [ -n "$left" ]; then
    echo "[condor-down] killing leftover pool processes: $(echo $left)"
    kill -9 $left 2>/dev/null
fi

case " $* " in *" --purge "*|*" --purge-rootfs "*)
    echo "[condor-down] clearing job queue, history and logs"
    rm -rf "$ROOTFS"/var/spool/condor/* "$ROOTFS"/var/log/condor/* "$ROOTFS"/var/lib/condor/execute/* ;;
esac
case " $* " in *" --purge-rootfs "*)
    # safety: nothing may be mounted below the rootfs in this namespace
    if findmnt -rn -o TARGET | grep -q "^$ROOTFS"; then
        echo "[condor-down] refusing to delete $ROOTFS: something is mounted below it" >&2; exit 1
    fi
    echo "[condor-down] deleting $ROOTFS"
    rm -rf --one-file-system "$ROOTFS" ;;
esac
case " $* " in *" --remove-wrappers "*)
    for f in /usr/local/bin/condor_*; do [ "$(readlink "$f")" = condor-ci-exec ] && rm -f "$f"; done
    rm -f /usr/local/bin/condor-ci-exec ;;
esac
echo "[condor-down] done"
exit 0
