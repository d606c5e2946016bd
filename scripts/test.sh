#!/usr/bin/env bash
# Quick start, command 2: set up and run the whole test suite (lint, types, schedulers, tests).
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
# HTEX_SCHEDULERS=0 skips starting Slurm, Grid Engine and HTCondor (their tests are then skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
echo "== ruff";  .venv/bin/ruff check src tests bench examples
echo "== mypy";  .venv/bin/mypy
if [ "${HTEX_SCHEDULERS:-1}" != 0 ]; then
  echo "== schedulers"; bash scripts/schedulers-up.sh
fi
echo "== postgresql (monitoring store)"; bash ci/postgres/setup.sh || echo "(tests/monitoring will say why the PostgreSQL test skips)"
echo "== network namespaces"; bash ci/netns/setup.sh || echo "(tests/network will say why they skip)"
echo "== bench (smoke: correctness only, no timing asserted)"
.venv/bin/python bench/run.py --smoke >/dev/null
.venv/bin/python bench/monitoring.py --smoke >/dev/null
echo "== pytest"
exec .venv/bin/pytest "$@"
