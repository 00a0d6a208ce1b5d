"""Metric values on small rankings computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.metrics import average_precision, evaluate_rankings


def test_average_precision_by_hand() -> None:
    # relevant at ranks 1, 3 and 6: (1/1 + 2/3 + 3/6) / 3
    assert average_precision(np.array([1, 0, 1, 0, 0, 1], bool)) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    assert average_precision(np.array([0, 0, 1], bool)) == pytest.approx(1 / 3)
    assert average_precision(np.array([1, 1, 0], bool)) == 1.0
    assert average_precision(np.zeros(4, bool)) == 0.0


def test_evaluate_rankings_top_k_map_and_excluded() -> None:
    gallery = ["a", "b", "a", "c", "b", "d", "e", "f", "g", "h", "i", "b"]
    orders = np.array(
        [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # query a: hits at ranks 1 and 3
            [3, 0, 2, 5, 6, 7, 8, 9, 10, 1, 4, 11],  # query b: first hit at rank 10
            [1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # query z: no gallery image -> excluded
            [5, 6, 3, 0, 1, 2, 4, 7, 8, 9, 10, 11],  # query c: hit at rank 3
        ]
    )
    metrics = evaluate_rankings(
        [(0, orders[:2]), (2, orders[2:])], ["a", "b", "z", "c"], gallery, ["qa", "qb", "qz", "qc"]
    )
    assert metrics.excluded == ["qz"]
    assert metrics.n_queries == 3
    assert metrics.first_correct_rank == {"qa": 1, "qb": 10, "qc": 3}
    assert metrics.top_k == {1: pytest.approx(1 / 3), 3: pytest.approx(2 / 3), 10: 1.0}
    ap_a = (1 + 2 / 3) / 2
    ap_b = (1 / 10 + 2 / 11 + 3 / 12) / 3
    ap_c = 1 / 3
    assert metrics.mean_ap == pytest.approx((ap_a + ap_b + ap_c) / 3)
    per_query = metrics.as_dict(per_query=True)["per_query"]
    assert per_query["qb"]["first_correct_rank"] == 10
