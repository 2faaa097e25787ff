"""Clustering for tree building: balanced groups of at most M, and plain k-means topics.

A bottom-up level needs groups whose sizes never exceed M yet stay close to M, so that the tree
is about log_M(N) deep; k-means alone gives no size bound. `balanced_partition` bisects
recursively: 2-means on the set, then the points are ordered along the line between the two
centres and cut where the group counts say, so both halves fit. Each split is O(n·d) and the
recursion is log2(n/M) deep, so a level costs O(n·d·log n).

Each split is a few Lloyd steps of 2-means in numpy, fitted on at most 4,096 sampled points:
scikit-learn's KMeans costs ~20 ms per call in overhead and a build makes ceil(N/M) splits per
level. Topic clustering (top-down) uses scikit-learn's KMeans.
"""
from __future__ import annotations

import math

import numpy as np

SAMPLE = 4096  # the 2-means of a large set is fitted on a sample; every point is still projected


def _direction(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The vector c2 - c1 between the two 2-means centres of x (a few Lloyd steps)."""
    if len(x) > SAMPLE:
        x = x[rng.choice(len(x), SAMPLE, replace=False)]
    first = x[int(rng.integers(len(x)))]
    c = np.stack([first, x[int(np.argmax(((x - first) ** 2).sum(1)))]]).astype(np.float32)
    for _ in range(8):
        assign = (x @ (c[1] - c[0])) > 0.5 * (c[1] @ c[1] - c[0] @ c[0])
        if assign.all() or not assign.any():
            break
        new = np.stack([x[~assign].mean(0), x[assign].mean(0)])
        if np.allclose(new, c):
            break
        c = new
    return c[1] - c[0]


def balanced_partition(vectors: np.ndarray, n_groups: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices split into `n_groups` groups of near-equal size (sizes differ by ≤ 1 per cut)."""
    n = len(vectors)
    if n_groups <= 1 or n <= 1:
        return [np.arange(n)]
    n_groups = min(n_groups, n)
    rng = np.random.default_rng(seed)
    x = np.asarray(vectors, np.float32)
    out: list[np.ndarray] = []
    stack = [(np.arange(n), n_groups)]
    while stack:
        idx, g = stack.pop()
        if g == 1:
            out.append(idx)
            continue
        g1 = g // 2
        n1 = round(len(idx) * g1 / g)
        sub = x[idx]
        proj = sub @ _direction(sub, rng)
        order = np.argsort(proj, kind="stable")
        stack.append((idx[order[n1:]], g - g1))
        stack.append((idx[order[:n1]], g1))
    return out


def groups_of_at_most(vectors: np.ndarray, max_size: int, seed: int = 0) -> list[np.ndarray]:
    """ceil(n/M) groups of similar rows, none larger than M."""
    return balanced_partition(vectors, math.ceil(len(vectors) / max_size), seed)


def level_sizes(n: int, max_branching: int) -> list[int]:
    """Node counts of the levels between n leaves and the root, bottom first, for an even fan-out.

    The tree needs h = ceil(log_M n) levels of internal nodes (the root included); spreading the
    fan-out evenly over them gives b = n^(1/h) children per node at every level, the root
    included, instead of M per node below and whatever is left (often 2) at the root. Each level
    keeps at least ceil(previous/M) nodes, so no node has more than M children.
    """
    M = max_branching
    if n <= M:
        return []
    h = 1
    while M ** h < n:
        h += 1
    b = n ** (1.0 / h)
    sizes, prev = [], n
    for level in range(1, h):
        size = max(math.ceil(prev / M), min(prev - 1, round(n / b ** level)))
        sizes.append(size)
        prev = size
    while prev > M:  # rounding pushed the top level over M: one more level (never seen in practice)
        prev = math.ceil(prev / M)
        sizes.append(prev)
    return sizes


def kmeans_topics(vectors: np.ndarray, k: int, weights: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Cluster label per row with scikit-learn k-means (k ≤ rows); labels are renumbered 0..k'-1."""
    from sklearn.cluster import KMeans

    k = min(k, len(vectors))
    if k <= 1:
        return np.zeros(len(vectors), np.int64)
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(vectors, sample_weight=weights)
    _, labels = np.unique(km.labels_, return_inverse=True)
    return labels


def normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norm, 1e-12)
