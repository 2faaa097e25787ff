"""The corpus as every stage reads it: one rule for a document's text.

A document's text is its own text, then one `[Image: ...]` line per caption of its image
(model captions first, then alt-text), each distinct text once. The judge reads it, BM25
indexes it, the tree summarises it, exports train on it and queries check copying against it.
"""
from __future__ import annotations

import pyarrow as pa

IMAGE_LINE = "[Image: {}]"


def captions_by_doc(captions: pa.Table | None, documents: pa.Table | None = None) -> dict[str, list[str]]:
    """Each document's distinct caption texts, model captions first, then alt-text; the
    documents' own alt_text counts as an alt-text caption when no caption row holds it."""
    out: dict[str, list[str]] = {}
    if captions is not None and captions.num_rows:
        ids = captions["caption_id"].to_pylist() if "caption_id" in captions.column_names else \
            captions["text"].to_pylist()
        sources = captions["source"].to_pylist() if "source" in captions.column_names else ["model"] * captions.num_rows
        rows = sorted(zip(captions["doc_id"].to_pylist(), sources,
                          captions["text"].to_pylist(), ids), key=lambda r: (r[0], r[1] != "model", r[3] or ""))
        for doc, _, text, _ in rows:
            text = (text or "").strip()
            if text and text not in out.setdefault(doc, []):
                out[doc].append(text)
    if documents is not None and "alt_text" in documents.column_names:
        for doc, alt in zip(documents["doc_id"].to_pylist(), documents["alt_text"].to_pylist()):
            alt = (alt or "").strip()
            if alt and alt not in out.setdefault(doc, []):
                out[doc].append(alt)
    return {d: c for d, c in out.items() if c}


def document_text(text: str | None, captions: list[str] | None = None) -> str:
    """The one composition: the text, then `[Image: caption]` per caption."""
    parts = [text.strip()] if text and text.strip() else []
    parts += [IMAGE_LINE.format(c) for c in captions or []]
    return "\n".join(parts)


def document_texts(documents: pa.Table, captions: pa.Table | None = None) -> dict[str, str]:
    """doc_id -> the document's text by the one rule; documents with nothing to read map to ''."""
    caps = captions_by_doc(captions, documents)
    return {d: document_text(t, caps.get(d)) for d, t in zip(documents["doc_id"].to_pylist(),
                                                            documents["text"].to_pylist())}
