"""Stable codes for quarantine reasons: the free-text reason names the item (its id, file, numbers);
the code is the same for every item rejected for the same cause, so `GROUP BY code` groups."""
from __future__ import annotations

import re

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`|\{[^}]*\}|\[[^\]]*\]")


def reason_code(reason: str | None) -> str:
    """The reason's leading words up to its first ':', '(' or ';', without ids, numbers, quoted
    values or paths, lowercased and joined by '_' ("image file not found: x.jpg" -> image_file_not_found)."""
    head = re.split(r"[:(;]", _QUOTED.sub(" ", reason or ""), maxsplit=1)[0]
    words = [w.lower() for w in head.split()
             if re.fullmatch(r"[A-Za-z][A-Za-z-]*", w.strip(",.")) and not re.search(r"[0-9/\\._]", w.strip(",."))]
    return "_".join(w.strip(",.").replace("-", "_") for w in words[:8]) or "unspecified"
