"""Which pool the interchange offers queued tasks to first: ``manager_selector``, pluggable as in Parsl.

By default (``manager_selector=None``) pools take turns: whoever was served
goes to the back (dispatch.py).  A selector replaces that order: before each
dispatch the interchange hands it the pools with room, and offers tasks to
them in the order it returns (dispatch.plan's rules still decide how many
each gets).

* ``RandomManagerSelector``: a fresh shuffle every time (Parsl's default).
* ``BlockIdManagerSelector``: the oldest block first (block ids are numbered
  as blocks start), so that work fills old blocks and younger ones go idle and
  can be scaled in.

A selector of your own subclasses ``ManagerSelector`` and writes ``order``.
It runs in the interchange process, which gets it pickled (cloudpickle: a
class defined in ``__main__`` travels by value); it sees each pool as a
``PoolView``.  Parsl's own selectors are accepted by ``htex.parsl``.
"""

from __future__ import annotations

import base64
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, TypeVar

import cloudpickle

from . import protocol
from .errors import ConfigurationError

__all__ = ["BlockIdManagerSelector", "ManagerSelector", "PoolView", "RandomManagerSelector"]


class PoolView(Protocol):
    """A pool as a selector sees it: its registration (manager_id, block_id, hostname, worker_count,
    accelerators, ...), the tasks it may still take, and how many of its workers are idle."""

    @property
    def reg(self) -> protocol.Register: ...

    @property
    def free(self) -> int: ...

    @property
    def idle(self) -> int: ...


P = TypeVar("P", bound=PoolView)


class ManagerSelector(ABC):
    """Orders the pools with room; the interchange offers tasks in that order."""

    @abstractmethod
    def order(self, pools: list[P]) -> Sequence[P]:
        """``pools`` (a list the selector may reorder in place) in the order tasks should be offered."""


class RandomManagerSelector(ManagerSelector):
    """A fresh random order for every dispatch: work spreads over every pool."""

    def order(self, pools: list[P]) -> Sequence[P]:
        random.shuffle(pools)
        return pools


class BlockIdManagerSelector(ManagerSelector):
    """The oldest block first (numeric block ids in number order, then any others by name)."""

    def order(self, pools: list[P]) -> Sequence[P]:
        pools.sort(key=lambda p: _block_key(p.reg.block_id))
        return pools


def _block_key(block_id: str) -> tuple[int, int, str]:
    return (0, int(block_id), "") if block_id.isdigit() else (1, 0, block_id)


def pack(selector: ManagerSelector | None) -> str | None:
    """The selector as the interchange's configuration carries it (JSON text); None stays None."""
    if selector is None:
        return None
    if not isinstance(selector, ManagerSelector):
        raise ConfigurationError(
            f"manager_selector must be an htex.selectors.ManagerSelector (RandomManagerSelector(), "
            f"BlockIdManagerSelector(), or a subclass of your own), got {type(selector).__name__}"
        )
    try:
        return base64.b64encode(cloudpickle.dumps(selector)).decode()
    except Exception as exc:
        raise ConfigurationError(f"manager_selector {selector!r} does not pickle: {exc}") from exc


def unpack(text: str | None) -> ManagerSelector | None:
    """In the interchange: the selector the executor packed (a trusted peer: it wrote our stdin)."""
    if text is None:
        return None
    selector = cloudpickle.loads(base64.b64decode(text))
    assert isinstance(selector, ManagerSelector)
    return selector
