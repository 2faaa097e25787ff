"""The CLI's choice types. Each is a str Enum built from its spellings, so a flag accepts exactly the
values its config field does and typer lists them in --help."""

from enum import Enum


def choices(name: str, *values: str) -> type[Enum]:
    """A str Enum whose members are the given spellings (`text+image` becomes member `text_image`)."""
    return Enum(name, {v.replace("+", "_").replace("-", "_"): v for v in values}, type=str)


Target = choices("Target", "text", "image", "text+image")
CaptionSource = choices("CaptionSource", "alt_text", "model")
Backend = choices("Backend", "offline", "hf", "openai", "cross_encoder", "features")
JudgeKind = choices("JudgeKind", "cross_encoder", "features")
JudgePrior = choices("JudgePrior", "cosine", "none")
Pool = choices("Pool", "queries", "imported", "mining")
Retriever = choices("Retriever", "dense", "bm25", "both")
ExportKind = choices("ExportKind", "flagembedding", "sentence-transformers", "mbeir", "trec", "parquet")
OutputFormat = choices("OutputFormat", "table", "csv", "json")
Split = choices("Split", "all", "odd", "even")
Scorer = choices("Scorer", "embedding", "llm")
