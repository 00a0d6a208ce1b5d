"""`index build --ray ... --backend milvus` streams the vectors from the Ray workers into Milvus in
batches (Ray local mode, Milvus Lite): never through the collecting path, the same results as a
build without Ray, and an interrupted stream leaves the previous index in force and resumes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="streaming builds run on Ray (the ray extra)")
pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus + milvus-lite (the milvus extra)")
pytest.importorskip("milvus_lite", reason="the milvus backend's tests run on Milvus Lite (the milvus extra)")

from typer.testing import CliRunner  # noqa: E402

import lookalike.distributed as distributed  # noqa: E402
import lookalike.index.milvus as milvus_module  # noqa: E402
from lookalike.cli import app  # noqa: E402
from lookalike.extract import ExtractOptions  # noqa: E402
from lookalike.features import create_extractor  # noqa: E402
from lookalike.index import GalleryIndex, MilvusIndex, build_index  # noqa: E402

OPTS = ExtractOptions(progress=False, device="cpu", batch_size=4, num_workers=0)


@pytest.fixture()
def streaming(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Record the rows of every backend add and of every Milvus upsert (and which came before the
    save); write through every 4 rows; make the collecting Ray path fail if anything takes it."""
    seen: dict[str, list[int]] = {"adds": [], "upserts": [], "upserts_before_save": []}
    add, upsert, save = MilvusIndex.add, MilvusIndex._upsert_rows, MilvusIndex.save

    def spy_add(self: MilvusIndex, vectors: np.ndarray, ids: np.ndarray) -> None:
        seen["adds"].append(len(ids))
        add(self, vectors, ids)

    def spy_upsert(
        self: MilvusIndex, client: object, name: str, ids: np.ndarray, vectors: np.ndarray
    ) -> None:
        seen["upserts"].append(len(ids))
        upsert(self, client, name, ids, vectors)

    def spy_save(self: MilvusIndex, folder: Path, generation: int) -> list[Path]:
        seen["upserts_before_save"].append(sum(seen["upserts"]))
        return save(self, folder, generation)

    def collecting(*args: object, **kwargs: object) -> None:
        raise AssertionError("a streaming build gathered every vector in the driver (ray_embed)")

    monkeypatch.setattr(MilvusIndex, "add", spy_add)
    monkeypatch.setattr(MilvusIndex, "_upsert_rows", spy_upsert)
    monkeypatch.setattr(MilvusIndex, "save", spy_save)
    monkeypatch.setattr(milvus_module, "STREAM_ROWS", 4)
    monkeypatch.setattr(distributed, "ray_embed", collecting)
    return seen


def names_and_scores(index: GalleryIndex, queries: np.ndarray, k: int = 5) -> tuple[list, np.ndarray]:
    rows, scores = index.search(queries, k)
    return [[index.names[r] for r in row if r >= 0] for row in rows], scores


def test_ray_build_streams_batches_into_milvus_and_finds_what_a_plain_build_finds(
    gallery: Path, tmp_path: Path, streaming: dict[str, list[int]]
) -> None:
    plain, _ = build_index(
        gallery, tmp_path / "plain.index", model="pixels", backend="milvus:FLAT", options=OPTS
    )
    streaming["adds"].clear(), streaming["upserts"].clear(), streaming["upserts_before_save"].clear()
    index, emb = build_index(
        gallery,
        tmp_path / "ray.index",
        model="pixels",
        backend="milvus:FLAT",
        options=OPTS,
        ray_address="local",
    )
    n = len(plain)
    assert n == 15 and len(index) == n and emb.n_extracted == n
    # the vectors reached the backend as the workers sent them: several adds, none of the whole
    # gallery, and most rows were in Milvus before the save (the driver held at most a few batches)
    assert len(streaming["adds"]) >= 4 and max(streaming["adds"]) <= OPTS.batch_size
    assert sum(streaming["adds"]) == n and streaming["upserts_before_save"][0] >= n - 4
    assert isinstance(index.vectors, np.memmap)  # the vectors on the driver: on disk, not in memory
    reopened = GalleryIndex.open(tmp_path / "ray.index")
    assert len(reopened.backend._stored_ids()) == n
    queries = np.asarray(plain.vectors)
    got, got_scores = names_and_scores(reopened, queries)
    want, want_scores = names_and_scores(plain, queries)
    assert got == want and got_scores == pytest.approx(want_scores, abs=1e-4)
    assert not (tmp_path / "ray.index" / "partial").exists()


