"""Safe file writing: atomic replacement, JSON that survives any file name, and crash points.

Everything lookalike writes goes through :func:`atomic_write` (temporary file beside the target,
fsync, rename), so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_UMASK = os.umask(0)  # read once at import (setting it is process-wide), then restored
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"
CRASH_ENV = "LOOKALIKE_CRASH_AT"
_crash_hits: dict[str, int] = {}


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Run ``write(handle)`` on a temporary file beside ``path``, fsync it, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, not a file", str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.fchmod(fd, 0o666 & ~_UMASK)  # as a plain open() would create it, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        crashpoint("atomic-write")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_target(name: str) -> str | None:
    """The file a temporary of :func:`atomic_write` (``.<target>.<random>.tmp``, left behind by a
    process killed before its rename) was for, or None when ``name`` is not such a temporary."""
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return None
    target, sep, _ = name[1 : -len(TMP_SUFFIX)].rpartition(".")
    return target if sep and target else None


def is_temporary_of(name: str, target: str) -> bool:
    """True when ``name`` is a temporary :func:`atomic_write` made for ``target``."""
    return temporary_target(name) == target


def json_text(doc: Any, *, indent: int | None = 2, compact: bool = False) -> str:
    """JSON for ``doc`` with real Unicode characters; a file name that is not valid UTF-8 (Python
    keeps its bytes as lone surrogates) is written with ``\\udcXX`` escapes instead of failing, and
    reads back (``json.loads``, then ``os.fsencode``) as the original bytes. ``compact``: no spaces."""
    separators = (",", ":") if compact else None
    text = json.dumps(doc, indent=indent, ensure_ascii=False, separators=separators)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(doc, indent=indent, ensure_ascii=True, separators=separators)
    return text


def write_json(path: str | Path, doc: Any, *, indent: int | None = 2) -> None:
    """Write ``doc`` as UTF-8 JSON atomically (see :func:`json_text`)."""
    data = json_text(doc, indent=indent).encode("utf-8")
    atomic_write(Path(path), lambda h: h.write(data))


def printable(name: str) -> str:
    """A file name safe to print or put in HTML: undecodable bytes shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def crashpoint(name: str) -> None:
    """Fault injection for the crash tests: with ``LOOKALIKE_CRASH_AT=name`` (or ``name:N`` for the
    N-th time this point is reached) the process kills itself here with SIGKILL, as a power cut
    or ``kill -9`` would. A no-op otherwise."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
