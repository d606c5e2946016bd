#!/usr/bin/env bash
# What tests/network needs (see README.md here): iproute2's `ip` (installed when missing), root,
# network namespaces and /dev/net/tun.  Idempotent; prints what is missing and exits 1 if anything is.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "netns: not root: tests/network will be skipped" >&2; exit 1
fi
if ! command -v ip >/dev/null 2>&1; then
  echo "netns: installing iproute2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null; }
fi
probe="htex-t-setup-$$"
if ! ip netns add "$probe"; then
  echo "netns: \`ip netns add\` fails: tests/network will be skipped" >&2; exit 1
fi
ip netns delete "$probe"
if [ ! -c /dev/net/tun ]; then
  echo "netns: no /dev/net/tun: the relay tests will be skipped" >&2; exit 1
fi
echo "netns: ready ($(ip -V))"
