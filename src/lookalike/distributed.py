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
from typing import Any

import numpy as np
from tqdm import tqdm

from .cache import FeatureCache
from .errors import ImageError, InputError
from .extract import Embeddings, ExtractOptions, Skipped, make_runner, resolve_device, start_from_cache
from .features import Extractor, create_extractor
from .images import ImageSet

log = logging.getLogger("lookalike")


class EmbedActor:
    """A Ray actor: builds the extractor once, then embeds batches of image paths."""

    def __init__(self, name: str, options: dict[str, Any], max_pixels: int, runtime: str) -> None:
        import torch

        from .extract import DecodedImages
        from .plugins import load_plugins

        load_plugins()  # a plug-in's model on the worker too ($LOOKALIKE_PLUGINS is in the job's env)
        self.extractor = create_extractor(name, **options)
        device = resolve_device("cuda" if torch.cuda.is_available() else "cpu")
        self.runner = make_runner(self.extractor, device, runtime, None)
        self.decoder = DecodedImages([], self.extractor.preprocess.size, max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pathlib import Path

        import torch

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
            vectors[np.array(ok)] = self.runner(torch.stack(tensors))
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


def ray_embed(
    extractor: Extractor,
    images: ImageSet,
    options: ExtractOptions | None = None,
    *,
    address: str = "local",
    cache: FeatureCache | None = None,
) -> Embeddings:
    """Like :func:`lookalike.extract.embed`, with the extraction spread over a Ray cluster."""
    opts = options or ExtractOptions()
    ray = _connect(address)
    vectors, done, keys = start_from_cache(extractor, images, cache, max_pixels=opts.max_pixels)
    n_cached = int(done.sum())
    todo = np.flatnonzero(~done)
    skipped: list[Skipped] = []
    if len(todo):
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
        quiet = not opts.progress or not sys.stderr.isatty()
        with tqdm(
            total=len(todo), unit="img", desc="extracting on Ray", file=sys.stderr, disable=quiet
        ) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for row, ok, reason, vec in zip(
                    batch["row"], batch["ok"], batch["reason"], batch["vector"], strict=True
                ):
                    row = int(row)
                    if not ok:
                        if opts.strict:
                            raise ImageError(images.paths[row], str(reason))
                        log.warning("skipped %s: %s", images.paths[row], reason)
                        skipped.append(Skipped(images.names[row], str(reason)))
                        continue
                    vectors[row], done[row] = vec, True
                    if cache is not None and keys[row]:
                        cache.put(keys[row], vec)
                if cache is not None:
                    cache.flush()
                bar.update(len(batch["row"]))
    indices = np.flatnonzero(done)
    return Embeddings(vectors[indices], indices, skipped, n_cached, len(indices) - n_cached)
