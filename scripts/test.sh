#!/usr/bin/env bash
# Quick start, command 2: set up and run the whole test suite (lint, types, tests).
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
echo "== ruff";  .venv/bin/ruff check src tests bench examples
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
