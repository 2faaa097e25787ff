"""Cells printed to a terminal: text from documents may hold escape sequences (ESC [ 2 J, OSC 52
clipboard writes, OSC 8 links, bidi overrides) that the user's terminal would obey. Every control
character is shown as a visible escape instead, so a printed cell is inert.
"""
from __future__ import annotations

import re

# C0 and C1 controls (ESC, BEL, CSI 0x9b, ...), DEL, and the bidi controls that reorder a line
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def terminal_safe(s: str) -> str:
    """`s` with newlines and tabs as spaces and every other control character as a visible \\xNN / \\uNNNN."""
    s = s.replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", s)
