"""Query filters on real COCO captions, and the model-free pieces of the query stage."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from schemas.config import QueryFilters
from schemas.tables import QUERIES
from tasks.backends.offline import extractive_queries
from tasks.queries.answerability import Answerability
from tasks.queries.filters import apply_filters, copy_overlap, near_duplicate_pass, roundtrip_ranks
from tasks.queries.generate import parse_queries, render_prompt
from tasks.queries.stage import usable_queries
from tests.conftest import COCO
from tests.stages import flat_index


@pytest.fixture(scope="module")
def coco():
    data = json.loads((COCO / "annotations" / "captions_val2017.json").read_text())
    caps: dict[int, list[str]] = {}
    for a in data["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"].strip())
    return {str(k): v for k, v in sorted(caps.items())[:50]}  # 50 images, 250 captions


@pytest.fixture(scope="module")
def caption_corpus(coco, minilm):
    """Every image represented by its captions 2-5 (caption 1 is held out to make queries from)."""
    items = [(i, c) for i, cs in coco.items() for c in cs[1:]]
    return flat_index(minilm.embed([c for _, c in items]), [i for i, _ in items])


def test_a_copied_caption_fails_the_copy_filter_and_a_keyword_crop_passes(coco):
    f = QueryFilters()
    for caps in list(coco.values())[:20]:
        assert copy_overlap(caps[0], caps[0], f.copy_ngram) == 1.0
        assert copy_overlap(caps[0].upper() + "!!", caps[0], f.copy_ngram) == 1.0  # case and punctuation ignored
    crops = [extractive_queries("image", None, caps[0], 1, seed=3)[0] for caps in coco.values()]
    passing = [copy_overlap(q, caps[0], f.copy_ngram) <= f.max_copy_overlap for q, caps in zip(crops, coco.values())]
    assert sum(passing) >= 0.8 * len(passing)
    assert copy_overlap("a man riding", "a man riding a wave", 3) == 1.0
    assert copy_overlap("surfer rides big wave", "a man riding a wave", 3) == 0.0


def test_a_query_made_from_one_images_caption_round_trips_to_that_image(coco, caption_corpus, minilm):
    index = caption_corpus
    ids = list(coco)
    queries = [extractive_queries("image", None, coco[i][0], 1, seed=7)[0] for i in ids]
    qv = minilm.embed(queries)
    ranks = roundtrip_ranks(qv, ids, index, k=10)
    assert sum(r is not None for r in ranks) >= 0.9 * len(ids)
    assert all(1 <= r <= 10 for r in ranks if r is not None)
    wrong = roundtrip_ranks(qv, ids[1:] + ids[:1], index, k=10)  # each query paired with another image
    assert sum(r is not None for r in wrong) <= 0.35 * len(ids)  # chance is 10/50
    exact = roundtrip_ranks(minilm.embed([coco[ids[5]][1]]), [ids[5]], index, k=1)
    assert exact == [1]  # a caption of the corpus finds its own image first


def test_near_duplicates_are_flagged_within_a_document_and_target_only(minilm):
    texts = ["a dog catching a frisbee in a park", "a dog catches a frisbee in the park",
             "a red double decker bus", "a dog catching a frisbee in a park"]
    vecs = minilm.embed(texts)
    assert near_duplicate_pass(["d1", "d1", "d1", "d2"], vecs, 0.9) == [True, False, True, True]
    assert near_duplicate_pass(["d1", "d1", "d1", "d1"], vecs, 0.9) == [True, False, True, False]
    assert near_duplicate_pass(["d1", "d1"], vecs[:2], 0.999) == [True, True]


def test_filters_are_columns_with_reasons_never_drops(coco, caption_corpus, minilm):
    index = caption_corpus
    ids = list(coco)
    cands = [
        ("q-copy", ids[0], "image", coco[ids[0]][1]),               # copied from its source
        ("q-short", ids[1], "image", "bus"),                         # too short
        ("q-good", ids[2], "image", extractive_queries("image", None, coco[ids[2]][0], 1, 7)[0]),
        ("q-dup", ids[2], "image", extractive_queries("image", None, coco[ids[2]][0], 1, 7)[0]),
        ("q-wrong", ids[3], "image", "a completely unrelated quantum chromodynamics lecture"),
    ]
    table = pa.Table.from_pylist([{"query_id": q, "doc_id": d, "target_modality": t, "text": x, "generator": "g",
                                   "prompt_version": "v1", "source_text": coco[d][1] if q == "q-copy" else coco[d][0]}
                                  for q, d, t, x in cands])
    out = apply_filters(table, minilm.embed(table["text"].to_pylist()), index, QueryFilters())
    assert out.schema == QUERIES and out.num_rows == 5
    rows = {r["query_id"]: r for r in out.to_pylist()}
    assert rows["q-copy"]["pass_copy"] is False and rows["q-copy"]["copy_overlap"] == 1.0
    assert rows["q-copy"]["reject_reason"].startswith("copy:")
    assert rows["q-short"]["pass_length"] is False and "length: 1 words" in rows["q-short"]["reject_reason"]
    assert rows["q-good"]["passed"] and rows["q-good"]["reject_reason"] is None
    assert rows["q-good"]["roundtrip_rank"] is not None
    assert rows["q-dup"]["pass_dedup"] is False and not rows["q-dup"]["passed"]
    assert rows["q-wrong"]["pass_roundtrip"] is False and rows["q-wrong"]["roundtrip_rank"] is None


def test_answerability_is_its_own_dataset_joined_on_read():
    """The judge's verdict never rewrites `queries`: it is `query_answerability`, joined by usable_queries."""
    from schemas.config import config_from_dict
    from schemas.tables import JUDGMENTS
    from tasks.judge.scoring import judge_name
    from tasks.judge.stage import label_set
    from tests.stages import run_pure

    cfg = config_from_dict({"judge": {"enabled": True, "answerability": True}})
    judge = judge_name(cfg.judge)
    queries = pa.Table.from_pylist([{"query_id": q, "doc_id": d, "target_modality": "text", "text": "some words here",
                                     "generator": "g", "prompt_version": "v1", "passed": True}
                                    for q, d in (("q1", "d1"), ("q2", "d2"), ("q3", "d3"))], schema=QUERIES)
    graded = pa.Table.from_pylist([{"query_id": q, "doc_id": d, "judge": judge, "grade": g, "status": "ok"}
                                   for q, d, g in (("q1", "d1", 3), ("q2", "d2", 1), ("q3", "dX", 3))], schema=JUDGMENTS)
    out = run_pure(Answerability(cfg), {"queries": queries, label_set(judge): graded})
    verdict = {r["query_id"]: r for r in out.table("query_answerability").to_pylist()}
    assert (verdict["q1"]["pass_answerable"], verdict["q2"]["pass_answerable"]) == (True, False)
    assert verdict["q3"]["grade"] is None and verdict["q3"]["pass_answerable"] is None  # its source was not judged
    assert (out.rows_in, out.rows_out) == (3, 3)
    usable = usable_queries(queries, out.table("query_answerability"))
    assert sorted(usable["query_id"].to_pylist()) == ["q1", "q3"]


