"""Which image of a group is kept: the rules of ``--keep`` and the file facts they look at."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import InputError
from ..images import image_pixels

KEEP_RULES = ("largest", "oldest", "newest", "first")
KEEP_HELP = (
    "largest: most pixels, then most bytes; oldest / newest: file modification time; "
    "first: first path in sorted order. Ties go to the first path."
)


def check_keep_rule(rule: str) -> str:
    """``rule`` if it is one of KEEP_RULES, else a one-line InputError listing them."""
    if rule not in KEEP_RULES:
        raise InputError(f"--keep: unknown rule {rule!r}; choose one of {', '.join(KEEP_RULES)}")
    return rule


def choose_kept(paths: list[Path], names: list[str], rule: str) -> int:
    """The position in ``paths`` of the image to keep under ``rule``; ties go to the first name."""
    check_keep_rule(rule)
    order = sorted(range(len(paths)), key=lambda i: names[i])
    if rule == "first":
        return order[0]
    if rule == "largest":
        facts = {i: (image_pixels(paths[i]) or 0, _size(paths[i])) for i in order}
        return max(order, key=lambda i: facts[i])  # max keeps the first of equal keys
    times = {i: _mtime(paths[i]) for i in order}
    if rule == "oldest":
        return min(order, key=lambda i: times[i])
    return max(order, key=lambda i: times[i])


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return float("nan")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (what journals and not-duplicates decisions identify files by)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
