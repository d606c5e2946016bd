#!/usr/bin/env bash
# Parsl's own test suite (the executor-agnostic tests shipped in the parsl wheel, parsl/tests),
# run as Parsl's CI runs it against an executor: `pytest parsl/tests --config FILE`, once per
# configuration here, FILE using htex.parsl.HighThroughputExecutor.
# Needs .venv-parsl-suite (ci/parsl/setup.sh). Extra arguments go to both pytest runs.
# Exclusions (each also in the README, "From Parsl"):
#   -k "not cleannet ..."  tests that need the internet (FTP, HTTPS staging), as Parsl's Makefile excludes them;
#   unix_filesystem_permissions_required: file-permission errors never happen for root, which CI runs as;
#   test_resource_spec.py (its one test, test_resource): asserts the executor is Parsl's own HighThroughputExecutor class.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/../../.venv-parsl-suite"
if [ ! -x "$venv/bin/python" ]; then
  echo "Parsl's suite NOT RUN: $venv is missing (ci/parsl/setup.sh failed?)" >&2
  exit 1
fi
tests="$("$venv/bin/python" -c 'import os, parsl.tests; print(os.path.dirname(parsl.tests.__file__))')"
work="$(mktemp -d)"  # Parsl's conftest and configs write into the current directory
trap 'rm -rf "$work"' EXIT
cd "$work"
status=0
for config in htex_parsl_config.py htex_parsl_alternate_config.py; do
  echo "-- Parsl's suite with tests/parsl_suite/$config"
  SECONDS=0
  "$venv/bin/pytest" -p no:cacheprovider "$tests" --config "$here/$config" \
    -k "not cleannet and not unix_filesystem_permissions_required and not test_resource_spec" \
    --timeout 120 -q "$@" || status=$?
  echo "-- $config: ${SECONDS} s"
done
exit $status
