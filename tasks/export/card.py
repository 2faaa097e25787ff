"""The dataset card of an export: counts, the dataset versions it came from (with their
lineage), the run configs and the licences of the sources."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa

from tasks.runtime.catalog import Catalog, DatasetVersion


def lineage_versions(catalog: Catalog, names: list[str]) -> list[dict]:
    """The exported datasets and all their ancestors, with versions, rows and content hashes."""
    seen: set[tuple[str, int]] = set()
    for name in names:
        cur = catalog.current(name)
        if cur is None:
            continue
        seen.add((name, cur.version))
        for e in catalog.lineage(name, cur.version).to_pylist():
            seen.add((e["parent_name"], e["parent_version"]))
    rows = []
    for name, version in sorted(seen):
        r = catalog.query("SELECT name, version, row_count, content_hash, created_at, run_id, stage FROM datasets "
                          "WHERE name = ? AND version = ?", [name, version]).to_pylist()
        if r:
            rows.append(r[0] | {"content_hash": r[0]["content_hash"][:16], "created_at": str(r[0]["created_at"])})
    return rows


def source_licences(documents: pa.Table | None, configured: dict[str, str]) -> list[dict]:
    """Licences per input source: those the documents carry (meta.license), plus configured ones."""
    found: dict[str, dict[str, int]] = {}
    if documents is not None:
        for src, meta in zip(documents["source"].to_pylist(), documents["meta"].to_pylist()):
            lic = None
            if meta:
                try:
                    lic = (json.loads(meta) or {}).get("license")
                except (ValueError, AttributeError):
                    lic = None
            lic = lic or configured.get(src) or "unknown: set export.licenses in the config"
            found.setdefault(src, {})
            found[src][lic] = found[src].get(lic, 0) + 1
    for src, lic in configured.items():
        found.setdefault(src, {}).setdefault(lic, 0)
    return [{"source": s, "licence": lic, "documents": n} for s, lics in sorted(found.items())
            for lic, n in sorted(lics.items())]


def run_configs(catalog: Catalog, refs: list[DatasetVersion]) -> dict:
    """The config sections of the runs that produced the exported datasets, once per run."""
    out: dict[str, dict] = {}
    for ref in refs:
        row = catalog.query("SELECT r.run_id, r.config_json FROM datasets d JOIN runs r USING (run_id) "
                            "WHERE d.name = ? AND d.version = ?", [ref.name, ref.version]).to_pylist()
        if not row or not row[0]["config_json"]:
            continue
        run = out.get(f"run {row[0]['run_id']}")
        if run is None:
            try:
                cfg = json.loads(row[0]["config_json"])
            except ValueError:
                continue
            run = out[f"run {row[0]['run_id']}"] = {"datasets": []} | {
                k: cfg[k] for k in ("name", "embed", "index", "negatives", "queries", "caption", "judge") if k in cfg}
        run["datasets"].append(ref.ref)
    return out


def hub_configs(fmt: str, files: list[str]) -> list[dict]:
    """The card's `configs:` so `datasets.load_dataset(<export folder>)` finds the data files."""
    if fmt == "flagembedding":
        return [{"config_name": "default", "data_files": [{"split": "train", "path": "train.jsonl"}]}]
    if fmt == "sentence-transformers":
        configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
        return configs + [{"config_name": f"dev-{Path(f).stem}", "data_files": [{"split": "dev", "path": f}]}
                          for f in files if f.startswith("dev/")]
    if fmt == "mbeir":
        q = next(f for f in files if f.startswith("query/"))
        c = next(f for f in files if f.startswith("cand_pool/"))
        split = q.split("/")[1]
        return [{"config_name": "queries", "data_files": [{"split": split, "path": q}]},
                {"config_name": "cand_pool", "data_files": [{"split": "train", "path": c}]}]
    if fmt == "parquet":
        return [{"config_name": f[: -len(".parquet")], "data_files": [{"split": "train", "path": f}]}
                for f in files if f.endswith(".parquet")]
    return []  # trec: text files that TREC tools read, not a `datasets` dataset


def card_markdown(card: dict) -> str:
    """A Hugging Face dataset card (huggingface_hub's DatasetCard), metadata first, then the body."""
    from huggingface_hub import DatasetCard, DatasetCardData

    lic = sorted({r["licence"] for r in card["licences"]})
    data = DatasetCardData(pretty_name=f"{card['name']} ({card['format']})", license="other",
                           license_name="; ".join(lic) or "unknown",
                           tags=["corpusforge", "retrieval", "hard-negatives"],
                           configs=hub_configs(card["format"], card["files"]) or None)
    lines = [f"# {card['name']}: {card['format']} export v{card['version']}", "",
             f"Written by corpusforge at {card['created_at']} from catalog `{card['catalog']}`.", "",
             "## Counts", ""]
    lines += [f"- {k}: {v}" for k, v in card["counts"].items() if not isinstance(v, (list, dict))]
    for k, v in card["counts"].items():
        if isinstance(v, dict):
            lines += [f"- {k}:"] + [f"  - {kk}: {vv}" for kk, vv in v.items()]
    lines += ["", "## Source datasets (catalog versions and lineage)", "",
              "| dataset | version | rows | content hash | created |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | v{r['version']} | {r['row_count']} | {r['content_hash']} | {r['created_at']} |"
              for r in card["sources"]]
    lines += ["", "## Licences of the sources", "", "| source | licence | documents |", "|---|---|---|"]
    lines += [f"| {r['source']} | {r['licence']} | {r['documents']} |" for r in card["licences"]]
    lines += ["", "## Configuration", "", "```json", json.dumps(card["run_configs"], indent=2, default=str), "```", ""]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def next_version(out: Path, stem: str) -> int:
    found = [int(m.group(1)) for p in out.glob(f"{stem}-v*") if (m := re.fullmatch(rf"{re.escape(stem)}-v(\d+)", p.name))]
    return max(found, default=0) + 1
