"""A parser of the protobuf text format Caffe's ``.prototxt`` files use, into :class:`~wire.Message` trees.

``name: value`` pairs and ``name { ... }`` (or ``name: { ... }``, ``< ... >``) messages, ``# comments``,
quoted strings with C escapes, numbers, enum identifiers, ``true``/``false`` and ``name: [a, b]`` lists.
Values keep their text types (int, float, str, bool); enum values stay their identifiers, as the binary
tables decode them.  The parser is iterative (nesting bounded by
:data:`~weightport.core.budget.MAX_NESTING`), reads at most :data:`MAX_TEXT_BYTES`, and runs nothing.
"""

from __future__ import annotations

import re
from typing import Any

from weightport.core.budget import MAX_ITEMS, MAX_NESTING
from weightport.core.errors import BadInputError
from weightport.formats.caffe.wire import Message

MAX_TEXT_BYTES = 64 << 20  # a deploy prototxt is kilobytes; a text file of weights is not read as one
TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]?)
  | (?P<word>[-+]?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>:\[\],;])
""", re.X)
OPEN, CLOSE = "{<", "}>"
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
           "v": "\v", "?": "?"}


def unquote(text: str) -> str:
    """A quoted string's value, C escapes (``\\n``, ``\\x41``, octal ``\\101``) decoded; bytes taken as UTF-8."""
    body, out, position = text[1:-1], bytearray(), 0
    while position < len(body):
        char = body[position]
        if char != "\\":
            out += char.encode("utf-8")
            position += 1
            continue
        following = body[position + 1]
        octal = re.match(r"[0-7]{1,3}", body[position + 1:])
        hexadecimal = re.match(r"x([0-9A-Fa-f]{1,2})", body[position + 1:])
        if octal:
            out.append(int(octal.group(0), 8) & 0xFF)
            position += 1 + len(octal.group(0))
        elif hexadecimal:
            out.append(int(hexadecimal.group(1), 16))
            position += 1 + len(hexadecimal.group(0))
        else:
            out += ESCAPES.get(following, following).encode("utf-8")
            position += 2
    return out.decode("utf-8", "replace")


def scalar(kind: str, text: str) -> Any:
    if kind == "string":
        return unquote(text)
    if kind == "number":
        text = text.rstrip("fF") if not text.lower().startswith(("0x",)) else text
        return float(text) if any(c in text for c in ".eE") else int(text)
    lowered = text.lower().lstrip("+")
    if lowered in ("true", "t"):
        return True
    if lowered in ("false", "f"):
        return False
    if lowered in ("inf", "infinity", "-inf", "-infinity", "nan", "-nan"):
        return float(lowered)
    return text  # an enum identifier


def tokens(text: str, path: str, label: str = "prototxt") -> list[tuple[str, str, int]]:
    """(kind, text, line) of every token, or a one-line error at the first character that starts none."""
    found: list[tuple[str, str, int]] = []
    position, line = 0, 1
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            raise BadInputError(f"{label} line {line}: unexpected character {text[position]!r}", path=path,
                                fix="Check the file is a Caffe .prototxt (protobuf text format)")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((kind, match.group(0), line))
            if len(found) > MAX_ITEMS:
                raise BadInputError(f"{label} holds more than {MAX_ITEMS} tokens", path=path,
                                    fix="The file is damaged or crafted")
        line += match.group(0).count("\n")
        position = match.end()
    return found


def parse(text: str, path: str, label: str = "prototxt", root: str = "NetParameter") -> Message:
    """The message a prototxt's text describes (iterative; nesting bounded).  Errors name ``path`` (the
    model being read) and say ``label`` (the prototxt) and the line."""
    items = tokens(text, path, label)
    stack = [Message(root)]
    position = 0

    def fail(problem: str) -> BadInputError:
        line = items[min(position, len(items) - 1)][2] if items else 1
        return BadInputError(f"{label} line {line}: {problem}", path=path,
                             fix="Check the file is a Caffe .prototxt (protobuf text format)")

    while position < len(items):
        kind, text_value, _ = items[position]
        if kind == "punct" and text_value in CLOSE:
            if len(stack) == 1:
                raise fail(f"unmatched {text_value!r}")
            stack.pop()
            position += 1
            continue
        if kind == "punct" and text_value in ",;":
            position += 1
            continue
        if kind != "word":
            raise fail(f"expected a field name, found {text_value!r}")
        name = text_value
        position += 1
        if position < len(items) and items[position][1] == ":":
            position += 1
        if position >= len(items):
            raise fail(f"field {name!r} has no value")
        kind, text_value, _ = items[position]
        if kind == "punct" and text_value in OPEN:
            if len(stack) > MAX_NESTING:
                raise fail(f"messages nested more than {MAX_NESTING} levels deep")
            child = Message(name)
            stack[-1].add(name, child)
            stack.append(child)
            position += 1
        elif kind == "punct" and text_value == "[":
            position += 1
            while position < len(items) and items[position][1] != "]":
                kind, text_value, _ = items[position]
                if kind not in ("string", "number", "word"):
                    if text_value == ",":
                        position += 1
                        continue
                    raise fail(f"unexpected {text_value!r} in the list of {name!r}")
                stack[-1].add(name, scalar(kind, text_value))
                position += 1
            position += 1
        elif kind in ("string", "number", "word"):
            value = scalar(kind, text_value)
            position += 1
            while kind == "string" and position < len(items) and items[position][0] == "string":
                value += scalar("string", items[position][1])  # adjacent strings concatenate
                position += 1
            stack[-1].add(name, value)
        else:
            raise fail(f"field {name!r} has no value (found {text_value!r})")
    if len(stack) != 1:
        raise BadInputError(f"{label} ends inside {len(stack) - 1} unclosed message(s)", path=path,
                            fix="Check the file is complete")
    return stack[0]


def read_text(source: str, path: str, label: str = "prototxt") -> str:
    """The text of the prototxt ``source``, refused when larger than :data:`MAX_TEXT_BYTES` or not text
    (errors name ``path``, the model being read)."""
    with open(source, "rb") as handle:
        data = handle.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise BadInputError(f"{label} is larger than {MAX_TEXT_BYTES} bytes", path=path,
                            fix="A deploy prototxt is small text; check the file is the network definition")
    if b"\x00" in data:
        raise BadInputError(f"{label} holds NUL bytes (a binary file?)", path=path,
                            fix="Give the text .prototxt as {opt:spec} and the binary .caffemodel as the source")
    return data.decode("utf-8", "replace")
