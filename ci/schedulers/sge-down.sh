#!/usr/bin/env bash
# sge-down.sh -- (htex CI) stop the Grid Engine daemons that sge-up.sh started, by the
# PIDs it recorded in /run/sge-ci/*.pid (never by name). Idempotent.
#   --purge   also delete the cell and spool (next sge-up re-creates it)
set -uo pipefail
RUN=/run/sge-ci
[ "$(id -u)" = 0 ] || { echo "sge-down.sh must run as root" >&2; exit 1; }
stop() {
    local pf="$RUN/$1.pid" pid i st
    [ -s "$pf" ] || return 0
    pid=$(cat "$pf")
    if [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
        echo "[sge-down] stopping $1 (pid $pid)"
        kill "$pid" 2>/dev/null
        for i in $(seq 1 200); do
            st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || break
            [ "$st" = Z ] && break
            sleep 0.1
        done
        st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) && [ "$st" != Z ] && {
            echo "[sge-down] $1 (pid $pid) ignored SIGTERM; sending SIGKILL"; kill -9 "$pid" 2>/dev/null; }
    fi
    rm -f "$pf"
}
stop execd sge_execd
stop qmaster sge_qmaster
if [ "${1:-}" = "--purge" ]; then
    echo "[sge-down] purging cell and spool"
    rm -rf /var/spool/gridengine/spooldb/* /var/spool/gridengine/qmaster/* /var/spool/gridengine/execd/* \
           /var/lib/gridengine/default "$RUN"
fi
echo "[sge-down] done"
exit 0
