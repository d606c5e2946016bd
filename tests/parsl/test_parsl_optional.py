"""Parsl is optional: htex works without it, and htex.parsl says how to get it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(30)

# Runs in a fresh interpreter where importing parsl fails, as on a machine without it.
_BLOCK_PARSL = """
import sys
class NoParsl:
    def find_spec(self, name, path=None, target=None):
        if name == "parsl" or name.startswith("parsl."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoParsl())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCK_PARSL + code], capture_output=True, text=True, timeout=20)


def test_import_without_parsl_names_the_extra() -> None:
    r = _run("import htex.parsl")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "pip install htex[parsl]" in r.stderr


def test_core_never_imports_parsl() -> None:
    r = _run(
        "import htex, htex.executor, htex.cli, htex.progress, htex.process_worker_pool, htex.interchange\n"
        "assert not [m for m in sys.modules if m == 'parsl' or m.startswith('parsl.')]\n"
        "print('ok')"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
