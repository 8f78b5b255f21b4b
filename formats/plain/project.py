"""Writing generated files into a project tree (a Maven/Gradle project, or a new folder) that the user owns.

The ``java`` target writes a handful of files under ``DIR`` (``src/main/java/<package>/...``,
``src/main/resources/<package>/...``, a README snippet); ``DIR`` may be the root of the user's project,
holding files weightport must never touch.  The manifest of what was written lists those files
(``"files"``, paths relative to ``DIR`` with ``/`` separators), so a later ``--force`` removes exactly
them and nothing else:

* ``DIR`` absent: every file is staged in a new folder beside it, which is renamed into place (a
  failure leaves nothing).
* ``DIR`` present (``--force``, checked by the caller): the files are staged beside ``DIR`` first; a file
  about to be written that exists but is not listed in the previous manifest is refused (it is the
  user's); then the previous manifest's files are removed and the new ones moved in, one rename each.
* A validated output (``convert --validate``) is written to a new staging folder, checked, then moved
  into ``DIR`` by :func:`move_project` under the same rules.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from typing import Callable, Mapping

from weightport.core.atomic import current_umask, fsync_folder, staging_folder
from weightport.core.errors import OutputExistsError, UsageError

Writer = Callable[[str], None]  # writes one file at the given path


def native(relative: str) -> str:
    """A manifest path (``/`` separators, relative, no ``..``) as a path of this system."""
    parts = relative.split("/")
    if posixpath.isabs(relative) or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a plain relative path: {relative!r}")
    return os.path.join(*parts)


def owned_files(root: str, manifest: str) -> set[str]:
    """The files the previous manifest at ``root/manifest`` says weightport wrote (empty: none there)."""
    path = os.path.join(root, native(manifest))
    if not os.path.isfile(path):
        return set()
    try:
        with open(path, encoding="utf-8") as handle:
            listed = json.load(handle).get("files")
        files = {item for item in listed if isinstance(item, str)}
        for item in files:
            native(item)
        return files
    except (OSError, ValueError, AttributeError, TypeError):
        raise OutputExistsError("its weightport manifest is unreadable, so which files weightport wrote is unknown",
                                path=path, fix="Remove the old generated files yourself, or choose a new folder")


def write_project(root: str, manifest: str, writers: Mapping[str, Writer]) -> None:
    """Write ``writers`` (relative path -> function writing that file) under ``root``; see the module doc.

    ``manifest`` is the relative path of the manifest among them, whose ``"files"`` must list them all.
    """
    root = os.path.normpath(root)
    owned = writable(root, manifest, list(writers))
    staging = staging_folder(root)
    try:
        for relative, write in writers.items():
            target = os.path.join(staging, native(relative))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            write(target)
        install(staging, root, owned, list(writers))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def writable(root: str, manifest: str, written: list[str]) -> set[str]:
    """The files of the previous output at ``root`` (which may be removed); refuses when a file about to be
    written exists and is not one of them (it is the user's)."""
    if os.path.lexists(root) and (not os.path.isdir(root) or os.path.islink(root)):
        raise UsageError("the output exists and is not a folder", path=root,
                         fix="The java target writes a project folder: name a folder")
    owned = owned_files(root, manifest) if os.path.isdir(root) else set()
    for relative in written:
        if os.path.lexists(os.path.join(root, native(relative))) and relative not in owned:
            raise OutputExistsError(f"{relative} exists and was not written by weightport", path=root,
                                    fix="Move that file away or choose another {opt:java_class} or {opt:java_package}")
    return owned


def move_project(complete: str, root: str, manifest: str) -> None:
    """Put the files of a complete project folder written elsewhere (a validated staging copy, whose
    manifest at ``manifest`` lists them) under ``root``, by the rules of :func:`write_project`: the
    previous output's files replaced, any other file of ``root`` left alone, a clash with one refused."""
    root = os.path.normpath(root)
    with open(os.path.join(complete, native(manifest)), encoding="utf-8") as handle:
        written = [item for item in json.load(handle)["files"]]
    install(complete, root, writable(root, manifest, written), written)


def install(staging: str, root: str, owned: set[str], written: list[str]) -> None:
    """Move the staged files into ``root``: a whole new folder by one rename, else file by file after
    removing the previous output's files."""
    if not os.path.lexists(root):
        os.chmod(staging, 0o777 & ~current_umask())
        os.rename(staging, root)
        fsync_folder(os.path.dirname(os.path.abspath(root)))
        return
    for relative in sorted(owned):
        path = os.path.join(root, native(relative))
        if os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
    for relative in written:
        target = os.path.join(root, native(relative))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(staging, native(relative)), target)
