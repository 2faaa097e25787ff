"""Guards for text inserted into a prompt: it may not close the block it sits in, nor fill a
placeholder.

Every prompt marks inserted text with a delimiter (<<<MARKER>>> in the judge, triple quotes in
query generation). Unicode offers many ways to spell a delimiter that a plain check misses:
full-width and small-form brackets, invisible format characters between two brackets (U+200B,
U+2060, bidi controls), combining marks, variation selectors. `neutralise` folds the text with
NFKC, drops invisible and control characters, and then replaces *every* delimiter
character (angle brackets and double quotes, whatever their spelling) with a single look-alike that no
template uses, never two in a row, so no delimiter can be formed at all. `fill` substitutes placeholders in one
pass, so text that holds `{caption}` is never substituted again.
"""
from __future__ import annotations

import re
import unicodedata

# look-alikes that the NFKC fold leaves alone, mapped with the ASCII ones
_ANGLE_OPEN = "<\u2039\u2329\u27e8\u3008\u276c\u276e\u29fc\u02c2\u1438\u16b2"
_ANGLE_CLOSE = ">\u203a\u232a\u27e9\u3009\u276d\u276f\u29fd\u02c3\u1433"
_QUOTES = "\"\u201c\u201d\u201e\u201f\u2033\u2036\u275d\u275e\u301d\u301e\u301f\u02ba\u02dd\u05f4\u00ab\u00bb"
_TABLE = {**{ord(c): "\u2039" for c in _ANGLE_OPEN}, **{ord(c): "\u203a" for c in _ANGLE_CLOSE},
          **{ord(c): "\u201d" for c in _QUOTES}}
# invisible characters with no use in running text: zero-width spaces, word joiners, BOM, soft
# hyphen, bidi embeddings and overrides (they reorder what a reader sees), tag characters.
# ZWJ/ZWNJ and combining marks stay: scripts and emoji need them, and no delimiter is left for
# them to hide in.
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
                        "\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def neutralise(text: str) -> str:
    """Text that cannot spell a prompt delimiter: folded, invisibles dropped, delimiter characters swapped."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", _INVISIBLE.sub("", text))
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cs", "Co", "Cn"))
    text = text.translate(_TABLE)
    # the look-alikes stay single: two in a row are parted by a space, so no run forms
    return re.sub(r"(?<=[\u2039\u203a\u201d])(?=[\u2039\u203a\u201d])", " ", text)


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute `{name}` placeholders in one pass; inserted text is never re-substituted."""
    names = "|".join(re.escape(k) for k in values)
    return re.sub(r"\{(" + names + r")\}", lambda m: values[m.group(1)], template) if values else template
