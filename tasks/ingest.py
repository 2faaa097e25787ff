"""Ingest: image folders, COCO caption files and JSONL/Parquet manifests -> `documents`.

Every raw record becomes exactly one of: a document, a quarantined row with a reason, or a
counted exact duplicate. Image bytes are checked before anything downstream sees them: path
containment, existence, size, format, pixel cap (decompression bombs) and a full decode
(truncation). Document ids are content addresses, so the same input always gives the same id.

Manifest format (one JSON object per line, or one row per Parquet record):
    id        optional source id; two records with one id and different content are refused
    text      optional document text (UTF-8)
    image     optional image path, relative to the corpus root
    alt_text  optional alt-text of the image
    modality  optional; inferred: text only -> text, image only -> image, both -> interleaved
    meta      optional JSON object, kept as is
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from schemas.config import IngestConfig, Source
from schemas.tables import DOCUMENTS
from tasks.runtime.accounting import Quarantine, StageOutput
from tasks.runtime.ids import canonical_json, record_id, sha256_bytes

log = logging.getLogger(__name__)

STAGE = "ingest"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MIXED_LAYOUT = ("image", "text", "interleaved")


@dataclass
class RawRecord:
    """One input before checks: where it came from and what it claims to hold."""

    source: str
    key: str  # file:line or file, for quarantine messages
    text: str | bytes | None = None
    image: str | None = None
    alt_text: str | None = None
    source_id: str | None = None
    modality: str | None = None
    meta: dict = field(default_factory=dict)
    problem: str | None = None  # set by a reader that could not parse the record


class Rejected(ValueError):
    """A record that cannot become a document; the message is the quarantine reason."""


# ---- readers ---------------------------------------------------------------------------------
def read_sources(root: Path, sources: list[Source]) -> Iterator[RawRecord]:
    for src in sources:
        name = src.name or f"{src.kind}:{src.path}"
        path = root / src.path
        if src.kind == "image_folder":
            yield from _image_folder(root, path, name)
        elif src.kind == "coco_captions":
            yield from _coco(root, path, src, name)
        else:
            yield from _manifest(path, name)


def _image_folder(root: Path, folder: Path, name: str) -> Iterator[RawRecord]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (source {name})")
    for p in sorted(folder.rglob("*")):
        if p.is_dir():
            continue
        rel = os.path.relpath(p, root)
        yield RawRecord(source=name, key=rel, image=rel)


def _coco(root: Path, path: Path, src: Source, name: str) -> Iterator[RawRecord]:
    if not path.exists():
        raise FileNotFoundError(f"COCO caption file {path} does not exist (source {name})")
    data = json.loads(path.read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {}
    for a in data.get("annotations", []):
        captions.setdefault(a["image_id"], []).append(a["caption"].strip())
    licenses = {lic["id"]: lic.get("name") for lic in data.get("licenses", [])}
    image_dir = src.images or "."
    for i, img in enumerate(sorted(data.get("images", []), key=lambda r: r["id"])):
        caps = captions.get(img["id"], [])
        layout = MIXED_LAYOUT[i % 3] if src.layout == "mixed" else src.layout
        rel = os.path.normpath(os.path.join(image_dir, img["file_name"]))
        meta = {"coco_image_id": img["id"], "license": licenses.get(img.get("license")),
                "flickr_url": img.get("flickr_url")}
        text = " ".join(caps) if caps else None
        yield RawRecord(
            source=name, key=f"{path.name}#image={img['id']}", source_id=f"coco:{img['id']}",
            text=None if layout == "image" else text,
            image=None if layout == "text" else rel,
            alt_text=caps[0] if caps and layout != "text" else None,
            modality=layout, meta=meta,
        )


def _manifest(path: Path, name: str) -> Iterator[RawRecord]:
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist (source {name})")
    if path.suffix == ".parquet":
        for n, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield _manifest_record(row, name, f"{path.name}:row{n}")
        return
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            key = f"{path.name}:{n}"
            if not line.strip():
                continue
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRecord(source=name, key=key, text=line[:500],
                                problem=f"invalid UTF-8 at byte {e.start} of the line")
                continue
            try:
                row = json.loads(decoded)
            except json.JSONDecodeError as e:
                yield RawRecord(source=name, key=key, text=decoded[:500],
                                problem=f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(row, dict):
                yield RawRecord(source=name, key=key, text=decoded[:500], problem="manifest line is not a JSON object")
                continue
            yield _manifest_record(row, name, key)


def _manifest_record(row: dict, name: str, key: str) -> RawRecord:
    unknown = set(row) - {"id", "text", "image", "alt_text", "modality", "meta"}
    meta = row.get("meta") or {}
    if unknown:
        meta = dict(meta, unknown_fields=sorted(unknown))
    return RawRecord(source=name, key=key, text=row.get("text"), image=row.get("image"),
                     alt_text=row.get("alt_text"), source_id=None if row.get("id") is None else str(row["id"]),
                     modality=row.get("modality"), meta=meta)


# ---- checks ----------------------------------------------------------------------------------
def check_text(text: str | bytes | None, cfg: IngestConfig) -> str | None:
    if text is None:
        return None
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejected(f"invalid UTF-8: byte {e.start} cannot be decoded") from None
    if not isinstance(text, str):
        raise Rejected(f"text is a {type(text).__name__}, not a string")
    if "\x00" in text:
        raise Rejected("text contains NUL bytes")
    if not text.strip():
        raise Rejected("empty or whitespace-only text")
    if len(text) > cfg.max_text_chars:
        raise Rejected(f"text too long: {len(text)} characters > max_text_chars {cfg.max_text_chars}")
    return text


def resolve_inside(root: Path, rel: str) -> Path:
    """The real path of an image, refusing anything that leaves the corpus root."""
    if os.path.isabs(rel):
        raise Rejected(f"image path escapes the corpus root: absolute path {rel!r}")
    candidate = root / rel
    real = Path(os.path.realpath(candidate))
    root_real = Path(os.path.realpath(root))
    if real != root_real and root_real not in real.parents:
        how = "symlink" if os.path.islink(candidate) or _has_symlink(root, rel) else "'..' path"
        raise Rejected(f"image path escapes the corpus root: {how} {rel!r} resolves outside it")
    return real


def _has_symlink(root: Path, rel: str) -> bool:
    p = root
    for part in Path(rel).parts:
        p = p / part
        if p.is_symlink():
            return True
    return False


def check_image(root: Path, rel: str, cfg: IngestConfig) -> dict:
    path = resolve_inside(root, rel)
    if not path.exists():
        raise Rejected(f"image file not found: {rel}")
    if not path.is_file():
        raise Rejected(f"image path is not a file: {rel}")
    data = path.read_bytes()
    if not data:
        raise Rejected(f"empty image file (0 bytes): {rel}")
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            if fmt not in cfg.image_formats:
                raise Rejected(f"unsupported image format {fmt} (allowed: {', '.join(cfg.image_formats)}): {rel}")
            if w * h > cfg.max_image_pixels:
                raise Rejected(f"image too large (decompression-bomb cap): {w}x{h} = {w * h} pixels > "
                               f"max_image_pixels {cfg.max_image_pixels}: {rel}")
            im.load()  # a full decode finds truncated and corrupt files
    except Rejected:
        raise
    except UnidentifiedImageError:
        raise Rejected(f"unsupported or unrecognised image format: {rel}") from None
    except Image.DecompressionBombError as e:
        raise Rejected(f"image too large (decompression-bomb cap): {e}: {rel}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise Rejected(f"corrupt or truncated image: {e}: {rel}") from None
    return {"image_sha256": sha256_bytes(data), "image_width": w, "image_height": h, "image_format": fmt}


def _modality(text: str | None, image: str | None, claimed: str | None) -> str:
    inferred = "interleaved" if text and image else "text" if text else "image" if image else None
    if inferred is None:
        raise Rejected("record has neither text nor an image")
    if claimed and claimed != inferred:
        raise Rejected(f"modality {claimed!r} does not match the content (it holds {inferred})")
    return inferred


# ---- the stage -------------------------------------------------------------------------------
def ingest(records: Iterator[RawRecord], root: Path, cfg: IngestConfig) -> StageOutput:
    """Check, identify and deduplicate raw records."""
    quarantine = Quarantine(STAGE)
    docs: dict[str, dict] = {}
    by_source_id: dict[str, str] = {}
    rows_in = duplicates = 0
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our cap is checked on the header, before any decode
    try:
        for rec in records:
            rows_in += 1
            try:
                doc = _document(rec, root, cfg)
            except Rejected as e:
                quarantine.add(rec.key, str(e), _payload(rec))
                continue
            if rec.source_id is not None:
                first = by_source_id.setdefault(rec.source_id, doc["doc_id"])
                if first != doc["doc_id"]:
                    quarantine.add(rec.key, f"duplicate id {rec.source_id!r} with different content "
                                   f"(first seen as document {first})", _payload(rec))
                    continue
            if doc["doc_id"] in docs:
                duplicates += 1
                continue
            docs[doc["doc_id"]] = doc
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    table = pa.Table.from_pylist(list(docs.values()), schema=DOCUMENTS)
    return StageOutput(STAGE, {"documents": table}, rows_in=rows_in, rows_out=table.num_rows,
                       quarantine=quarantine.table(), rows_deduplicated=duplicates).check()


def _document(rec: RawRecord, root: Path, cfg: IngestConfig) -> dict:
    if rec.problem:
        raise Rejected(rec.problem)
    text = check_text(rec.text, cfg)
    alt = None
    if rec.alt_text is not None:
        try:
            alt = check_text(rec.alt_text, cfg)
        except Rejected:
            alt = None  # a bad alt-text is dropped, the image itself is still good
    image = check_image(root, rec.image, cfg) if rec.image else {}
    modality = _modality(text, rec.image, rec.modality)
    image_uri = Path(os.path.normpath(rec.image)).as_posix() if rec.image else None
    return {
        "doc_id": record_id(modality, text, image.get("image_sha256")),
        "source_id": rec.source_id,
        "modality": modality,
        "text": text,
        "image_uri": image_uri,
        "alt_text": alt,
        "source": rec.source,
        "meta": canonical_json(rec.meta) if rec.meta else None,
        **{k: image.get(k) for k in ("image_sha256", "image_width", "image_height", "image_format")},
    }


def _payload(rec: RawRecord) -> dict:
    text = rec.text
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return {"source": rec.source, "source_id": rec.source_id, "image": rec.image,
            "text": (text or "")[:500] or None}


def ingest_corpus(root: Path, sources: list[Source], cfg: IngestConfig) -> StageOutput:
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} does not exist or is not a folder")
    return ingest(read_sources(root, sources), root, cfg)


# ---- Prefect task ----------------------------------------------------------------------------
from tasks.runtime.context import RunContext, stage_clock  # noqa: E402
from tasks.runtime.prefect_support import run_logger, stage_task  # noqa: E402


@stage_task("ingest")
def ingest_task(ctx: RunContext) -> dict:
    """Ingest the configured sources and publish `documents`."""
    started_at, t0 = stage_clock()
    cfg = ctx.config
    out = ingest_corpus(cfg.corpus_root, cfg.corpus.sources, cfg.ingest)
    fp = fingerprint_ingest(cfg)
    results = ctx.record(out, parents=[], fingerprint=fp, started_at=started_at, started=t0, logger=run_logger())
    return {name: r.dataset for name, r in results.items()}


def fingerprint_ingest(cfg) -> str:
    from tasks.runtime.ids import fingerprint

    return fingerprint({"ingest": cfg.ingest.model_dump(mode="json"),
                        "sources": [s.model_dump(mode="json") for s in cfg.corpus.sources]})
