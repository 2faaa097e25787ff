"""TREC qrels and run files <-> Arrow tables, and the bridge to ir_measures.

qrels lines are `qid iter docid rel`; run lines are `qid Q0 docid rank score tag`. A line that
does not parse is not guessed at: it is returned as a quarantine row with its file:line and the
reason. Relevance values are kept exactly as written (trec_eval allows negative and >3 grades);
clamping to the 0-3 judgment scale happens only when a label set becomes `judgments` rows, and
the original value stays in `raw`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import JUDGMENTS
from tasks.runtime.accounting import Quarantine

QRELS = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("relevance", pa.int32(), nullable=False),
])
RUN = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("score", pa.float64(), nullable=False),
    pa.field("tag", pa.string(), nullable=False),
])
GRADES = 4  # the judgment scale is 0..3


@dataclass
class Parsed:
    """Rows that parsed, plus the lines that did not (each with a reason)."""

    table: pa.Table
    quarantine: Quarantine
    lines: int  # non-blank input lines; = rows + quarantined + duplicates
    duplicates: int = 0


def lines_of(path: Path):
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield n, None
                continue
            if line.strip():
                yield n, line


class BadLine(ValueError):
    """A TREC line that does not parse; the message is the quarantine reason."""


def parse_qrels_line(line: str) -> tuple[str, str, int]:
    """(qid, docid, relevance) of a `qid iter docid rel` line; relevance kept as written."""
    parts = line.split()
    if len(parts) != 4:
        raise BadLine(f"qrels line needs 4 fields (qid iter docid rel), found {len(parts)}")
    qid, _, docid, rel = parts
    try:
        value = int(rel)
    except ValueError:
        try:
            f = float(rel)
        except ValueError:
            raise BadLine(f"relevance '{rel}' is not a number") from None
        if not f.is_integer():
            raise BadLine(f"relevance '{rel}' is not an integer grade")
        value = int(f)
    return qid, docid, _int32(value, "relevance", rel)


INT32 = 2**31 - 1


def _int32(value: int, field: str, written: str) -> int:
    """The columns are int32, as trec_eval reads them: a larger value is a bad line, not a crash."""
    if not -INT32 <= value <= INT32:
        raise BadLine(f"{field} '{written[:40]}' is out of range (|{field}| <= {INT32})")
    return value


def parse_run_line(line: str) -> tuple[str, str, int, float, str]:
    """(qid, docid, rank, score, tag) of a `qid Q0 docid rank score tag` line."""
    parts = line.split()
    if len(parts) != 6:
        raise BadLine(f"run line needs 6 fields (qid Q0 docid rank score tag), found {len(parts)}")
    qid, _, docid, rank, score, tag = parts
    try:
        r, sc = int(rank), float(score)
    except ValueError:
        raise BadLine(f"rank '{rank}' or score '{score}' is not a number") from None
    r = _int32(r, "rank", rank)
    if not np.isfinite(sc):
        raise BadLine(f"score '{score}' is not finite")
    return qid, docid, r, sc, tag


def read_qrels(path: str | Path, stage: str = "import_qrels") -> Parsed:
    """Parse a qrels file. A repeated (qid, docid) keeps its first label; later ones are counted
    as duplicates when equal and quarantined when they contradict it."""
    path = Path(path)
    q = Quarantine(stage)
    rows: dict[tuple[str, str], int] = {}
    lines = dups = 0
    for n, line in lines_of(path):
        lines += 1
        key = f"{path.name}:{n}"
        try:
            if line is None:
                raise BadLine("invalid UTF-8 in qrels line")
            qid, docid, value = parse_qrels_line(line)
        except BadLine as e:
            q.add(key, str(e), (line or "").strip() or None)
            continue
        if (qid, docid) in rows:
            if rows[(qid, docid)] == value:
                dups += 1
            else:
                q.add(key, f"contradicts an earlier label {rows[(qid, docid)]} for ({qid}, {docid})", line.strip())
            continue
        rows[(qid, docid)] = value
    table = pa.table({"query_id": [k[0] for k in rows], "doc_id": [k[1] for k in rows],
                      "relevance": list(rows.values())}, schema=QRELS)
    return Parsed(table, q, lines, dups)


def read_run(path: str | Path, stage: str = "import_run") -> Parsed:
    """Parse a run file. Ranking is by score as trec_eval does; the rank column is kept as read."""
    path = Path(path)
    q = Quarantine(stage)
    cols: dict[str, list] = {k: [] for k in RUN.names}
    seen: set[tuple[str, str, str]] = set()
    lines = dups = 0
    for n, line in lines_of(path):
        lines += 1
        try:
            if line is None:
                raise BadLine("invalid UTF-8 in run line")
            qid, docid, r, sc, tag = parse_run_line(line)
        except BadLine as e:
            q.add(f"{path.name}:{n}", str(e), (line or "").strip() or None)
            continue
        if (tag, qid, docid) in seen:
            dups += 1
            continue
        seen.add((tag, qid, docid))
        for k, v in zip(RUN.names, (qid, docid, r, sc, tag)):
            cols[k].append(v)
    return Parsed(pa.table(cols, schema=RUN), q, lines, dups)


TOPICS = pa.schema([pa.field("query_id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False)])


def read_topics(path: str | Path, stage: str = "topics") -> Parsed:
    """Query texts: TSV `qid<TAB>text` (TREC / LLMJudge topics), or JSONL with `query_id`|`qid`|`id`
    and `text`|`query`. The one reader of query files (judge pools, mining, tree search); a line
    that does not parse, an empty text or a repeated id is quarantined with its file:line."""
    import json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"queries file {path} does not exist")
    q = Quarantine(stage)
    ids, texts, seen = [], [], set()
    lines = dups = 0
    for n, line in lines_of(path):
        lines += 1
        key = f"{path.name}:{n}"
        if line is None:
            q.add(key, "invalid UTF-8 in a queries line")
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                row = json.loads(line)
                qid = row.get("query_id", row.get("qid", row.get("id")))
                text = row.get("text", row.get("query"))
            except (ValueError, AttributeError):
                q.add(key, "queries line is not a JSON object", line.strip()[:200])
                continue
        else:
            if "\t" not in line:
                q.add(key, "expected `qid<TAB>text`", line.strip()[:200])
                continue
            qid, text = line.rstrip("\n").split("\t", 1)
        if isinstance(qid, (bool, dict, list, float)):
            q.add(key, f"query id is a JSON {type(qid).__name__}; use a string or an integer", line.strip()[:200])
            continue
        qid = None if qid is None else str(qid).strip()
        text = text.strip() if isinstance(text, str) else None
        if not qid or not text:
            q.add(key, "query has no id or no text", line.strip()[:200])
            continue
        if not trec_safe(qid):
            q.add(key, f"query id {qid[:80]!r} contains whitespace, which splits a TREC line", line.strip()[:200])
            continue
        if qid in seen:
            dups += 1
            continue
        seen.add(qid)
        ids.append(qid)
        texts.append(text)
    return Parsed(pa.table({"query_id": ids, "text": texts}, schema=TOPICS), q, lines, dups)


def source_names(documents: pa.Table | None) -> dict[str, str]:
    """doc_id -> the source's own id (a manifest `id`, `coco:<image id>`), for documents that have
    one no other document shares; TREC files written with it score against the user's own qrels."""
    if documents is None or "source_id" not in documents.column_names:
        return {}
    pairs = [(d, s) for d, s in zip(documents["doc_id"].to_pylist(), documents["source_id"].to_pylist())
             if s and trec_safe(s)]  # "my doc 1" would split the line: such a document keeps its doc_id
    counts: dict[str, int] = {}
    for _, s in pairs:
        counts[s] = counts.get(s, 0) + 1
    return {d: s for d, s in pairs if counts[s] == 1}


