"""Arrow schema of every published table.

A schema here is a contract: the publish step casts to it and refuses a table that does not
fit, and the schema fingerprint recorded in the catalog is computed from it.
"""
from __future__ import annotations

import hashlib

import pyarrow as pa

EMBEDDING_DIM_FIELD = "dim"

DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),
        pa.field("modality", pa.string(), nullable=False),  # text | image | interleaved
        pa.field("text", pa.string()),
        pa.field("image_uri", pa.string()),  # path relative to the corpus root
        pa.field("image_sha256", pa.string()),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("image_format", pa.string()),
        pa.field("alt_text", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # which input produced it
        pa.field("meta", pa.string()),  # JSON object
    ]
)

# Every source id of the corpus and the document it names, deduplicated records' ids included:
# a qrels file that names a duplicate's id still finds its document.
SOURCE_IDS = pa.schema(
    [
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

CAPTIONS = pa.schema(
    [
        pa.field("caption_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # alt_text | model
        pa.field("captioner", pa.string(), nullable=False),  # model@rev
        pa.field("prompt_version", pa.string()),
        pa.field("params", pa.string()),  # JSON generation parameters
    ]
)

QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("target_modality", pa.string(), nullable=False),  # text | image | text+image
        pa.field("text", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("source_text", pa.string()),
        pa.field("pass_length", pa.bool_()),
        pa.field("pass_copy", pa.bool_()),
        pa.field("pass_dedup", pa.bool_()),
        pa.field("pass_roundtrip", pa.bool_()),
        pa.field("copy_overlap", pa.float32()),
        pa.field("roundtrip_rank", pa.int32()),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("reject_reason", pa.string()),
        pa.field("reject_code", pa.string()),  # the failed filters, e.g. "copy,roundtrip": GROUP BY groups
    ]
)

EMBEDDINGS_BASE = [
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("item_kind", pa.string(), nullable=False),  # document | caption | query | summary
    pa.field("doc_id", pa.string()),
    pa.field("content_sha256", pa.string(), nullable=False),
    pa.field("space", pa.string(), nullable=False),  # model@rev
]


def embeddings_schema(dim: int) -> pa.Schema:
    """Embeddings carry fixed-size float32 vectors; the dimension belongs to the space."""
    return pa.schema(
        EMBEDDINGS_BASE + [pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)],
        metadata={EMBEDDING_DIM_FIELD: str(dim)},
    )


CANDIDATES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("retriever", pa.string(), nullable=False),
    ]
)

JUDGMENTS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("judge", pa.string(), nullable=False),  # model@rev#prompt-hash, or a label-set name
        pa.field("grade", pa.int8()),  # NULL unless status = ok
        pa.field("p_grade", pa.list_(pa.float32(), 4)),
        pa.field("expected_grade", pa.float32()),
        pa.field("status", pa.string(), nullable=False),  # ok | parse_error | refused | error
        pa.field("raw", pa.string()),
    ]
)

NEGATIVES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("pos_doc_id", pa.string(), nullable=False),
        pa.field("neg_doc_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("pos_score", pa.float32()),
        pa.field("judge_score", pa.float32()),  # judge's score of the negative in [0, 1], NULL if unjudged
        pa.field("judge_grade", pa.int8()),  # highest judge grade of the negative, NULL if unjudged
        pa.field("retriever", pa.string()),  # dense | bm25 | dense+bm25
        pa.field("policy", pa.string(), nullable=False),  # ';'-joined policies that kept it
        pa.field("query_text", pa.string()),  # so exports work from imported queries too
    ]
)

TREE_NODES = pa.schema(
    [
        pa.field("tree_id", pa.string(), nullable=False),
        pa.field("node_id", pa.string(), nullable=False),
        pa.field("parent_id", pa.string()),
        pa.field("depth", pa.int32(), nullable=False),
        pa.field("is_leaf", pa.bool_(), nullable=False),
        pa.field("doc_id", pa.string()),  # set on leaves only
        pa.field("position", pa.int32(), nullable=False),  # order among the parent's children
        pa.field("n_leaves", pa.int32(), nullable=False),  # documents under the node
        pa.field("summary", pa.string()),  # internal: summary; leaf: the passage (truncated)
        pa.field("summarizer", pa.string()),  # model@rev#prompt-hash, or offline-extractive@vN
        pa.field("space", pa.string(), nullable=False),  # embedding space of the leaf vectors
    ]
)

INDEX_ITEMS = pa.schema(
    [
        pa.field("position", pa.int64(), nullable=False),  # FAISS id (or BM25 row) of the item
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_kind", pa.string(), nullable=False),  # document | caption | image
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string()),
    ]
)

QUERY_ANSWERABILITY = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),  # the query's source document
        pa.field("judge", pa.string(), nullable=False),
        pa.field("grade", pa.int8()),  # the judge's grade of the source for the query; NULL if not graded
        pa.field("pass_answerable", pa.bool_()),  # grade >= judge.answerable_min_grade; NULL if not graded
    ]
)

