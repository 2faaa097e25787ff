"""Node summaries: offline extractive (c-TF-IDF keyphrases + the most central member) or an LLM.

Every summarizer answers four questions the builders ask:
- `summarize(groups)`: one summary per group of member texts (bottom-up nodes, re-summaries
  after an insert);
- `keyword_levels(texts)`: per document, keyword summaries from coarse (1–2 words) to fine
  (top-down build);
- `topics(items, vectors, weights, k)`: ≤ k topics over keyword summaries, with a title each and
  a label per item (-1 where the summarizer left it unassigned);
- `title(texts)`: a title for a group.

The LLM summarizer falls back to the extractive one item by item when the model's answer is
empty or does not parse, and counts those failures, so a weak model never breaks a build.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from tasks.tree import prompts
from tasks.tree.cluster import kmeans_topics, normalize

log = logging.getLogger(__name__)

OFFLINE_NAME = "offline-extractive@v2"  # v2: keyphrases of the documents beneath a node
SEP = " — "  # between a summary's keyphrases and its central excerpt
KEYWORD_LEVELS = (1, 3, 6)  # keyphrases per level of the top-down keyword summaries
TERM_CACHE = 200_000  # texts whose term sets are remembered


@dataclass
class Group:
    """Members of one node: their texts, vectors and how many documents each stands for, plus
    the texts of the documents beneath it nearest its centroid (what an offline summary reads,
    so that a node high in the tree is described by its documents, not by its children's
    summaries)."""

    texts: list[str]
    vectors: np.ndarray
    weights: np.ndarray | None = None
    leaf_texts: list[str] | None = None


class Summarizer(Protocol):
    name: str
    stats: dict

    def summarize(self, groups: Sequence[Group]) -> list[str]: ...

    def keyword_levels(self, texts: Sequence[str]) -> list[list[str]]: ...

    def topics(self, items: Sequence[str], vectors: np.ndarray, weights: np.ndarray, k: int,
               seed: int = 0) -> tuple[np.ndarray, list[str]]: ...

    def title(self, texts: Sequence[str]) -> str: ...

    def update_corpus(self, added: Sequence[str], removed: Sequence[str]) -> None: ...


_CHUNK = re.compile(r"[^\w\s'’-]+|\s[-–—]+\s")
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


class TermStats:
    """Corpus document frequencies of terms (unigrams and bigrams); exact under inserts and deletes."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        self.stop = ENGLISH_STOP_WORDS
        self.df: Counter = Counter()
        self.n_docs = 0
        self._sets: dict[str, frozenset] = {}

    def term_set(self, text: str) -> frozenset:
        """The distinct terms of a text, remembered (a document is read once per tree level)."""
        got = self._sets.get(text)
        if got is None:
            if len(self._sets) >= TERM_CACHE:
                self._sets.clear()
            got = self._sets[text] = frozenset(self.terms(text))
        return got

    def terms(self, text: str) -> list[str]:
        """Unigrams and bigrams of adjacent words, never across punctuation or a stop word, so
        every keyphrase occurs verbatim in the texts it came from."""
        out = []
        for chunk in _CHUNK.split((text or "").lower()):
            words = _WORD.findall(chunk)
            keep = [len(w) > 1 and w not in self.stop for w in words]
            for i, w in enumerate(words):
                if not keep[i]:
                    continue
                out.append(w)
                if i + 1 < len(words) and keep[i + 1]:
                    out.append(f"{w} {words[i + 1]}")
        return out

    def add(self, texts: Sequence[str], sign: int = 1) -> None:
        for t in texts:
            terms = set(self.terms(t))
            if sign > 0:
                self.df.update(terms)
            else:
                self.df.subtract(terms)
            self.n_docs += sign

    def p(self, term: str) -> float:
        """Smoothed share of corpus documents that contain the term."""
        return (self.df.get(term, 0) + 1) / (self.n_docs + 1)

    @classmethod
    def of(cls, texts: Sequence[str]) -> "TermStats":
        stats = cls()
        stats.add(texts)
        return stats


def _pick(scored: list[tuple[str, float]], k: int) -> list[str]:
    """Best terms first, skipping a term that shares a word with one already picked."""
    chosen: list[str] = []
    used: set[str] = set()
    for term, score in sorted(scored, key=lambda x: (-x[1], x[0])):
        words = set(term.split())
        if score <= 0 or words & used:
            continue
        chosen.append(term)
        used |= words
        if len(chosen) == k:
            break
    return chosen


