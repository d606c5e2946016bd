"""htex: run Python functions at high throughput, from a laptop to thousands of nodes.

The public names are those in the ``__all__`` of the modules in ``_PUBLIC``;
each is written once, there.  They are imported lazily (PEP 562): a worker or
a pool that runs ``python -m htex.worker`` never touches them, which keeps its
start-up fast and its idle memory small.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = (
    "htex.errors", "htex.executor", "htex.launchers", "htex.monitoring.config", "htex.mpi_executor", "htex.providers",
    "htex.selectors",
)
_where: dict[str, str] = {}


def _public() -> dict[str, str]:
    """Public name -> the module that defines it (imports the modules once)."""
    if not _where:
        for module in _PUBLIC:
            _where.update(dict.fromkeys(importlib.import_module(module).__all__, module))
    return _where


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return sorted([*_public(), "__version__"])
    if not name[:1].isupper():
        # Every public name is a class.  A lowercase one is a submodule that `from . import framing`
        # asks the package for before importing it: answering must not import the public modules
        # (a worker would pay for the executor, zmq's auth, the providers: +2 MiB and 60 ms).
        raise AttributeError(f"module 'htex' has no attribute {name!r}")
    module = _public().get(name)
    if module is None:
        raise AttributeError(f"module 'htex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*_public(), "__version__"])


if TYPE_CHECKING:  # for type checkers and editors: the same modules, by their __all__
    from .errors import *  # noqa: F403
    from .executor import *  # noqa: F403
    from .launchers import *  # noqa: F403
    from .monitoring.config import *  # noqa: F403
    from .mpi_executor import *  # noqa: F403
    from .providers import *  # noqa: F403
    from .selectors import *  # noqa: F403
