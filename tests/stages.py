"""Helpers to run one stage in a test: in memory (`execute`) or against a real catalog (`run_one`)."""
from __future__ import annotations

from contextlib import contextmanager

import pyarrow as pa

from tasks.runtime.cache import WorkCache
from tasks.runtime.inputs import Inputs
from tasks.runtime.lifecycle import Run, open_run
from tasks.runtime.runner import execute, run_stage
from tasks.runtime.storage import DataRoot


def run_pure(stage, tables: dict[str, pa.Table] | None = None, cache_dir=None):
    """A stage's Outcome over in-memory tables; with `cache_dir`, model work goes through a real
    work cache there (so a second call is served from it)."""
    cache = root = None
    if cache_dir is not None:
        root = DataRoot(str(cache_dir))
        cache = WorkCache(root, stage.name, stage.work_fingerprint())
    return execute(stage, Inputs.of(stage.config, tables or {}, cache_root=root), cache)


def flat_index(vectors, doc_ids, space: str = "test-space@1"):
    """A flat VectorIndex over vectors that stand for documents (several may share a document)."""
    import numpy as np

    from schemas.config import IndexConfig
    from tasks.index.refresh import refresh_vector_index

    vectors = np.ascontiguousarray(vectors, np.float32)
    n = len(vectors)
    table = pa.table({"item_id": [f"i{i}" for i in range(n)], "item_kind": ["caption"] * n,
                      "doc_id": list(doc_ids), "content_sha256": [f"h{i}" for i in range(n)], "space": [space] * n,
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])})
    return refresh_vector_index("text", table, None, IndexConfig()).index


@contextmanager
def test_run(config, flow: str = "test"):
    with open_run(config, flow) as run:
        yield run


def run_one(config, stage, refs=None) -> tuple[dict, dict]:
    """Run one stage as its own recorded run; returns (published refs, its stage summary)."""
    with open_run(config, "test") as run:
        refs = run_stage(run, stage, refs or {})
    return refs, run.summaries[-1]


def seed(config, name: str, table: pa.Table, parents=()):
    """Put a dataset version into a test catalog, through the one write path."""
    from tasks.runtime.write import seed as put

    run = Run.open(config)
    return put(run.catalog, run.root, name, table, parents)


class Judgments:
    """A test catalog for label sets: imports through the import stages, exports through analysis."""

    def __init__(self, catalog_path):
        from schemas.config import catalog_config
        from tasks.judge import analysis  # noqa: F401 - registers the judgment views
        from tasks.runtime.catalog import Catalog

        self.cfg = catalog_config(catalog_path)
        self.catalog = Catalog(self.cfg.catalog_path)
        self.root = DataRoot(self.cfg.data_root_uri)

    def import_qrels(self, paths, names=None):
        from flows.imports import import_qrels

        return _with_compat(import_qrels(self.cfg, paths, names))

    def import_runs(self, paths):
        from flows.imports import import_runs

        return _with_compat(import_runs(self.cfg, paths))

    def publish(self, table: pa.Table) -> None:
        """Label sets from a judgments table, one dataset per judge."""
        import pyarrow.compute as pc

        from tasks.judge.analysis import sync_judgments_view
        from tasks.judge.stage import label_set
        from tasks.runtime.write import seed as put

        for judge in sorted(set(table["judge"].to_pylist())):
            put(self.catalog, self.root, label_set(judge), table.filter(pc.equal(table["judge"], judge)))
        sync_judgments_view(self.catalog, self.root)

    def export_qrels(self, judge: str, path) -> int:
        from tasks.judge import analysis, trec_io

        return trec_io.write_qrels(analysis.qrels_of(self.catalog, judge), path)

    def export_run(self, tag: str, path) -> int:
        from tasks.judge import analysis, trec_io

        t = analysis.runs_table(self.catalog, self.root, [tag])
        return trec_io.write_run(t.rename_columns(["query_id", "doc_id", "rank", "score", "tag"]), path)


def _with_compat(report):
    """published / dataset of a single-dataset import, for short assertions."""
    refs = list(report.datasets.values())
    report.published = any(new for _, new in refs)
    report.versions = {ref.split("@v")[0]: int(ref.split("@v")[1]) for ref, _ in refs}
    return report
