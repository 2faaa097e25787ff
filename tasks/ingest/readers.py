"""Readers: each source kind becomes a stream of raw records, before any check.

A record the reader cannot parse still becomes a record, with `problem` set, so it is
quarantined with its file and line instead of stopping the run. A source that cannot be read
as a whole (not JSON, the wrong top level, a path outside the corpus root) becomes one
quarantined record keyed by its file, whose reason names the source; the other sources go on.
A missing source file is a config mistake and fails the build with a message naming it.

Manifest format (one JSON object per line, or one row per Parquet record):
    id        optional source id, a string or an integer; `1` and `"1"` in one build are refused
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

from schemas.config import Source

MIXED_LAYOUT = ("image", "text", "interleaved")
MANIFEST_FIELDS = {"id", "text", "image", "alt_text", "modality", "meta"}
MAX_LINE_BYTES = 16 * 1024 * 1024  # a manifest line past this is quarantined unread
MAX_SOURCE_BYTES = 1024 * 1024 * 1024  # a whole-file JSON source (COCO) past this is refused
MAX_DEPTH = 64  # JSON nesting past this is refused (Python's parser would recurse ~1000 deep)
_DUP = "\x00duplicate keys"  # marker a parsed object carries when its keys repeat


class DuplicateKeys(ValueError):
    pass


@dataclass
class RawRecord:
    """One input before checks: where it came from and what it claims to hold."""

    source: str
    key: str  # file:line or file, for quarantine messages
    text: object = None
    image: object = None
    alt_text: object = None
    source_id: str | None = None
    id_kind: str | None = None  # "int" or "str": `1` and `"1"` must not silently become one id
    modality: object = None
    meta: object = field(default_factory=dict)
    problem: str | None = None  # set by a reader that could not parse the record


def read_sources(root: Path, sources: list[Source]) -> Iterator[RawRecord]:
    for src in sources:
        name = src.name or f"{src.kind}:{src.path}"
        path = root / src.path
        outside = _outside(root, src.path)
        if outside:
            yield RawRecord(source=name, key=_safe(src.path), problem=f"source {name}: path {outside}")
            continue
        if src.kind == "image_folder":
            yield from _image_folder(root, path, name)
        elif src.kind == "coco_captions":
            yield from _coco(path, src, name)
        else:
            yield from _manifest(path, name)


def _outside(root: Path, rel: str) -> str | None:
    """Why a source path is not inside the corpus root, or None (its contents must not reach payloads)."""
    if os.path.isabs(rel):
        return f"{rel!r} is absolute; source paths are relative to the corpus root"
    real, root_real = os.path.realpath(root / rel), os.path.realpath(root)
    if real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep):
        return f"{rel!r} resolves outside the corpus root {root}"
    return None


def _safe(s: str) -> str:
    """A string Arrow can store: undecodable file-name bytes and lone surrogates become escapes."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _image_folder(root: Path, folder: Path, name: str) -> Iterator[RawRecord]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (source {name})")
    for p in sorted(folder.rglob("*")):
        if p.is_dir():
            continue
        rel = os.path.relpath(p, root)
        if _safe(rel) != rel:
            yield RawRecord(source=name, key=_safe(rel), problem=f"file name is not valid UTF-8: {_safe(rel)}")
            continue
        yield RawRecord(source=name, key=rel, image=rel)


def _hook(pairs: list) -> dict:
    obj: dict = {}
    dups = []
    for k, v in pairs:
        if k in obj:
            dups.append(k)
        obj[k] = v
    if dups:
        obj[_DUP] = sorted(set(dups))
    return obj


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str):
    """Strict JSON: no NaN/Infinity; objects with repeated keys carry the _DUP marker; depth capped."""
    value = json.loads(text, object_pairs_hook=_hook, parse_constant=_refuse_constant)
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(v, d: int = 0) -> int:
    if d > MAX_DEPTH:
        return d
    if isinstance(v, dict):
        return max([_depth(x, d + 1) for x in v.values()], default=d + 1)
    if isinstance(v, list):
        return max([_depth(x, d + 1) for x in v], default=d + 1)
    return d


def _json_problem(e: BaseException) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"malformed JSON: {e.msg} at column {e.colno}"
    if isinstance(e, RecursionError):
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    return f"malformed JSON: {e}"