def test_an_interrupted_stream_keeps_the_old_index_and_resumes(
    gallery: Path, tmp_path: Path, streaming: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "r.index"
    build_index(gallery / "astronaut", out, model="pixels", backend="milvus:FLAT", options=OPTS)
    old_names = sorted(GalleryIndex.open(out).names)
    spied = MilvusIndex.add

    def interrupted(self: MilvusIndex, vectors: np.ndarray, ids: np.ndarray) -> None:
        spied(self, vectors, ids)
        if len(streaming["adds"]) == 3:  # Ctrl-C after two write-throughs into the new collection
            raise KeyboardInterrupt

    monkeypatch.setattr(MilvusIndex, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(
            gallery, out, model="pixels", backend="milvus:FLAT", options=OPTS, ray_address="local", force=True
        )
    assert sum(streaming["upserts"]) >= 8  # the new generation's collection was half written
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the generation in force opens as it was: no repair
        old = GalleryIndex.open(out)
    assert sorted(old.names) == old_names and len(old.backend._stored_ids()) == len(old_names)
    rows, scores = old.search(np.asarray(old.vectors), 1)
    assert (rows[:, 0] == np.arange(len(old))).all() and scores[:, 0] == pytest.approx(1.0, abs=1e-5)
    del old
    monkeypatch.setattr(MilvusIndex, "add", spied)
    index, emb = build_index(
        gallery,
        out,
        model="pixels",
        backend="milvus:FLAT",
        options=OPTS,
        ray_address="local",
        force=True,
        resume=True,
    )
    assert len(index) == 15 and emb.n_cached >= 8 and emb.n_cached + emb.n_extracted == 15
    reopened = GalleryIndex.open(out)
    assert len(reopened.backend._stored_ids()) == 15
    collections = reopened.backend._client.list_collections()
    # the interrupted stream's collection was written again by the resumed one; the replaced
    # generation's is dropped by the next save (at most two exist)
    assert reopened.backend.collection in collections and len(collections) <= 2
    rows, scores = reopened.search(np.asarray(reopened.vectors), 1)
    assert (rows[:, 0] == np.arange(15)).all() and scores[:, 0] == pytest.approx(1.0, abs=1e-5)


def test_the_cli_streams_from_ray_into_a_milvus_server(
    gallery: Path, tmp_path: Path, streaming: dict[str, list[int]], milvus_server: str
) -> None:
    """`index build --ray local --backend milvus --milvus-uri ...`: batches go to the server as they
    come, and the index answers as an exact one."""
    out = tmp_path / "srv.index"
    result = CliRunner().invoke(
        app,
        [
            "index",
            "build",
            str(gallery),
            "-o",
            str(out),
            "-m",
            "pixels",
            "--batch-size",
            "4",
            "--workers",
            "0",
        ]
        + ["-q", "--ray", "local", "--backend", "milvus:FLAT", "--milvus-uri", milvus_server],
    )
    assert result.exit_code == 0, result.output
    assert len(streaming["adds"]) >= 4 and streaming["upserts_before_save"][-1] >= 11
    exact, _ = build_index(gallery, tmp_path / "e.index", model="pixels", options=OPTS)
    index = GalleryIndex.open(out)
    assert index.backend.uri == milvus_server and not (out / "milvus.db").exists()
    queries = np.asarray(exact.vectors)
    got, got_scores = names_and_scores(index, queries)
    want, want_scores = names_and_scores(exact, queries)
    assert got == want and got_scores == pytest.approx(want_scores, abs=1e-4)


def test_a_region_build_on_ray_gives_the_region_vectors_of_one_without(gallery: Path, tmp_path: Path) -> None:
    """`index build --regions 2 --ray local`: the Ray workers rebuild the region extractor (the
    region options are not the model's own) and give the same 5-region vectors as a local build."""
    plain, _ = build_index(gallery, tmp_path / "plain.index", model="pixels", regions=2, options=OPTS)
    on_ray, emb = build_index(
        gallery, tmp_path / "ray.index", model="pixels", regions=2, options=OPTS, ray_address="local"
    )
    base = create_extractor("pixels").dim
    assert emb.n_extracted == len(plain) == 15 and on_ray.vectors.shape == (15, 5 * base)
    assert on_ray.names == plain.names and on_ray.model["options"]["regions"] == 2
    np.testing.assert_allclose(np.asarray(on_ray.vectors), np.asarray(plain.vectors), atol=1e-5)


def test_compacting_the_streamed_rows_in_place_keeps_the_kept_rows_in_order(tmp_path: Path) -> None:
    """A streaming build that skipped images moves the kept rows to the front of its one memory map
    (no second file), in blocks that never overwrite a row a later block still has to read."""
    from lookalike.index.store import _compact_rows

    rows = np.lib.format.open_memmap(tmp_path / "r.npy", mode="w+", dtype=np.float32, shape=(50, 3))
    rows[:] = np.arange(150, dtype=np.float32).reshape(50, 3)
    want = np.asarray(rows).copy()
    indices = np.array([1, 2, 3, 7, 8, 20, 21, 22, 23, 40, 49])
    kept = _compact_rows(rows, indices, block=3)
    np.testing.assert_array_equal(kept, want[indices])
    assert isinstance(kept, np.memmap) and sorted(p.name for p in tmp_path.iterdir()) == ["r.npy"]
