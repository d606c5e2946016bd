"""Fixtures of the network tests: ``lab`` (hosts in network namespaces, see netlab.py).

The tests need root and iproute2 (ci/netns/README.md); without them they are
skipped with the reason.  Before the first of them, leftovers of a session that
died (namespaces and links named htex-t-*) are deleted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import netlab

# Workers import nettasks by reference: let them find it (pools inherit the environment).
_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), _HERE) if p)


@pytest.fixture(scope="session")
def _swept() -> None:
    if netlab.unavailable() is None:
        with netlab.locked():
            netlab.sweep()


@pytest.fixture
def lab(_swept: None) -> Iterator[netlab.Lab]:
    reason = netlab.unavailable()
    if reason:
        pytest.skip(reason)
    with netlab.Lab() as made:
        yield made


@pytest.fixture
def tap_lab(lab: netlab.Lab) -> netlab.Lab:
    reason = netlab.tap_unavailable()
    if reason:
        pytest.skip(reason)
    return lab
