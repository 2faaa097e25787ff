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
    if not _encodable(text):
        raise Rejected("text holds a lone surrogate, which cannot be encoded as UTF-8")
    if not text.strip():
        raise Rejected("empty or whitespace-only text")
    if len(text) > cfg.max_text_chars:
        raise Rejected(f"text too long: {len(text)} characters > max_text_chars {cfg.max_text_chars}")
    return text


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


MAX_PATH_BYTES, MAX_NAME_BYTES = 4096, 255


def check_path_text(rel) -> str:
    """An image path a file system can take: a non-empty UTF-8 string, no NUL, no overlong name."""
    if not isinstance(rel, str) or not rel:
        raise Rejected(f"image path is a {type(rel).__name__}, not a non-empty string")
    if "\x00" in rel:
        raise Rejected("image path contains a NUL byte")
    if not _encodable(rel):
        raise Rejected("image path holds a lone surrogate, which cannot be encoded as UTF-8")
    if len(rel.encode()) > MAX_PATH_BYTES or any(len(p.encode()) > MAX_NAME_BYTES for p in Path(rel).parts):
        raise Rejected(f"image path too long (a name over {MAX_NAME_BYTES} bytes or a path over {MAX_PATH_BYTES}): "
                       f"{rel[:80]}...")
    return rel


def resolve_inside(root: Path, rel: str) -> Path:
    """The real path of an image, refusing anything that leaves the corpus root. Called wherever an
    image is opened (ingest, captioning, embedding, export), not only at ingest: a file swapped for
    a symlink after ingest is refused the same way."""
    check_path_text(rel)
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
            if _exif_orientation(im) in (5, 6, 7, 8):  # stored sideways: record the size as shown
                w, h = h, w
    except Rejected:
        raise
    except UnidentifiedImageError:
        raise Rejected(f"unsupported or unrecognised image format: {rel}") from None
    except Image.DecompressionBombError as e:
        raise Rejected(f"image too large (decompression-bomb cap): {e}: {rel}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise Rejected(f"corrupt or truncated image: {e}: {rel}") from None
    return {"image_sha256": sha256_bytes(data), "image_width": w, "image_height": h, "image_format": fmt}


def _exif_orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation, not a bad image
        return 1


def load_rgb(root: Path, rel: str):
    """An image as the user sees it, for any stage that opens one after ingest: contained in the
    corpus root (a file swapped for a symlink since is refused), EXIF orientation applied, RGB."""
    from PIL import ImageOps

    path = resolve_inside(root, rel)
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def _modality(text: str | None, image: str | None, claimed) -> str:
    if claimed is not None and claimed not in ("text", "image", "interleaved"):
        raise Rejected(f"modality {str(claimed)[:40]!r} is not one of text, image, interleaved")
    inferred = "interleaved" if text and image else "text" if text else "image" if image else None
    if inferred is None:
        raise Rejected("record has neither text nor an image")
    if claimed and claimed != inferred:
        raise Rejected(f"modality {claimed!r} does not match the content (it holds {inferred})")
    return inferred
