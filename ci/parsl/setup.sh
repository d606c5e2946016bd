#!/usr/bin/env bash
# Idempotent set-up for the Parsl tests (tests/parsl, tests/parsl_suite):
#  - Chromium from Debian's packages, for the parsl-visualize pages (Playwright drives it; no `playwright install`);
#  - .venv-parsl-suite: htex with Parsl's monitoring, and a pytest Parsl's own test suite runs on
#    (its conftest.py uses hook arguments pytest 9 removed, so it gets pytest 8 in a venv of its own).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv-parsl-suite/bin/python ]; then
  python3 -m venv .venv-parsl-suite
fi
.venv-parsl-suite/bin/python -m pip install --quiet --disable-pip-version-check -e ".[parsl-monitoring]" \
  "pytest>=8,<9" "pytest-timeout>=2.2"
