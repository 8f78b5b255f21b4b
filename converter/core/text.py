"""Text from files shown to a person: names are data, so control characters never reach a terminal.

A layer name can hold ANSI escape sequences (paint "verified OK" on the screen), a carriage return
or a newline (forge a line of a report), or Unicode direction overrides (reorder what is shown).
:func:`printable` escapes all of them; every line weightport prints for a person goes through it.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, line and paragraph separators, bidirectional embeddings and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def escape_char(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` with every control, separator and direction-override character escaped (``\\x1b``)."""
    return _UNSAFE.sub(escape_char, str(text))

