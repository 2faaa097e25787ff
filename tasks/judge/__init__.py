"""Relevance judgments: the judge stage (stage.py) with its pools, prompt and scoring, the offline
judge, TREC I/O and imports, and the SQL analysis over every label set."""
