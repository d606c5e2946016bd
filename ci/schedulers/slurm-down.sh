#!/usr/bin/env bash
# slurm-down.sh -- stop the daemons slurm-up.sh started, by the PIDs it recorded
# in /run/slurm-ci/*.pid (never by name). Idempotent.
#   --purge   also delete controller state, slurmd spools and the private
#             accounting database (the next slurm-up.sh starts at job id 1)
set -uo pipefail
RUN=/run/slurm-ci
[ "$(id -u)" = 0 ] || { echo "slurm-down.sh must run as root" >&2; exit 1; }

stop() {  # stop NAME COMM: TERM the recorded PID if it is still COMM, KILL after 15 s
    local pid i st
    pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 0
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
        echo "[slurm-down] stopping $1 (pid $pid)"
        kill "$pid" 2>/dev/null
        for i in $(seq 1 150); do
            st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || break
            [ "$st" = Z ] && break          # dead; PID 1 reaps it later
            sleep 0.1
        done
        if st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) && [ "$st" != Z ]; then
            echo "[slurm-down] $1 (pid $pid) ignored SIGTERM; SIGKILL"
            kill -9 "$pid" 2>/dev/null
        fi
    fi
    rm -f "$RUN/$1.pid"
}

# compute nodes first, then the controller, accounting, database, munge
for pf in "$RUN"/slurmd-*.pid "$RUN"/slurmd.pid; do [ -e "$pf" ] && stop "$(basename "$pf" .pid)" slurmd; done
stop slurmctld slurmctld
stop slurmdbd slurmdbd
stop mariadbd mariadbd
stop munged munged
if [ "${1:-}" = "--purge" ]; then
    echo "[slurm-down] purging state"
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/lib/slurm-ci/mysql
fi
echo "[slurm-down] done"
exit 0
