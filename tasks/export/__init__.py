"""Exports: the writers per format (formats.py), the dataset card (card.py) and the stage (stage.py)."""
