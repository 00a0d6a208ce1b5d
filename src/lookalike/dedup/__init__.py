"""Near-duplicate detection with safe file actions: candidate pairs, groups, keep rules, a plan,
a journal, the change, and its undo.

``find_duplicates(folder)`` (or ``find_duplicates(new, reference=library)``) returns a
:class:`DedupResult` (``groups``, ``pairs``, ``to_json()``); ``plan_actions(result, "move",
to=...)`` lists what would be done; ``apply(plan, journal)`` does it, journaled;
``undo(journal)`` puts everything back; ``empty_trash(journal)`` ends a ``delete`` for good.
"""

from .actions import (
    ACTIONS,
    ApplyReport,
    Operation,
    Plan,
    TrashReport,
    UndoReport,
    apply,
    empty_trash,
    plan_actions,
    undo,
)
from .decisions import mark_different, read_not_duplicates, write_not_duplicates
from .groups import Grouping, complete_linkage, group_pairs
from .journal import read_journal, trash_folder
from .keep import KEEP_RULES, choose_kept, file_sha256
from .pairs import (
    DEDUP_MODEL,
    DEFAULT_K,
    DEFAULT_THRESHOLDS,
    Pairs,
    Threshold,
    default_backend,
    default_threshold,
    knn_pairs,
    pairs_among,
    resolve_threshold,
    search_pairs,
)
from .result import DedupResult, Group, Item, find_duplicates, in_memory_index

__all__ = [
    "DEDUP_MODEL",
    "ACTIONS",
    "DEFAULT_K",
    "DEFAULT_THRESHOLDS",
    "KEEP_RULES",
    "ApplyReport",
    "DedupResult",
    "Group",
    "Grouping",
    "Item",
    "Operation",
    "Pairs",
    "Plan",
    "Threshold",
    "TrashReport",
    "UndoReport",
    "apply",
    "choose_kept",
    "default_backend",
    "default_threshold",
    "complete_linkage",
    "empty_trash",
    "file_sha256",
    "find_duplicates",
    "group_pairs",
    "in_memory_index",
    "knn_pairs",
    "mark_different",
    "pairs_among",
    "plan_actions",
    "read_journal",
    "read_not_duplicates",
    "resolve_threshold",
    "search_pairs",
    "trash_folder",
    "undo",
    "write_not_duplicates",
]
