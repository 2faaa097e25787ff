"""Relevance judgments: TREC import/export, the offline judge, and the SQL analysis over them."""
