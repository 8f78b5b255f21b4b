"""The one exception hierarchy of weightport.

Every error a user can cause is a :class:`WeightportError` carrying the file,
the problem and the fix, so the CLI can print one line and exit with
:attr:`WeightportError.exit_code` (2 for bad input or usage, 1 for a failed
validation) without a traceback.
"""

from __future__ import annotations

import re

from weightport.core.text import printable

# An option named in a message is written {opt:NAME} or {opt:NAME=VALUE}, NAME being the Python API's keyword
# (weightport.api); one_line() renders it as the caller knows it: `assume_backend="theano"` from Python,
# `--assume-backend theano` from the command line (weightport.cli prints one_line(cli=True)).
OPTION = re.compile(r"\{opt:([a-z_]+)(?:=([^{}]*))?\}")
CLI_FLAGS = {"dst": "-o", "rename_patterns": "--rename"}  # API keyword -> CLI flag, where not --keyword-with-dashes
API_KEYWORDS = {"rename_patterns": "rename"}  # WriteOptions field -> the API keyword that sets it
LITERALS = re.compile(r"(True|False|None|-?[0-9][0-9.e+-]*)$")


def option(name: str, value: object = None) -> str:
    """The marker naming option ``name`` (an API keyword), optionally with a value, in a message."""
    return f"{{opt:{name}}}" if value is None else f"{{opt:{name}={value}}}"


def as_flag(match: re.Match) -> str:
    """``--assume-backend theano`` (``--force`` for a True value)."""
    name, value = match.group(1), match.group(2)
    flag = CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
    return flag if value in (None, "True") else f"{flag} {value}"


def as_keyword(match: re.Match) -> str:
    """``assume_backend="theano"`` (``force=True``; the bare name without a value)."""
    name, value = API_KEYWORDS.get(match.group(1), match.group(1)), match.group(2)
    if value is None:
        return name
    return f"{name}={value}" if LITERALS.match(value) else f'{name}="{value}"'


def render_options(text: str, cli: bool = False) -> str:
    """``text`` with every option marker written for the command line or for Python."""
    return OPTION.sub(as_flag if cli else as_keyword, text)


class WeightportError(Exception):
    """Base class: ``str(error)`` is one line ``FILE: PROBLEM. FIX``."""

    exit_code = 2

    def __init__(self, problem: str, *, path: str | None = None, fix: str | None = None) -> None:
        self.problem = problem
        self.path = path
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self, cli: bool = False) -> str:
        """``FILE: PROBLEM. FIX``, options named as Python keywords, or as flags with ``cli=True``."""
        text = render_options(self.problem.rstrip("."), cli)
        if self.path:
            text = f"{self.path}: {text}"
        if self.fix:
            text = f"{text}. {render_options(self.fix, cli)}"
        return printable(" ".join(text.split()))

    def __reduce__(self):
        """Pickle by fields, not by constructor arguments (subclasses take other ones), so an error raised
        in a worker process arrives whole: class, message, ``problem``, ``path``, ``fix`` and any
        attribute set on it (a :class:`ValidationFailed`'s ``report``)."""
        return restore_error, (type(self), self.args, self.__dict__.copy())

    def with_path(self, path: str) -> "WeightportError":
        """The same error naming ``path`` (when it names no file yet)."""
        if self.path is None:
            self.path = path
            self.args = (self.one_line(),)
        return self


class UsageError(WeightportError):
    """The command line or API call is wrong (exit 2)."""


class BadInputError(WeightportError):
    """The input file is unreadable, malformed, or not what it claims (exit 2)."""


class UnsafeInputError(BadInputError):
    """The input asks for something weightport never does: run code, read outside its folder (exit 2)."""


class UnsupportedError(BadInputError):
    """The input is valid but holds something weightport cannot represent (exit 2)."""


class AmbiguousSemanticsError(BadInputError):
    """Whether kernels are convolution or correlation kernels cannot be known from the file (exit 2)."""


class OutputExistsError(UsageError):
    """The output exists and --force was not given (exit 2)."""


class OutputError(WeightportError):
    """The output cannot be written: no space left, no permission, a file size limit (exit 2)."""


class LayoutError(WeightportError):
    """A layout pattern or a transform does not fit an array (exit 2)."""


class ValidationFailed(WeightportError):
    """The converted weights do not reproduce the source (exit 1)."""

    exit_code = 1


class MissingDependencyError(UsageError):
    """An optional framework needed by this command is not installed (exit 2)."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package {module!r}, which is not installed",
            fix=f"Install it with: pip install 'weightport[{extra}]'",
        )


def restore_error(cls: type, args: tuple, fields: dict) -> WeightportError:
    """Unpickle a :class:`WeightportError` without calling its ``__init__``."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(fields)
    return error
