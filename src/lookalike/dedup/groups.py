"""Groups of duplicates from pairs: complete linkage inside connected components.

Connected components alone chain: A~B and B~C would put A and C in one group even when A and C
are unrelated. So a group here is a set of images in which *every* two are a duplicate pair
(complete linkage cut at the threshold). How, in linear time for the usual case:

1. connected components of the pair graph (scipy, O(n + pairs));
2. a component whose pairs already join every two members (a clique: s(s-1)/2 pairs) is a group
   as it is: found for all components at once with two bincounts, no Python loop;
3. any other component is first completed with the exact scores of all its member pairs when it
   is small enough (``complete``: the kNN lists may miss pairs that are duplicates), then split by
   complete-linkage agglomeration over its pairs, best first: two groups merge only when every
   image of one is a duplicate of every image of the other. A missing pair counts as "not a
   duplicate", so a chain A~B~C gives {A, B} and C alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .pairs import Pairs, unique_pairs

DENSE_LIMIT = 2_000  # components up to this size are completed with all their member pairs


@dataclass
class Grouping:
    """``groups[g]``: sorted item ids of group g (each with two or more); ``pairs`` every duplicate
    pair found; ``pair_group[i]``: the group pair i lies inside, or -1 when linkage split it."""

    groups: list[np.ndarray]
    pairs: Pairs
    pair_group: np.ndarray

    def group_of(self, n_items: int) -> np.ndarray:
        """(n_items,) the group of each item, -1 for items in no group."""
        out = np.full(n_items, -1, dtype=np.int64)
        for g, members in enumerate(self.groups):
            out[members] = g
        return out


def group_pairs(
    n_items: int,
    pairs: Pairs,
    higher_is_better: bool = True,
    *,
    complete: Callable[[np.ndarray], Pairs] | None = None,
    dense_limit: int = DENSE_LIMIT,
) -> Grouping:
    """Groups of ``n_items`` items from duplicate ``pairs`` (``a < b``), as the module explains;
    ``complete(members)`` returns every duplicate pair among ``members`` (exact scores)."""
    if len(pairs) == 0:
        return Grouping([], pairs, np.zeros(0, np.int64))
    labels = _components(n_items, pairs)
    sizes = np.bincount(labels, minlength=labels.max() + 1)
    edges = np.bincount(labels[pairs.a], minlength=len(sizes))
    multi = sizes >= 2
    clique = multi & (edges == sizes * (sizes - 1) // 2)
    groups = _members_by_label(labels, clique)
    extra: list[Pairs] = []
    rest = np.flatnonzero(multi & ~clique)
    if len(rest):
        by_comp = np.argsort(labels[pairs.a], kind="stable")
        bounds = np.searchsorted(labels[pairs.a][by_comp], rest)
        ends = np.searchsorted(labels[pairs.a][by_comp], rest, side="right")
        members_of = dict(
            zip(rest.tolist(), _members_by_label(labels, np.isin(np.arange(len(sizes)), rest)), strict=True)
        )
        for comp, lo, hi in zip(rest.tolist(), bounds.tolist(), ends.tolist(), strict=True):
            members = members_of[comp]
            comp_pairs = pairs.take(by_comp[lo:hi])
            if complete is not None and len(members) <= dense_limit:
                comp_pairs = complete(members)
                extra.append(comp_pairs)
            groups.extend(complete_linkage(comp_pairs, higher_is_better))
    if extra:
        merged = Pairs(
            np.concatenate([pairs.a, *(p.a for p in extra)]),
            np.concatenate([pairs.b, *(p.b for p in extra)]),
            np.concatenate([pairs.score, *(p.score for p in extra)]),
            None
            if pairs.inliers is None
            else np.concatenate([pairs.inliers, *(np.full(len(p), -1, np.int32) for p in extra)]),
        )
        pairs = unique_pairs(merged, higher_is_better)
    groups.sort(key=lambda m: int(m[0]))
    group_of = np.full(n_items, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        group_of[members] = g
    ga, gb = group_of[pairs.a], group_of[pairs.b]
    return Grouping(groups, pairs, np.where((ga == gb) & (ga >= 0), ga, -1))


def _components(n_items: int, pairs: Pairs) -> np.ndarray:
    graph = sparse.coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs.a, pairs.b)), shape=(n_items, n_items)
    ).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def _members_by_label(labels: np.ndarray, wanted: np.ndarray) -> list[np.ndarray]:
    """Sorted item ids of each component marked in ``wanted`` (by component number), vectorised."""
    items = np.flatnonzero(wanted[labels])
    if len(items) == 0:
        return []
    order = np.argsort(labels[items], kind="stable")  # stable: ids stay sorted inside a component
    items = items[order]
    cuts = np.flatnonzero(np.diff(labels[items])) + 1
    return np.split(items, cuts)


def complete_linkage(pairs: Pairs, higher_is_better: bool = True) -> list[np.ndarray]:
    """Complete-linkage groups (two or more members) over sparse duplicate pairs: pairs are taken
    best first and two groups merge when every cross pair is a duplicate. Time O(pairs log pairs)."""
    order = np.argsort(-pairs.score if higher_is_better else pairs.score, kind="stable")
    group: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    links: dict[tuple[int, int], int] = {}  # duplicate pairs between two current groups
    adjacent: dict[int, set[int]] = {}
    for a, b in zip(pairs.a.tolist(), pairs.b.tolist(), strict=True):
        for v in (a, b):
            if v not in group:
                group[v], members[v], adjacent[v] = v, [v], set()
        links[_key(a, b)] = links.get(_key(a, b), 0) + 1
        adjacent[a].add(b)
        adjacent[b].add(a)
    for i in order.tolist():
        ga, gb = group[int(pairs.a[i])], group[int(pairs.b[i])]
        if ga == gb or links.get(_key(ga, gb), 0) < len(members[ga]) * len(members[gb]):
            continue
        keep, gone = (ga, gb) if len(members[ga]) >= len(members[gb]) else (gb, ga)
        for v in members[gone]:
            group[v] = keep
        members[keep].extend(members.pop(gone))
        links.pop(_key(keep, gone), None)
        adjacent[keep].discard(gone)
        for t in adjacent.pop(gone):
            if t == keep:
                continue
            count = links.pop(_key(gone, t))
            links[_key(keep, t)] = links.get(_key(keep, t), 0) + count
            adjacent[t].discard(gone)
            adjacent[t].add(keep)
            adjacent[keep].add(t)
    return [np.array(sorted(m), dtype=np.int64) for m in members.values() if len(m) >= 2]


def _key(x: int, y: int) -> tuple[int, int]:
    return (x, y) if x < y else (y, x)
