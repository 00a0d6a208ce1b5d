"""Score normalisation (SSCD): similarities minus the k-th background similarity, one threshold for all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lookalike
from lookalike import ExtractOptions, InputError
from lookalike.pipeline import Refinement
from lookalike.samples import make_copy_detection_set
from lookalike.steps import ScoreNormalisation, l2_normalise

OPTS = ExtractOptions(progress=False, num_workers=0)


def test_bias_is_the_kth_background_similarity() -> None:
    rng = np.random.default_rng(0)
    queries, background = l2_normalise(rng.normal(size=(4, 8))), l2_normalise(rng.normal(size=(30, 8)))
    sims = np.sort(queries @ background.T, axis=1)[:, ::-1]
    norm = ScoreNormalisation(3, beta=0.5, background=background)
    assert norm.bias(queries, np.zeros((4, 0))) == pytest.approx(0.5 * sims[:, 2], abs=1e-6)
    head = np.sort(rng.random((4, 5)), axis=1)[:, ::-1]
    assert ScoreNormalisation(2).bias(queries, head) == pytest.approx(head[:, 1])
    with pytest.raises(InputError, match="only 30 readable"):
        ScoreNormalisation(31, background=background)
    with pytest.raises(InputError, match="at least 1"):
        ScoreNormalisation(0)


def test_search_with_score_norm(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    """Rankings stay, scores shift per query by its k-th gallery (or background) similarity."""
    plain = lookalike.search(*photo_set, k=6, options=OPTS)
    normed = lookalike.search(*photo_set, k=6, options=OPTS, refinement=Refinement(score_norm=4))
    assert normed.indices.tolist() == plain.indices.tolist() and normed.metric == "normalised cosine"
    assert normed.scores == pytest.approx(plain.scores - plain.scores[:, 3:4], abs=1e-6)
    _, background = make_copy_detection_set(tmp_path / "bg", photos=("coins", "moon"), gallery_copies=4, seed=5)
    with_bg = lookalike.search(
        *photo_set, k=6, options=OPTS, refinement=Refinement(score_norm=2, background=background)
    )
    extractor = lookalike.create_extractor("efficientnet-lite0")
    q = lookalike.embed(extractor, lookalike.ImageSet.from_path(photo_set[0]), OPTS).features
    bg = lookalike.embed(extractor, lookalike.ImageSet.from_path(background), OPTS).features
    kth = np.sort(q @ bg.T, axis=1)[:, -2]
    assert with_bg.scores == pytest.approx(plain.scores - kth[:, None], abs=1e-5)
    assert with_bg.refinement["score_norm"] == {"k": 2, "background": str(background)}


def test_score_norm_refusals(photo_set: tuple[Path, Path]) -> None:
    with pytest.raises(InputError, match="use one or the other"):
        Refinement(score_norm=3, rerank="sift")
    with pytest.raises(InputError, match="give --score-norm too"):
        Refinement(background="somewhere")
    with pytest.raises(InputError, match="not euclidean"):
        lookalike.search(*photo_set, metric="euclidean", options=OPTS, refinement=Refinement(score_norm=2))
    with pytest.raises(InputError, match="only 15 images"):
        lookalike.search(*photo_set, options=OPTS, refinement=Refinement(score_norm=16))
