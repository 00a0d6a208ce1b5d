"""The journal of a dedup action run: JSON lines, each appended and fsynced before the next step.

Layout (one JSON object per line)::

    {"journal": "lookalike-dedup-journal", "version": 1, "action": "move", "to": ..., ...}   header
    {"event": "planned", "id": 0, "action": "move", "source": ..., "target": ..., "size": n, "sha256": h}
    ...                                                       every planned operation, before any file is touched
    {"event": "mkdir", "path": ...}                           a folder the run created (undo removes it if empty)
    {"event": "started", "id": 0, "target": ...}              the final target (a new name after a clash)
    {"event": "done", "id": 0}
    {"event": "undone" | "refused" | "purged" | "failed", "id": 0, ...}   written by undo / --empty-trash

A run killed at any moment leaves a journal whose last complete line says how far it got;
:func:`read_journal` ignores a torn last line. Paths are absolute; names that are not UTF-8 are
written as ``\\udcXX`` escapes (see :func:`lookalike.fileio.json_text`) and read back exactly.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import json_text

FORMAT = "lookalike-dedup-journal"
VERSION = 1


def trash_folder(journal: str | Path) -> Path:
    """Where ``--action delete`` puts files: a folder beside the journal, named after it."""
    journal = Path(journal)
    return journal.with_name(journal.name + ".trash")


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (a new, renamed or removed file) durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class JournalWriter:
    """Appends records to a journal, each flushed and fsynced before ``append`` returns."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path, self._handle = path, handle

    @classmethod
    def create(cls, path: str | Path, header: dict[str, Any]) -> JournalWriter:
        """A new journal with ``header`` as its first line; an existing file is never overwritten."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise InputError(
                f"--journal {path}: exists; a journal is never overwritten, choose a new name"
            ) from None
        writer = cls(path, os.fdopen(fd, "ab"))
        writer.append({"journal": FORMAT, "version": VERSION, "created": time.time(), **header})
        fsync_folder(path.parent)
        return writer

    @classmethod
    def reopen(cls, path: str | Path) -> JournalWriter:
        """Append to an existing journal (undo and --empty-trash record what they did)."""
        path = Path(path)
        return cls(path, open(path, "ab"))  # noqa: SIM115 - closed by close()

    def append(self, record: dict[str, Any], *, sync: bool = True) -> None:
        """Write one record as a line; with ``sync`` it is on disk when this returns."""
        self._handle.write((json_text(record, indent=None, compact=True) + "\n").encode("utf-8"))
        if sync:
            self.sync()

    def sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class JournalOp:
    """One planned operation and what the journal says happened to it."""

    id: int
    action: str
    source: Path
    target: Path
    size: int
    sha256: str
    started: bool = False
    done: bool = False
    undone: bool = False
    purged: bool = False
    refused: str | None = None


@dataclass
class JournalState:
    """A journal read back: its header, operations by id, and the folders the run created."""

    path: Path
    header: dict[str, Any]
    ops: list[JournalOp]
    created_folders: list[Path] = field(default_factory=list)

    @property
    def action(self) -> str:
        return str(self.header.get("action"))

    @property
    def trash(self) -> Path | None:
        trash = self.header.get("trash")
        return Path(trash) if trash else None


def read_journal(path: str | Path) -> JournalState:
    """Parse a journal; a one-line InputError when ``path`` is not one. A torn last line (a run
    killed while writing it) is ignored."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such journal file")
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the journal ({exc})") from None
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("journal") != FORMAT:
        raise InputError(f"{path}: not a lookalike dedup journal")
    records = []
    for n, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if n == len(lines) - 1:
                break  # the line a killed run was writing
            raise InputError(f"{path}: line {n + 1} is not valid JSON; not a dedup journal") from None
    if records[0].get("version", 0) > VERSION:
        raise InputError(f"{path}: journal version {records[0]['version']} is newer than this lookalike")
    ops: dict[int, JournalOp] = {}
    folders: list[Path] = []
    for rec in records[1:]:
        event = rec.get("event")
        if event == "planned":
            ops[rec["id"]] = JournalOp(
                rec["id"], rec["action"], Path(rec["source"]), Path(rec["target"]), rec["size"], rec["sha256"]
            )
            continue
        if event == "mkdir":
            folders.append(Path(rec["path"]))
            continue
        op = ops.get(rec.get("id"))
        if op is None:
            continue
        if event == "started":
            op.started, op.target = True, Path(rec["target"])
        elif event == "done":
            op.done = True
        elif event == "undone":
            op.undone, op.refused = True, None
        elif event == "refused":
            op.refused = rec.get("reason", "refused")
        elif event == "purged":
            op.purged = True
    return JournalState(path, records[0], [ops[i] for i in sorted(ops)], folders)
