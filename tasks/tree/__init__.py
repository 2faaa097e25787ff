"""LATTICE semantic trees: builds (bottom-up, top-down), incremental insert/delete, calibrated search.

- `model`: the in-memory tree, its Arrow rows (`tree_nodes`) and invariants;
- `cluster`, `summarize`, `build`: balanced clustering, offline/LLM summaries, the two builds;
- `insert`: insert and delete without a rebuild;
- `calibration`, `scorers`, `search`: slate scoring, the WLS calibration and the traversal;
- `stage`: the Prefect stage and reading a published tree back.
"""
