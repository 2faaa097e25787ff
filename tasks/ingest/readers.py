"""Readers: each source kind becomes a stream of raw records, before any check.

A record the reader cannot parse still becomes a record, with `problem` set, so it is
quarantined with its file and line instead of stopping the run. A source that cannot be read
at all (a missing file) fails with a message naming it.

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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from schemas.config import Source

MIXED_LAYOUT = ("image", "text", "interleaved")
MANIFEST_FIELDS = {"id", "text", "image", "alt_text", "modality", "meta"}


@dataclass
class RawRecord:
    """One input before checks: where it came from and what it claims to hold."""

    source: str
    key: str  # file:line or file, for quarantine messages
    text: object = None
    image: object = None
    alt_text: object = None
    source_id: str | None = None
    modality: object = None
    meta: dict = field(default_factory=dict)
    problem: str | None = None  # set by a reader that could not parse the record


def read_sources(root: Path, sources: list[Source]) -> Iterator[RawRecord]:
    for src in sources:
        name = src.name or f"{src.kind}:{src.path}"
        path = root / src.path
        if src.kind == "image_folder":
            yield from _image_folder(root, path, name)
        elif src.kind == "coco_captions":
            yield from _coco(path, src, name)
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


def _coco(path: Path, src: Source, name: str) -> Iterator[RawRecord]:
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
            yield manifest_record(row, name, f"{path.name}:row{n}")
        return
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            key = f"{path.name}:{n}"
            if not line.strip():
                continue
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRecord(source=name, key=key, text=line[:500].decode("utf-8", "replace"),
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
            yield manifest_record(row, name, key)


def manifest_record(row: dict, name: str, key: str) -> RawRecord:
    unknown = set(row) - MANIFEST_FIELDS
    meta = row.get("meta") or {}
    if unknown and isinstance(meta, dict):
        meta = dict(meta, unknown_fields=sorted(unknown))
    return RawRecord(source=name, key=key, text=row.get("text"), image=row.get("image"),
                     alt_text=row.get("alt_text"), source_id=None if row.get("id") is None else str(row["id"]),
                     modality=row.get("modality"), meta=meta)
