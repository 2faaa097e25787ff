"""Content-addressed ids and stage fingerprints.

An id is the sha256 of the record's content plus, for derived records, the fingerprint of the
stage config that produced it, so the same config on the same input gives the same id.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

ID_HEX = 32  # 128 bits of sha256: collision-free at any corpus size we target, short enough for SQL


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(config: Any) -> str:
    """Fingerprint of a stage config: model id + revision, prompt version, parameters."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def record_id(*parts: Any) -> str:
    """Deterministic id from content parts (None and '' are distinct)."""
    h = hashlib.sha256()
    for p in parts:
        b = b"\x00<null>" if p is None else canonical_json(p).encode()
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()[:ID_HEX]


def cache_key(content_sha256: str, stage_fingerprint: str) -> str:
    """Key of one unit of model work: input content x stage fingerprint."""
    return record_id(content_sha256, stage_fingerprint)


def text_sha256(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))
