#!/usr/bin/env bash
# Quick start, command 2: set up and run the whole test suite (lint, types, schedulers, tests).
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
# HTEX_SCHEDULERS=0 skips starting Slurm, Grid Engine and HTCondor (their tests are then skipped).
# HTEX_PARSL_SUITE=0 skips the run of Parsl's own test suite (tests/parsl_suite/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
echo "== ruff";  .venv/bin/ruff check src tests bench examples
echo "== mypy";  .venv/bin/mypy
if [ "${HTEX_SCHEDULERS:-1}" != 0 ]; then
  echo "== schedulers"; bash scripts/schedulers-up.sh
fi
echo "== browser (dashboard tests)"; bash ci/browser/setup.sh || echo "(tests/monitoring/test_dashboard_browser.py will say why they skip)"
echo "== postgresql (monitoring store)"; bash ci/postgres/setup.sh || echo "(tests/monitoring will say why the PostgreSQL test skips)"
echo "== network namespaces"; bash ci/netns/setup.sh || echo "(tests/network will say why they skip)"
echo "== parsl set-up"; bash ci/parsl/setup.sh || echo "(ci/parsl/setup.sh failed: the Parsl suite and the parsl-visualize test say so)"
if [ "${HTEX_PARSL_SUITE:-1}" != 0 ]; then
  echo "== Parsl's own test suite on htex.parsl"; bash tests/parsl_suite/run.sh
fi
echo "== MPI"; bash ci/mpi/setup.sh || echo "(the MPI tests will say why they skip)"
echo "== bench (smoke: correctness only, no timing asserted)"
.venv/bin/python bench/run.py --smoke >/dev/null
.venv/bin/python bench/monitoring.py --smoke >/dev/null
echo "== pytest"
exec .venv/bin/pytest "$@"
