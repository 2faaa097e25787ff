"""The corpus: its sources and the ingest checks."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config.fields import Strict, resource


class Source(Strict):
    """One input of the corpus, relative to the corpus root."""

    kind: Literal["image_folder", "coco_captions", "manifest"]
    path: str
    images: str | None = Field(None, description="coco_captions: folder of the images it names")
    layout: Literal["image", "text", "interleaved", "mixed"] = Field(
        "interleaved",
        description="coco_captions: image-only, caption-text-only, image+caption, or a deterministic mix",
    )
    name: str | None = None


class CorpusConfig(Strict):
    root: str = Field(..., description="corpus root; image paths may not escape it")
    sources: list[Source] = Field(..., min_length=1)


class IngestConfig(Strict):
    max_image_pixels: int = Field(64_000_000, gt=0, description="decompression-bomb cap")
    image_formats: list[str] = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
    max_text_chars: int = Field(200_000, gt=0)
    chunk_records: int = resource(20_000, ge=1, description="raw records read, checked and carried over as "
                                  "one chunk (bounds the flow's memory; an unchanged chunk is not re-checked)")
    skip_unchanged_files: bool = resource(True, description="a refresh does not read again a manifest whose "
                                          "size, mtime and inode are those it had at the last build, when none "
                                          "of its records names an image: its chunks carry over as they are "
                                          "(false: read and hash every source on every build)")
