"""The ingest stage: every raw record becomes a document, a quarantined row with a reason, or a
counted exact duplicate. Document ids are content addresses, so the same input always gives
the same id; the record checks are the stage's (model-free, in-process) work, so a record that
breaks a check in an unexpected way is quarantined with the exception like any other item.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from schemas.config import IngestConfig
from schemas.tables import DOCUMENTS, SOURCE_IDS
from tasks.ingest.checks import Rejected, _modality, check_image, check_text
from tasks.ingest.readers import RawRecord, _outside, read_sources
from tasks.runtime.ids import canonical_json, record_id
from tasks.runtime.sql import quote_literal
from tasks.runtime.stage import KEY, UNIT, Assembled, Resources, Stage, Units, Work

DOC_COLUMNS = [f.name for f in DOCUMENTS if f.name not in ("source", "source_id")]
CHECKED = pa.schema([f for f in DOCUMENTS if f.name in DOC_COLUMNS])


STATE_FILE = "ingest_state.parquet"  # chunk -> the documents (and source ids) it gave, kept with the version
FILES_FILE = "ingest_files.parquet"  # manifest -> its file stat and chunk keys, so an unchanged one is not read
FILES = pa.schema([("path", pa.string()), ("repeat", pa.int64()), ("stat", pa.string()),
                   ("chunks", pa.list_(pa.string()))])
UNITS = pa.schema([(UNIT, pa.string()), (KEY, pa.string()), ("source", pa.string()), ("source_id", pa.string()),
                   ("id_kind", pa.string()), ("record", pa.string())])


class Ingest(Stage):
    """A streaming stage: the sources are read in chunks of `ingest.chunk_records` raw records. A
    chunk whose records (and the size and mtime of the images they name) are those of a chunk of the
    current version is carried over without a check; the others are checked and their documents
    upserted by doc_id; documents no chunk gives any more become deletions of the next version. A
    text manifest whose file stat has not changed is not even read: its chunks carry over.
    Duplicate and clashing ids are found across chunks through a DuckDB table, never a Python dict
    of the corpus."""

    name = "ingest"
    section = "ingest"
    writes = ("documents", "source_ids")
    incremental = True
    description = "check, identify and deduplicate the configured sources"

    def fingerprint(self) -> str:
        from tasks.runtime.ids import fingerprint
        from tasks.runtime.stage import fingerprint_fields

        sources = [s.model_dump(mode="json") for s in self.config.corpus.sources] if self.config.corpus else []
        return fingerprint({"stage": self.name, "section": fingerprint_fields(self.cfg), "sources": sources})

    def output_mode(self, name: str):
        return "upsert", ["doc_id" if name == "documents" else "source_id"]

    def units(self, inputs):
        from tasks.runtime.versions import scratch_db

        root = inputs.corpus_root
        if not root.is_dir():
            raise FileNotFoundError(f"corpus root {root} does not exist or is not a folder")
        self._db = db = scratch_db()
        db.execute("CREATE TABLE seen (chunk VARCHAR, doc_id VARCHAR, source_id VARCHAR, id_kind VARCHAR, "
                   "produced BOOLEAN)")
        carried: set[str] = set()
        self._files, self._files_prev = {}, {}
        state = self._previous_state(inputs)
        if state is not None:
            db.execute(f"CREATE TABLE prev AS SELECT * FROM read_parquet({quote_literal(state)})")
            known = {r[0] for r in db.execute("SELECT DISTINCT chunk FROM prev").fetchall()}
            self._files_prev = self._previous_files(inputs, known)
            carried = known & {key for key, _ in self._chunks(root, keep_rows=False)}
            db.register("carried", pa.table({"chunk": pa.array(sorted(carried), pa.string())}))
            db.execute("INSERT INTO seen SELECT * FROM prev SEMI JOIN carried USING (chunk)")
            db.unregister("carried")
        self._notes = {"chunks": 0, "chunks_carried": len(carried)}
        return self._stream(root, carried)

    def _stream(self, root: Path, carried: set[str]):
        for key, rows in self._chunks(root):
            self._notes["chunks"] += 1
            self._chunk = None if key in carried else key
            if key in carried:
                kept = self._db.execute("SELECT count(*) FROM seen WHERE chunk = ? AND produced", [key]).fetchall()[0][0]
                yield Units(UNITS.empty_table(), kept=kept)
                continue
            yield Units(pa.Table.from_pylist(rows, schema=UNITS))

    def _chunks(self, root: Path, keep_rows: bool = True):
        """(chunk key, unit rows) per chunk of each source's records, in order."""
        import hashlib

        size, fp, listed = self.cfg.chunk_records, self.fingerprint(), {}
        for src in self.config.corpus.sources:
            repeat = listed[src.path] = listed.get(src.path, 0) + 1  # a source listed twice: distinct units
            signature = _file_stat(root, src) if self.cfg.skip_unchanged_files else None
            prev = self._files_prev.get((src.path, repeat))
            if signature is not None and prev is not None and prev[0] == signature:  # unchanged: its chunks, unread
                self._files[(src.path, repeat)] = prev
                for key in prev[1]:
                    yield key, None
                continue
            keys, images = [], False
            rows, h, n, in_chunk = [], None, 0, {}
            for rec in read_sources(root, [src]):
                images = images or rec.image is not None
                if h is None:
                    h = hashlib.sha256(f"{fp}\0{src.path}\0{repeat}".encode())
                uid = rec.key if repeat == 1 else f"{rec.key}#{repeat}"
                if uid in in_chunk:  # one file named twice in a source (a COCO image listed twice)
                    in_chunk[uid] += 1
                    uid = f"{uid}#{in_chunk[uid]}"
                else:
                    in_chunk[uid] = 1
                record = _record_json(rec)
                h.update(f"\0{uid}\0{record}\0{_image_stamp(root, rec.image)}".encode("utf-8", "surrogatepass"))
                if keep_rows:
                    rows.append({UNIT: uid, KEY: uid, "source": rec.source, "source_id": rec.source_id,
                                 "id_kind": rec.id_kind, "record": record})
                n += 1
                if n == size:
                    keys.append(h.hexdigest())
                    yield keys[-1], rows
                    rows, h, n, in_chunk = [], None, 0, {}
            if n:
                keys.append(h.hexdigest())
                yield keys[-1], rows
            if signature is not None and not images:
                self._files[(src.path, repeat)] = (signature, keys)

    def _previous_files(self, inputs, known: set[str]) -> dict:
        """The manifests of the current version with their stat and chunk keys (only those whose
        chunks the state still has: anything else is read again)."""
        path = inputs.attachment(inputs.previous_ref("documents"), FILES_FILE)
        if path is None:
            return {}
        return {(r["path"], r["repeat"]): (r["stat"], r["chunks"]) for r in pq.read_table(path).to_pylist()
                if set(r["chunks"]) <= known}

    def _previous_state(self, inputs) -> str | None:
        ref = inputs.previous_ref("documents")
        if ref is None or inputs.root is None or inputs.run is None:
            return None
        return inputs.attachment(ref, STATE_FILE)

    def payload(self, unit: dict) -> dict:
        return payload(unit)

    def work(self) -> Work:
        return Work(RecordCheck, {"root": str(self.config.corpus_root), "ingest": self.cfg.model_dump(mode="json")},
                    ["record"], CHECKED, Resources(where="local", batch_size=256, uses_gpu=False), cached=False, model=False)

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        """One chunk: documents, clashing source ids and duplicates, against every earlier chunk too."""
        if self._chunk is None:  # a carried chunk: nothing to assemble
            return Assembled({}, [])
        checked = {} if results is None else {r[KEY]: r for r in results.to_pylist()}
        unit_rows = units.to_pylist()
        db = self._db
        db.register("chunk_ids", pa.table({
            "doc_id": pa.array([checked[u[KEY]]["doc_id"] for u in unit_rows], pa.string()),
            "source_id": pa.array([u["source_id"] for u in unit_rows], pa.string())}))
        known_docs = {r[0] for r in db.execute("SELECT DISTINCT doc_id FROM seen SEMI JOIN chunk_ids USING (doc_id) "
                                               "WHERE produced").fetchall()}
        by_source_id = {r[0]: (r[1], r[2]) for r in db.execute(
            "SELECT source_id, min(doc_id), min(id_kind) FROM seen SEMI JOIN chunk_ids USING (source_id) "
            "GROUP BY source_id").fetchall()}
        db.unregister("chunk_ids")
        docs: dict[str, dict] = {}
        ids: dict[str, dict] = {}  # source ids first kept in this chunk -> their document (duplicates' too)
        produced, dedup, quarantined, seen = [], [], [], []
        for u in unit_rows:
            doc = checked[u[KEY]]
            sid = u["source_id"]
            if sid is not None:
                known = sid in by_source_id
                first, kind = by_source_id.setdefault(sid, (doc["doc_id"], u["id_kind"]))
                if kind != u["id_kind"]:  # 1 and "1" are different ids to the user, one string to us
                    quarantined.append({"key": u[UNIT], "reason": f"id {sid!r} given both as a number and as a "
                                        "string; use one kind of id", "payload": payload(u)})
                    continue
                if first != doc["doc_id"]:
                    quarantined.append({"key": u[UNIT], "reason": f"duplicate id {sid!r} with different content "
                                        f"(first seen as document {first})", "payload": payload(u)})
                    continue
                if not known and sid not in ids:
                    ids[sid] = {"source_id": sid, "doc_id": doc["doc_id"], "source": u["source"]}
            if doc["doc_id"] in docs or doc["doc_id"] in known_docs:
                dedup.append(u[UNIT])
                seen.append((doc["doc_id"], sid, u["id_kind"], False))
                continue
            docs[doc["doc_id"]] = {k: doc[k] for k in DOC_COLUMNS} | {"source": u["source"], "source_id": sid}
            produced.append(u[UNIT])
            seen.append((doc["doc_id"], sid, u["id_kind"], True))
        if not seen:
            seen.append((None, None, None, False))  # the chunk is known even when nothing of it became a document
        db.register("chunk_seen", pa.table({"chunk": pa.array([self._chunk] * len(seen), pa.string()),
                                            "doc_id": pa.array([s[0] for s in seen], pa.string()),
                                            "source_id": pa.array([s[1] for s in seen], pa.string()),
                                            "id_kind": pa.array([s[2] for s in seen], pa.string()),
                                            "produced": pa.array([s[3] for s in seen], pa.bool_())}))
        db.execute("INSERT INTO seen SELECT * FROM chunk_seen")
        db.unregister("chunk_seen")
        table = pa.Table.from_pylist(list(docs.values()), schema=DOCUMENTS)
        return Assembled({"documents": table, "source_ids": pa.Table.from_pylist(list(ids.values()), schema=SOURCE_IDS)},
                         produced, quarantined, dedup)

    def finish(self, inputs) -> dict:
        """The documents no chunk gives any more (deletions) and the chunk state of the new version."""
        import tempfile

        db = getattr(self, "_db", None)
        if db is None:
            return {}
        try:
            gone = {"documents": ("doc_id", "SELECT doc_id FROM seen WHERE produced"),
                    "source_ids": ("source_id", "SELECT source_id FROM seen WHERE source_id IS NOT NULL")}
            deleted = {}
            for name, (key, kept) in gone.items():
                deleted[name] = []
                if inputs.previous_ref(name) is not None and inputs.root is not None:
                    reader = inputs.previous_dataset(name).scanner(
                        columns=[key], with_row_address=True, batch_size=65_536).to_reader()
                    db.register("prev_rows", reader)
                    deleted[name] = db.execute(f"SELECT _rowaddr FROM prev_rows ANTI JOIN ({kept}) USING ({key})"
                                               ).fetchnumpy()["_rowaddr"].tolist()
                    db.unregister("prev_rows")
            folder = tempfile.mkdtemp(prefix="corpusforge-ingest-")
            state, files = os.path.join(folder, STATE_FILE), os.path.join(folder, FILES_FILE)
            db.execute(f"COPY (SELECT * FROM seen ORDER BY chunk, doc_id) TO {quote_literal(state)} (FORMAT parquet)")
            pq.write_table(pa.Table.from_pylist([{"path": p, "repeat": r, "stat": st, "chunks": keys} for (p, r), (st, keys)
                                                 in sorted(self._files.items())], schema=FILES), files)
            notes = self._notes | {"deleted": len(deleted["documents"]),
                                   "files_unread": sum(1 for k, v in self._files.items() if self._files_prev.get(k) == v)}
            return {"documents": {"deleted": deleted["documents"], "attachments": {STATE_FILE: state, FILES_FILE: files}},
                    "source_ids": {"deleted": deleted["source_ids"]}, "notes": notes}
        finally:
            db.close()
            self._db = None


