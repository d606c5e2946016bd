"""``htex.progress`` in a Jupyter notebook: the same counts, drawn as a tqdm notebook widget.

A notebook's stderr is no terminal, so the ``\\r`` line of ``progress`` would
stay off there; under a notebook kernel (Jupyter, JupyterLab, VS Code) it is
drawn instead as ``tqdm.notebook``'s bar (an ipywidgets progress bar with the
rate and time left), with "N failed, M running" beside it.  Needs
``pip install 'htex[jupyter]'`` (tqdm, ipywidgets); without them the notebook
simply gets no bar, as before.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["NotebookBar", "available", "in_notebook"]


def in_notebook() -> bool:
    """Whether this process is an IPython kernel (a notebook), not a terminal IPython or a script."""
    ipython = sys.modules.get("IPython")  # never imported by us: a kernel has it loaded already
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and hasattr(shell, "kernel")  # ZMQInteractiveShell: the kernel's shell


def available() -> bool:
    """Whether the widget can be drawn (tqdm's notebook bar needs ipywidgets)."""
    return all(importlib.util.find_spec(m) is not None for m in ("tqdm", "ipywidgets"))


class NotebookBar:
    """A tqdm notebook bar fed with ``progress.Progress``'s counts.

    Created in the caller's thread (the widget is displayed in the cell that
    runs), then updated from the progress thread: widget updates are messages
    the kernel sends from any thread.
    """

    def __init__(self, total: int | None, label: str = "") -> None:
        from tqdm.notebook import tqdm  # type: ignore[import-untyped]

        self.total = total
        self.bar: Any = tqdm(total=total, desc=label or None, unit="task", leave=True, dynamic_ncols=True)

    def update(self, done: int, failed: int, running: int, total: int | None) -> None:
        if total != self.total:  # progress.map learns its total once every task is submitted
            self.total = total
            self.bar.reset(total=total)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"{failed} failed, {running} running", refresh=True)

    def close(self, done: int, failed: int, running: int, total: int | None) -> None:
        self.update(done, failed, running, total)
        self.bar.close()  # green when done == total; red when stopped early (an exception, a timeout)
