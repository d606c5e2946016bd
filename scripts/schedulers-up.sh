#!/usr/bin/env bash
# Start the batch schedulers the provider tests use (Slurm with Torque-style wrappers, Grid Engine,
# HTCondor), from ci/schedulers/. Needs root and apt-get (packages are installed when missing).
# A scheduler that fails to start is reported, and its tests are then skipped with a message.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "schedulers: not root or no apt-get: scheduler tests will be skipped (see ci/schedulers/README.md)"
  exit 0
fi
failed=""
for step in slurm-up.sh torque-wrappers.sh sge-up.sh condor-up.sh; do
  t0=$(date +%s)
  if bash "ci/schedulers/$step" >"/tmp/htex-$step.log" 2>&1; then
    echo "schedulers: $step ok ($(( $(date +%s) - t0 )) s)"
  else
    echo "schedulers: $step FAILED; its output ends with:"; tail -n 20 "/tmp/htex-$step.log" | sed 's/^/    /'
    failed="$failed $step"
  fi
done
[ -z "$failed" ] || echo "schedulers: not started:$failed (their tests will be skipped)"
exit 0
