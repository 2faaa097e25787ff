"""Prefect flows (build, refresh, judge, search, export), deployments and the CLI."""
