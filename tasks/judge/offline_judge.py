"""The offline judge: embedding similarity mapped to a graded label with calibrated thresholds.

The grader is a cumulative-link (ordinal logistic) model on the cosine s between the query and
document embeddings (MiniLM by default):

    P(grade >= g) = sigmoid((s - t_g) / T)      for g = 1, 2, 3 and t_1 < t_2 < t_3
    p_grade = [1 - P(>=1), P(>=1) - P(>=2), P(>=2) - P(>=3), P(>=3)]

t_g is the cosine at which grade >= g becomes more likely than not, and T (the temperature)
sets how sharp the transitions are. `grade` is argmax p_grade and `expected_grade` is
sum g * p_g, as for every other judge. `fit` finds (t, T) by maximum likelihood on labelled
pairs; the defaults in `schemas.config.OfflineJudge` come from that fit on the LLMJudge human
test qrels, odd-numbered queries only (see `calibrate_llmjudge`).
"""
from __future__ import annotations

import numpy as np

GRADES = 4


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def grade_probabilities(cosine: np.ndarray, thresholds, temperature: float) -> np.ndarray:
    """(n, 4) p_grade from cosines; rows sum to 1 and are non-negative for ordered thresholds."""
    t = np.asarray(thresholds, np.float64)
    if t.shape != (3,) or not np.all(np.diff(t) > 0):
        raise ValueError(f"thresholds must be 3 increasing cosines, got {list(t)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s = np.asarray(cosine, np.float64).reshape(-1, 1)
    ge = _sigmoid((s - t.reshape(1, 3)) / temperature)  # P(grade >= 1..3)
    upper = np.concatenate([np.ones((len(s), 1)), ge], axis=1)
    lower = np.concatenate([ge, np.zeros((len(s), 1))], axis=1)
    p = np.clip(upper - lower, 0.0, 1.0)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def grade(cosine: np.ndarray, thresholds, temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_grade, grade, expected_grade) for cosines."""
    p = grade_probabilities(cosine, thresholds, temperature)
    return p, p.argmax(axis=1).astype(np.int8), (p @ np.arange(GRADES, dtype=np.float32)).astype(np.float32)


def fit(cosine: np.ndarray, grades: np.ndarray) -> tuple[list[float], float]:
    """Maximum-likelihood thresholds and temperature of the cumulative-link model."""
    from scipy.optimize import minimize

    s = np.asarray(cosine, np.float64)
    y = np.clip(np.asarray(grades, np.int64), 0, GRADES - 1)

    def unpack(x):
        t1 = x[0]
        t = np.array([t1, t1 + np.exp(x[1]), t1 + np.exp(x[1]) + np.exp(x[2])])
        return t, np.exp(x[3])

    def nll(x):
        t, temp = unpack(x)
        p = grade_probabilities(s, t, temp).astype(np.float64)
        return -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean()

    q = np.quantile(s, [0.3, 0.6, 0.85])
    x0 = np.array([q[0], np.log(max(q[1] - q[0], 1e-3)), np.log(max(q[2] - q[1], 1e-3)), np.log(0.05)])
    res = minimize(nll, x0, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-9})
    t, temp = unpack(res.x)
    return [float(v) for v in t], float(temp)


def cosines(embedder, queries: list[str], docs: list[str]) -> np.ndarray:
    """Cosine of each (query, doc) pair; each distinct text is embedded once."""
    uq, qi = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
    ud, di = np.unique(np.asarray(docs, dtype=object), return_inverse=True)
    eq = _unit(embedder.embed(list(uq)))
    ed = _unit(embedder.embed(list(ud)))
    return np.einsum("ij,ij->i", eq[qi], ed[di]).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1, n)


def calibrate_llmjudge(llmjudge_dir, embedder=None) -> dict:
    """Fit the defaults on odd-numbered LLMJudge test queries; report kappa on the even ones."""
    import json
    from pathlib import Path

    from sklearn.metrics import cohen_kappa_score

    d = Path(llmjudge_dir) / "data"
    topics = dict(line.rstrip("\n").split("\t", 1) for line in open(d / "llm4eval_query_2024.txt") if line.strip())
    passages = {r["docid"]: r["doc"] for r in map(json.loads, open(d / "llm4eval_test_passages_2024.jsonl"))}
    rows = [line.split() for line in open(d / "llmjudge_test_qrel_idx.txt") if line.strip()]
    if embedder is None:
        from tasks.backends.embedders import minilm

        embedder = minilm()
    s = cosines(embedder, [topics[r[0]] for r in rows], [passages[r[2]] for r in rows])
    y = np.array([int(r[3]) for r in rows])
    odd = np.array([int(r[0][1:]) % 2 == 1 for r in rows])
    t, temp = fit(s[odd], y[odd])
    _, g, _ = grade(s[~odd], t, temp)
    return {"thresholds": [round(v, 4) for v in t], "temperature": round(temp, 4),
            "kappa_heldout": float(cohen_kappa_score(y[~odd], g)), "n_fit": int(odd.sum()),
            "n_heldout": int((~odd).sum())}
