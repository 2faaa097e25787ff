"""Prefect flows and the `corpusforge` CLI.

Importing the package sets quiet, offline defaults before Prefect, Ray or transformers read their
settings (each can still be overridden from the environment): no telemetry, no hub downloads,
and a generous start-up wait for the ephemeral Prefect API, whose 20 s default is too short on
a loaded machine.
"""
import os

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "LANCE_LOG": "error",
}.items():
    os.environ.setdefault(_key, _value)
