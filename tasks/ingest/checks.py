"""Checks a raw record must pass to become a document: text, image bytes, modality.

Image bytes are checked before anything downstream sees them: path containment, existence,
size, format, pixel cap (decompression bombs, on the header before decoding) and a full decode
(truncation). A failed check raises `Rejected`, whose message is the quarantine reason.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from schemas.config import IngestConfig
from tasks.runtime.ids import sha256_bytes


class Rejected(ValueError):
    """A record that cannot become a document; the message is the quarantine reason."""


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