def _dup_problem(obj) -> str | None:
    """A duplicate key anywhere in the object (JSON parsers disagree on which value wins)."""
    if isinstance(obj, dict):
        if _DUP in obj:
            return f"duplicate JSON key(s) {', '.join(map(repr, obj[_DUP]))} in one object"
        return next((p for v in obj.values() if (p := _dup_problem(v))), None)
    if isinstance(obj, list):
        return next((p for v in obj if (p := _dup_problem(v))), None)
    return None


def _coco(path: Path, src: Source, name: str) -> Iterator[RawRecord]:
    if not path.exists():
        raise FileNotFoundError(f"COCO caption file {path} does not exist (source {name})")
    fail = lambda why: RawRecord(source=name, key=path.name, problem=f"source {name}: {path.name} {why}")  # noqa: E731
    if not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
        yield fail(f"is not a file of at most {MAX_SOURCE_BYTES} bytes")
        return
    try:
        data = loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        yield fail(f"is not UTF-8 (byte {e.start})")
        return
    except (ValueError, RecursionError) as e:
        yield fail(f"is not COCO JSON: {_json_problem(e)}")
        return
    if not isinstance(data, dict) or _DUP in data or not isinstance(data.get("images", []), list) \
            or not isinstance(data.get("annotations", []), list):
        yield fail("is not COCO JSON: the top level must be an object with lists 'images' and 'annotations'"
                   + (f" ({_dup_problem(data)})" if isinstance(data, dict) and _DUP in data else ""))
        return
    images, bad = _coco_images(data.get("images", []), path, name)
    yield from bad
    captions: dict[str, list[str]] = {}
    for n, a in enumerate(data.get("annotations", [])):
        problem = _coco_annotation_problem(a, images)
        if problem:
            yield RawRecord(source=name, key=f"{path.name}#annotations[{n}]", problem=problem,
                            text=a.get("caption") if isinstance(a, dict) and isinstance(a.get("caption"), str) else None)
            continue
        captions.setdefault(_id_str(a["image_id"]), []).append(a["caption"].strip())
    licenses = {lic.get("id"): lic.get("name") for lic in data.get("licenses", []) or [] if isinstance(lic, dict)}
    image_dir = src.images or "."
    for i, (iid, img) in enumerate(sorted(images.items(), key=lambda kv: _sort_key(kv[1]["id"]))):
        caps = captions.get(iid, [])
        layout = MIXED_LAYOUT[i % 3] if src.layout == "mixed" else src.layout
        rel = os.path.normpath(os.path.join(image_dir, img["file_name"]))
        lic = img.get("license")
        meta = {"coco_image_id": img["id"], "license": licenses.get(lic) if isinstance(lic, (int, str)) else None,
                "flickr_url": img.get("flickr_url")}
        text = " ".join(caps) if caps else None
        yield RawRecord(
            source=name, key=f"{path.name}#image={iid}", source_id=f"coco:{iid}",
            text=None if layout == "image" else text,
            image=None if layout == "text" else rel,
            alt_text=caps[0] if caps and layout != "text" else None,
            modality=layout, meta=meta,
        )


def _id_str(v) -> str:
    return str(v)


def _sort_key(v):
    return (0, v, "") if isinstance(v, int) else (1, 0, str(v))


def _coco_images(rows: list, path: Path, name: str) -> tuple[dict, list[RawRecord]]:
    images: dict[str, dict] = {}
    bad = []
    for n, img in enumerate(rows):
        key = f"{path.name}#images[{n}]"
        if not isinstance(img, dict):
            bad.append(RawRecord(source=name, key=key, problem=f"COCO image entry is a {type(img).__name__}, not an object"))
            continue
        problem = _dup_problem(img)
        iid, fname = img.get("id"), img.get("file_name")
        if problem is None and (isinstance(iid, bool) or not isinstance(iid, (int, str))):
            problem = f"COCO image has no usable 'id' (got {_describe(iid)})"
        if problem is None and (not isinstance(fname, str) or not fname):
            problem = f"COCO image {iid} has no usable 'file_name' (got {_describe(fname)})"
        if problem is None and _id_str(iid) in images:
            problem = f"COCO image id {iid!r} appears twice in 'images'"
        if problem is None and _safe(str(iid)) != str(iid):
            problem = "COCO image id holds a lone surrogate"
        if problem:
            bad.append(RawRecord(source=name, key=key, problem=problem))
            continue
        images[_id_str(iid)] = img
    return images, bad


