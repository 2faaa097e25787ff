"""Calibration of listwise slate scores: s_iv ≈ a·θ_v + b_i, fitted by weighted least squares.

A scorer judges each slate on its own, so the same node can get 70 in one slate and 40 in
another; every slate i gets its own offset b_i, every node v a latent relevance θ_v and one
global scale a relates them. Nodes shared between slates (calibration leaves, the best node
seen at a depth) tie the offsets together.

The model is linear in u_v = a·θ_v and b_i, up to one shift between u and b in each connected
set of slates; a small ridge on the offsets fixes that shift (slates are assumed roughly
calibrated unless the shared nodes say otherwise). θ is then reported standardised over the
scored nodes (mean 0, variance 1) with the shift moved into the offsets, which makes a, b and θ
identifiable: that is what the synthetic recovery test checks.

Weights favour high scores, as in LATTICE: the top of the ranking is what the fit must get right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OFFSET_RIDGE = 1e-3


@dataclass
class Calibration:
    nodes: list  # node keys, in the order of theta
    theta: np.ndarray
    a: float
    b: np.ndarray  # one offset per slate

    def scaled(self) -> dict:
        """ŝ_v = a·θ_v / max a·θ over the scored nodes (≤ 1; 0 is the mean node)."""
        u = self.a * self.theta
        top = float(u.max()) if len(u) else 0.0
        if top <= 1e-12:
            return {v: 0.0 for v in self.nodes}
        return {v: float(x / top) for v, x in zip(self.nodes, u)}


def score_weights(scores: np.ndarray) -> np.ndarray:
    """Weight of an observed score in [0, 1]: 0.1 at the bottom, rising to 1 at the top."""
    return 0.1 + 0.9 * np.clip(scores, 0.0, 1.0)


def fit(slates: list[list[tuple[object, float]]], weights: str = "score") -> Calibration:
    """Fit a, b_i and θ_v from slates of (node, score); a slate may be empty (a failed call)."""
    nodes: list = []
    col: dict = {}
    rows = []
    for i, slate in enumerate(slates):
        for v, s in slate:
            if v not in col:
                col[v] = len(nodes)
                nodes.append(v)
            rows.append((i, col[v], float(s)))
    n_nodes, n_slates = len(nodes), len(slates)
    if not rows:
        return Calibration(nodes, np.zeros(0), 0.0, np.zeros(n_slates))
    r = np.array(rows)
    slate_of, node_of, s = r[:, 0].astype(int), r[:, 1].astype(int), r[:, 2]
    w = score_weights(s) if weights == "score" else np.ones(len(s))
    # Normal equations [[Dn, C], [Cᵀ, Ds + λ]]·[u; b] = [rn; rs], solved through the Schur
    # complement on the offsets: slates are few (≤ 1 + B·(N−1)), nodes are many.
    dn = np.bincount(node_of, weights=w, minlength=n_nodes)
    ds = np.bincount(slate_of, weights=w, minlength=n_slates) + OFFSET_RIDGE * w.sum() / max(n_slates, 1)
    cross = np.zeros((n_nodes, n_slates))
    np.add.at(cross, (node_of, slate_of), w)
    rn = np.bincount(node_of, weights=w * s, minlength=n_nodes)
    rs = np.bincount(slate_of, weights=w * s, minlength=n_slates)
    scaled = cross / dn[:, None]
    schur = np.diag(ds) - cross.T @ scaled
    b = np.linalg.solve(schur, rs - scaled.T @ rn)
    u = (rn - cross @ b) / dn
    shift = float(u.mean())
    a = float(u.std())
    theta = (u - shift) / a if a > 1e-12 else np.zeros(n_nodes)
    return Calibration(nodes, theta, a, b + shift)
