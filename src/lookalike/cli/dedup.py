"""``lookalike dedup``: near-duplicate groups, safe file actions with a journal, undo and trash."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from ..config import SearchConfig
from ..dedup import (
    ACTIONS,
    DEFAULT_K,
    KEEP_RULES,
    apply,
    empty_trash,
    find_duplicates,
    mark_different,
    plan_actions,
    undo,
)
from ..dedup.actions import check_action, is_inside
from ..dedup.keep import KEEP_HELP, check_keep_rule
from ..errors import EXIT_USAGE, InputError
from ..fileio import printable
from ..index import is_index
from ..index.store import MANIFEST
from ._app import app, err, friendly, shown
from .options import DEDUP_CONFIG, uses
from .output import check_outputs

_PANEL = "Dedup"


def _opt(*names: str, **info: object) -> typer.models.OptionInfo:
    return typer.Option(*names, rich_help_panel=_PANEL, **info)  # type: ignore[arg-type]


def _root(source: Path) -> Path:
    """The folder a source's images live under (a saved index: its gallery root)."""
    if is_index(source):
        try:
            return Path(json.loads((source / MANIFEST).read_text(encoding="utf-8"))["root"])
        except (OSError, ValueError, KeyError):
            return source.resolve()
    return source.resolve() if source.is_dir() else source.resolve().parent