MODELS = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),  # the folder name: <corpus>-<variant>-<weights sha>
        pa.field("variant", pa.string(), nullable=False),  # the training data it saw (export, in_batch, mined, ...)
        pa.field("base_model", pa.string(), nullable=False),  # model@revision it was fine-tuned from
        pa.field("path", pa.string(), nullable=False),  # the saved sentence-transformers folder (with its card)
        pa.field("weights_sha256", pa.string(), nullable=False),
        pa.field("export_path", pa.string()),  # the training export it read
        pa.field("negatives", pa.string()),  # the negatives dataset version behind that export
        pa.field("hard_negatives", pa.int32(), nullable=False),  # negative columns per row; 0 = in-batch only
        pa.field("train_pairs", pa.int64(), nullable=False),  # training rows seen
        pa.field("train_steps", pa.int32(), nullable=False),
        pa.field("batch_size", pa.int32(), nullable=False),
        pa.field("train_s", pa.float64()),
        pa.field("loss", pa.float64()),  # mean training loss
        pa.field("run_id", pa.string()),
    ]
)

EVALUATIONS = pa.schema(
    [
        pa.field("eval_set", pa.string(), nullable=False),  # the label set used as qrels (judgments/<name>)
        pa.field("variant", pa.string(), nullable=False),  # base, or the training data of the tuned model
        pa.field("role", pa.string(), nullable=False),  # base | tuned
        pa.field("model", pa.string(), nullable=False),  # base model@revision, or the tuned model's path
        pa.field("model_id", pa.string()),  # models.model_id of a tuned model
        pa.field("queries", pa.int32(), nullable=False),  # queries evaluated
        pa.field("relevance_level", pa.int8(), nullable=False),  # binary measures count grade >= this
        pa.field("ndcg_10", pa.float64(), nullable=False),  # nDCG@10, graded gains (ir_measures)
        pa.field("recall_100", pa.float64(), nullable=False),  # R@100 at the relevance level
        pa.field("mrr_10", pa.float64(), nullable=False),  # RR@10 at the relevance level, mean over queries
        pa.field("ndcg_10_gain", pa.float64()),  # tuned - base on the same queries; NULL for the base row
        pa.field("ndcg_10_p", pa.float64()),  # paired t-test of per-query nDCG@10 against the base
        pa.field("train_pairs", pa.int64()),
        pa.field("export_path", pa.string()),
        pa.field("per_query", pa.string()),  # JSON {query_id: {measure: value}}
        pa.field("run_id", pa.string()),
    ]
)

JUDGE_MODELS = pa.schema(
    [  # the training labels of a trained judge; the model itself is stored with the version
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("judge", pa.string(), nullable=False),  # the label set it learnt from
        pa.field("grade", pa.int8(), nullable=False),
    ]
)

QUARANTINE = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("payload", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "documents": DOCUMENTS,
    "source_ids": SOURCE_IDS,
    "captions": CAPTIONS,
    "queries": QUERIES,
    "candidates": CANDIDATES,
    "judgments": JUDGMENTS,
    "negatives": NEGATIVES,
    "tree_nodes": TREE_NODES,
    "indexes": INDEX_ITEMS,
    "query_answerability": QUERY_ANSWERABILITY,
    "models": MODELS,
    "evaluations": EVALUATIONS,
    "judge_models": JUDGE_MODELS,
}


# Each table's natural key: rows are unique on it, and the content hash sorts by it.
KEYS: dict[str, list[str]] = {
    "documents": ["doc_id"],
    "source_ids": ["source_id"],
    "captions": ["caption_id"],
    "queries": ["query_id"],
    "embeddings": ["item_kind", "item_id"],
    "candidates": ["retriever", "query_id", "doc_id"],
    "judgments": ["judge", "query_id", "doc_id"],
    "negatives": ["query_id", "pos_doc_id", "neg_doc_id"],
    "tree_nodes": ["tree_id", "node_id"],
    "indexes": ["position"],
    "query_answerability": ["query_id"],
    "models": ["model_id"],
    "evaluations": ["eval_set", "variant"],
    "judge_models": ["judge", "query_id", "doc_id"],
}


def keys_for(name: str) -> list[str]:
    return KEYS[name.split("/", 1)[0]]


def schema_for(name: str, table: pa.Table | None = None) -> pa.Schema:
    """The contract for a dataset name; embeddings take their dimension from the table."""
    base = name.split("/", 1)[0]
    if base == "embeddings":
        if table is None:
            raise ValueError("an embeddings schema needs the table to read its dimension from")
        vec = table.schema.field("vector").type
        dim = vec.list_size if pa.types.is_fixed_size_list(vec) else len(table.column("vector")[0])
        return embeddings_schema(dim)
    if base not in TABLES:
        raise KeyError(f"no schema for dataset '{name}'; known: {sorted(TABLES) + ['embeddings']}")
    return TABLES[base]


def schema_fingerprint(schema: pa.Schema) -> str:
    text = ";".join(f"{f.name}:{f.type}:{f.nullable}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
