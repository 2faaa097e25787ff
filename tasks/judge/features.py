"""The feature judge, and the grade decision every trained judge uses.

The cosine judge sees one number, the retriever's own similarity. The feature judge adds what
the dense retriever does not weigh by itself: BM25 of the query's terms in the document and the
document's length. Its score is a least-squares fit of the grade on those features; p_grade is
the cumulative-link model of tasks.judge.offline_judge fitted on that score. It trains in a
second from a few thousand labels, where a cross-encoder needs minutes and overfits a dozen
queries.

BM25's idf and average length are frozen from the training documents and stored with the model,
so a pair's grade never depends on what else is judged with it (and the judgment cache stays
valid). Tokens are bm25s' (English stopwords) with the Snowball stemmer.

`decision_cuts` / `decide` are the grade decision of a trained judge: argmax p_grade almost never
picks a middle grade when the grades overlap, so a trained judge's grade is the interval of its
expected grade, with cutpoints that reproduce the training labels' grade distribution on the
training pairs.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

GRADES = 4
FORMAT = "corpusforge-features-judge/1"
FEATURES = ("cosine", "bm25", "log_length")
K1, B = 1.2, 0.75


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english").stemWords


def tokens(texts: list[str]) -> list[list[str]]:
    import bm25s

    if not texts:
        return []
    return bm25s.tokenize([t or "" for t in texts], stopwords="en", stemmer=_stemmer(), return_ids=False,
                          show_progress=False)


def lexicon(doc_texts: list[str]) -> dict:
    """Document frequencies and average length of a document collection (distinct texts)."""
    toks = tokens(sorted(set(t for t in doc_texts if t)))
    df = Counter(w for t in toks for w in set(t))
    return {"n_docs": len(toks), "avg_len": float(np.mean([len(t) for t in toks])) if toks else 1.0,
            "df": dict(sorted(df.items()))}


def pair_features(queries: list[str], docs: list[str], cosines, lex: dict) -> np.ndarray:
    """(n, len(FEATURES)) features of (query, document) pairs; each distinct text is tokenized once."""
    n = len(queries)
    out = np.zeros((n, len(FEATURES)), np.float64)
    if n == 0:
        return out
    uq, qi = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
    ud, di = np.unique(np.asarray(docs, dtype=object), return_inverse=True)
    qtok = [set(t) for t in tokens(list(uq))]
    dtok = [Counter(t) for t in tokens(list(ud))]
    dlen = np.array([sum(c.values()) for c in dtok], np.float64)
    N, avg, df = lex["n_docs"], max(lex["avg_len"], 1e-9), lex["df"]
    idf = {}
    for i in range(n):
        terms, tf, length = qtok[qi[i]], dtok[di[i]], dlen[di[i]]
        score = 0.0
        for w in terms:
            f = tf.get(w, 0)
            if f:
                if w not in idf:
                    d = df.get(w, 0)
                    idf[w] = math.log(1 + (N - d + 0.5) / (d + 0.5))
                score += idf[w] * f * (K1 + 1) / (f + K1 * (1 - B + B * length / avg))
        out[i, 1] = score
        out[i, 2] = math.log1p(length)
    out[:, 0] = np.asarray(cosines, np.float64)
    return out


def decision_cuts(expected: np.ndarray, grades: np.ndarray) -> list[float]:
    """Cutpoints on the expected grade at which the training pairs get the training labels' grade
    distribution (the share of grades <= g for g = 0, 1, 2)."""
    e = np.asarray(expected, np.float64)
    y = np.clip(np.asarray(grades, np.int64), 0, GRADES - 1)
    if len(e) == 0:
        raise ValueError("no training pairs to place the grade cutpoints on")
    shares = [float(np.mean(y <= g)) for g in range(GRADES - 1)]
    cuts = np.quantile(e, shares)
    cuts[np.asarray(shares) >= 1.0] = np.inf  # a grade never seen in training is never given
    return [float(c) for c in np.maximum.accumulate(cuts)]


def decide(expected, cuts) -> np.ndarray:
    """The grade of each expected grade: how many cutpoints it reaches."""
    return np.digitize(np.asarray(expected, np.float64), np.asarray(cuts, np.float64)).astype(np.int8)


def expected_grade(p: np.ndarray) -> np.ndarray:
    return np.asarray(p, np.float64) @ np.arange(GRADES, dtype=np.float64)


def fit(features: np.ndarray, grades: np.ndarray) -> dict:
    """The model: least-squares weights, the cumulative-link thresholds and temperature on the score,
    and the grade cutpoints."""
    from sklearn.linear_model import LinearRegression

    from tasks.judge import offline_judge

    X = np.asarray(features, np.float64)
    y = np.clip(np.asarray(grades, np.int64), 0, GRADES - 1)
    if len(y) < 2 * len(FEATURES):
        raise ValueError(f"a feature judge needs at least {2 * len(FEATURES)} training labels, got {len(y)}")
    reg = LinearRegression().fit(X, y)
    score = reg.predict(X)
    thresholds, temperature = offline_judge.fit(score, y)
    model = {"weights": [float(w) for w in reg.coef_], "intercept": float(reg.intercept_),
             "thresholds": thresholds, "temperature": temperature}
    model["cuts"] = decision_cuts(expected_grade(probabilities(model, X)), y)
    return model


def probabilities(model: dict, features: np.ndarray) -> np.ndarray:
    from tasks.judge import offline_judge

    score = np.asarray(features, np.float64) @ np.asarray(model["weights"]) + model["intercept"]
    return offline_judge.grade_probabilities(score, model["thresholds"], model["temperature"])


class FeatureGrader:
    """p_grade of (query, document) pairs from a feature judge's manifest; reads each pair's cosine."""

    reads_cosine = True

    def __init__(self, path: str):
        from tasks.judge.cross_encoder import MANIFEST

        f = Path(path) / MANIFEST
        manifest = json.loads(f.read_text()) if f.exists() else {}
        if manifest.get("format") != FORMAT:
            kind = "a cross-encoder" if manifest or (Path(path) / "config.json").exists() else "not a trained judge"
            raise ValueError(f"the judge model at {path} is {kind}, not a feature judge: use judge.backend: "
                             "cross_encoder for it, or train one with `corpusforge train-judge --kind features`")
        self.path = path
        self.model = manifest["model"]
        self.lexicon = manifest["lexicon"]

    def p_grade(self, queries: list[str], docs: list[str], cosines=None) -> np.ndarray:
        if not queries:
            return np.zeros((0, GRADES), np.float32)
        if cosines is None:
            raise ValueError("the feature judge needs each pair's cosine")
        return probabilities(self.model, pair_features(queries, docs, cosines, self.lexicon))


def train_features(units, cosines: np.ndarray, doc_texts: list[str], out_dir: str | Path, encoder: dict,
                   info: dict | None = None) -> dict:
    """Fit a feature judge on the training pairs and write its manifest (the whole model) to `out_dir`."""
    import time

    from tasks.judge.cross_encoder import MANIFEST

    started = time.perf_counter()
    grades = np.asarray(units["grade"].to_pylist(), np.int64)
    lex = lexicon(doc_texts)
    X = pair_features(units["query_text"].to_pylist(), units["doc_text"].to_pylist(), cosines, lex)
    model = fit(X, grades)
    manifest = {"format": FORMAT, "features": list(FEATURES), "model": model, "lexicon": lex, "encoder": encoder,
                "pairs": int(len(grades)), "grade_counts": np.bincount(grades, minlength=GRADES).tolist(),
                "queries": len(set(units["query_id"].to_pylist())), "decision": {"cuts": model["cuts"]},
                "seconds": round(time.perf_counter() - started, 2)} | (info or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
    return manifest
