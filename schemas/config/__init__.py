"""Run configuration: one YAML file validated by these pydantic models.

Every field has an offline default, so an almost empty file builds the sample corpus with no
model downloads. Unknown keys are refused, so a typo names the field instead of being ignored.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from schemas.config.fields import MINILM, Name, Strict, resource, switch  # noqa: F401
from schemas.config.corpus import CorpusConfig, IngestConfig, Source  # noqa: F401
from schemas.config.models import EmbedConfig, ImageEncoder, TextEncoder  # noqa: F401
from schemas.config.runtime import Expectation, FlowConfig, RayConfig, TaskConfig, ValidationConfig, task_resources  # noqa: F401
from schemas.config.retrieval import ExportConfig, IndexConfig, JudgeFilter, ModalityNegatives, NegativesConfig  # noqa: F401
from schemas.config.backends import CaptionConfig, ModelBackend, OpenAIEndpoint, QueriesConfig, QueryFilters, QueryTarget  # noqa: F401
from schemas.config.tree import TreeConfig, TreeSearchConfig  # noqa: F401
from schemas.config.judge import CrossEncoderJudge, JudgeConfig, JudgeTraining, OfflineJudge  # noqa: F401
from schemas.config.evaluate import BUILTIN_VARIANTS, EvaluateConfig, TrainConfig  # noqa: F401


class BuildConfig(Strict):
    name: Name = "corpus"
    corpus: CorpusConfig | None = Field(None, description="the inputs; a build needs it, commands that only "
                                        "read or import into a catalog do not")
    workdir: str = Field(".corpusforge", description="holds the catalog and the data root by default")
    catalog: str | None = Field(None, description="DuckDB catalog file; default WORKDIR/catalog.duckdb")
    data_root: str | None = Field(None, description="local path or pyarrow filesystem URI (s3://, gs://)")
    ingest: IngestConfig = IngestConfig()
    embed: EmbedConfig = EmbedConfig()
    caption: CaptionConfig = CaptionConfig()
    queries: QueriesConfig = QueriesConfig()
    ray: RayConfig = RayConfig()
    flow: FlowConfig = FlowConfig()
    validation: ValidationConfig = ValidationConfig()
    index: IndexConfig = IndexConfig()
    negatives: NegativesConfig = NegativesConfig()
    export: ExportConfig = ExportConfig()
    judge: JudgeConfig = JudgeConfig()
    tree: TreeConfig = TreeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    config_dir: str = Field(".", exclude=True, description="where relative paths resolve; set by the loader")


    def resolve(self, path: str) -> str:
        if "://" in path:
            return path
        p = Path(path)
        return str(p if p.is_absolute() else (Path(self.config_dir) / p).resolve())

    @property
    def corpus_root(self) -> Path:
        if self.corpus is None:
            raise ConfigError("the config has no `corpus` section: a build needs corpus.root and corpus.sources")
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
    if not path.is_file():
        raise ConfigError(f"config path {path} is not a file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; a config is a few KB")
    try:
        raw = safe_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw = _deep_merge(raw, overrides or {})
    raw["config_dir"] = str(path.resolve().parent)
    return config_from_dict(raw, source=str(path))


MAX_CONFIG_BYTES = 1024 * 1024
MAX_YAML_NODES = 100_000  # a config has hundreds; an alias bomb expands to billions


def safe_yaml(text: str, source: str = "(text)"):
    """yaml.safe_load, after counting the nodes the document expands to: aliases are free to write
    and exponential to expand (a 1 KB "billion laughs" hangs the loader), so they are counted, with
    each shared node once per use, and a document past MAX_YAML_NODES is refused before loading."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except BaseException:
        loader.dispose()
        raise
    if root is None:
        return None
    sizes: dict[int, int] = {}

    def size(node, depth: int = 0) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > 100:
            raise ConfigError(f"config file {source} nests deeper than 100 levels")
        sizes[id(node)] = MAX_YAML_NODES + 1  # a node reached again while counting it is a cycle
        if isinstance(node, yaml.MappingNode):
            _no_repeated_keys(node, source)
            n = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v, depth + 1) for v in node.value)
        else:
            n = 1
        sizes[id(node)] = n = min(n, MAX_YAML_NODES + 1)
        return n

    if size(root) > MAX_YAML_NODES:
        raise ConfigError(f"config file {source} expands to more than {MAX_YAML_NODES} YAML nodes through its "
                          "aliases (an alias bomb?); refusing to load it")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _no_repeated_keys(node, source: str) -> None:
    """YAML keeps the last of two equal keys without a word; in a config that is a typo or a merge
    gone wrong that silently drops a setting, so it is refused with both lines."""
    seen: dict[str, int] = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
            continue
        if k.value in seen:
            raise ConfigError(f"config file {source}: key {k.value!r} appears twice in one mapping (lines "
                              f"{seen[k.value]} and {k.start_mark.line + 1}); keep one")
        seen[k.value] = k.start_mark.line + 1


def check_buildable(cfg: BuildConfig) -> BuildConfig:
    """A config a build can run: it names a corpus. Checked before Prefect starts."""
    if cfg.corpus is None:
        raise ConfigError(f"the config '{cfg.name}' has no `corpus` section: a build needs corpus.root "
                          "and corpus.sources\n  see infra/configs/sample.yaml for a complete example")
    return cfg


def config_from_dict(raw: dict, source: str = "(dict)") -> BuildConfig:
    try:
        return BuildConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def catalog_config(catalog: str | Path, data_root: str | None = None, **sections) -> BuildConfig:
    """The config of a command that has only a catalog (no build config): the data root defaults to
    `data/` beside the catalog file, every stage section to its offline default."""
    catalog = Path(catalog).resolve()
    raw = {"name": catalog.stem, "catalog": str(catalog), "workdir": str(catalog.parent),
           "data_root": data_root or str(catalog.parent / "data"), **sections}
    return config_from_dict(raw, source=f"(catalog {catalog})")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
