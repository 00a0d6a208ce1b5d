"""Pairs a person marked as different: remembered by content hash and left out of every later run.

The file (``--not-duplicates FILE``) holds one pair of SHA-256 hex digests per decision, in either
format, chosen by the file's suffix:

* CSV (any suffix but ``.json``): one pair per line, ``sha256_a,sha256_b``; blank lines, lines
  starting with ``#`` and a header line ``sha256_a,sha256_b`` are ignored;
* JSON (``.json``): ``{"format": "lookalike-not-duplicates", "pairs": [[sha256_a, sha256_b], ...]}``
  (a bare list of pairs is read too).

The order within a pair does not matter. Files are named by content, so a decision survives
renames and moves, and an edited file (new bytes) is judged afresh.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_write, write_json

FORMAT = "lookalike-not-duplicates"
HEADER = ("sha256_a", "sha256_b")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def _pair(a: str, b: str, where: str) -> tuple[str, str]:
    a, b = a.strip().lower(), b.strip().lower()
    if not (_HEX.match(a) and _HEX.match(b)):
        raise InputError(f"{where}: expected two SHA-256 hex digests, got {a!r}, {b!r}")
    return (a, b) if a <= b else (b, a)


def read_not_duplicates(path: str | Path) -> set[tuple[str, str]]:
    """The pairs in ``path`` (CSV or JSON, see the module), each as a sorted tuple of digests."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--not-duplicates {path}: no such file (--mark-different A B creates it)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--not-duplicates {path}: cannot read it ({exc})") from None
    pairs: set[tuple[str, str]] = set()
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text) if text.strip() else {"pairs": []}
        except ValueError as exc:
            raise InputError(f"--not-duplicates {path}: not valid JSON ({exc})") from None
        rows = doc.get("pairs") if isinstance(doc, dict) else doc
        if not isinstance(rows, list):
            raise InputError(f'--not-duplicates {path}: expected {{"pairs": [[sha256, sha256], ...]}}')
        for n, row in enumerate(rows):
            if not (isinstance(row, list | tuple) and len(row) == 2 and all(isinstance(x, str) for x in row)):
                raise InputError(f"--not-duplicates {path}: pair {n + 1} is not two digests")
            pairs.add(_pair(row[0], row[1], f"{path} pair {n + 1}"))
        return pairs
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if (
            not cells
            or not any(cells)
            or cells[0].startswith("#")
            or tuple(c.lower() for c in cells) == HEADER
        ):
            continue
        if len(cells) != 2:
            raise InputError(f"--not-duplicates {path}: line {n}: expected sha256_a,sha256_b")
        pairs.add(_pair(cells[0], cells[1], f"{path} line {n}"))
    return pairs


def write_not_duplicates(path: str | Path, pairs: set[tuple[str, str]]) -> None:
    """Write ``pairs`` to ``path`` atomically, in the format its suffix names."""
    path = Path(path)
    rows = sorted(pairs)
    if path.suffix.lower() == ".json":
        write_json(path, {"format": FORMAT, "pairs": [list(p) for p in rows]})
        return
    text = ",".join(HEADER) + "\n" + "".join(f"{a},{b}\n" for a, b in rows)
    atomic_write(path, lambda h: h.write(text.encode("ascii")))


def mark_different(path: str | Path, first: str | Path, second: str | Path) -> bool:
    """Add the pair (``first``, ``second``), by content hash, to the decisions file ``path``
    (created when missing). Returns False when the pair was already there."""
    from .keep import file_sha256

    first, second, path = Path(first), Path(second), Path(path)
    for image in (first, second):
        if not image.is_file():
            raise InputError(f"--mark-different {image}: no such file")
    pair = _pair(file_sha256(first), file_sha256(second), "--mark-different")
    if pair[0] == pair[1]:
        raise InputError(f"--mark-different: {first} and {second} have the same bytes; they are duplicates")
    pairs = read_not_duplicates(path) if path.exists() else set()
    if pair in pairs:
        return False
    write_not_duplicates(path, pairs | {pair})
    return True
