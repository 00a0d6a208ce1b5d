"""Distributed extraction on Ray Data: ``map_batches`` with one model actor per worker.

The driver lists the images not yet extracted; Ray Data spreads them over actors that each load
the extractor once (on a GPU where the cluster has them); the driver streams the vectors back
into the caller's resumable shard cache. The same code runs on a laptop (local Ray) and on a
cluster (``address="auto"`` inside it, or ``ray://head:10001`` from outside).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .cache import FeatureCache, file_key
from .errors import ImageError, InputError
from .extract import Embeddings, ExtractOptions, Skipped, cached_row_fits, make_runner, resolve_device
from .features import Extractor
from .features.regions import rebuild_extractor
from .images import ImageSet

log = logging.getLogger("lookalike")


class EmbedActor:
    """A Ray actor: builds the extractor once, then embeds batches of image paths."""

    def __init__(self, name: str, options: dict[str, Any], max_pixels: int, runtime: str) -> None:
        import torch

        from .extract import DecodedImages
        from .plugins import load_plugins

        load_plugins()  # a plug-in's model on the worker too ($LOOKALIKE_PLUGINS is in the job's env)
        self.extractor = rebuild_extractor(name, options)
        device = resolve_device("cuda" if torch.cuda.is_available() else "cpu")
        self.runner = make_runner(self.extractor, device, runtime, None)
        pre = self.extractor.preprocess
        self.decoder = DecodedImages([], pre.size, max_pixels, pre.resize)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pathlib import Path

        from .extract import run_by_size

        self.decoder.paths = [Path(p) for p in batch["path"]]
        tensors, ok, reasons = [], [], []
        for i in range(len(self.decoder.paths)):
            _, tensor, reason = self.decoder[i]
            ok.append(tensor is not None)
            reasons.append(reason)
            if tensor is not None:
                tensors.append(tensor)
        vectors = np.zeros((len(ok), self.extractor.dim), dtype=np.float32)
        if tensors:
            vectors[np.array(ok)] = run_by_size(self.runner, tensors, self.extractor.dim)
        return {
            "row": batch["row"],
            "ok": np.array(ok),
            "reason": np.array(reasons, dtype=object),
            "vector": vectors,
        }


def _connect(address: str) -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'lookalike[ray]' (or 'ray[data]')") from None
    if not ray.is_initialized():
        plugins = os.environ.get("LOOKALIKE_PLUGINS")  # plug-in modules must be importable on the workers
        runtime_env = {"env_vars": {"LOOKALIKE_PLUGINS": plugins}} if plugins else None
        try:
            if address == "local":
                ray.init(
                    include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=runtime_env
                )
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError: all mean "no cluster there"
            raise InputError(f"--ray {address}: cannot connect to a Ray cluster ({exc})") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours is on stderr already
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray


def _ray_batches(
    ray: Any, extractor: Extractor, images: ImageSet, todo: np.ndarray, opts: ExtractOptions
) -> Iterator[dict[str, np.ndarray]]:
    """The actors' output batches (row, ok, reason, vector) for the images at rows ``todo``, as they come."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = gpus if gpus else max(1, int(resources.get("CPU", 1)) // 2)
    batch_size = opts.batch_size or (256 if gpus else 32)
    ds = ray.data.from_items([{"row": int(i), "path": str(images.paths[i].resolve())} for i in todo])
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_args=(extractor.name, dict(extractor.options), opts.max_pixels, opts.runtime),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_gpus=1 if gpus else 0,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def _progress(total: int, opts: ExtractOptions) -> tqdm:
    quiet = not opts.progress or not sys.stderr.isatty()
    return tqdm(total=total, unit="img", desc="extracting on Ray", file=sys.stderr, disable=quiet)


def ray_embed(
    extractor: Extractor,
    images: ImageSet,
    options: ExtractOptions | None = None,
    *,
    address: str = "local",
    cache: FeatureCache | None = None,
) -> Embeddings:
    """Like :func:`lookalike.extract.embed`, with the extraction spread over a Ray cluster: the
    batches of :func:`ray_stream` gathered into one matrix."""
    stream = ray_stream(extractor, images, options, address=address, cache=cache)
    vectors = np.zeros((len(images), extractor.dim), dtype=np.float32)
    done = np.zeros(len(images), dtype=bool)
    for batch in stream:
        vectors[batch.indices], done[batch.indices] = batch.features, True
    indices = np.flatnonzero(done)
    return Embeddings(vectors[indices], indices, stream.skipped, stream.n_cached, stream.n_extracted)


