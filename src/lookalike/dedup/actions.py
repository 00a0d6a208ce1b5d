"""What to do with the duplicates, safely: a plan, a journal, then the change, and its undo.

``plan_actions`` lists one operation per image that is not kept (images of a reference library
are never in a plan). ``apply`` writes the journal (every planned operation with its size and
SHA-256) before touching any file, then performs the operations one by one, each bracketed by
journal lines fsynced to disk. ``undo`` reads the journal and puts every file back, byte for byte
at its old path, also after a run killed half-way; a file changed since (hash differs) or an
original path that is occupied is refused with a reason and the rest is restored.

Files are never overwritten: a move is a hard link plus an unlink (the link fails when the
target exists), or across devices a copy to a temporary file that is fsynced, checked against
the hash and linked into place, then the unlink. A name taken at the destination gets a new one
(``name~1.jpg``), recorded in the journal. ``delete`` moves into a trash folder beside the journal;
only :func:`empty_trash` removes those files for good.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..errors import InputError
from ..fileio import crashpoint, printable
from .journal import JournalOp, JournalWriter, fsync_folder, read_journal, trash_folder
from .keep import file_sha256

if TYPE_CHECKING:
    from .result import DedupResult

ACTIONS = ("move", "copy", "symlink", "hardlink", "delete")
CRASH_POINT = "dedup-action"  # reached twice per operation: before it, and once the new file exists
PARTIAL_SUFFIX = ".lookalike-partial"
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


@dataclass
class Operation:
    """Do ``action`` to ``source``, placing it at ``relative`` under the destination folder."""

    action: str
    source: Path
    relative: str
    group: int
    kept: Path


@dataclass
class Plan:
    """The operations of one action run; ``to`` is the destination (None for ``delete``: the
    journal's trash); ``protected`` are folders nothing may be written into."""

    action: str
    to: Path | None
    operations: list[Operation]
    protected: list[Path] = field(default_factory=list)

    def destination(self, journal: str | Path | None = None) -> Path:
        """The folder targets go under: ``to``, or the journal's trash folder for ``delete``."""
        if self.to is not None:
            return self.to
        if journal is None:
            raise InputError(f"--action {self.action} needs --to DIR")
        return trash_folder(Path(journal).absolute())

    def describe(self, journal: str | Path | None = None) -> list[str]:
        """One line per operation, as a dry run prints them."""
        base = self.destination(journal) if (self.to is not None or journal is not None) else None
        verb = {"move": "move", "copy": "copy", "symlink": "link", "hardlink": "hard-link", "delete": "trash"}
        lines = []
        for op in self.operations:
            target = base / op.relative if base is not None else Path(op.relative)
            clash = " (name taken: would get a new one)" if os.path.lexists(target) else ""
            lines.append(
                f"would {verb[op.action]} {printable(str(op.source))} -> {printable(str(target))}{clash}"
            )
        return lines


def safe_relative(name: str) -> str:
    """A result name as a relative path that stays inside the destination ("..", "/" removed)."""
    parts = [p if p not in ("..", ".") else "__" for p in PurePosixPath(name).parts if p not in ("/", "")]
    return "/".join(parts) or "image"


def is_inside(path: Path, folder: Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def check_action(action: str, to: str | Path | None) -> None:
    """Refuse an unknown action, a file action without ``--to`` and ``delete`` with one (its
    trash is always beside the journal, where ``--empty-trash`` looks for it)."""
    if action not in ACTIONS:
        raise InputError(f"--action: unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
    if to is None and action != "delete":
        raise InputError(f"--action {action} needs --to DIR: the folder the duplicates go to")
    if to is not None and action == "delete":
        raise InputError(
            f"--to {to}: --action delete moves duplicates into the trash beside the journal "
            "(JOURNAL.trash/); give --journal PATH to choose where, or --action move --to DIR"
        )


def plan_actions(result: DedupResult, action: str, to: str | Path | None = None) -> Plan:
    """The operations that apply ``action`` to every image of ``result`` that is not kept (never
    to reference images): ``to`` is the destination folder (none for ``delete``, whose trash is
    always beside the journal, where ``--empty-trash`` looks). Refused when ``to`` lies inside a
    searched folder."""
    check_action(action, to)
    protected = [p for p in result.roots.values() if p is not None]
    dest = Path(to).absolute() if to is not None else None
    if dest is not None:
        if dest.exists() and not dest.is_dir():
            raise InputError(f"--to {to}: is a file; give a folder")
        for folder in protected:
            if is_inside(dest, folder):
                raise InputError(
                    f"--to {to}: lies inside {folder}, a searched folder; choose a folder outside it "
                    "(a later dedup would find the duplicates there again)"
                )
    ops = []
    for group in result.groups:
        kept = result.items[group.kept]
        for member in group.members:
            item = result.items[member]
            if member == group.kept or item.set != "collection":
                continue
            ops.append(
                Operation(action, Path(item.path).absolute(), safe_relative(item.name), group.id, kept.path)
            )
    return Plan(action, dest, ops, protected)


# ----------------------------------------------------------------------------- file primitives


def _free_target(target: Path, taken: set[Path]) -> Path:
    """``target``, or ``stem~N.suffix`` with the smallest N whose name is free."""
    candidate, n = target, 0
    while os.path.lexists(candidate) or candidate in taken:
        n += 1
        candidate = target.with_name(f"{target.stem}~{n}{target.suffix}")
    return candidate


def _partial(target: Path) -> Path:
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


def _copy_verified(source: Path, target: Path, digest: str) -> None:
    """Copy ``source`` to ``target`` through a temporary file beside it: fsynced, checked against
    ``digest``, then linked into place (so an existing ``target`` is never replaced)."""
    tmp = _partial(target)
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
        return
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(source, tmp)
        if file_sha256(tmp) != digest:
            raise OSError(errno.EIO, "the copy's bytes differ from the original", str(target))
        _link_no_replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    fsync_folder(target.parent)


def _link_no_replace(source: Path, target: Path) -> None:
    """Give ``source``'s file the name ``target`` as well; never replaces an existing ``target``."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(target):  # a file system without hard links: check, then rename
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.rename(source, target)


def _move(source: Path, target: Path, digest: str) -> None:
    """Move without ever overwriting: link then unlink, or a verified copy across devices."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy_verified(source, target, digest)
        elif exc.errno in _NO_LINKS:
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
            os.rename(source, target)
            fsync_folder(target.parent)
            return
        else:
            raise
    fsync_folder(target.parent)
    crashpoint(CRASH_POINT)  # the new name exists, the old one not yet removed
    os.unlink(source)
    fsync_folder(source.parent)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _hash_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _make_parents(folder: Path, journal: JournalWriter) -> None:
    """Create ``folder`` and missing parents, journaling each so undo can remove them again."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for parent in reversed(missing):
        journal.append({"event": "mkdir", "path": str(parent)})
        parent.mkdir()


# ----------------------------------------------------------------------------- apply


@dataclass
class ApplyReport:
    """What an action run did: operations done, targets renamed after a clash, the journal."""

    journal: Path
    done: int = 0
    renamed: list[tuple[Path, Path]] = field(default_factory=list)


def _check_run(plan: Plan, journal: Path) -> Path:
    checked = [("--journal", journal)] + (
        [("trash", trash_folder(journal))] if plan.action == "delete" else []
    )
    for folder in plan.protected:
        for what, path in checked:
            if is_inside(path, folder):
                raise InputError(
                    f"{what} {path}: lies inside {folder}, a searched folder; put the journal elsewhere"
                )
    if os.path.lexists(journal):
        raise InputError(f"--journal {journal}: exists; a journal is never overwritten, choose a new name")
    dest = plan.destination(journal)
    for op in plan.operations:
        if not op.source.is_file():
            raise InputError(f"{op.source}: no longer exists or is not a file; run dedup again")
    if plan.action == "hardlink" and plan.operations:
        anchor = next(p for p in [dest, *dest.parents] if p.exists())
        devices = {os.stat(op.source).st_dev for op in plan.operations}
        if devices != {os.stat(anchor).st_dev}:
            raise InputError(f"--action hardlink: --to {dest} is on another device; use copy or symlink")
    return dest


def apply(plan: Plan, journal: str | Path, *, progress: bool = False) -> ApplyReport:
    """Carry out ``plan``, journaling to ``journal`` (a new file): planned operations with sizes and
    SHA-256 first, then each operation's start and end, fsynced. Stops at the first failure, with
    the journal saying how far it got (``undo`` puts back what was done)."""
    journal = Path(journal).absolute()
    dest = _check_run(plan, journal)
    facts = [(os.stat(op.source).st_size, file_sha256(op.source)) for op in plan.operations]
    header = {
        "action": plan.action,
        "to": str(dest),
        "trash": str(trash_folder(journal)) if plan.action == "delete" else None,
        "operations": len(plan.operations),
    }
    report = ApplyReport(journal)
    with JournalWriter.create(journal, header) as writer:
        for i, (op, (size, digest)) in enumerate(zip(plan.operations, facts, strict=True)):
            writer.append(
                {
                    "event": "planned",
                    "id": i,
                    "action": op.action,
                    "source": str(op.source),
                    "target": str(dest / op.relative),
                    "size": size,
                    "sha256": digest,
                    "group": op.group,
                    "kept": str(op.kept),
                },
                sync=False,
            )
        writer.sync()
        taken: set[Path] = set()
        steps = tqdm(
            list(enumerate(zip(plan.operations, facts, strict=True))),
            desc=plan.action,
            unit="file",
            disable=not progress or not sys.stderr.isatty(),
        )
        for i, (op, (_, digest)) in steps:
            planned = dest / op.relative
            try:
                _make_parents(planned.parent, writer)
                target = _free_target(planned, taken)
                taken.add(target)
                writer.append(
                    {"event": "started", "id": i, "target": str(target), "renamed": target != planned}
                )
                crashpoint(CRASH_POINT)
                _perform(op, target, digest)
            except OSError as exc:
                writer.append({"event": "failed", "id": i, "reason": str(exc)})
                raise InputError(
                    f"{op.source}: {exc.strerror or exc}; stopped after {report.done} of {len(plan.operations)} "
                    f"operations: `lookalike dedup --undo {journal}` puts them back"
                ) from None
            writer.append({"event": "done", "id": i})
            report.done += 1
            if target != planned:
                report.renamed.append((planned, target))
    return report


def _perform(op: Operation, target: Path, digest: str) -> None:
    if op.action in ("move", "delete"):
        _move(op.source, target, digest)
        return
    if op.action == "copy":
        _copy_verified(op.source, target, digest)
    elif op.action == "symlink":
        os.symlink(op.source, target)
    elif op.action == "hardlink":
        os.link(op.source, target)
    fsync_folder(target.parent)
    crashpoint(CRASH_POINT)


# ----------------------------------------------------------------------------- undo and trash


@dataclass
class UndoReport:
    """Files put back (their original paths) and files refused, each with the reason."""

    restored: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


def undo(journal: str | Path) -> UndoReport:
    """Put back everything the journal's run did, newest first; files whose bytes changed since,
    or whose original path is occupied, are refused (with a reason) and left where they are."""
    state = read_journal(journal)
    report = UndoReport()
    with JournalWriter.reopen(state.path) as writer:
        for op in reversed(state.ops):
            if not op.started or op.undone:
                continue
            reason = _undo_one(op)
            if reason is None:
                writer.append({"event": "undone", "id": op.id})
                report.restored.append(op.source)
            else:
                writer.append({"event": "refused", "id": op.id, "reason": reason})
                report.refused.append((op.source, reason))
    for folder in reversed(state.created_folders):  # emptied folders the run made; never one with files
        with contextlib.suppress(OSError):
            folder.rmdir()
    return report


def _undo_one(op: JournalOp) -> str | None:
    """Restore one operation; None when done, else why it was refused."""
    source, target = op.source, op.target
    partial = _partial(target)
    if os.path.lexists(partial):  # a copy a killed run left before linking it into place
        os.unlink(partial)
    if op.action in ("move", "delete"):
        return _undo_move(op, source, target)
    if not os.path.lexists(target):
        return None  # never made, or already removed: the original was never touched
    if op.action == "symlink":
        if target.is_symlink() and os.readlink(target) == str(source):
            target.unlink()
            return None
        return f"{printable(str(target))} is no longer the link this run made; left as it is"
    if (op.action == "hardlink" and _same_file(source, target)) or (
        not target.is_symlink() and _hash_or_none(target) == op.sha256
    ):
        target.unlink()
        fsync_folder(target.parent)
        return None
    return f"{printable(str(target))} changed since the run (sha256 differs); left as it is"


def _undo_move(op: JournalOp, source: Path, target: Path) -> str | None:
    if os.path.lexists(source):
        if os.path.lexists(target) and _same_file(source, target):  # killed between link and unlink
            target.unlink()
            fsync_folder(target.parent)
            return None
        if os.path.lexists(target):
            if not op.done and _hash_or_none(source) == op.sha256 and _hash_or_none(target) == op.sha256:
                target.unlink()  # a verified cross-device copy whose original was not yet removed
                fsync_folder(target.parent)
                return None
            return (
                f"{printable(str(source))} is occupied by another file; the moved one stays at "
                f"{printable(str(target))}"
            )
        if _hash_or_none(source) == op.sha256:
            return None  # the original is in place
        return (
            f"{printable(str(source))} holds other bytes and {printable(str(target))} is gone; left as it is"
        )
    if not os.path.lexists(target):
        if op.purged:
            return f"{printable(str(target))} was removed for good by --empty-trash; cannot restore it"
        return f"{printable(str(target))} is missing; cannot restore {printable(str(source))}"
    if _hash_or_none(target) != op.sha256:
        return f"{printable(str(target))} changed since the run (sha256 differs); left there"
    source.parent.mkdir(parents=True, exist_ok=True)
    _move(target, source, op.sha256)
    return None


@dataclass
class TrashReport:
    """Files removed for good from the trash, and those refused (changed or missing)."""

    removed: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


def empty_trash(journal: str | Path) -> TrashReport:
    """Remove for good the files a ``delete`` run put in its trash (only those, and only with the
    bytes the journal recorded); after this, undo cannot bring them back."""
    state = read_journal(journal)
    if state.action != "delete" or state.trash is None:
        raise InputError(f"{journal}: a journal of --action {state.action}; only delete runs have a trash")
    report = TrashReport()
    with JournalWriter.reopen(state.path) as writer:
        for op in state.ops:
            if not op.started or op.undone or op.purged:
                continue
            if not is_inside(op.target, state.trash) or not os.path.lexists(op.target):
                continue
            if _hash_or_none(op.target) != op.sha256:
                report.refused.append(
                    (op.target, "changed since the run (sha256 differs); left in the trash")
                )
                continue
            op.target.unlink()
            writer.append({"event": "purged", "id": op.id})
            report.removed.append(op.target)
    for folder in sorted((p for p in state.trash.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        state.trash.rmdir()
    return report
