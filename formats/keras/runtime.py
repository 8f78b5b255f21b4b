"""The one place weightport imports TensorFlow and Keras: quietly.

TensorFlow's C++ runtime writes log lines straight to file descriptor 2 while it is imported
("oneDNN custom operations are on", "This TensorFlow binary is optimized ...", "All log messages
before absl::InitializeLog() is called ...") -- twice, once per shared library, and even with
``TF_CPP_MIN_LOG_LEVEL=3``.  None of them is about the user's file.  :func:`tensorflow` and
:func:`keras`:

* set ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the user chose a level) before the first import;
* run the first import with file descriptor 2 captured, then replay every captured line that is not
  one of TensorFlow's C++ log lines (:func:`is_cpp_log_line`), so a Python warning or error printed
  during the import still reaches the user, and an exception raised by the import propagates as is;
* keep only errors from the Python loggers ``absl`` and ``tensorflow`` (their warnings are about
  tracing and compiling, never about the weights).

oneDNN stays on: numerics are TensorFlow's defaults.  Later imports are ordinary cached imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
import logging
import os
import re
import sys
import tempfile
import threading
from types import ModuleType

CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:. ]+\d+ \S+\.(cc|h):\d+\] ")
CPP_LOG_NOISE = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                 "To enable the following instructions:")
QUIET_LOGGERS = ("absl", "tensorflow")
LOCK = threading.Lock()
# the modules imported quietly, each by a literal name (the import graph of tests/test_architecture.py sees them)
IMPORTS: dict[str, Callable[[], ModuleType]] = {"tensorflow": lambda: importlib.import_module("tensorflow"),
                                                "keras": lambda: importlib.import_module("keras")}


def is_cpp_log_line(line: str) -> bool:
    """A line TensorFlow's C++ runtime (absl/glog format ``I0000 00:00:... file.cc:123] ...``) printed."""
    return bool(CPP_LOG_LINE.match(line)) or line.startswith(CPP_LOG_NOISE)


class DropBelowError(logging.Filter):
    """Keep only ERROR and CRITICAL records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_loggers() -> None:
    """Filter the ``absl`` and ``tensorflow`` Python loggers (and their handlers) down to errors."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        for owner in [logger] + list(logger.handlers):
            if not any(isinstance(item, DropBelowError) for item in owner.filters):
                owner.addFilter(DropBelowError())


def import_quietly(name: str) -> ModuleType:
    """Module ``name`` (tensorflow or keras, :data:`IMPORTS`) with TensorFlow's C++ start-up lines dropped
    from stderr."""
    load = IMPORTS[name]
    with LOCK:  # one first import at a time; a module another thread is importing is waited for by import_module
        if name in sys.modules:
            return load()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            saved = os.dup(2)
        except OSError:  # no file descriptor 2 (a daemon): nothing to keep quiet
            return load()
        with tempfile.TemporaryFile(mode="w+b") as captured:
            sys.stderr.flush()
            os.dup2(captured.fileno(), 2)
            try:
                module = load()
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                replay(captured)
        quiet_loggers()
        return module


def replay(captured: "tempfile._TemporaryFileWrapper[bytes]") -> None:
    """Write back to stderr every captured line that is not a C++ log line."""
    captured.seek(0)
    kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            if not is_cpp_log_line(line)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported quietly (see the module docstring)."""
    return import_quietly("tensorflow")


def keras() -> ModuleType:
    """The ``keras`` module (Keras 3 on TensorFlow), imported quietly."""
    tensorflow()  # keras imports TensorFlow: let its C++ lines be dropped here
    return import_quietly("keras")
