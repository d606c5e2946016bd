#!/usr/bin/env bash
# torque-wrappers.sh -- Torque/PBS-style commands (qsub, qstat, qdel, qhold,
# qrls, qalter, pbsnodes) over the Slurm cluster of slurm-up.sh, from Debian's
# slurm-wlm-torque (SchedMD's Perl wrappers). Run it after slurm-up.sh.
#
# This is NOT a PBS/Torque server (none is packaged for Debian): the commands
# translate to sbatch/squeue/scancel and print Torque's layout. The package
# conflicts with gridengine-client (both ship qsub), so it is unpacked into
# /opt/slurm-torque rather than installed: put /opt/slurm-torque/usr/bin first
# in PATH to get it. Idempotent. Must run as root.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "torque-wrappers.sh must run as root" >&2; exit 1; }
DEST=/opt/slurm-torque
[ -x /usr/bin/sbatch ] || { echo "torque-wrappers.sh: Slurm is missing; run slurm-up.sh first" >&2; exit 1; }
if [ ! -x "$DEST/usr/bin/qsub" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! perl -MSlurm -MSlurmdb -MSwitch -e1 2>/dev/null; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends libslurm-perl libslurmdb-perl libswitch-perl >/dev/null
    fi
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download slurm-wlm-torque >/dev/null 2>&1 ||
                    { apt-get update -qq && apt-get download slurm-wlm-torque >/dev/null; }; })
    rm -rf "$DEST"; dpkg -x "$tmp"/slurm-wlm-torque_*.deb "$DEST"; rm -rf "$tmp"
fi
# the wrappers look for sbatch & co. beside themselves
for b in sbatch squeue scancel scontrol sinfo srun salloc sacct; do ln -sfn "/usr/bin/$b" "$DEST/usr/bin/$b"; done
# SchedMD's SPANK plugin sets PBS_JOBID, PBS_O_WORKDIR, PBS_NODEFILE ... in jobs
mkdir -p /etc/slurm/plugstack.conf.d
echo "optional /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_pbs.so" > /etc/slurm/plugstack.conf.d/pbs.conf
grep -qs 'plugstack.conf.d' /etc/slurm/plugstack.conf ||
    echo 'include /etc/slurm/plugstack.conf.d/*.conf' >> /etc/slurm/plugstack.conf
# a smoke check (qstat exits 153 when no job is listed, so ask for the nodes)
PATH="$DEST/usr/bin:$PATH" pbsnodes -a >/dev/null || { echo "torque-wrappers.sh: pbsnodes -a fails: is Slurm up (slurm-up.sh)?" >&2; exit 1; }
echo "Torque-style wrappers ready: export PATH=$DEST/usr/bin:\$PATH"
