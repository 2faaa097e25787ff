"""Ingest: image folders, COCO caption files and JSONL/Parquet manifests -> `documents`."""
