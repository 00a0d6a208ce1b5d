"""µAP and precision/recall at a threshold on small cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import InputError
from lookalike.metrics import (
    average_precision,
    evaluate_rankings,
    is_higher_better,
    micro_average_precision,
    precision_recall_at,
    precision_recall_curve,
    threshold_for_precision,
)

# gallery ids 0..4; queries a and b have two same-label images each, query z none
GALLERY = ["a", "b", "a", "c", "b"]
QUERIES = ["a", "b", "z"]
NAMES = ["qa", "qb", "qz"]
HEAD = np.array([[0, 3], [3, 1], [0, -1]])  # z's list is padded: an approximate index found one
HEAD_SCORES = np.array([[0.9, 0.6], [0.8, 0.7], [0.95, 0.0]])


def _full_rankings() -> list[tuple[int, np.ndarray]]:
    """Full gallery orders that start with each query's short list."""
    rows = []
    for head in HEAD:
        first = [int(j) for j in head if j >= 0]
        rows.append(first + [j for j in range(len(GALLERY)) if j not in first])
    return [(0, np.array(rows))]


def test_micro_ap_by_hand_counts_unretrieved_positives_and_excluded_queries() -> None:
    metrics = evaluate_rankings(
        _full_rankings(), QUERIES, GALLERY, NAMES, head=HEAD, head_scores=HEAD_SCORES, higher_is_better=True
    )
    # pooled, best first: 0.95 (z, wrong), 0.9 (a, right), 0.8 (b, wrong), 0.7 (b, right), 0.6 (a, wrong);
    # 4 positive pairs exist (a: 0 and 2, b: 1 and 4), two never listed: (1/2 + 2/4) / 4
    assert metrics.micro_ap == pytest.approx(0.25)
    assert metrics.n_pairs == 5 and metrics.n_positives == 4
    assert metrics.excluded == ["qz"] and metrics.n_queries == 2  # left out of top-k and mAP only
    doc = metrics.as_dict()
    assert doc["uAP"] == pytest.approx(0.25) and doc["pairs"] == 5 and doc["positives"] == 4
    assert "threshold" not in doc
    # z's false match at 0.95 costs precision: without it, (1/1 + 2/3) / 4
    head = HEAD.copy()
    head[2] = -1
    no_z = evaluate_rankings(_full_rankings(), QUERIES, GALLERY, NAMES, head=head, head_scores=HEAD_SCORES)
    assert no_z.micro_ap == pytest.approx((1 + 2 / 3) / 4) and no_z.n_pairs == 4


def test_lower_is_better_scores_rank_the_same_pairs() -> None:
    distances = 1.0 - HEAD_SCORES
    metrics = evaluate_rankings(
        _full_rankings(), QUERIES, GALLERY, NAMES, head=HEAD, head_scores=distances, higher_is_better=False
    )
    assert metrics.micro_ap == pytest.approx(0.25)
    # the nearest pair is the right one; read as similarities, it would come last
    assert micro_average_precision([0.1, 0.2, 0.3], [1, 0, 0], 1, higher_is_better=False) == 1.0
    assert micro_average_precision([0.1, 0.2, 0.3], [1, 0, 0], 1, higher_is_better=True) == pytest.approx(
        1 / 3
    )
    assert is_higher_better("cosine") and is_higher_better("inliers")
    assert not is_higher_better("euclidean") and not is_higher_better("k-reciprocal distance")


def test_existing_calls_are_unchanged_and_threshold_adds_precision_recall() -> None:
    plain = evaluate_rankings(_full_rankings(), QUERIES, GALLERY, NAMES)
    assert plain.micro_ap is None and "uAP" not in plain.as_dict()
    at = evaluate_rankings(
        _full_rankings(), QUERIES, GALLERY, NAMES, head=HEAD, head_scores=HEAD_SCORES, threshold=0.7
    )
    # accepted: 0.95 (wrong), 0.9 (right), 0.8 (wrong), 0.7 (right): precision 2/4, recall 2/4
    assert (at.precision, at.recall) == (pytest.approx(0.5), pytest.approx(0.5))
    assert at.as_dict()["threshold"] == 0.7
    assert at.top_k == plain.top_k and at.mean_ap == plain.mean_ap


def test_ties_are_ranked_negatives_first() -> None:
    assert micro_average_precision([0.5, 0.5], [True, False], 1) == pytest.approx(0.5)
    assert micro_average_precision([0.5, 0.4], [True, False], 1) == 1.0
    assert micro_average_precision([0.3], [False], 0) == 0.0


def test_micro_ap_equals_ap_when_every_positive_is_listed() -> None:
    rng = np.random.default_rng(3)
    scores = rng.permutation(200) / 200.0  # distinct scores: no ties
    hits = rng.random(200) < 0.3
    order = np.argsort(-scores)
    assert micro_average_precision(scores, hits, int(hits.sum())) == pytest.approx(
        average_precision(hits[order])
    )
    # with twice the positives, half of them never listed, µAP halves
    assert micro_average_precision(scores, hits, 2 * int(hits.sum())) == pytest.approx(
        average_precision(hits[order]) / 2
    )


SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
HITS = [True, True, False, True, False]