def trec_safe(token: str) -> bool:
    """A TREC field is one whitespace-free token: a space, tab or newline inside an id splits or
    adds lines, and trec_eval then scores other ids than the ones written."""
    return bool(token) and not any(c.isspace() for c in token)


def _check_fields(kind: str, **columns) -> None:
    for name, values in columns.items():
        bad = next((v for v in values if not trec_safe(str(v))), None)
        if bad is not None:
            raise ValueError(f"cannot write TREC {kind}: the {name} {str(bad)[:80]!r} is empty or contains "
                             "whitespace, which splits a TREC line; rename it (ids are single tokens)")


def named(table: pa.Table, doc_names: dict[str, str] | None, column: str = "doc_id") -> pa.Table:
    """The table with `column` renamed through doc_names (ids without a source name stay ours)."""
    if not doc_names:
        return table
    ids = [doc_names.get(d, d) for d in table[column].to_pylist()]
    return table.set_column(table.schema.get_field_index(column), column, pa.array(ids, pa.string()))


def write_qrels(table: pa.Table, path: str | Path, relevance: str = "relevance",
                doc_names: dict[str, str] | None = None) -> int:
    """Write `query_id doc_id <relevance>` rows as qrels, sorted for stable diffs; with `doc_names`
    (source_names) documents are named by their sources' own ids where they have one."""
    t = named(table, doc_names)
    t = t.filter(pc.is_valid(t[relevance])).sort_by([("query_id", "ascending"), ("doc_id", "ascending")])
    _check_fields("qrels", query_id=t["query_id"].to_pylist(), doc_id=t["doc_id"].to_pylist())
    with open(path, "w", encoding="utf-8") as f:
        for qid, did, rel in zip(*(t[c].to_pylist() for c in ("query_id", "doc_id", relevance))):
            f.write(f"{qid} 0 {did} {int(rel)}\n")
    return t.num_rows


