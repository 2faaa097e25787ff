"""Judge pools around hard negative mining: imported queries, the mined candidates, exact pairs.

- `imported`: the queries of `negatives.queries_file` x their top-k documents in the text index,
  plus their positives from `negatives.qrels_file`;
- `mining`: the mining query set (imported, else the pipeline's usable queries) x the candidates
  the negatives stage retrieved for it (`candidates/mining[-<name>]`, the first `judge.top_k`
  ranks), plus every positive;
- `mining` with `pairs_of` (query_id, query_text, doc_id): exactly the pairs the negatives stage
  asks for while it deepens its window (tasks.negatives.judging).

Documents may be named by our doc ids or by the sources' own ids; a pair whose document is not
in the corpus or has no text is rejected with the reason.
"""
from __future__ import annotations

from tasks.corpus import document_texts
from tasks.judge.pools import pair_units
from tasks.runtime.stage import Read, Units, optional


def mining_outputs(config) -> tuple[str, str]:
    """(negatives dataset, candidates dataset) of the configured mining job."""
    from pathlib import Path

    cfg = config.negatives
    if not cfg.queries_file:
        return "negatives", "candidates/mining"
    label = cfg.name or Path(cfg.queries_file).stem
    return f"negatives/{label}", f"candidates/mining-{label}"


def reads_for(config, pool: str, params: dict) -> list[Read]:
    reads = [Read("documents"), optional("captions")]
    if params.get("pairs_of") is not None:
        return reads
    reads += [optional("queries"), optional("query_answerability"), optional("judgments/*")]
    if pool == "imported":
        if not config.negatives.queries_file:
            raise ValueError("the `imported` pool judges negatives.queries_file: set it in the config")
        reads.append(Read("indexes/text"))
    else:
        reads.append(Read(mining_outputs(config)[1]))
    return reads


def units_from_mining(inputs, config, pool: str, fp: str, params: dict) -> Units:
    documents = inputs["documents"]
    dtext = document_texts(documents, inputs.get("captions"))
    root = inputs.config.corpus_root if config.corpus is not None else None
    meta = {d: (u, s) for d, u, s in zip(documents["doc_id"].to_pylist(), documents["image_uri"].to_pylist(),
                                         documents["image_sha256"].to_pylist())}
    rejected: list[dict] = []
    if params.get("pairs_of") is not None:
        wanted = [tuple(p) for p in params["pairs_of"]]
    else:
        wanted, rejected = _pool_pairs(inputs, config, pool)
    from tasks.negatives.inputs import resolve_doc_ids

    resolved = resolve_doc_ids([d for _, _, d in wanted], documents)
    ok, seen, duplicates = [], set(), []
    for (q, qt, d), r in zip(wanted, resolved):
        key = f"{q}/{d}"
        if r is None:
            rejected.append({"key": key, "reason": f"document {d} is not in the corpus (neither a doc_id nor a source id)"})
        elif (q, r) in seen:
            duplicates.append(key)
        elif not dtext.get(r):
            rejected.append({"key": key, "reason": f"document {r} has neither text nor a caption to judge"})
        elif not qt:
            rejected.append({"key": key, "reason": f"query {q} has no text"})
        else:
            seen.add((q, r))
            uri, sha = meta.get(r, (None, None))
            ok.append((q, qt, r, dtext[r], str(root / uri) if uri and root is not None else None, sha))
    return pair_units(ok, fp, rejected, duplicates)


def _pool_pairs(inputs, config, pool: str) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """(query_id, query_text, doc_id) of a pool, and the pool's own rejected lines."""
    import pyarrow.compute as pc

    from tasks.negatives.inputs import load_inputs

    mi = load_inputs(inputs, config.negatives)
    if mi is None:
        raise LookupError("the mining pool needs queries: the build's `queries` dataset or negatives.queries_file")
    qtext = dict(zip(mi.queries["query_id"].to_pylist(), mi.queries["text"].to_pylist()))
    top_k = config.judge.top_k
    pairs: dict[str, list[str]] = {q: [] for q in qtext}
    if pool == "imported":
        from tasks.embed import text_vectors
        from tasks.queries.stage import text_index

        index = text_index(inputs)
        qids = list(qtext)
        if qids:
            _, found = index.search_docs(text_vectors(inputs, [qtext[q] for q in qids]), top_k)
            for q, row in zip(qids, found):
                pairs[q] = [index.docs[j] for j in row if j >= 0]
    else:
        cand = inputs[mining_outputs(config)[1]]
        cand = cand.filter(pc.less_equal(cand["rank"], top_k)).sort_by([("query_id", "ascending"),
                                                                         ("rank", "ascending")])
        for q, d in zip(cand["query_id"].to_pylist(), cand["doc_id"].to_pylist()):
            if q in pairs:
                pairs[q].append(d)
    for q, d in zip(mi.positives["query_id"].to_pylist(), mi.positives["doc_id"].to_pylist()):
        if q in pairs and d not in pairs[q]:
            pairs[q].append(d)
    return [(q, qtext[q], d) for q in pairs for d in pairs[q]], list(mi.rejected)  # unparsed lines, lost positives