def _image_stamp(root: Path, image) -> str:
    """What a chunk's key knows of an image file without reading it: size and modification time."""
    if not isinstance(image, str) or not image:
        return ""
    try:
        st = os.stat(root / image)
    except (OSError, ValueError):
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _file_stat(root: Path, src) -> str | None:
    """Size, mtime and inode of a manifest file (None for other sources: their records name images
    and folders whose own changes a file stat does not show)."""
    if src.kind != "manifest" or _outside(root, src.path):
        return None
    try:
        st = os.stat(root / src.path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" if stat.S_ISREG(st.st_mode) else None


class RecordCheck:
    """The ingest work: check one batch of raw records; a rejected record is an error row."""

    def __init__(self, args: dict, device: str = "cpu"):
        self.root = Path(args["root"])
        self.cfg = IngestConfig.model_validate(args["ingest"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our cap is checked on the header, before any decode
        rows = []
        try:
            for key, record in zip(batch[KEY].to_pylist(), batch["record"].to_pylist()):
                try:
                    rows.append({KEY: key, **document(json.loads(record), self.root, self.cfg), "error": None})
                except Rejected as e:
                    rows.append({KEY: key, "error": str(e)})
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        schema = pa.schema([pa.field(KEY, pa.string())] + [f.with_nullable(True) for f in CHECKED]
                           + [pa.field("error", pa.string())])
        return pa.Table.from_pylist(rows, schema=schema)


def document(rec: dict, root: Path, cfg: IngestConfig) -> dict:
    """The document a raw record becomes, or Rejected with the reason."""
    if rec.get("problem"):
        raise Rejected(rec["problem"])
    text = check_text(rec.get("text"), cfg)
    alt = None
    if rec.get("alt_text") is not None:
        try:
            alt = check_text(rec["alt_text"], cfg)
        except Rejected as e:  # the record is quarantined whole: a silently dropped field is lost data
            raise Rejected(f"alt_text: {e}") from None
    image_rel = rec.get("image")
    image = check_image(root, image_rel, cfg) if image_rel is not None else {}
    modality = _modality(text, image_rel, rec.get("modality"))
    meta = rec.get("meta") or {}
    if not isinstance(meta, dict):
        raise Rejected(f"meta is a {type(meta).__name__}, not a JSON object")
    try:
        canonical_json(meta).encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("meta holds a lone surrogate, which cannot be encoded as UTF-8") from None
    return {
        "doc_id": record_id(modality, text, image.get("image_sha256")),
        "modality": modality,
        "text": text,
        "image_uri": Path(os.path.normpath(image_rel)).as_posix() if image_rel else None,
        "alt_text": alt,
        "meta": canonical_json(meta) if meta else None,
        **{k: image.get(k) for k in ("image_sha256", "image_width", "image_height", "image_format")},
    }


def _record_json(rec: RawRecord) -> str:
    """The raw record as JSON (ASCII-escaped, so any string survives the trip into Arrow)."""
    return json.dumps({"text": rec.text, "image": rec.image, "alt_text": rec.alt_text, "modality": rec.modality,
                       "meta": rec.meta, "problem": rec.problem}, default=str, ensure_ascii=True)


def payload(unit: dict) -> dict:
    rec = json.loads(unit["record"])
    text = rec.get("text")
    return {"source": unit["source"], "source_id": unit["source_id"], "image": rec.get("image"),
            "text": (str(text) if text is not None else "")[:500] or None}


def ingest_corpus(root: Path, sources: list, cfg: IngestConfig | None = None):
    """Ingest sources under a root without a catalog (tests, notebooks): the stage's Outcome."""
    from schemas.config import config_from_dict
    from tasks.runtime.inputs import Inputs
    from tasks.runtime.runner import execute

    config = config_from_dict({"corpus": {"root": str(root), "sources": [s.model_dump() for s in sources]},
                               "ingest": (cfg or IngestConfig()).model_dump()})
    return execute(Ingest(config), Inputs.of(config, {}))