def _coco_annotation_problem(a, images: dict) -> str | None:
    if not isinstance(a, dict):
        return f"COCO annotation is a {type(a).__name__}, not an object"
    if (p := _dup_problem(a)):
        return p
    iid, cap = a.get("image_id"), a.get("caption")
    if isinstance(iid, bool) or not isinstance(iid, (int, str)):
        return f"COCO annotation has no usable 'image_id' (got {_describe(iid)})"
    if not isinstance(cap, str):
        return f"COCO annotation of image {iid} has no usable 'caption' (got {_describe(cap)})"
    if not cap.strip():
        return f"COCO annotation of image {iid} has an empty caption"
    if _id_str(iid) not in images:
        return f"COCO annotation for image {iid}, which is not in 'images' (or was quarantined)"
    return None


def _describe(v) -> str:
    return "nothing" if v is None else f"a {type(v).__name__}"


def _manifest(path: Path, name: str) -> Iterator[RawRecord]:
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist (source {name})")
    if not path.is_file():
        yield RawRecord(source=name, key=path.name, problem=f"source {name}: {path.name} is not a file")
        return
    if path.suffix.lower() == ".parquet":
        yield from _parquet(path, name)
        return
    with open(path, "rb") as f:
        n = 0
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                break
            n += 1
            key = f"{path.name}:{n}"
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                yield RawRecord(source=name, key=key, problem=f"manifest line longer than {MAX_LINE_BYTES} bytes")
                continue
            if not line.strip():
                continue
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRecord(source=name, key=key, text=line[:500].decode("utf-8", "replace"),
                                problem=f"invalid UTF-8 at byte {e.start} of the line")
                continue
            try:
                row = loads(decoded)
            except (ValueError, RecursionError) as e:
                yield RawRecord(source=name, key=key, text=decoded[:500], problem=_json_problem(e))
                continue
            if not isinstance(row, dict):
                yield RawRecord(source=name, key=key, text=decoded[:500], problem="manifest line is not a JSON object")
                continue
            yield manifest_record(row, name, key)


def _parquet(path: Path, name: str) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=4096)
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield manifest_record(row, name, f"{path.name}:row{n}")
    except (pa.ArrowException, OSError) as e:
        yield RawRecord(source=name, key=path.name, problem=f"source {name}: {path.name} is not a readable Parquet file: {e}")


def manifest_record(row: dict, name: str, key: str) -> RawRecord:
    """A manifest row as a raw record; a field of the wrong kind is the record's problem."""
    problem = _dup_problem(row)
    unknown = set(row) - MANIFEST_FIELDS - {_DUP}
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        problem = problem or f"meta is a {type(meta).__name__}, not a JSON object"
        meta = None
    meta = meta or {}
    if unknown:
        meta = dict(meta, unknown_fields=sorted(_safe(str(u)) for u in unknown))
    rid, kind = row.get("id"), None
    if rid is not None:
        if isinstance(rid, bool) or not isinstance(rid, (int, str)):
            problem = problem or f"id is a {type(rid).__name__}; an id is a string or an integer"
            rid = None
        elif _safe(str(rid)) != str(rid):
            problem = problem or "id holds a lone surrogate, which cannot be encoded as UTF-8"
            rid = None
        else:
            kind = "int" if isinstance(rid, int) else "str"
            rid = str(rid)
    for f in ("image", "modality"):
        v = row.get(f)
        if v is not None and not isinstance(v, str):
            problem = problem or f"{f} is a {type(v).__name__}, not a string"
    text, alt = row.get("text"), row.get("alt_text")
    if isinstance(text, bytes) or isinstance(alt, bytes):  # a Parquet binary column
        try:
            text, alt = (v.decode("utf-8") if isinstance(v, bytes) else v for v in (text, alt))
        except UnicodeDecodeError as e:
            problem = problem or f"invalid UTF-8: byte {e.start} cannot be decoded"
            text, alt = None, None
    return RawRecord(source=name, key=key, text=text, image=row.get("image"),
                     alt_text=alt, source_id=rid, id_kind=kind,
                     modality=row.get("modality"), meta=meta, problem=problem)
