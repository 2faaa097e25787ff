"""Putting judgments and runs into the catalog: imports of TREC files and judge-stage output.

The `judgments` dataset holds every judge; a new label set (or a re-judged one) replaces only
that judge's rows and is published as a new version through the validation gate. Each import
is a recorded run with its own stage_runs row, and every unparseable line is quarantined.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import CANDIDATES, JUDGMENTS
from tasks.judgments import trec_io
from tasks.judgments.analysis import JUDGMENTS as JUDGMENTS_DS
from tasks.judgments.analysis import RUNS, sync_judgments_view
from tasks.runtime.accounting import StageOutput
from tasks.runtime.catalog import Catalog, DatasetVersion, json_dumps, now
from tasks.runtime.ids import fingerprint
from tasks.runtime.publish import PublishResult, publish, read
from tasks.runtime.storage import DataRoot

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    judges: dict[str, int] = field(default_factory=dict)  # name -> rows imported
    quarantined: int = 0
    duplicates: int = 0
    dataset: DatasetVersion | None = None
    published: bool = False


def expand(paths: list[str | Path]) -> list[Path]:
    """Files as given, and the visible regular files of each directory (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither a file nor a directory")
    return out


def judge_name(path: Path) -> str:
    return path.stem


def merge(current: pa.Table | None, new: pa.Table, keys: str | list[str]) -> pa.Table:
    """Upsert: the current rows whose key the new rows do not have, plus the new rows.

    With one key column (a judge, a run tag) the new rows replace every current row of that
    value; with the full natural key only the rows for the same items are replaced.
    """
    if current is None or current.num_rows == 0:
        return new
    current = current.cast(new.schema)
    if isinstance(keys, str) or len(keys) == 1:
        key = keys if isinstance(keys, str) else keys[0]
        keep = current.filter(pc.invert(pc.is_in(current[key], value_set=pc.unique(new[key]))))
    else:
        idx = current.select(keys).append_column("_row", pa.array(range(current.num_rows), pa.int64()))
        drop = idx.join(new.select(keys), keys, join_type="inner").column("_row")
        keep = current.filter(pc.invert(pc.is_in(pa.array(range(current.num_rows), pa.int64()), value_set=drop)))
    return pa.concat_tables([keep, new])


class Store:
    """A catalog plus its data root, with the publish paths for judgments and runs."""

    def __init__(self, catalog: Catalog, root: DataRoot):
        self.catalog, self.root = catalog, root

    @classmethod
    def open(cls, catalog_path: str | Path, data_root: str | None = None) -> "Store":
        """Open a catalog; the data root defaults to `data/` beside the catalog file."""
        catalog_path = Path(catalog_path)
        return cls(Catalog(catalog_path), DataRoot(data_root or str(catalog_path.parent / "data")))

    def current(self, name: str) -> pa.Table | None:
        return read(self.catalog, self.root, name) if self.catalog.current(name) else None

    # ---- publishing ---------------------------------------------------------------------------
    def publish_judgments(self, new: pa.Table, out: StageOutput, *, run_id: str | None,
                          fingerprint_: str | None, started: float, parents: list[DatasetVersion] = (),
                          merge_keys: list[str] = ("judge",)) -> PublishResult:
        """Merge `new` into the judgments dataset and publish. By default a judge's new rows
        replace all of its rows (a re-imported label set); the judge stage upserts per pair."""
        merged = merge(self.current(JUDGMENTS_DS), new.cast(JUDGMENTS), list(merge_keys))
        out.tables = {JUDGMENTS_DS: merged}
        result = self._record(out, run_id=run_id, fingerprint_=fingerprint_, started=started,
                              parents=parents)[JUDGMENTS_DS]
        sync_judgments_view(self.catalog, self.root)
        return result

    def _record(self, out: StageOutput, *, run_id, fingerprint_, started, parents) -> dict[str, PublishResult]:
        """Accounting check, quarantine, validated publish and the stage_runs row."""
        out.check()
        started_at = now()
        self.catalog.add_quarantine(run_id, out.quarantine)
        results, status, message = {}, "completed", None
        try:
            for name, table in out.tables.items():
                results[name] = publish(self.catalog, self.root, name, table, parents=list(parents),
                                        run_id=run_id, stage=out.stage, fingerprint=fingerprint_)
        except Exception as e:
            status, message = "failed", str(e)
            raise
        finally:
            if run_id is not None:
                self.catalog.record_stage(
                    run_id, out.stage, fingerprint=fingerprint_, started_at=started_at, status=status,
                    rows_in=out.rows_in, rows_out=out.rows_out, rows_quarantined=out.rows_quarantined,
                    rows_deduplicated=out.rows_deduplicated, model_calls=out.model_calls,
                    cache_hits=out.cache_hits, seconds=time.perf_counter() - started, message=message)
        return results

    def _run(self, flow: str, params: dict):
        return self.catalog.start_run(flow, flow, fingerprint(params), json_dumps(params))

    # ---- imports ------------------------------------------------------------------------------
    def import_qrels(self, paths: list[str | Path], names: list[str] | None = None) -> ImportReport:
        """Import label sets; each file becomes the judge named after its file stem."""
        files = expand(paths)
        if not files:
            raise FileNotFoundError(f"no qrels files in {', '.join(map(str, paths))}")
        judge_names = names or [judge_name(f) for f in files]
        if len(judge_names) != len(files):
            raise ValueError(f"{len(judge_names)} judge names for {len(files)} files")
        dupes = sorted({n for n in judge_names if judge_names.count(n) > 1})
        if dupes:
            raise ValueError(f"two files would become the same judge: {', '.join(dupes)}; rename one")
        started = time.perf_counter()
        run_id = self._run("import-qrels", {"files": [str(f.resolve()) for f in files], "judges": judge_names})
        report, tables, quarantine, lines = ImportReport(), [], [], 0
        try:
            for f, name in zip(files, judge_names):
                parsed = trec_io.read_qrels(f, stage="import_qrels")
                tables.append(trec_io.qrels_to_judgments(parsed.table, name))
                quarantine.append(parsed.quarantine.table())
                lines += parsed.lines
                report.judges[name] = parsed.table.num_rows
                report.duplicates += parsed.duplicates
                if len(parsed.quarantine):
                    log.warning("%s: %d lines quarantined, e.g. %s", f, len(parsed.quarantine),
                                parsed.quarantine.rows[0]["reason"])
            new = pa.concat_tables(tables)
            q = pa.concat_tables(quarantine)
            report.quarantined = q.num_rows
            out = StageOutput("import_qrels", {}, rows_in=lines, rows_out=new.num_rows, quarantine=q,
                              rows_deduplicated=report.duplicates)
            res = self.publish_judgments(new, out, run_id=run_id, fingerprint_=None, started=started)
            report.dataset, report.published = res.dataset, res.published
        except BaseException as e:
            self.catalog.finish_run(run_id, "failed", str(e)[:2000])
            raise
        self.catalog.finish_run(run_id, "completed")
        return report

    def import_runs(self, paths: list[str | Path]) -> ImportReport:
        """Import TREC runs as `candidates/runs` rows (retriever = run tag)."""
        files = expand(paths)
        started = time.perf_counter()
        run_id = self._run("import-run", {"files": [str(f.resolve()) for f in files]})
        report, tables, quarantine, lines = ImportReport(), [], [], 0
        try:
            for f in files:
                parsed = trec_io.read_run(f, stage="import_run")
                cands = trec_io.run_to_candidates(parsed.table)
                tables.append(cands)
                quarantine.append(parsed.quarantine.table())
                lines += parsed.lines
                report.duplicates += parsed.duplicates
                for tag in sorted(set(cands.column("retriever").to_pylist())):
                    report.judges[tag] = report.judges.get(tag, 0) + pc.sum(
                        pc.equal(cands["retriever"], tag)).as_py()
            new = pa.concat_tables(tables).cast(CANDIDATES)
            q = pa.concat_tables(quarantine)
            report.quarantined = q.num_rows
            out = StageOutput("import_run", {RUNS: merge(self.current(RUNS), new, "retriever")},
                              rows_in=lines, rows_out=new.num_rows, quarantine=q,
                              rows_deduplicated=report.duplicates)
            res = self._record(out, run_id=run_id, fingerprint_=None, started=started, parents=[])[RUNS]
            report.dataset, report.published = res.dataset, res.published
        except BaseException as e:
            self.catalog.finish_run(run_id, "failed", str(e)[:2000])
            raise
        self.catalog.finish_run(run_id, "completed")
        return report

    # ---- exports ------------------------------------------------------------------------------
    def export_qrels(self, judge: str, path: str | Path) -> int:
        from tasks.judgments.analysis import qrels_of

        sync_judgments_view(self.catalog, self.root)
        return trec_io.write_qrels(qrels_of(self.catalog, judge), path)

    def export_run(self, tag: str, path: str | Path) -> int:
        from tasks.judgments.analysis import runs_table

        t = runs_table(self.catalog, self.root, [tag])
        return trec_io.write_run(t.rename_columns(["query_id", "doc_id", "rank", "score", "tag"]), path)
