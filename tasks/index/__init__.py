"""Indexes: FAISS type choice (plan.py), vector indexes with their id map (vector.py), BM25
(lexical.py), reading versions back (store.py), search (search.py) and the stage (stage.py)."""