def _default_journal(base: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = base / f"lookalike-dedup-{stamp}.jsonl", 0
    while os.path.lexists(path):
        n += 1
        path = base / f"lookalike-dedup-{stamp}-{n}.jsonl"
    return path


def _maintenance(
    undo_journal: Path | None,
    trash_journal: Path | None,
    pair: tuple[Path, Path] | None,
    not_duplicates: Path | None,
    quiet: bool,
) -> None:
    """--undo, --empty-trash and --mark-different: each on its own, no search."""
    if undo_journal is not None:
        report = undo(undo_journal)
        for path, reason in report.refused:
            err.print(f"refused {shown(path)}: {shown(reason)}")
        err.print(
            f"restored {len(report.restored)} file(s)"
            + (f", refused {len(report.refused)}" if report.refused else "")
        )
        if report.refused:
            raise typer.Exit(EXIT_USAGE)
        return
    if trash_journal is not None:
        trash = empty_trash(trash_journal)
        for path, reason in trash.refused:
            err.print(f"refused {shown(path)}: {shown(reason)}")
        err.print(f"removed {len(trash.removed)} file(s) from the trash for good")
        if trash.refused:
            raise typer.Exit(EXIT_USAGE)
        return
    assert pair is not None
    if not_duplicates is None:
        raise InputError(
            "--mark-different A B needs --not-duplicates FILE: the decisions file to add the pair to"
        )
    added = mark_different(not_duplicates, pair[0], pair[1])
    if not quiet:
        err.print(
            f"{'added' if added else 'already in'} {shown(not_duplicates)}: {shown(pair[0])} and {shown(pair[1])} are different"
        )


@app.command()
@friendly
@uses(DEDUP_CONFIG)
def dedup(
    folder: Annotated[
        Path | None,
        typer.Argument(
            help="Collection: folder, .txt list, .csv or saved index (new images with --reference)."
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        _opt("--reference", help="Library (folder or index) to find duplicates in; never touched."),
    ] = None,
    k: Annotated[
        int, _opt("-k", "--top-k", min=1, help="Neighbours per image that are candidate pairs.")
    ] = DEFAULT_K,
    threshold: Annotated[
        float | None, _opt("--threshold", help="Duplicate when score >= S (<= for euclidean).")
    ] = None,
    threshold_file: Annotated[
        Path | None, _opt("--threshold-file", help="Threshold JSON from `lookalike calibrate`.")
    ] = None,
    verify: Annotated[
        str | None, _opt("--verify", help="Also verify pairs by local features: sift or surf.")
    ] = None,
    min_inliers: Annotated[int, _opt("--min-inliers", min=1, help="RANSAC inliers --verify needs.")] = 10,
    backend: Annotated[
        str | None,
        _opt("--backend", help="Index backend for a folder: exact, hnsw, ivfsq8, faiss:<factory>."),
    ] = None,
    keep: Annotated[
        str, _opt("--keep", help=f"Kept image of a group: {', '.join(KEEP_RULES)}. {KEEP_HELP}")
    ] = "largest",
    output: Annotated[
        Path | None, _opt("-o", "--output", help="Write groups, pairs and settings as JSON.")
    ] = None,
    csv_path: Annotated[Path | None, _opt("--csv", help="Write one row per group member as CSV.")] = None,
    report: Annotated[Path | None, _opt("--report", help="Write an HTML page of the groups.")] = None,
    action: Annotated[
        str | None, _opt("--action", help=f"Do to non-kept images: {', '.join(ACTIONS)}.")
    ] = None,
    to: Annotated[Path | None, _opt("--to", help="Destination folder of --action (outside FOLDER).")] = None,
    journal: Annotated[
        Path | None, _opt("--journal", help="Journal file of --action (default: in --to or here).")
    ] = None,
    dry_run: Annotated[bool, _opt("--dry-run", help="Print what --action would do; change nothing.")] = False,
    not_duplicates: Annotated[
        Path | None, _opt("--not-duplicates", help="Pairs marked different (sha256 pairs, CSV or JSON).")
    ] = None,
    mark: Annotated[
        tuple[Path, Path] | None, _opt("--mark-different", help="Add images A B to --not-duplicates.")
    ] = None,
    undo_journal: Annotated[
        Path | None, _opt("--undo", help="Put back everything a journal's run did.")
    ] = None,
    trash_journal: Annotated[
        Path | None, _opt("--empty-trash", help="Remove a delete run's trash for good.")
    ] = None,
    *,
    config: SearchConfig,
) -> None:
    """Find groups of near-duplicates (or, with --reference, each image's duplicates in a library);
    optionally move, copy, link or trash the non-kept ones, journaled and undoable."""
    quiet = not config.extract.progress
    modes = [
        m
        for m, given in (
            ("--undo", undo_journal),
            ("--empty-trash", trash_journal),
            ("--mark-different", mark),
        )
        if given is not None
    ]
    if len(modes) > 1:
        raise InputError(f"{' and '.join(modes)}: give one at a time")
    if modes:
        if folder is not None:
            raise InputError(f"{modes[0]} works on its own: drop FOLDER {folder}")
        _maintenance(undo_journal, trash_journal, mark, not_duplicates, quiet)
        return
    if folder is None:
        raise InputError("give FOLDER (or --undo JOURNAL, --empty-trash JOURNAL, --mark-different A B)")
    check_keep_rule(keep)
    for option, path in (("FOLDER", folder), ("--reference", reference)):
        if path is not None and not path.exists():
            raise InputError(f"{option} {path}: no such file or folder")
    protected = [_root(folder)] + ([_root(reference)] if reference is not None else [])
    if action is None and (to is not None or journal is not None):
        raise InputError(
            f"{'--to' if to is not None else '--journal'} goes with --action {'|'.join(ACTIONS)}"
        )
    if action is not None:
        check_action(action, to)
        if to is not None and to.exists() and not to.is_dir():
            raise InputError(f"--to {to}: is a file; give a folder")
        for what, path in (("--to", to), ("--journal", journal)):
            for root in protected:
                if path is not None and is_inside(path, root):
                    raise InputError(
                        f"{what} {path}: lies inside {root}, a searched folder; choose a place outside it"
                    )
        if journal is None:
            journal = _default_journal((to or Path.cwd()).absolute())
            if any(is_inside(journal, root) for root in protected):
                raise InputError(
                    f"the journal would lie inside {protected[0]}, a searched folder: give --journal FILE outside it"
                )
        if journal.exists():
            raise InputError(
                f"--journal {journal}: exists; a journal is never overwritten, choose a new name"
            )
    check_outputs(
        {"-o": output, "--csv": csv_path, "--report": report, "--journal": journal},
        [folder, reference, threshold_file, not_duplicates],
    )
    result = find_duplicates(
        folder,
        reference,
        config=config,
        threshold=threshold,
        threshold_file=threshold_file,
        k=k,
        verify=verify,
        min_inliers=min_inliers,
        keep=keep,
        not_duplicates=not_duplicates,
        backend=backend,
    )
    for item in result.skipped:
        err.print(f"skipped {item['set']}: {shown(item['path'])}: {shown(item['reason'])}")
    cut = result.threshold
    if not quiet:
        images = sum(it.set == "collection" for it in result.items)
        err.print(
            f"{len(result.groups)} group(s), {len(result.duplicates())} duplicate(s) among {images} image(s); "
            f"{cut.score} threshold {cut.value:g} ({shown(cut.source)})"
        )
    if output is not None:
        result.write_json(output)
    if csv_path is not None:
        result.write_csv(csv_path)
    if report is not None:
        from ..dedup.report import write_dedup_report

        write_dedup_report(result, report, progress=not quiet)
    for path, what in ((output, "results"), (csv_path, "CSV"), (report, "report")):
        if path is not None and not quiet:
            err.print(f"{what}: {shown(path)}")
    if action is None:
        if output is None or not quiet:
            for g in result.groups:
                kept = result.items[g.kept]
                print(f"group {g.id}: keep {printable(kept.name)}")
                for m in g.members:
                    if m != g.kept:
                        item = result.items[m]
                        tag = " (library)" if item.set == "reference" else ""
                        print(f"  duplicate {printable(item.name)}{tag}")
        if not quiet:
            err.print(
                "dry run: nothing changed (--action move|copy|symlink|hardlink|delete acts on the duplicates)"
            )
        return
    plan = plan_actions(result, action, to)
    if dry_run:
        for line in plan.describe(journal):
            print(line)
        err.print(f"dry run: {len(plan.operations)} operation(s) planned, nothing changed")
        return
    done = apply(plan, journal, progress=not quiet)
    for planned, target in done.renamed:
        err.print(f"name taken: {shown(planned)}; used {shown(target)}")
    err.print(
        f"{action}: {done.done} file(s); journal {shown(journal)}; undo: lookalike dedup --undo {shown(journal)}"
    )