class StreamingCache(FeatureCache):
    """A resumable build's feature cache that keeps no vector in memory: the same shards on disk
    (never compacted), what an interrupted run flushed read back one shard at a time by
    :meth:`cached_batches`, and what this run flushes left on disk only."""

    def __init__(self, root: str | Path, extractor_key: str, description: dict | None = None) -> None:
        super().__init__(root, extractor_key, description, flush_seconds=0.0, max_shards=None)

    def _load(self) -> None:
        """Nothing is read when the cache opens (see :meth:`cached_batches`)."""

    def flush(self) -> None:
        """Write the pending vectors as a shard, then forget them."""
        super().flush()
        self._rows.clear()

    def cached_batches(self, keys: list[str | None]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, vectors) of the images whose file keys (``keys[row]``) the shards hold, one shard
        at a time and each row once; a damaged or foreign shard is passed over (re-extracted)."""
        where = {key: row for row, key in enumerate(keys) if key}
        for shard in self._shards():
            try:
                with np.load(shard, allow_pickle=False) as data:
                    shard_keys, vectors = data["keys"].tolist(), np.asarray(data["vectors"], np.float32)
            except Exception:
                continue
            found = [(where.pop(k), j) for j, k in enumerate(shard_keys) if k in where]
            if found:
                rows, at = (np.array(c, dtype=np.int64) for c in zip(*found, strict=True))
                yield rows, vectors[at]


@dataclass
class EmbeddingBatch:
    """Vectors of some images of a set as they arrive: ``features[j]`` is ``images.paths[indices[j]]``'s."""

    indices: np.ndarray
    features: np.ndarray
    cached: bool = False


@dataclass
class RayStream:
    """Iterating gives the gallery's vectors in batches as the Ray workers send them (what the
    cache held first), so that the caller can pass each batch on and the driver never holds every
    vector; the counts and the skipped images are complete once the iteration ends."""

    extractor: Extractor
    images: ImageSet
    opts: ExtractOptions
    address: str
    cache: StreamingCache | FeatureCache | None
    skipped: list[Skipped] = field(default_factory=list)
    n_cached: int = 0
    n_extracted: int = 0

    def __iter__(self) -> Iterator[EmbeddingBatch]:
        ray = _connect(self.address)
        images, cache, dim = self.images, self.cache, self.extractor.dim
        keys = [file_key(p) for p in images.paths]
        done = np.zeros(len(images), dtype=bool)
        for rows, vectors in self._cached(keys):
            ok = [
                cached_row_fits(vec, images.paths[r], dim, self.opts.max_pixels)
                for r, vec in zip(rows.tolist(), vectors, strict=True)
            ]
            rows, vectors = rows[np.array(ok, dtype=bool)], vectors[np.array(ok, dtype=bool)]
            if len(rows):
                done[rows] = True
                self.n_cached += len(rows)
                yield EmbeddingBatch(rows, vectors, cached=True)
        todo = np.flatnonzero(~done)
        if not len(todo):
            return
        with _progress(len(todo), self.opts) as bar:
            for batch in _ray_batches(ray, self.extractor, images, todo, self.opts):
                good = []
                for row, ok, reason in zip(batch["row"].tolist(), batch["ok"], batch["reason"], strict=True):
                    if ok:
                        good.append(row)
                        continue
                    if self.opts.strict:
                        raise ImageError(images.paths[row], str(reason))
                    log.warning("skipped %s: %s", images.paths[row], reason)
                    self.skipped.append(Skipped(images.names[row], str(reason)))
                vectors = np.asarray(batch["vector"], dtype=np.float32)[np.asarray(batch["ok"], dtype=bool)]
                rows = np.array(good, dtype=np.int64)
                if cache is not None:
                    for row, vec in zip(good, vectors, strict=True):
                        if keys[row]:
                            cache.put(keys[row], vec)
                    cache.flush()  # on disk before the batch is passed on: a crash loses no vector
                bar.update(len(batch["row"]))
                if len(rows):
                    self.n_extracted += len(rows)
                    yield EmbeddingBatch(rows, vectors)

    def _cached(self, keys: list[str | None]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if isinstance(self.cache, StreamingCache):
            yield from self.cache.cached_batches(keys)
        elif self.cache is not None:  # an ordinary cache holds its rows in memory already
            for start in range(0, len(keys), 1024):
                found = [(r, self.cache.get(k)) for r, k in enumerate(keys[start : start + 1024], start) if k]
                found = [(r, v) for r, v in found if v is not None]
                if found:
                    yield np.array([r for r, _ in found], np.int64), np.stack([v for _, v in found])


def ray_stream(
    extractor: Extractor,
    images: ImageSet,
    options: ExtractOptions | None = None,
    *,
    address: str = "local",
    cache: StreamingCache | FeatureCache | None = None,
) -> RayStream:
    """:func:`ray_embed` as a stream of :class:`EmbeddingBatch` (see :class:`RayStream`)."""
    return RayStream(extractor, images, options or ExtractOptions(), address, cache)
