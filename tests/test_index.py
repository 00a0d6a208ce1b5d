"""Saved indexes: round trip, incremental updates, resumable builds, backends, bad folders, Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import lookalike.extract as extract_module
from lookalike import ExtractOptions, InputError, search
from lookalike.index import ExactIndex, FaissIndex, GalleryIndex, build_index, create_backend

OPTS = ExtractOptions(progress=False, use_cache=False, batch_size=4, num_workers=0)


def test_round_trip_and_search_equals_folder_search(
    photo_set: tuple[Path, Path], gallery: Path, tmp_path: Path
) -> None:
    index, _ = build_index(gallery, tmp_path / "g.index", model="pixels", options=OPTS)
    reopened = GalleryIndex.open(tmp_path / "g.index")
    assert len(reopened) == len(index) == 15 and reopened.labels is not None
    np.testing.assert_array_equal(np.asarray(reopened.vectors), index.vectors)
    from_index = search(photo_set[0], tmp_path / "g.index", k=5, evaluate=True, options=OPTS)
    from_folder = search(photo_set[0], gallery, model="pixels", k=5, evaluate=True, options=OPTS)
    assert from_index.to_json(scores=True) == from_folder.to_json(scores=True)
    assert from_index.metrics.mean_ap == pytest.approx(from_folder.metrics.mean_ap)
    with pytest.raises(InputError, match="built with model 'pixels'"):
        search(photo_set[0], tmp_path / "g.index", model="efficientnet-lite0", options=OPTS)


def test_add_remove_and_noop_readd(photo_set: tuple[Path, Path], gallery: Path, tmp_path: Path) -> None:
    target = tmp_path / "g.index"
    build_index(gallery, target, model="pixels", options=OPTS)
    index = GalleryIndex.open(target)
    generation = index.generation
    from lookalike import ImageSet

    again = index.add_images(ImageSet.from_path(gallery), OPTS)
    assert len(again.unchanged) == 15 and not again.added and index.generation == generation
    new = gallery / "coffee" / "extra.jpg"
    shutil.copy(photo_set[0] / "coffee" / "coffee_query0.jpg", new)
    report = index.add_images(ImageSet.from_path(new), OPTS)
    assert report.added == ["coffee/extra.jpg"] and len(index) == 16
    assert GalleryIndex.open(target).items[-1]["label"] == "coffee"
    shutil.copy(photo_set[0] / "astronaut" / "astronaut_query0.jpg", new)  # same path, new content
    assert index.add_images(ImageSet.from_path(new), OPTS).replaced == ["coffee/extra.jpg"]
    removed, unmatched = index.remove_paths(["coffee/extra.jpg", "nope.jpg", str(gallery / "chelsea")])
    assert "coffee/extra.jpg" in removed and len(removed) == 4 and unmatched == ["nope.jpg"]
    reopened = GalleryIndex.open(target)
    assert len(reopened) == 12 and not any(n.startswith("chelsea/") for n in reopened.names)
    assert sorted(p.name for p in target.iterdir() if p.name.startswith("vectors")) == [
        f"vectors-{reopened.generation}.npy"
    ]


def test_interrupted_build_resumes_to_the_same_index(
    gallery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _ = build_index(gallery, tmp_path / "ref.index", model="pixels", options=OPTS)
    real = extract_module.make_runner

    def failing(*args, **kwargs):
        run = real(*args, **kwargs)
        calls = {"n": 0}

        def wrapped(batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # as if Ctrl-C arrived during the third batch
            return run(batch)

        return wrapped

    monkeypatch.setattr(extract_module, "make_runner", failing)
    with pytest.raises(KeyboardInterrupt):
        build_index(gallery, tmp_path / "new.index", model="pixels", options=OPTS)
    monkeypatch.setattr(extract_module, "make_runner", real)
    with pytest.raises(InputError, match="--resume"):
        build_index(gallery, tmp_path / "new.index", model="pixels", options=OPTS)
    with pytest.raises(InputError, match="interrupted build"):
        GalleryIndex.open(tmp_path / "new.index")
    resumed, emb = build_index(gallery, tmp_path / "new.index", model="pixels", options=OPTS, resume=True)
    assert emb.n_cached == 8 and emb.n_extracted == 7  # two batches of 4 survived the interruption
    assert resumed.names == reference.names
    np.testing.assert_array_equal(resumed.vectors, reference.vectors)
    assert not (tmp_path / "new.index" / "partial").exists()


def test_foreign_and_corrupt_folders(gallery: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a lookalike index"):
        GalleryIndex.open(gallery)
    build_index(gallery, tmp_path / "g.index", model="pixels", options=OPTS)
    manifest = tmp_path / "g.index" / "lookalike-index.json"
    doc = json.loads(manifest.read_text())
    (tmp_path / "g.index" / f"vectors-{doc['generation']}.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged"):
        GalleryIndex.open(tmp_path / "g.index")
    manifest.write_text("{not json")
    with pytest.raises(InputError, match="unreadable index manifest"):
        GalleryIndex.open(tmp_path / "g.index")
    manifest.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a lookalike index manifest"):
        GalleryIndex.open(tmp_path / "g.index")
    with pytest.raises(InputError, match="is the gallery"):
        build_index(gallery, gallery, model="pixels", options=OPTS, force=True)
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    with pytest.raises(InputError, match="is not a lookalike index"):
        build_index(gallery, foreign, model="pixels", options=OPTS, force=True)
    assert (foreign / "chapter1.tex").read_text() == "precious"


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("spec", ["flat", "hnsw", "ivfpq"])
def test_faiss_backends_agree_with_exact(spec: str, tmp_path: Path) -> None:
    dim = 8 if spec == "ivfpq" else 32  # PQ trains one codebook per sub-vector, ~1.3 s each here: PQ8
    data = _clustered(3000, dim)
    ids = np.arange(100, 3100)
    exact = ExactIndex(dim)
    exact.add(data, ids)
    approx = create_backend(spec, dim, "cosine", len(data))
    assert isinstance(approx, FaissIndex)
    approx.add(data, ids)
    queries = data[:200]
    e_ids, e_scores = exact.search(queries, 10)
    a_ids, _ = approx.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(a_ids, e_ids, strict=True)])
    assert recall >= (0.999 if spec == "flat" else 0.8)
    assert approx.save(tmp_path, 7) == [tmp_path / "backend-7.bin"]
    loaded = FaissIndex.load(approx.spec, tmp_path, 7, dim, "cosine", data, ids)
    np.testing.assert_array_equal(loaded.search(queries, 10)[0], a_ids)
    approx.remove(ids[:50])
    assert len(approx) == 2950 and not np.isin(approx.search(queries[:50], 5)[0], ids[:50]).any()


def test_backend_bad_specs() -> None:
    with pytest.raises(InputError, match="unknown index backend"):
        create_backend("annoy", 8, "cosine", 10)
    with pytest.raises(InputError, match="cannot build"):
        create_backend("faiss:NotAnIndex", 8, "cosine", 10)
    small = create_backend("faiss:IVF64,PQ4", 8, "cosine", 10)
    with pytest.raises(InputError, match="cannot train on 10 vectors"):
        small.add(_clustered(10, 8), np.arange(10))


def test_ray_extraction_matches_the_plain_path(gallery: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    plain, _ = build_index(gallery, tmp_path / "plain.index", model="pixels", options=OPTS)
    distributed, _ = build_index(
        gallery, tmp_path / "ray.index", model="pixels", options=OPTS, ray_address="local"
    )
    assert distributed.names == plain.names
    np.testing.assert_allclose(distributed.vectors, plain.vectors, atol=1e-6)


def test_whitening_and_dba_stored_with_the_index(
    photo_set: tuple[Path, Path], gallery: Path, tmp_path: Path
) -> None:
    from lookalike import ImageSet
    from lookalike.index.stored_steps import IndexPostprocess
    from lookalike.pipeline import Refinement

    target = tmp_path / "w.index"
    post = IndexPostprocess(whiten=True, whiten_dim=8, dba=2)
    build_index(gallery, target, model="pixels", options=OPTS, postprocess=post, backend="flat")
    index = GalleryIndex.open(target)
    assert index.post.describe()["whiten"]["dim"] == 8 and index.post.dba == 2
    assert index.search_vectors.shape == (15, 8) and index.vectors.shape[1] > 8
    # the stored steps give exactly what fitting them at search time on the same gallery gives
    from_index = search(photo_set[0], target, k=5, evaluate=True, options=OPTS)
    refine = Refinement(whiten=True, whiten_dim=8, dba=2)
    from_folder = search(photo_set[0], gallery, model="pixels", k=5, evaluate=True, options=OPTS, refinement=refine)
    assert from_index.to_json() == from_folder.to_json()
    assert from_index.metrics.mean_ap == pytest.approx(from_folder.metrics.mean_ap)
    assert from_index.refinement["index"]["dba"] == {"k": 2, "alpha": 3.0}
    raw = np.asarray(index.vectors[:3])  # the server's path: raw features in, whitening applied inside
    np.testing.assert_array_equal(index.query(raw, 4)[0], index.search(index.post.queries(raw), 4)[0])
    with pytest.raises(InputError, match="already stores whiten"):
        search(photo_set[0], target, options=OPTS, refinement=Refinement(whiten=True))
    # added images get the frozen whitening; DBA is recomputed over the grown gallery
    mean = index.post.whitening.mean.copy()
    new = gallery / "coffee" / "extra.jpg"
    shutil.copy(photo_set[0] / "coffee" / "coffee_query0.jpg", new)
    index.add_images(ImageSet.from_path(new), OPTS)
    grown = GalleryIndex.open(target)
    np.testing.assert_array_equal(grown.post.whitening.mean, mean)
    np.testing.assert_allclose(grown.search_vectors, grown.post.gallery(np.asarray(grown.vectors)), atol=1e-6)
    assert len(grown.search_vectors) == 16 and grown.backend.search(grown.search_vectors[-1:], 1)[0][0, 0] == 15
    grown.remove_paths(["coffee/extra.jpg"])
    assert GalleryIndex.open(target).search_vectors.shape == (15, 8)
    assert json.loads((target / "lookalike-index.json").read_text())["version"] == 2


def test_the_whitening_shrinkage_is_stored_with_the_index(
    photo_set: tuple[Path, Path], gallery: Path, tmp_path: Path
) -> None:
    from lookalike.index.stored_steps import IndexPostprocess
    from lookalike.pipeline import Refinement

    target = tmp_path / "s.index"
    post = IndexPostprocess(whiten=True, whiten_dim=8, whiten_shrinkage=0.5)
    build_index(gallery, target, model="pixels", options=OPTS, postprocess=post, backend="flat")
    index = GalleryIndex.open(target)
    assert index.post.whiten_shrinkage == 0.5 and index.post.whitening.shrinkage == 0.5
    refine = Refinement(whiten=True, whiten_dim=8, whiten_shrinkage=0.5)
    from_folder = search(photo_set[0], gallery, model="pixels", k=5, options=OPTS, refinement=refine)
    # the same steps given again are not run twice, and give what fitting them on the folder gives
    from_index = search(photo_set[0], target, k=5, options=OPTS, refinement=refine)
    assert from_index.to_json() == from_folder.to_json()
    np.testing.assert_allclose(from_index.scores, from_folder.scores, atol=1e-5)
    raw = np.asarray(index.vectors)  # the default shrinkage would have stored other vectors
    default = IndexPostprocess(whiten=True, whiten_dim=8).fit(raw)
    assert np.abs(default.gallery(raw) - np.asarray(index.search_vectors)).max() > 0.01
    with pytest.raises(InputError, match="shrinkage 0.5.*--whiten-shrinkage"):
        search(photo_set[0], target, options=OPTS, refinement=Refinement(whiten=True, whiten_dim=8))


@pytest.mark.parametrize("backend", ["exact", "faiss:IVF2,Flat"])
def test_a_processed_index_can_be_emptied_and_filled_again(backend: str, gallery: Path, tmp_path: Path) -> None:
    from lookalike import ImageSet
    from lookalike.index.stored_steps import IndexPostprocess

    target = tmp_path / "p.index"
    post = IndexPostprocess(whiten=True, whiten_dim=4, dba=3)
    build_index(gallery, target, model="pixels", options=OPTS, postprocess=post, backend=backend)
    index = GalleryIndex.open(target)
    index.remove_paths(["astronaut", "camera", "chelsea", "coffee"], confirm=True)  # down to 3: DBA k=3 holds
    assert GalleryIndex.open(target).search_vectors.shape == (3, 4)
    index.remove_paths([str(gallery)], confirm=True)  # the root folder: everything
    empty = GalleryIndex.open(target)
    assert len(empty) == 0 and empty.search_vectors.shape == (0, 4)
    empty.add_images(ImageSet.from_path(gallery), OPTS)
    refilled = GalleryIndex.open(target)
    assert refilled.search_vectors.shape == (15, 4)
    rows, _ = refilled.query(np.asarray(refilled.vectors[:2]), 1)
    assert rows.shape == (2, 1) and (rows >= 0).all()


def test_auto_backend_and_ivf_training_sample() -> None:
    assert isinstance(create_backend("auto", 8, "cosine", 1000), ExactIndex)
    big = create_backend("auto", 8, "cosine", 1_000_000)
    assert isinstance(big, FaissIndex) and big.factory == "IVF4000,SQ8"
    import faiss

    assert faiss.extract_index_ivf(big.index.index).nprobe == 31
    small = FaissIndex(8, "cosine", "IVF4,Flat")
    x = np.random.default_rng(0).standard_normal((70_000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sample = small._training_sample(x)
    assert len(sample) == 65_536 and {tuple(r) for r in sample} <= {tuple(r) for r in x}
    assert len(small._training_sample(x[:1000])) == 1000
    small.add(x, np.arange(70_000))
    assert small.search(x[:5], 1)[0][:, 0].tolist() == [0, 1, 2, 3, 4]
