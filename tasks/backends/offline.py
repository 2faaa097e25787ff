"""Model-free baselines: alt-text captions and extractive (ICT-style) queries.

The extractive generator follows Inverse Cloze Task pseudo-queries: it crops a sentence of the
source and keeps some of its content words in order, which reads like a keyword search query
rather than a copied sentence. Which words it keeps decides whether the query still finds its
source among similar documents (the round-trip filter), so v2 chooses instead of drawing:

- spans: the sentences that carry the document's most salient words, best first, a different
  sentence for each query of a document;
- keyphrases: a word's salience is how often the document repeats it and how rare it looks
  (long words, numbers, names capitalised mid-sentence), with no corpus statistics, so a unit's
  queries depend on its own content only (and stay cacheable);
- each query adds the document's best keyword from outside its sentence, which ties it to this
  document rather than to any passage on the topic;
- no copying by construction: words adjacent in the source are not kept as a run of three;
- dedup across targets: a text+image query takes its text words from below the ones the text
  target's first query uses, so the two targets of one document never ask the same thing.

Deterministic per (content, seed).
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter

ALT_TEXT = "alt_text"
EXTRACTIVE = "offline-extractive@v2"

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
QUERY_WORDS = (3, 5)  # content words kept from the sentence


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


class Salience:
    """How much each content word of one document says about that document."""

    def __init__(self, text: str):
        self.sents = sentences(text)
        self.words = [content_words(s) for s in self.sents]
        self.tf = Counter(w for ws in self.words for w in ws)
        named: set[str] = set()
        for s in self.sents:
            for i, w in enumerate(_WORD.findall(s)):
                if i > 0 and w[:1].isupper() and w.lower() not in STOPWORDS:
                    named.add(w.lower())
        self.named = named

    def score(self, w: str) -> float:
        rare = min(len(w), 12) / 6 + (0.6 if any(c.isdigit() for c in w) else 0.0) + (0.5 if w in self.named else 0.0)
        return (1.0 + math.log(self.tf[w])) * rare

    def ranked(self) -> list[str]:
        """The document's content words, most salient first (ties: first seen)."""
        order = {w: i for i, w in reversed(list(enumerate(w for ws in self.words for w in ws)))}
        return sorted(self.tf, key=lambda w: (-self.score(w), order[w]))

    def sentence_order(self) -> list[int]:
        """Sentences by the salience of their best few words, best first."""
        def value(i: int) -> float:
            return sum(sorted((self.score(w) for w in set(self.words[i])), reverse=True)[:QUERY_WORDS[1]])
        return sorted((i for i, ws in enumerate(self.words) if ws), key=lambda i: (-value(i), i))


def _no_runs(chosen: list[str], words: list[str]) -> list[str]:
    """Reorder so that no three kept words appear as a run in the source (the copy filter's n-grams)."""
    pos = {w: i for i, w in reversed(list(enumerate(words)))}
    out = sorted(chosen, key=lambda w: pos.get(w, len(words)))
    for i in range(len(out) - 2):
        a, b, c = (pos.get(w) for w in out[i:i + 3])
        if a is not None and b is not None and c is not None and b == a + 1 and c == b + 1:
            out[i + 1], out[i + 2] = out[i + 2], out[i + 1]
    return out


def keyword_query(sal: Salience, sentence: int, rng: random.Random, extra: str | None = None,
                  skip: frozenset = frozenset(), size: int | None = None) -> str:
    """The sentence's most salient words (plus `extra`, a keyword from elsewhere), in source order."""
    words = [w for w in dict.fromkeys(sal.words[sentence]) if w not in skip]
    k = size or rng.randint(*QUERY_WORDS)
    chosen = sorted(words, key=lambda w: -sal.score(w))[:k]
    if extra and extra not in chosen:
        chosen.append(extra)
    return " ".join(_no_runs(chosen, sal.words[sentence]))


def text_queries(text: str, n: int, rng: random.Random) -> list[str]:
    """`n` distinct keyword queries, each from a different salient sentence where there are enough."""
    sal = Salience(text)
    order = sal.sentence_order()
    if not order:
        return []
    ranked = sal.ranked()
    out: list[str] = []
    for attempt in range(n * 4):
        if len(out) == n:
            break
        s = order[attempt % len(order)]
        inside = set(sal.words[s])
        extra = next((w for w in ranked if w not in inside), None)
        size = QUERY_WORDS[1] - 1 if attempt == 0 else None  # the first query is seed-free (targets share it)
        q = keyword_query(sal, s, rng, extra, skip=frozenset(out_words(out)) if attempt >= len(order) else
                          frozenset(), size=size)
        if len(q.split()) >= 2 and q not in out:
            out.append(q)
    return out


def out_words(queries: list[str]) -> set[str]:
    return {w for q in queries for w in q.split()}


def extractive_queries(target: str, text: str | None, caption: str | None, n: int, seed: int) -> list[str]:
    """`n` distinct crops for a target: the text (`text`), the caption (`image`), or one of each (`text+image`)."""
    rng = random.Random(seed)
    if target == "text":
        return text_queries(text or "", n, rng)
    if target == "image":
        return text_queries(caption or "", n, rng)
    t, c = Salience(text or ""), Salience(caption or "")
    if not t.sents or not c.sents:
        return []
    first = text_queries(text or "", 1, random.Random(0))  # what the text target asks first: not that again
    taken = frozenset(out_words(first))
    t_words = [w for w in t.ranked() if w not in taken] or t.ranked()
    c_words = c.ranked()
    out: list[str] = []
    for i in range(n * 4):
        if len(out) == n:
            break
        tw = t_words[i % len(t_words):][:2] if len(t_words) > 1 else t_words
        cw = c_words[i % len(c_words):][:2] if len(c_words) > 1 else c_words
        if i >= max(len(t_words), len(c_words)):
            tw, cw = rng.sample(t_words, min(2, len(t_words))), rng.sample(c_words, min(2, len(c_words)))
        q = " ".join(dict.fromkeys(tw + cw))
        if len(q.split()) >= 2 and q not in out:
            out.append(q)
    return out