def excerpt(text: str, max_chars: int = 160) -> str:
    """The start of a text's first sentence, cut on a word boundary."""
    text = " ".join((text or "").split(SEP, 1)[-1].split())
    m = re.search(r"(?<=[.!?])\s", text)
    if m and m.start() >= 40:
        text = text[: m.start()]
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + "…"


class ExtractiveSummarizer:
    """Offline summaries: distinctive keyphrases by c-TF-IDF and the most central document's text."""

    name = OFFLINE_NAME

    def __init__(self, stats: TermStats, n_keyphrases: int = 5):
        self.term_stats = stats
        self.n_keyphrases = n_keyphrases
        self.stats = {"calls": 0, "failures": 0}

    def update_corpus(self, added: Sequence[str], removed: Sequence[str]) -> None:
        """Keep the corpus statistics exact after an insert or delete."""
        self.term_stats.add(added)
        self.term_stats.add(removed, sign=-1)

    def keyphrases(self, texts: Sequence[str], weights: Sequence[float] | None = None, k: int | None = None) -> list[str]:
        """Class-based keyphrases: terms that cover much of the group yet are rare in the corpus.

        A term's score is cov·log(cov/p): cov the weighted share of members containing it, p the
        share of corpus documents containing it (the KL contribution of the group's term
        distribution against the corpus's), so a term in one member of ten rarely beats a term
        shared by half of them.
        """
        cov: Counter = Counter()
        total = 0.0
        for i, t in enumerate(texts):
            w = 1.0 if weights is None else float(weights[i])
            total += w
            for term in self.term_stats.term_set(t):
                cov[term] += w
        if total <= 0:
            return []
        scored = []
        for term, c in cov.items():
            share, p = c / total, self.term_stats.p(term)
            scored.append((term, share * math.log(share / p)))
        return _pick(scored, k or self.n_keyphrases)

    def doc_keyphrases(self, text: str, k: int, min_df: int) -> list[str]:
        """Keyphrases of one document by tf·idf among terms shared by at least `min_df` documents."""
        tf = Counter(self.term_stats.terms(text))
        n = self.term_stats.n_docs
        scored = [(term, f * math.log((n + 1) / (self.term_stats.df.get(term, 0) + 1)))
                  for term, f in tf.items() if self.term_stats.df.get(term, 0) >= min_df]
        return _pick(scored, k)

    def summarize_one(self, g: Group) -> str:
        """Keyphrases of the documents beneath the node, then the start of the most central one."""
        texts = [t for t in g.texts]
        if not texts:
            return "(empty)"
        if g.leaf_texts:
            keys = self.keyphrases(g.leaf_texts)
            central = g.leaf_texts[0]
        else:
            weights = g.weights if g.weights is not None else np.ones(len(texts))
            keys = self.keyphrases(texts, weights)
            vecs = normalize(g.vectors)
            centre = normalize((vecs * np.asarray(weights, np.float32)[:, None]).sum(0))
            central = texts[int(np.argmax(vecs @ centre))]
        ex = excerpt(central)
        if keys and ex:
            return ", ".join(keys) + SEP + ex
        return ", ".join(keys) or ex or "(untitled)"

    def summarize(self, groups: Sequence[Group]) -> list[str]:
        return [self.summarize_one(g) for g in groups]

    def keyword_levels(self, texts: Sequence[str]) -> list[list[str]]:
        """Per document: the broadest shared term first, then more and more specific ones."""
        broad = max(3, self.term_stats.n_docs // 500)
        out = []
        for t in texts:
            first = self.doc_keyphrases(t, 1, broad) or self.doc_keyphrases(t, 1, 2)
            rest = self.doc_keyphrases(t, max(KEYWORD_LEVELS), 1)
            keys = first + [k for k in rest if not set(k.split()) & set(" ".join(first).split())]
            if not keys:
                keys = [excerpt(t, 40) or "(untitled)"]
            out.append([", ".join(keys[:n]) for n in KEYWORD_LEVELS])
        return out

    def topics(self, items, vectors, weights, k, seed=0):
        labels = kmeans_topics(normalize(vectors), k, weights, seed)
        titles = []
        for c in range(int(labels.max()) + 1 if len(labels) else 0):
            members = np.flatnonzero(labels == c)
            titles.append(self.title([items[i] for i in members], weights[members]))
        return labels, titles

    def title(self, texts, weights=None) -> str:
        keys = self.keyphrases(texts, weights, k=3)
        return ", ".join(keys) if keys else excerpt(texts[0] if texts else "", 40) or "(untitled)"


def _json_object(raw: str) -> dict | None:
    """The first JSON object in a model's answer, or None."""
    start = raw.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(raw)):
            if raw[i] == "{":
                depth += 1
            elif raw[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(raw[start: i + 1])
                    except ValueError:
                        break
                    return obj if isinstance(obj, dict) else None
        start = raw.find("{", start + 1)
    return None


@dataclass
class LLMSummarizer:
    """Summaries from a Generator with the versioned tree prompts, extractive where it fails."""

    generator: object  # tasks.backends.base.Generator
    fallback: ExtractiveSummarizer
    max_new_tokens: int = 96
    member_chars: int = 300
    max_members: int = 20
    topic_max_items: int = 60
    stats: dict = field(default_factory=lambda: {"calls": 0, "failures": 0})

    @property
    def name(self) -> str:
        versions = "+".join(prompts.version(p) for p in ("summary", "keywords", "topics", "title"))
        return f"{self.generator.name}#{versions}"

    def update_corpus(self, added: Sequence[str], removed: Sequence[str]) -> None:
        self.fallback.update_corpus(added, removed)

    def _generate(self, texts: list[str], max_new_tokens: int | None = None) -> list[str]:
        if not texts:
            return []
        self.stats["calls"] += len(texts)
        try:
            out = self.generator.generate([prompts.as_chat(t) for t in texts],
                                          max_new_tokens=max_new_tokens or self.max_new_tokens)
        except Exception as e:  # noqa: BLE001 - a failing backend falls back, counted, never fatal
            log.warning("tree summarizer: generation failed (%s); using extractive summaries", e)
            return [""] * len(texts)
        return [o if isinstance(o, str) else "" for o in out]

    def _members(self, texts: Sequence[str]) -> str:
        return "\n".join(f"- {' '.join(t.split())[: self.member_chars]}" for t in list(texts)[: self.max_members])

    def summarize(self, groups: Sequence[Group]) -> list[str]:
        outs = self._generate([prompts.render("summary", members=self._members(g.texts)) for g in groups])
        result = []
        for g, o in zip(groups, outs):
            text = " ".join(o.split())
            if not text:
                self.stats["failures"] += 1
                text = self.fallback.summarize_one(g)
            result.append(text)
        return result

    def keyword_levels(self, texts: Sequence[str]) -> list[list[str]]:
        n = len(KEYWORD_LEVELS)
        outs = self._generate([prompts.render("keywords", n_levels=str(n),
                                              document=" ".join(t.split())[: self.member_chars * 3]) for t in texts])
        fallback = None
        result = []
        for i, o in enumerate(outs):
            obj = _json_object(o)
            levels = obj.get("levels") if obj else None
            if (isinstance(levels, list) and levels and all(isinstance(x, str) and x.strip() for x in levels)):
                levels = [" ".join(x.split()).lower() for x in levels][:n]
                result.append(levels + [levels[-1]] * (n - len(levels)))
            else:
                self.stats["failures"] += 1
                fallback = fallback or self.fallback.keyword_levels(texts)
                result.append(fallback[i])
        return result

    def topics(self, items, vectors, weights, k, seed=0):
        if len(items) > self.topic_max_items:
            labels, _ = self.fallback.topics(items, vectors, weights, k, seed)
            groups = [[items[i] for i in np.flatnonzero(labels == c)] for c in range(int(labels.max()) + 1)]
            return labels, [self.title(g) for g in groups]
        listing = "\n".join(f"{i}. {s}" for i, s in enumerate(items))
        (out,) = self._generate([prompts.render("topics", k=str(k), items=listing)], self.max_new_tokens * 4)
        parsed = self._parse_topics(out, len(items), k)
        if parsed is None:
            self.stats["failures"] += 1
            return self.fallback.topics(items, vectors, weights, k, seed)
        return parsed

    @staticmethod
    def _parse_topics(raw: str, n_items: int, k: int) -> tuple[np.ndarray, list[str]] | None:
        obj = _json_object(raw)
        topics = obj.get("topics") if obj else None
        if not isinstance(topics, list):
            return None
        labels = np.full(n_items, -1, np.int64)
        titles: list[str] = []
        for t in topics[:k]:
            if not isinstance(t, dict) or not isinstance(t.get("members"), list):
                continue
            members = [m for m in t["members"] if isinstance(m, int) and 0 <= m < n_items and labels[m] == -1]
            title = " ".join(str(t.get("title") or "").split())
            if not members or not title:
                continue
            labels[members] = len(titles)
            titles.append(title)
        return (labels, titles) if len(titles) >= 2 else None

    def title(self, texts: Sequence[str]) -> str:
        (out,) = self._generate([prompts.render("title", members=self._members(texts))], 24)
        text = " ".join(out.split())[:120]
        if not text:
            self.stats["failures"] += 1
            return self.fallback.title(list(texts))
        return text
