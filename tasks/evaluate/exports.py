"""Finding the training export of a variant: the newest sentence-transformers export that was
written from the current version of its negatives with the current export settings, if any."""
from __future__ import annotations

import json
import re
from pathlib import Path

from tasks.runtime.catalog import DatasetVersion

FORMAT = "sentence-transformers"


def export_stem(name: str) -> str:
    return f"{name}-{FORMAT}"


def read_card(folder: str | Path) -> dict:
    path = Path(folder) / "card.json"
    return json.loads(path.read_text()) if path.exists() else {}


def current_export(out: str | Path, name: str, negatives: DatasetVersion | None, export_cfg: dict) -> Path | None:
    """The newest `<name>-sentence-transformers-vN` under `out` whose card names this negatives
    version (and content) and these export settings; None when there is none."""
    if negatives is None or not Path(out).is_dir():
        return None
    stem = export_stem(name)
    found = []
    for p in Path(out).iterdir():
        m = re.fullmatch(rf"{re.escape(stem)}-v(\d+)", p.name)
        if m and (p / "card.json").exists():
            found.append((int(m.group(1)), p))
    for _, p in sorted(found, reverse=True):
        card = read_card(p)
        if card.get("run_configs", {}).get("export") != export_cfg:
            continue
        if any(s.get("name") == negatives.name and s.get("version") == negatives.version
               and negatives.content_hash.startswith(s.get("content_hash", "-")) for s in card.get("sources", [])):
            return p
    return None


def export_negatives(folder: str | Path) -> str | None:
    """The negatives dataset an export was written from, as its card records it."""
    names = {s.get("name") for s in read_card(folder).get("sources", [])}
    return next((n for n in sorted(names) if n and n.split("/")[0] == "negatives"), None)
