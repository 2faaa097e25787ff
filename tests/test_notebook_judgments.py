"""notebooks/judgments.ipynb runs headless, end to end, in the project's own interpreter."""
from __future__ import annotations

import sys

import pytest

from tests.conftest import LLMJUDGE, REPO


@pytest.mark.slow
def test_judgments_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in (sys.executable, "python", "python3") or spec.argv[0].startswith(sys.prefix)
    monkeypatch.setenv("LLMJUDGE_DIR", str(LLMJUDGE))
    monkeypatch.setenv("JUDGMENTS_CATALOG", str(tmp_path / "catalog.duckdb"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(REPO / "notebooks" / "judgments.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(o.get("text", "") if o.get("output_type") == "stream"
                     else o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "33 judges" not in text and "34 judges" in text
    assert "willia-umbrela1" in text and "0.2863" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # distribution bars + heatmap
