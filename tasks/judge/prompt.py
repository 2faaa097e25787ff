"""The judge prompt and its answers: rendering with unclosable delimiters, parsing a generated grade.

The versioned template (tasks/prompts/judge_graded.<version>.txt) has `{query}` and `{document}`
placeholders inside <<<MARKER>>> delimiters. Inserted text can neither close a delimiter nor
inject another placeholder; a generated answer yields a grade only when it clearly states one.
"""
from __future__ import annotations

import re

from tasks.prompts.guard import fill, neutralise  # noqa: F401 - neutralise is part of this module's API

def render(template: str, query: str, document: str, max_doc_chars: int = 4000) -> str:
    """The judge prompt for one pair; a single pass, so inserted text is never re-substituted."""
    doc = neutralise(document)
    if len(doc) > max_doc_chars:
        doc = doc[:max_doc_chars] + " [...]"
    values = {"query": neutralise(query).strip(), "document": doc.strip()}
    return fill(template, values)


_LABELLED = re.compile(r"(?:final\s+)?(?:score|grade|relevance|rating|label|answer)\s*(?:is|:|=|-)?\s*\**\s*([0-9]+)\b",
                       re.IGNORECASE)
_DIGIT = re.compile(r"(?<![\d.])(\d+)(?!\.?\d)")
_REFUSAL = re.compile(r"\b(I can(?:no|')t|I'm (?:not able|unable)|I am (?:not able|unable)|I won't|as an AI)\b",
                      re.IGNORECASE)


def parse_grade(text: str | None) -> tuple[int | None, str]:
    """(grade, status) from a generated answer: `ok`, `parse_error` or `refused`.

    Accepted: a labelled number ("Score: 2", "final grade = 3") or exactly one standalone
    number in the answer. The number must be 0..3; anything else is not guessed at.
    """
    if text is None or not text.strip():
        return None, "parse_error"
    labelled = _LABELLED.findall(text)
    if labelled:
        value = int(labelled[-1])
        return (value, "ok") if 0 <= value <= 3 else (None, "parse_error")
    numbers = set(_DIGIT.findall(text))
    if len(numbers) == 1:
        value = int(numbers.pop())
        return (value, "ok") if 0 <= value <= 3 else (None, "parse_error")
    if _REFUSAL.search(text):
        return None, "refused"
    return None, "parse_error"