def test_threshold_for_precision_and_precision_recall_at() -> None:
    # thresholds 0.9, 0.8, 0.7, 0.6, 0.5 give precision 1, 1, 2/3, 3/4, 3/5 and recall 1/4, 2/4, 2/4, 3/4, 3/4
    curve = precision_recall_curve(SCORES, HITS, 4)
    assert curve.precision.tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5])
    assert curve.recall.tolist() == pytest.approx([0.25, 0.5, 0.5, 0.75, 0.75])
    assert threshold_for_precision(SCORES, HITS, 4, 0.99) == 0.8
    assert threshold_for_precision(SCORES, HITS, 4, 0.75) == 0.6
    assert threshold_for_precision(SCORES, HITS, 4, 0.6) == 0.6  # same recall at 0.5: the stricter one
    assert threshold_for_precision([0.9, 0.8], [False, True], 1, 0.99) is None
    assert precision_recall_at(SCORES, HITS, 4, 0.7) == (pytest.approx(2 / 3), pytest.approx(0.5))
    assert precision_recall_at(SCORES, HITS, 4, 0.95) == (1.0, 0.0)  # nothing accepted
    distances = [1 - s for s in SCORES]
    assert threshold_for_precision(distances, HITS, 4, 0.75, higher_is_better=False) == pytest.approx(0.4)
    assert precision_recall_at(distances, HITS, 4, 0.3, higher_is_better=False) == (1.0, pytest.approx(0.5))


def test_curve_thinning_keeps_ends_and_the_chosen_point() -> None:
    rng = np.random.default_rng(0)
    curve = precision_recall_curve(rng.random(1000), rng.random(1000) < 0.5, 600)
    kept = curve.thinned(200, keep=[517])
    assert len(kept) <= 200 and kept[0] == 0 and kept[-1] == len(curve) - 1 and 517 in kept
    assert curve.thinned(2000) == list(range(len(curve)))


@pytest.mark.parametrize(
    "call",
    [
        lambda: micro_average_precision([0.1, 0.2], [True], 1),
        lambda: micro_average_precision([float("nan")], [True], 1),
        lambda: micro_average_precision([0.1, 0.2], [True, True], 1),
        lambda: threshold_for_precision(SCORES, HITS, 4, 0.0),
        lambda: threshold_for_precision(SCORES, HITS, 4, 1.5),
        lambda: evaluate_rankings(_full_rankings(), QUERIES, GALLERY, NAMES, head=HEAD),
        lambda: evaluate_rankings(_full_rankings(), QUERIES, GALLERY, NAMES, threshold=0.5),
    ],
)
def test_bad_input_is_an_input_error(call) -> None:  # noqa: ANN001
    with pytest.raises(InputError):
        call()


def test_compare_and_report_show_micro_ap_and_threshold_figures(photo_set, tmp_path) -> None:  # noqa: ANN001
    import csv
    import json
    import re
    from dataclasses import replace

    import lookalike
    from lookalike.compare import Comparison, MethodResult, write_comparison
    from lookalike.metrics import scored_pairs
    from lookalike.report import write_report

    query, gallery = photo_set
    run = lookalike.evaluate(
        query, gallery, model="pixels", k=5, options=lookalike.ExtractOptions(use_cache=False)
    )
    labels = [n.split("/")[0] for n in run.query_names], [n.split("/")[0] for n in run.gallery_names]
    scores, hits, n_pos = scored_pairs(run.indices, run.scores, *labels)
    assert n_pos == 15 and len(scores) == 25
    threshold = float(np.median(scores))
    p, r = precision_recall_at(scores, hits, n_pos, threshold)
    metrics = replace(
        run.metrics,
        micro_ap=micro_average_precision(scores, hits, n_pos),
        n_pairs=25,
        n_positives=15,
        threshold=threshold,
        precision=p,
        recall=r,
    )
    page = write_report(run, query, gallery, tmp_path / "r.html", metrics=metrics, progress=False)
    block = re.search(r'id="report-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S)
    figures = dict(json.loads(block.group(1))["metrics"]["figures"])
    assert figures["µAP"] == pytest.approx(metrics.micro_ap) and figures["mAP"] == metrics.mean_ap
    assert (
        figures[f"precision @ {threshold:g}"] == pytest.approx(p) and figures[f"recall @ {threshold:g}"] == r
    )

    base = dict(model={"name": "pixels"}, top_k=dict(run.metrics.top_k), n_queries=5, excluded=0, seconds=1.0)
    rows = [
        MethodResult("with", mean_ap=run.metrics.mean_ap, micro_ap=metrics.micro_ap, **base),
        MethodResult("without", mean_ap=0.5, **base),
    ]
    table = Comparison(str(query), str(gallery), "cosine", rows)
    assert table.figure_names() == ["top-1", "top-3", "top-10", "mAP", "µAP"]
    write_comparison(table, tmp_path / "cmp")
    with (tmp_path / "cmp" / "comparison.csv").open(newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert float(written[0]["uAP"]) == metrics.micro_ap and written[1]["uAP"] == ""
    md = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    assert "| µAP |" in md and f"{metrics.micro_ap:.4f} |" in md and "DISC21" in md
    # a comparison without µAP keeps its old columns
    assert Comparison("q", "g", "cosine", rows[1:]).figure_names() == ["top-1", "top-3", "top-10", "mAP"]
