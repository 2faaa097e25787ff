"""Importing TREC files as stages: qrels label sets (`judgments/<name>`) and runs (`candidates/runs`).

Units are the files' lines; parsing a line is the (model-free) work, so a line that does not
parse is quarantined with its file:line and the reason. A repeated (query, document) keeps its
first label; a repeat with the same label is counted as a duplicate, one that contradicts it is
quarantined. Re-importing a label set replaces that judge's labels and nothing else.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import CANDIDATES
from tasks.judge import trec_io
from tasks.judge.analysis import RUNS
from tasks.judge.stage import label_set
from tasks.runtime.stage import KEY, UNIT, Assembled, Resources, Stage, Units, Work


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


def _line_units(files: list[Path], labels: list[str]) -> Units:
    rows = []
    for f, label in zip(files, labels):
        prefix = f.name if sum(g.name == f.name for g in files) == 1 else str(f)
        for n, line in trec_io.lines_of(f):
            uid = f"{prefix}:{n}"
            rows.append({UNIT: uid, KEY: uid, "label": label, "line": line})
    schema = pa.schema([(UNIT, pa.string()), (KEY, pa.string()), ("label", pa.string()), ("line", pa.string())])
    return Units(pa.Table.from_pylist(rows, schema=schema))


class _Import(Stage):
    section = None

    def files(self) -> list[Path]:
        files = expand(self.params["paths"])
        if not files:
            raise FileNotFoundError(f"no files in {', '.join(map(str, self.params['paths']))}")
        return files

    def payload(self, unit: dict) -> dict | None:
        return {"line": (unit["line"] or "").strip()[:500]} if unit.get("line") else None


class ImportQrels(_Import):
    name = "import_qrels"
    description = "TREC qrels label sets, one judge per file"

    def judges(self) -> list[str]:
        files = self.files()
        names = self.params.get("names") or [f.stem for f in files]
        if len(names) != len(files):
            raise ValueError(f"{len(names)} judge names for {len(files)} files")
        dupes = sorted({n for n in names if names.count(n) > 1} |
                       {n for n in names if [label_set(m) for m in names].count(label_set(n)) > 1})
        if dupes:
            raise ValueError(f"two files would become the same judge: {', '.join(dupes)}; rename one")
        return names

    def outputs(self) -> tuple[str, ...]:
        return tuple(label_set(n) for n in self.judges())

    def units(self, inputs) -> Units:
        return _line_units(self.files(), self.judges())

    def work(self) -> Work:
        return Work(TrecLine, {"kind": "qrels"}, ["line"], pa.schema([("query_id", pa.string()), ("doc_id", pa.string()),
                                                       ("relevance", pa.int64())]),
                    Resources(where="local", batch_size=4096, uses_gpu=False), cached=False, model=False)

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        parsed = {} if results is None else {r[KEY]: r for r in results.to_pylist()}
        by_judge: dict[str, dict[tuple[str, str], int]] = {j: {} for j in self.judges()}
        produced, dedup, quarantined = [], [], []
        for u in units.to_pylist():
            r = parsed[u[KEY]]
            labels = by_judge[u["label"]]
            pair = (r["query_id"], r["doc_id"])
            if pair in labels:
                if labels[pair] == r["relevance"]:
                    dedup.append(u[UNIT])
                else:
                    quarantined.append({"key": u[UNIT], "reason": f"contradicts an earlier label {labels[pair]} for "
                                        f"({pair[0]}, {pair[1]})", "payload": (u["line"] or "").strip()})
                continue
            labels[pair] = r["relevance"]
            produced.append(u[UNIT])
        tables = {}
        for judge, labels in by_judge.items():
            qrels = pa.table({"query_id": [k[0] for k in labels], "doc_id": [k[1] for k in labels],
                              "relevance": pa.array(list(labels.values()), pa.int32())}, schema=trec_io.QRELS)
            tables[label_set(judge)] = trec_io.qrels_to_judgments(qrels, judge)
        return Assembled(tables, produced, quarantined, dedup,
                         notes={"judges": {j: len(v) for j, v in by_judge.items()}})


class ImportRun(_Import):
    name = "import_run"
    writes = (RUNS,)
    incremental = True
    description = "TREC run files as candidates/runs (retriever = run tag)"

    def units(self, inputs) -> Units:
        files = self.files()
        return _line_units(files, [f.name for f in files])

    def work(self) -> Work:
        return Work(TrecLine, {"kind": "run"}, ["line"], pa.schema([("query_id", pa.string()), ("doc_id", pa.string()),
                                                     ("rank", pa.int64()), ("score", pa.float64()),
                                                     ("tag", pa.string())]),
                    Resources(where="local", batch_size=4096, uses_gpu=False), cached=False, model=False)

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        parsed = {} if results is None else {r[KEY]: r for r in results.to_pylist()}
        seen, rows, produced, dedup = set(), [], [], []
        for u in units.to_pylist():
            r = parsed[u[KEY]]
            key = (r["tag"], r["query_id"], r["doc_id"])
            if key in seen:
                dedup.append(u[UNIT])
                continue
            seen.add(key)
            rows.append(r)
            produced.append(u[UNIT])
        run = pa.table({c: [r[c] for r in rows] for c in trec_io.RUN.names}, schema=trec_io.RUN)
        new = trec_io.run_to_candidates(run).cast(CANDIDATES)
        previous = inputs.previous(RUNS)
        if previous is not None and previous.num_rows:
            previous = previous.filter(pc.invert(pc.is_in(previous["retriever"], value_set=pc.unique(new["retriever"]))))
            new = pa.concat_tables([previous.cast(CANDIDATES), new])
        tags = sorted(set(run["tag"].to_pylist()))
        return Assembled({RUNS: new}, produced, [], dedup,
                         notes={"tags": {t: pc.sum(pc.equal(run["tag"], t)).as_py() for t in tags}})


PARSERS = {"qrels": (trec_io.parse_qrels_line, ("query_id", "doc_id", "relevance")),
           "run": (trec_io.parse_run_line, ("query_id", "doc_id", "rank", "score", "tag"))}


class TrecLine:
    """Parses TREC lines (`kind`: qrels or run); a line that does not parse is an error row."""

    def __init__(self, args: dict, device: str = "cpu"):
        self.kind = args["kind"]
        self.parse, self.columns = PARSERS[self.kind]

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = {KEY: batch[KEY].to_pylist(), **{c: [] for c in self.columns}, "error": []}
        for line in batch["line"].to_pylist():
            try:
                if line is None:
                    raise trec_io.BadLine(f"invalid UTF-8 in {self.kind} line")
                values, error = self.parse(line), None
            except trec_io.BadLine as e:
                values, error = (None,) * len(self.columns), str(e)
            for c, v in zip(self.columns, values):
                out[c].append(v)
            out["error"].append(error)
        return pa.table(out)