def write_run(table: pa.Table, path: str | Path, tag: str | None = None,
              doc_names: dict[str, str] | None = None) -> int:
    """Write a run; ranks are renumbered by descending score within each query; with `doc_names`
    documents are named by their sources' own ids where they have one."""
    t = named(table, doc_names).sort_by([("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")])
    tags = t["tag"].to_pylist() if "tag" in t.column_names and tag is None else [tag or "corpusforge"] * t.num_rows
    _check_fields("run", query_id=t["query_id"].to_pylist(), doc_id=t["doc_id"].to_pylist(), tag=tags)
    with open(path, "w", encoding="utf-8") as f:
        prev, rank = None, 0
        for qid, did, score, tg in zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist(),
                                       t["score"].to_pylist(), tags):
            rank = rank + 1 if qid == prev else 1
            prev = qid
            f.write(f"{qid} Q0 {did} {rank} {score:.6f} {tg}\n")
    return t.num_rows


def qrels_to_judgments(qrels: pa.Table, judge: str) -> pa.Table:
    """A label set as `judgments` rows: grade clamped to 0..3, the label as written in `raw`,
    and a one-hot p_grade (a hard label is certain about itself)."""
    rel = qrels["relevance"].to_numpy(zero_copy_only=False).astype(np.int64)
    grade = np.clip(rel, 0, GRADES - 1).astype(np.int8)
    onehot = np.zeros((len(grade), GRADES), np.float32)
    onehot[np.arange(len(grade)), grade] = 1.0
    return pa.table({
        "query_id": qrels["query_id"], "doc_id": qrels["doc_id"],
        "judge": pa.array([judge] * len(grade), pa.string()),
        "grade": pa.array(grade, pa.int8()),
        "p_grade": pa.FixedSizeListArray.from_arrays(pa.array(onehot.ravel(), pa.float32()), GRADES),
        "expected_grade": pa.array(grade.astype(np.float32), pa.float32()),
        "status": pa.array(["ok"] * len(grade), pa.string()),
        "raw": pa.array([str(int(r)) for r in rel], pa.string()),
    }, schema=JUDGMENTS)


def judgments_to_qrels(judgments: pa.Table, judge: str) -> pa.Table:
    """One judge's graded labels as qrels (judgments without a grade are left out)."""
    t = judgments.filter(pc.and_(pc.equal(judgments["judge"], judge), pc.is_valid(judgments["grade"])))
    return pa.table({"query_id": t["query_id"], "doc_id": t["doc_id"],
                     "relevance": pc.cast(t["grade"], pa.int32())}, schema=QRELS)


def run_to_candidates(run: pa.Table) -> pa.Table:
    """A run as `candidates` rows (retriever = run tag); rank follows the score, as in trec_eval."""
    from schemas.tables import CANDIDATES

    t = run.sort_by([("tag", "ascending"), ("query_id", "ascending"), ("score", "descending"),
                     ("doc_id", "descending")])
    tags, qids = t["tag"].to_pylist(), t["query_id"].to_pylist()
    ranks, prev, r = [], None, 0
    for key in zip(tags, qids):
        r = r + 1 if key == prev else 1
        prev = key
        ranks.append(r)
    return pa.table({"query_id": t["query_id"], "doc_id": t["doc_id"], "rank": pa.array(ranks, pa.int32()),
                     "score": pc.cast(t["score"], pa.float32()), "retriever": t["tag"]}, schema=CANDIDATES)


# ---- ir_measures bridge ------------------------------------------------------------------------
def ir_qrels(qrels: pa.Table):
    """qrels in the frame ir_measures reads (query_id, doc_id, relevance)."""
    return qrels.select(["query_id", "doc_id", "relevance"]).to_pandas()


def ir_run(run: pa.Table, score: str = "score"):
    """A run in the frame ir_measures reads (query_id, doc_id, score)."""
    df = run.select(["query_id", "doc_id", score]).to_pandas()
    return df.rename(columns={score: "score"}).astype({"score": "float64"})
