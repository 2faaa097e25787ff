"""The ingest stage: every raw record becomes a document, a quarantined row with a reason, or a
counted exact duplicate. Document ids are content addresses, so the same input always gives
the same id; the record checks are the stage's (model-free, in-process) work, so a record that
breaks a check in an unexpected way is quarantined with the exception like any other item.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
from PIL import Image

from schemas.config import IngestConfig
from schemas.tables import DOCUMENTS, SOURCE_IDS
from tasks.ingest.checks import Rejected, _modality, check_image, check_text
from tasks.ingest.readers import RawRecord, read_sources
from tasks.runtime.ids import canonical_json, record_id
from tasks.runtime.stage import KEY, UNIT, Assembled, Resources, Stage, Units, Work

DOC_COLUMNS = [f.name for f in DOCUMENTS if f.name not in ("source", "source_id")]
CHECKED = pa.schema([f for f in DOCUMENTS if f.name in DOC_COLUMNS])


class Ingest(Stage):
    name = "ingest"
    section = "ingest"
    writes = ("documents", "source_ids")
    description = "check, identify and deduplicate the configured sources"

    def fingerprint(self) -> str:
        from tasks.runtime.ids import fingerprint
        from tasks.runtime.stage import fingerprint_fields

        sources = [s.model_dump(mode="json") for s in self.config.corpus.sources] if self.config.corpus else []
        return fingerprint({"stage": self.name, "section": fingerprint_fields(self.cfg), "sources": sources})

    def units(self, inputs) -> Units:
        root = inputs.corpus_root
        if not root.is_dir():
            raise FileNotFoundError(f"corpus root {root} does not exist or is not a folder")
        rows, seen = [], {}
        for rec in read_sources(root, self.config.corpus.sources):
            uid = rec.key
            if uid in seen:  # two sources may name the same file: keep both, distinctly
                seen[uid] += 1
                uid = f"{rec.key}#{seen[uid]}"
            else:
                seen[uid] = 1
            rows.append({UNIT: uid, KEY: uid, "source": rec.source, "source_id": rec.source_id,
                         "id_kind": rec.id_kind, "record": _record_json(rec)})
        schema = pa.schema([(UNIT, pa.string()), (KEY, pa.string()), ("source", pa.string()),
                            ("source_id", pa.string()), ("id_kind", pa.string()), ("record", pa.string())])
        return Units(pa.Table.from_pylist(rows, schema=schema))

    def payload(self, unit: dict) -> dict:
        return payload(unit)

    def work(self) -> Work:
        return Work(RecordCheck, {"root": str(self.config.corpus_root), "ingest": self.cfg.model_dump(mode="json")},
                    ["record"], CHECKED, Resources(where="local", batch_size=256, uses_gpu=False), cached=False, model=False)

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        checked = {} if results is None else {r[KEY]: r for r in results.to_pylist()}
        docs: dict[str, dict] = {}
        by_source_id: dict[str, tuple[str, str]] = {}
        ids: dict[str, dict] = {}  # every kept source id -> its document, duplicates' ids too
        produced, dedup, quarantined = [], [], []
        for u in units.to_pylist():
            doc = checked[u[KEY]]
            sid = u["source_id"]
            if sid is not None:
                first, kind = by_source_id.setdefault(sid, (doc["doc_id"], u["id_kind"]))
                if kind != u["id_kind"]:  # 1 and "1" are different ids to the user, one string to us
                    quarantined.append({"key": u[UNIT], "reason": f"id {sid!r} given both as a number and as a "
                                        "string; use one kind of id", "payload": payload(u)})
                    continue
                if first != doc["doc_id"]:
                    quarantined.append({"key": u[UNIT], "reason": f"duplicate id {sid!r} with different content "
                                        f"(first seen as document {first})", "payload": payload(u)})
                    continue
            if sid is not None and sid not in ids:
                ids[sid] = {"source_id": sid, "doc_id": doc["doc_id"], "source": u["source"]}
            if doc["doc_id"] in docs:
                dedup.append(u[UNIT])
                continue
            docs[doc["doc_id"]] = {k: doc[k] for k in DOC_COLUMNS} | {"source": u["source"], "source_id": sid}
            produced.append(u[UNIT])
        table = pa.Table.from_pylist(list(docs.values()), schema=DOCUMENTS)
        return Assembled({"documents": table, "source_ids": pa.Table.from_pylist(list(ids.values()), schema=SOURCE_IDS)},
                         produced, quarantined, dedup)


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
