#!/usr/bin/env bash
# Install Debian's MPICH and build the MPI hello that tests/schedulers/test_mpi_slurm.py runs
# (idempotent: does nothing if both are there).  Writes $HTEX_MPI_HELLO (default /opt/htex-mpi/hello).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${HTEX_MPI_HELLO:-/opt/htex-mpi/hello}"
if ! command -v mpicc >/dev/null || ! command -v mpiexec >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mpich libmpich-dev >/dev/null
fi
if [ ! -x "$out" ] || [ "$here/hello.c" -nt "$out" ]; then
    mkdir -p "$(dirname "$out")"
    mpicc -O1 -o "$out.tmp" "$here/hello.c"
    mv "$out.tmp" "$out"
fi
echo "MPI ready: $(command -v mpiexec), hello at $out"
