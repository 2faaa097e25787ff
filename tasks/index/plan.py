"""Choosing and building a FAISS index, the way autofaiss does it: from the vector count and a
memory budget. An exact flat index for small corpora, HNSW or IVF beyond, product quantization
when the budget demands it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from schemas.config import IndexConfig

log = logging.getLogger(__name__)

METRIC = "inner_product"  # vectors are L2-normalized, so this is cosine similarity


@dataclass(frozen=True)
class IndexPlan:
    type: str  # flat | hnsw | ivf_flat | ivf_pq
    factory: str  # faiss index_factory string
    params: dict
    est_mb: float


def plan_index(n: int, dim: int, cfg: IndexConfig) -> IndexPlan:
    """The index type for n vectors of this dimension under the memory budget."""
    budget = cfg.memory_budget_mb * 2**20
    flat = n * dim * 4
    hnsw = n * (dim * 4 + cfg.hnsw_m * 2 * 4)  # level-0 graph links: 2*M int32 per vector
    nlist = cfg.ivf_nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # >= 39 training points per list
    ivf = n * (dim * 4 + 8) + nlist * dim * 4
    kind = cfg.type
    if kind == "auto":
        if n <= cfg.flat_max_vectors and flat <= budget:
            kind = "flat"
        elif n <= cfg.hnsw_max_vectors and hnsw <= budget:
            kind = "hnsw"
        elif ivf <= budget:
            kind = "ivf_flat"
        else:
            kind = "ivf_pq"
    if kind == "flat":
        return IndexPlan("flat", "Flat", {}, flat / 2**20)
    if kind == "hnsw":
        return IndexPlan("hnsw", f"HNSW{cfg.hnsw_m},Flat",
                         {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction,
                          "efSearch": cfg.hnsw_ef_search}, hnsw / 2**20)
    if kind == "ivf_flat":
        return IndexPlan("ivf_flat", f"IVF{nlist},Flat", {"nlist": nlist, "nprobe": min(cfg.ivf_nprobe, nlist)},
                         ivf / 2**20)
    bits = max(1, min(cfg.pq_bits, int(math.log2(max(n, 2)))))  # k-means needs >= 2^bits points
    # sub-vectors of >= 8 dimensions: finer codes train slowly and add little recall
    divisors = [m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0]
    fixed = nlist * dim * 4 + dim * (2**bits) * 4
    fitting = [m for m in divisors if n * (m * bits / 8 + 8) + fixed <= budget]
    if not fitting:
        log.warning("even PQ1 exceeds the %s MB index budget for %d vectors; using the smallest code",
                    cfg.memory_budget_mb, n)
    m = max(fitting) if fitting else 1
    est = n * (m * bits / 8 + 8) + fixed
    return IndexPlan("ivf_pq", f"IVF{nlist},PQ{m}x{bits}",
                     {"nlist": nlist, "nprobe": min(cfg.ivf_nprobe, nlist), "pq_m": m, "pq_bits": bits},
                     est / 2**20)


def train_faiss(vectors, plan: IndexPlan, seed: int = 0):
    """An empty index of the plan's type, trained (IVF/PQ) on a seeded sample of the vectors."""
    import faiss

    index = faiss.index_factory(max(vectors.dim, 1), plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.type == "hnsw":
        index.hnsw.efConstruction = plan.params["efConstruction"]
    if not index.is_trained:
        n = vectors.items.num_rows
        rng = np.random.default_rng(seed)
        cap = max(plan.params.get("nlist", 1) * 256, 2 ** plan.params.get("pq_bits", 0) * 256)
        rows = np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))
        index.train(vectors.take(rows))
    return index


def fill(index, batches, plan: IndexPlan):
    """Add vectors batch by batch and set the search parameters."""
    for batch in batches:
        index.add(np.ascontiguousarray(batch, dtype=np.float32))
    search_params(index, plan.type, plan.params)
    return index


def search_params(index, type_: str, params: dict) -> None:
    import faiss

    if type_ == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif type_.startswith("ivf"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = params["nprobe"]
        ivf.make_direct_map()  # reconstruct() scores positives and lexical candidates


# ---- a vector index with its id map -----------------------------------------------------------


def empty_faiss(dim: int):
    import faiss

    return faiss.IndexFlatIP(max(dim, 1))


def faiss_version() -> str:
    import faiss

    return faiss.__version__
