"""Modality-targeted synthetic queries: generation (generate.py), filters (filters.py), the stage
(stage.py) and the judge's answerability verdict (answerability.py)."""
