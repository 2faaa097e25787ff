"""Model-free baselines: alt-text captions and extractive (ICT-style) queries.

The extractive generator follows Inverse Cloze Task pseudo-queries: it crops a sentence of the
source and keeps a seeded subset of its content words in order, which reads like a keyword
search query rather than a copied sentence. Deterministic per (content, seed).
"""
from __future__ import annotations

import random
import re

ALT_TEXT = "alt_text"
EXTRACTIVE = "offline-extractive@v1"

STOPWORDS = frozenset("""
a an the and or but if of to in on at by for with from into onto over under about above below
is are was were be been being am do does did has have had having it its this that these those
there here their them they he she his her him we us our you your i me my as so than then too very
can could should would will shall may might must not no nor only own same such just also up out
off down again further once while each both few more most other some any all what which who whom
when where why how
""".split())

_SENT = re.compile(r"(?<=[.!?;:])\s+|\n+")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text or "") if len(_WORD.findall(s)) >= 2]


def content_words(sentence: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(sentence) if w.lower() not in STOPWORDS and len(w) > 1]


def crop(sentence: str, rng: random.Random, min_words: int = 3, max_words: int = 6) -> str:
    """A keyword crop of one sentence: a window of its content words with one word dropped when long."""
    words = content_words(sentence)
    if not words:
        return ""
    size = min(len(words), rng.randint(min_words, max_words))
    start = rng.randint(0, len(words) - size)
    window = words[start:start + size]
    if len(window) > min_words:
        del window[rng.randrange(1, len(window))]
    return " ".join(window)


def extractive_queries(target: str, text: str | None, caption: str | None, n: int, seed: int) -> list[str]:
    """`n` distinct crops for a target: the text (`text`), the caption (`image`), or one of each (`text+image`)."""
    rng = random.Random(seed)
    pools = {"text": sentences(text or ""), "image": sentences(caption or "")}
    out: list[str] = []
    for _ in range(n * 4):  # a few extra tries to find distinct crops
        if len(out) == n:
            break
        if target == "text+image":
            if not pools["text"] or not pools["image"]:
                break
            q = f"{crop(rng.choice(pools['text']), rng, 2, 4)} {crop(rng.choice(pools['image']), rng, 2, 4)}".strip()
        else:
            pool = pools[target]
            if not pool:
                break
            q = crop(rng.choice(pool), rng)
        if q and q not in out:
            out.append(q)
    return out
