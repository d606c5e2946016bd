#!/usr/bin/env bash
# What tests/monitoring/test_dashboard*.py needs: Debian's Chromium (driven by Playwright, whose own
# browser download is never used: there is no internet in CI).  Idempotent; exits 1 if it cannot install.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "browser: ready ($(chromium --version 2>/dev/null || echo chromium))"; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "browser: chromium missing and not root: the dashboard's browser tests will be skipped" >&2; exit 1
fi
echo "browser: installing chromium"
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "browser: ready ($(chromium --version 2>/dev/null || echo chromium))"
