"""A check shared by the tests of search-time steps: with the gallery's whitening fitted at search
time on a folder, or stored in a saved index, and through the server's /search, a step gives the
same rankings and scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import lookalike
from lookalike import ExtractOptions, ImageSet
from lookalike.config import SearchConfig
from lookalike.pipeline import Refinement, SearchRun

WHITEN_DIM = 8


def folder_index_and_server_agree(
    query: Path, gallery: Path, model: str, model_options: dict[str, Any], opts: ExtractOptions,
    index: Path, step: dict[str, Any],
) -> SearchRun:
    """Search ``query`` against the folder (whitening fitted then) and against a saved index of it
    at ``index`` (whitening stored), and send the first query to a server of that index, each with
    the refinement fields ``step`` on top; assert that all three agree and return the folder's run."""
    from fastapi.testclient import TestClient

    from lookalike.index import build_index
    from lookalike.index.stored_steps import IndexPostprocess
    from lookalike.server import create_app

    refine = Refinement(whiten=True, whiten_dim=WHITEN_DIM, **step)
    folder = lookalike.search(query, gallery, model=model, model_options=model_options, k=5,
                              options=opts, refinement=refine)
    build_index(gallery, index, model=model, model_options=model_options,
                postprocess=IndexPostprocess(whiten=True, whiten_dim=WHITEN_DIM), options=opts)
    saved = lookalike.search(query, index, k=5, options=opts, refinement=refine)
    assert saved.indices.tolist() == folder.indices.tolist()
    np.testing.assert_allclose(saved.scores, folder.scores, atol=1e-4)
    config = SearchConfig.from_preset(refinement=step, extract=opts)
    first = sorted(ImageSet.from_path(query).paths)[0]
    with TestClient(create_app(index, k=5, config=config)) as client:
        answer = client.post("/search", files={"file": ("q.jpg", first.read_bytes(), "image/jpeg")}).json()
    row = [p.name for p in ImageSet.from_path(query).paths].index(first.name)
    assert [r["path"] for r in answer["results"]] == folder.ranking()[folder.query_names[row]]
    np.testing.assert_allclose([r["score"] for r in answer["results"]], folder.scores[row], atol=1e-4)
    return folder