def test_parse_queries_strips_numbering_and_preambles():
    out = "Here are three queries:\n1. red bus in london\n2) \"dog with frisbee\"\n- red bus in london\n\n* a cat\nextra"
    assert parse_queries(out, 3) == ["red bus in london", "dog with frisbee", "a cat"]
    assert parse_queries("", 2) == [] and parse_queries(None, 2) == []


def test_render_prompt_is_literal_about_braces():
    assert render_prompt("T={text} C={caption} n={n}", "a {b} c", None, 2) == "T=a {b} c C= n=2"


def test_extractive_queries_are_seeded_and_target_specific():
    text = "Kitchen safety notes: keep knives on a magnetic strip, wipe spills at once. Never leave a hot stove."
    caption = "A cat sleeping on a sunny windowsill"
    a = extractive_queries("text", text, None, 3, seed=1)
    assert a == extractive_queries("text", text, None, 3, seed=1) and len(set(a)) == 3
    assert all(set(q.split()) <= set(text.lower().replace(",", " ").replace(".", " ").replace(":", " ").split())
               for q in a)
    both = extractive_queries("text+image", text, caption, 2, seed=1)
    assert all(any(w in q for w in ("cat", "sleeping", "sunny", "windowsill")) for q in both)
    assert extractive_queries("image", text, None, 2, seed=1) == []
    assert np.all([len(q.split()) >= 2 for q in both])
