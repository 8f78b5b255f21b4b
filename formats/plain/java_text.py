"""The Java text of the java target, shared by its writer (:mod:`weightport.formats.plain.java`) and its
check (:mod:`weightport.formats.plain.target_check`): where the files go for a package and class
(:class:`JavaNames`), the templates shipped in ``java/`` beside this module and how they are filled.

Each template compiles on its own; filling it replaces ``"@@KEY@@"`` (a whole string literal, by
:func:`java_string_literal` of a value), ``/*@KEY@*/`` (by generated code), the package line and the class
names ``WeightportWeights``, ``WeightportCheck``, ``WeightportModel`` (by ``CWeights``, ``CCheck``, ``C``).
No layout algebra here: this is text only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

WEIGHTS_FILE = "WeightportWeights.java"
CHECK_FILE = "WeightportCheck.java"
MODEL_FILE = "WeightportModel.java"
JAVA_RESOURCES = (WEIGHTS_FILE, CHECK_FILE, MODEL_FILE)  # in java/ beside this module: templates
TEMPLATE_CLASSES = {"WeightportWeights": "{}Weights", "WeightportCheck": "{}Check", "WeightportModel": "{}"}


@dataclass(frozen=True)
class JavaNames:
    """Where the generated files go: ``package`` ("" for none) and the model's class name."""

    package: str
    name: str

    @property
    def folder(self) -> str:
        return "/".join(self.package.split(".")) if self.package else ""

    def java(self, suffix: str = "") -> str:
        return "/".join(filter(None, ("src/main/java", self.folder, f"{self.name}{suffix}.java")))

    def resource(self, extension: str) -> str:
        return "/".join(filter(None, ("src/main/resources", self.folder, f"{self.name}.{extension}")))

    @property
    def qualified(self) -> str:
        return f"{self.package}.{self.name}" if self.package else self.name


def java_resource(name: str) -> str:
    """The text of ``java/NAME``, shipped as package data."""
    return (files(__package__) / "java" / name).read_text(encoding="utf-8")


def fixed_sources(names: JavaNames) -> dict[str, str]:
    """Relative path -> text of the loader and the check program, which depend on the names alone."""
    return {names.java("Weights"): render(names, WEIGHTS_FILE, {"RESOURCE": names.name}, {}),
            names.java("Check"): render(names, CHECK_FILE, {}, {})}


def model_template(names: JavaNames) -> str:
    """The model class's template with the package and class names set and every other placeholder left
    as it is (what a generated model class must be, its placeholders aside)."""
    template = java_resource(MODEL_FILE)
    strings, code = {}, {}
    for match in PLACEHOLDER.finditer(template):
        string, line, inline = match.groups()
        if string:
            strings[string] = f"@@{string}@@"
        elif (line or inline) != "PACKAGE":
            code[line or inline] = match.group(0)
    return render(names, MODEL_FILE, strings, code)


def render(names: JavaNames, template: str, strings: dict[str, str], code: dict[str, str]) -> str:
    """A template with its placeholders filled, the package line set and the class names replaced."""
    text = fill_template(java_resource(template), strings,
                         {**code, "PACKAGE": f"package {names.package};\n" if names.package else ""})
    return re.sub(r"\bWeightport(Weights|Check|Model)\b",
                  lambda match: TEMPLATE_CLASSES[match.group(0)].format(names.name), text)


JAVA_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def java_string_literal(text: str) -> str:
    """``text`` as a Java string literal, quotes included: the one way data reaches generated Java.

    The result is printable ASCII.  Backslash, quote, tab, newline, carriage return, backspace and
    form feed get their escapes; other control characters (NUL, DEL, ...) three-digit octal ones
    (``\\000``: a digit after it is never read as part of it); non-ASCII characters ``\\uXXXX``
    escapes (a surrogate pair beyond U+FFFF).  javac translates ``\\uXXXX`` before it reads
    anything else, even in comments and literals, so it matters that: every backslash of ``text``
    is doubled, hence a ``\\u`` of ``text`` is never read as an escape (javac reads one only where
    the backslash follows an even run of backslashes), and the only ``\\uXXXX`` written are those
    for non-ASCII characters, which never translate into a line end, a quote or a backslash.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in JAVA_ESCAPES:
            out.append(JAVA_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code < 0x80:
            out.append(f"\\{code:03o}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            high, low = divmod(code - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
    out.append('"')
    return "".join(out)


PLACEHOLDER = re.compile(r'"@@(\w+)@@"|^[ \t]*/\*@(\w+)@\*/$|/\*@(\w+)@\*/', re.M)


def fill_template(template: str, strings: dict[str, str], code: dict[str, str]) -> str:
    """Fill a Java template's placeholders in one pass (so filled-in text is never read as one).

    ``"@@KEY@@"`` becomes ``java_string_literal(strings[KEY])``; a line that is only ``/*@KEY@*/``
    becomes ``code[KEY]`` (lines indented by the caller); ``/*@KEY@*/`` within a line becomes
    ``code[KEY]``.  Every placeholder must be given and every value used.
    """
    used: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        string_key, line_key, inline_key = match.groups()
        if string_key is not None:
            used.add(string_key)
            return java_string_literal(strings[string_key])
        key = line_key or inline_key
        used.add(key)
        return code[key]

    text = PLACEHOLDER.sub(replace, template)
    unused = (set(strings) | set(code)) - used
    if unused:
        raise KeyError(f"the template has no placeholder for {sorted(unused)}")
    return text
