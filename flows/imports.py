"""Imports of TREC files as recorded runs (no Prefect flow: they are quick and read local files).

Each import is one run with one stage run; every line that does not parse is quarantined."""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.config import BuildConfig


@dataclass
class ImportReport:
    judges: dict[str, int] = field(default_factory=dict)  # label set (or run tag) -> rows imported
    quarantined: int = 0
    duplicates: int = 0
    datasets: dict = field(default_factory=dict)  # name -> (ref, published)


def _run(cfg: BuildConfig, flow: str, stage) -> ImportReport:
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.runner import run_stage

    files = [str(f.resolve()) for f in stage.files()]
    with open_run(cfg, flow, params={"files": files, **{k: v for k, v in stage.params.items() if k != "paths"}},
                  holder=flow) as run:
        run_stage(run, stage, {})
    s = run.summaries[-1]
    notes = s["notes"]
    return ImportReport(notes.get("judges") or notes.get("tags") or {}, s["rows_quarantined"], s["rows_deduplicated"],
                        s["published"])


def import_qrels(cfg: BuildConfig, paths: list, names: list[str] | None = None) -> ImportReport:
    """Each qrels file becomes the label set `judgments/<name>` (name: the file stem by default)."""
    from tasks.judge.imports import ImportQrels

    return _run(cfg, "import-qrels", ImportQrels(cfg, paths=[str(p) for p in paths], names=names))


def import_runs(cfg: BuildConfig, paths: list) -> ImportReport:
    """TREC runs into `candidates/runs` (retriever = run tag); a re-imported tag replaces its rows."""
    from tasks.judge.imports import ImportRun

    return _run(cfg, "import-run", ImportRun(cfg, paths=[str(p) for p in paths]))
