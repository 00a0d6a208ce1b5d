"""A new extractor, index backend, re-ranker and training method is one file plus one registration:
toys of each, registered from outside the package, used through the API, the CLI, compare, index
build and the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lookalike import pipeline
from lookalike.cli import app
from lookalike.extract import ExtractOptions
from lookalike.pipeline import Refinement

PLUGIN = '''
"""A plug-in of toys: an extractor, an index backend, a re-ranker and a training method."""
import numpy as np
import torch
from torch import nn

from lookalike.features import register
from lookalike.features.base import Extractor, FeatureNet, Preprocess
from lookalike.index.backends import VectorIndex, backend_file, register_backend
from lookalike.rerank import RERANKERS
from lookalike.training.methods import MethodSpec, register_method
from lookalike.training.models import TrainableModel


class Grid(nn.Module):
    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


@register("toy-grid", "mean colour of a 4x4 grid (a toy plug-in)")
def toy_grid(size: int = 32) -> Extractor:
    pre = Preprocess((int(size), int(size)))
    return Extractor("toy-grid", FeatureNet(Grid(), pre).eval(), pre, 48, {"size": int(size)}, exportable=False)


class ToyBrute(VectorIndex):
    """Brute force in numpy, saved as an .npz of its own."""

    shares_vectors = False

    def __init__(self, spec, dim, metric):
        self.spec, self.dim, self.metric = spec, dim, metric
        self.vectors, self.ids = np.zeros((0, dim), np.float32), np.zeros(0, np.int64)

    @classmethod
    def create(cls, spec, dim, metric, n_vectors, device="cpu"):
        return cls(spec, dim, metric)

    @classmethod
    def load(cls, spec, folder, generation, dim, metric, vectors, ids, device="cpu"):
        out = cls(spec, dim, metric)
        with np.load(backend_file(folder, generation, "npz")) as data:
            out.vectors, out.ids = data["vectors"], data["ids"]
        return out

    def save(self, folder, generation):
        path = backend_file(folder, generation, "npz")
        np.savez(path, vectors=self.vectors, ids=self.ids)
        return [path]

    def add(self, vectors, ids):
        self.vectors = np.vstack([self.vectors, np.asarray(vectors, np.float32)])
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])

    def remove(self, ids):
        keep = ~np.isin(self.ids, ids)
        self.vectors, self.ids = self.vectors[keep], self.ids[keep]

    def clear(self):
        self.vectors, self.ids = self.vectors[:0], self.ids[:0]

    def search(self, queries, k):
        k = min(k, len(self.ids))
        sims = np.asarray(queries, np.float32) @ self.vectors.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return self.ids[order], np.take_along_axis(sims, order, axis=1)

    def __len__(self):
        return len(self.ids)


register_backend("toy-brute", ToyBrute)


class Reverse:
    """Puts each short list in reverse order: easy to see that it ran."""

    score_name = "reversed rank"

    def rerank(self, query_rows, candidates):
        flipped = np.ascontiguousarray(candidates[:, ::-1])
        return flipped, np.tile(np.arange(flipped.shape[1], dtype=np.float32), (len(flipped), 1))


@RERANKERS.register("toy-reverse", description="reverses the short list (a toy plug-in)")
def toy_reverse(inputs):
    return Reverse()


class ToyNet(TrainableModel):
    def __init__(self, opts):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.target = torch.zeros(16)

    def loss(self, views, target):
        return ((self.body(views[0]) - 1.0) ** 2).mean()

    def features(self):
        return self.body


def build_toy(opts, n_classes, pretrained):
    return ToyNet(opts), Preprocess(opts["image_size"])


register_method(MethodSpec("toy-train", "a tiny regression net (a toy plug-in)", False, build_toy,
                           {"image_size": 16}, batch_size=8, epochs=1))
'''

NAMES = ("toy-grid", "toy-brute", "toy-reverse", "toy-train")
OPTS = ExtractOptions(progress=False, device="cpu", num_workers=0)


@pytest.fixture
def plugin(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The toy plug-in written outside the package and imported; unregistered afterwards."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "toyplugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    sys.modules.pop("toyplugin", None)
    importlib.import_module("toyplugin")
    yield folder
    from lookalike.features.registry import EXTRACTORS
    from lookalike.index.backends import BACKENDS
    from lookalike.rerank import RERANKERS
    from lookalike.training.methods import TRAINING_METHODS

    EXTRACTORS.unregister("toy-grid")
    RERANKERS.unregister("toy-reverse")
    TRAINING_METHODS.unregister("toy-train")
    BACKENDS.unregister("toy-brute")
    sys.modules.pop("toyplugin", None)


def _cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_toys_through_api_cli_compare_index_and_server(
    plugin: Path, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    # API: the toy extractor, then the toy re-ranker reverses its short lists
    plain = pipeline.search(query, gallery, model="toy-grid", k=5, options=OPTS)
    flipped = pipeline.search(
        query, gallery, model="toy-grid", k=5, options=OPTS, refinement=Refinement(rerank="toy-reverse", rerank_top=5)
    )
    assert plain.model["name"] == "toy-grid"
    assert flipped.indices.tolist() == plain.indices[:, ::-1].tolist()
    # CLI: the same names, and `lookalike models` lists the toy
    assert "toy-grid" in _cli("models")
    out = tmp_path / "r.json"
    _cli("search", query, gallery, "-m", "toy-grid", "-k", 5, "--rerank", "toy-reverse", "--rerank-top", 5, "-o", out, "-q")
    assert json.loads(out.read_text()) == flipped.ranking()
    # compare: the toy beside a built-in
    _cli("compare", query, gallery, "-m", "toy-grid", "-m", "pixels", "-o", tmp_path / "cmp", "-q", "--no-chart")
    assert "toy-grid" in (tmp_path / "cmp" / "comparison.md").read_text()
    # index build with the toy backend and the toy model, then search it and serve it
    index = tmp_path / "toy.index"
    _cli("index", "build", gallery, "-o", index, "-m", "toy-grid", "--backend", "toy-brute", "-q")
    assert json.loads((index / "lookalike-index.json").read_text())["backend"] == "toy-brute"
    out2 = tmp_path / "i.json"
    _cli("search", query, index, "-k", 5, "-o", out2, "-q")
    assert json.loads(out2.read_text()) == plain.ranking()
    from lookalike.server import create_app

    client = TestClient(create_app(index, device="cpu"))
    first_query = sorted(query.rglob("*.jpg"))[0]
    with first_query.open("rb") as handle:
        answer = client.post("/search?k=5", files={"file": ("q.jpg", handle, "image/jpeg")})
    assert answer.status_code == 200, answer.text
    name = first_query.relative_to(query).as_posix()
    assert [r["path"] for r in answer.json()["results"]] == plain.ranking()[name]
    # a training method: `lookalike train`, then its checkpoint is a model like any other
    run = tmp_path / "run"
    _cli("train", "toy-train", gallery, "-o", run, "--epochs", 1, "-q")
    _cli("search", query, gallery, "-m", run / "best.pt", "-o", tmp_path / "t.json", "-q")
    assert len(json.loads((tmp_path / "t.json").read_text())) == len(plain.query_names)


def test_plugins_named_in_the_environment_reach_the_command(
    plugin: Path, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    env = {**os.environ, "LOOKALIKE_PLUGINS": "toyplugin", "PYTHONPATH": str(plugin)}
    listing = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "models"], capture_output=True, text=True, env=env, timeout=300
    )
    assert listing.returncode == 0 and "toy-grid" in listing.stdout, listing.stderr
    ran = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "search", str(query), str(gallery), "-m", "toy-grid", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    assert len(json.loads(ran.stdout)) == 5 * 1  # one query per photo
    env["LOOKALIKE_PLUGINS"] = "no_such_plugin_module"
    broken = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "models"], capture_output=True, text=True, env=env, timeout=300
    )
    assert broken.returncode == 2 and "no_such_plugin_module" in broken.stderr and "Traceback" not in broken.stderr
