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


def test_without_the_data_the_notebook_says_in_one_line_where_to_get_it(tmp_path, monkeypatch):
    """A fresh clone has no ../shared: the first cell names LLMJUDGE_DIR and where the data lives."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("LLMJUDGE_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(REPO / "notebooks" / "judgments.ipynb", as_version=4)
    nb.cells = nb.cells[:2]  # the setup cell, where the data is looked up
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    errors = [o for o in nb.cells[1].get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "FileNotFoundError"
    assert "LLMJUDGE_DIR" in errors[0]["evalue"] and "github.com/llm4eval/LLMJudge" in errors[0]["evalue"]
    assert "\n" not in errors[0]["evalue"]
