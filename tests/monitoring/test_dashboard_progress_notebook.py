"""progress.wait / progress.map in a real Jupyter kernel (ipykernel, run by nbclient): a widget, not a \\r line.

(Filed beside the dashboard's tests: both are how a user sees a run.)  The
notebook's tasks run in a ThreadPoolExecutor: what is tested is the drawing,
which does not depend on the executor.
"""

from __future__ import annotations

import io
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from htex import progress, progress_jupyter

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

CELLS = [
    """\
import concurrent.futures
from htex import progress, progress_jupyter
print("in_notebook", progress_jupyter.in_notebook())
ex = concurrent.futures.ThreadPoolExecutor(2)

def f(x):
    if x == 3:
        raise ValueError(x)
    return x * x
""",
    """\
done, not_done = progress.wait([ex.submit(f, x) for x in range(10)], label="squares")
print("waited", len(done), len(not_done))
""",
    """\
print("mapped", list(progress.map(ex, abs, range(-6, 6), label="abs")))
""",
]


@pytest.mark.timeout(240)
def test_wait_and_map_draw_a_widget_in_a_notebook(tmp_path: Any) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    # The kernel on private UNIX sockets in tmp_path (its default, TCP on loopback, is unencrypted).
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    client = NotebookClient(nb, km=km, timeout=120, store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        if km.has_kernel:  # a kernel manager given to nbclient stays ours to stop
            km.shutdown_kernel()
    texts = ["".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream") for cell in nb.cells]
    assert "in_notebook True" in texts[0]
    assert "waited 10 0" in texts[1] and "\r" not in texts[1]  # no terminal line in the cell
    assert "mapped [6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5]" in texts[2]
    for cell in nb.cells[1:]:
        assert any(o.output_type == "display_data" and WIDGET_VIEW in o.data for o in cell.outputs), cell.outputs
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    bars = sorted((m["state"]["max"], m["state"]["value"], m["state"].get("bar_style")) for m in state.values()
                  if m["model_name"] in ("FloatProgressModel", "IntProgressModel"))
    assert bars == [(10, 10, "success"), (12, 12, "success")]
    labels = " ".join(m["state"].get("value", "") for m in state.values() if m["model_name"] == "HTMLModel")
    labels = labels.replace("\u2007", " ")  # tqdm's widget pads with figure spaces
    assert "squares" in labels and "abs" in labels
    assert "1 failed, 0 running" in labels and "0 failed, 0 running" in labels


def test_selection_outside_a_notebook(monkeypatch: Any) -> None:
    monkeypatch.delenv("HTEX_PROGRESS", raising=False)
    assert not progress_jupyter.in_notebook()  # pytest is no kernel
    assert progress.display_kind(io.StringIO(), None) is None
    assert progress.display_kind(io.StringIO(), True) == "line"
    monkeypatch.setenv("HTEX_PROGRESS", "0")
    assert progress.display_kind(None, None) is None
    assert progress.display_kind(None, True) == "line"


def test_selection_under_a_kernel(monkeypatch: Any) -> None:
    """Stand-in for a kernel (the real one is the notebook test above): only the choice is checked here."""
    monkeypatch.delenv("HTEX_PROGRESS", raising=False)
    monkeypatch.setattr(progress_jupyter, "in_notebook", lambda: True)
    assert progress.display_kind(None, None) == "notebook"
    assert progress.display_kind(io.StringIO(), True) == "line"  # a stream named: the line goes there
    assert progress.display_kind(None, False) is None
    monkeypatch.setattr(progress_jupyter, "available", lambda: False)
    assert progress.display_kind(None, None) is None  # no tqdm/ipywidgets: as before, nothing on a non-terminal
