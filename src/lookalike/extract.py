"""Batched feature extraction: DataLoader decoding, eager/CUDA/ONNX runtimes, the feature cache.

Workers decode and resize to uint8; normalisation happens inside the model (on the GPU when there
is one), so the same module serves every runtime. Unreadable files are skipped and reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .cache import FeatureCache, file_key
from .errors import ImageError, InputError
from .features.base import Extractor, OnnxGraph, Preprocess
from .fileio import atomic_write
from .images import DEFAULT_MAX_PIXELS, ImageSet, image_pixels, load_image

log = logging.getLogger("lookalike")

DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("auto", "torch", "onnx")
DECODES = ("auto", "pil", "device")


@dataclass
class Skipped:
    """An image left out of a run, and why."""

    path: str
    reason: str


@dataclass
class Embeddings:
    """Features of the readable images of a set: ``features[j]`` belongs to ``images.paths[indices[j]]``."""

    features: np.ndarray
    indices: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)
    n_cached: int = 0
    n_extracted: int = 0


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to PyTorch on this machine")
    return torch.device(device)


class DecodedImages(Dataset):
    """Decodes, orients and resizes image ``i`` to a (3, h, w) uint8 tensor, or reports why not.
    ``resize`` as :class:`~lookalike.features.base.Preprocess`: ``squash`` gives every image
    ``size``, ``fit`` an aspect-kept size of its own."""

    def __init__(self, paths: list[Path], size: tuple[int, int], max_pixels: int, resize: str = "squash") -> None:
        self.paths, self.size, self.max_pixels = paths, size, max_pixels
        self.preprocess = Preprocess(tuple(size), resize=resize)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            img = load_image(self.paths[i], max_pixels=self.max_pixels, draft_size=max(self.size))
        except ImageError as exc:
            return i, None, exc.reason
        height, width = self.preprocess.target(*img.size)
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return i, torch.from_numpy(np.array(img)).permute(2, 0, 1), ""


class _JpegBytes(DecodedImages):
    """For decoding on the device: returns a JPEG's raw bytes when the device decoder can take it
    (baseline RGB/grey JPEG within the pixel limit), otherwise the CPU-decoded tensor as usual."""

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                fits = (
                    img.format == "JPEG"
                    and img.mode in ("RGB", "L")
                    and img.width * img.height <= self.max_pixels
                )
        except Exception:  # anything odd: the CPU path gives the precise error
            fits = False
        if not fits:
            return super().__getitem__(i)
        try:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        except OSError as exc:
            return i, None, f"cannot read file ({exc.strerror})"
        return i, data, "jpeg"


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> _Batch:
    pixels = [(i, t) for i, t, tag in items if t is not None and tag != "jpeg"]
    jpegs = [(i, t) for i, t, tag in items if t is not None and tag == "jpeg"]
    errors = [(i, reason) for i, t, reason in items if t is None]
    return _Batch(by_size(pixels), [i for i, _ in jpegs], [t for _, t in jpegs], errors)


def by_size(items: list[tuple[int, torch.Tensor]]) -> list[tuple[list[int], torch.Tensor]]:
    """(ids, stacked pixels) for each size among ``items`` (one group when the preprocessing
    squashes every image to one size; ``fit`` gives images sizes of their own)."""
    groups: dict[tuple[int, ...], tuple[list[int], list[torch.Tensor]]] = {}
    for i, tensor in items:
        ids, tensors = groups.setdefault(tuple(tensor.shape), ([], []))
        ids.append(i)
        tensors.append(tensor)
    return [(ids, torch.stack(tensors)) for ids, tensors in groups.values()]


def merge_sizes(parts: list[tuple[list[int], torch.Tensor]]) -> list[tuple[list[int], torch.Tensor]]:
    """Join the parts of a batch that share one pixel shape into one tensor, so the runner sees one
    call per input size however the pixels were decoded (CPU, device, CPU fallback)."""
    shapes: dict[tuple[int, ...], list[tuple[list[int], torch.Tensor]]] = {}
    for ids, pixels in parts:
        shapes.setdefault(tuple(pixels.shape[1:]), []).append((ids, pixels))
    return [
        (group[0][0], group[0][1])
        if len(group) == 1
        else ([i for ids, _ in group for i in ids], torch.cat([pixels for _, pixels in group]))
        for group in shapes.values()
    ]


def run_by_size(runner: Runner, tensors: list[torch.Tensor], dim: int) -> np.ndarray:
    """The runner's (n, dim) features of pixel tensors that may differ in size, in their order."""
    out = np.zeros((len(tensors), dim), dtype=np.float32)
    for ids, stacked in by_size(list(enumerate(tensors))):
        out[ids] = runner(stacked)
    return out


@dataclass
class _Batch:
    """One loader batch: CPU-decoded pixels (a stacked tensor per size), raw JPEGs for the device
    decoder, and failures."""

    groups: list[tuple[list[int], torch.Tensor]]
    jpeg_ids: list[int]
    jpegs: list[torch.Tensor]
    errors: list[tuple[int, str]]

    def pin_memory(self) -> _Batch:
        """Page-locked host memory, so the copies to the GPU overlap with compute."""
        groups = [(ids, pixels.pin_memory()) for ids, pixels in self.groups]
        return _Batch(groups, self.jpeg_ids, [t.pin_memory() for t in self.jpegs], self.errors)

    def __len__(self) -> int:
        return sum(len(ids) for ids, _ in self.groups) + len(self.jpeg_ids) + len(self.errors)


def decode_on_device(
    jpegs: list[torch.Tensor], size: tuple[int, int] | Preprocess, device: torch.device
) -> tuple[list[tuple[list[int], torch.Tensor]], list[int]]:
    """Batch-decode JPEG bytes on ``device`` (nvJPEG on CUDA), apply EXIF orientation, resize with
    antialiasing to ``size`` (or to the size a :class:`Preprocess` gives each image). Returns
    (positions, (n, 3, h, w) uint8) for each output size, and the positions that failed."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import resize

    preprocess = size if isinstance(size, Preprocess) else Preprocess(tuple(size))
    if not jpegs:
        return [], []
    try:
        decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        images, failed = list(enumerate(decoded)), []
    except RuntimeError:  # one bad file fails the whole batch: decode one by one to find it
        images, failed = [], []
        for pos, data in enumerate(jpegs):
            try:
                images.append(
                    (pos, decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
                )
            except RuntimeError:
                failed.append(pos)
    resized = []
    for pos, img in images:
        target = preprocess.target(int(img.shape[-1]), int(img.shape[-2]))
        resized.append((pos, resize(img, list(target), antialias=True) if tuple(img.shape[-2:]) != target else img))
    return by_size(resized), failed


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


Runner = Callable[[torch.Tensor], np.ndarray]


def make_runner(extractor: Extractor, device: torch.device, runtime: str, cache_dir: Path | None) -> Runner:
    """A function from a uint8 batch (n, 3, h, w) to L2-normalised float32 features (n, d)."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if extractor.graph is not None:  # already an ONNX graph (SSCD): ONNX Runtime is its only runtime
        if runtime == "torch":
            raise InputError(
                f"{extractor.name} is an ONNX graph and runs through ONNX Runtime only; drop --runtime torch"
            )
        return _graph_runner(extractor.graph, device)
    use_onnx = device.type == "cpu" and extractor.exportable and runtime in ("auto", "onnx")
    if use_onnx:
        try:
            return _onnx_runner(extractor, cache_dir)
        except ImportError:
            if runtime == "onnx":
                raise InputError("--runtime onnx needs onnxruntime: pip install onnxruntime onnx") from None
        except Exception as exc:  # under `auto`, an export problem must not stop a search
            if runtime == "onnx":
                raise InputError(f"ONNX export of {extractor.name} failed ({exc}); use --runtime torch") from None
            log.warning("ONNX export of %s failed (%s); using eager PyTorch", extractor.name, exc)
    return _torch_runner(extractor, device)


def _torch_runner(extractor: Extractor, device: torch.device) -> Runner:
    module = extractor.module.to(device).eval()
    cuda = device.type == "cuda"
    if cuda or extractor.exportable:
        module = module.to(memory_format=torch.channels_last)

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            x = batch.to(device, non_blocking=cuda).float()
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = module(x)
            return out.float().cpu().numpy()

    return run


def _onnx_runner(extractor: Extractor, cache_dir: Path | None) -> Runner:
    import onnxruntime as ort

    folder = (cache_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "lookalike") / "onnx"
    path = folder / f"{extractor.name}-{extractor.key}.onnx"
    if not path.is_file():
        _export_onnx(extractor, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> np.ndarray:
        return session.run(None, {"pixels": batch.numpy().astype(np.float32)})[0]

    return run


def _graph_runner(graph: OnnxGraph, device: torch.device) -> Runner:
    """Runs a ready ONNX graph taking NHWC uint8 pixels: on CUDA where ONNX Runtime has that
    provider (else on the CPU, with a warning), with as many threads as torch uses. A graph with
    ``regions`` runs once per region on that region's crop resized to ``region_size``, and gives
    each image's region vectors side by side (n, regions x d), as a torch RegionNet does."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("this model needs onnxruntime: pip install onnxruntime") from None
    if graph.layout != "nhwc-uint8":
        raise InputError(f"{graph.path.name}: unsupported input layout {graph.layout!r}")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning(
                "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): %s runs on the CPU",
                graph.path.name,
            )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(graph.path), options, providers=providers)

    def run_pixels(batch: torch.Tensor) -> np.ndarray:
        pixels = np.ascontiguousarray(batch.cpu().permute(0, 2, 3, 1).numpy(), dtype=np.uint8)
        return np.asarray(session.run(None, {graph.input: pixels})[0], dtype=np.float32)

    if not graph.regions:
        return run_pixels
    if graph.region_size is None:
        raise InputError(f"{graph.path.name}: regions without a region size")
    from .features.regions import cut_regions_uint8

    def run_regions(batch: torch.Tensor) -> np.ndarray:
        crops = cut_regions_uint8(batch.cpu(), list(graph.regions), graph.region_size)
        return np.concatenate([run_pixels(crop) for crop in crops], axis=1)

    return run_regions


def _export_onnx(extractor: Extractor, path: Path) -> None:
    height, width = extractor.preprocess.size
    example = torch.zeros(2, 3, height, width)
    module = extractor.module.cpu().eval()
    # a fitted size is every image's own: height and width are inputs of the graph then
    axes = {0: "batch"} if extractor.preprocess.resize == "squash" else {0: "batch", 2: "height", 3: "width"}
    tmp = path.with_suffix(".export.onnx")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": axes, "features": {0: "batch"}},
            dynamo=False,
        )
    data = tmp.read_bytes()
    tmp.unlink()
    atomic_write(path, lambda h: h.write(data))


@dataclass
class ExtractOptions:
    """How to run extraction. ``decode``: ``pil`` (CPU workers), ``device`` (JPEGs decoded and
    resized by torchvision on the model's device; nvJPEG on CUDA) or ``auto`` (device on CUDA).
    Only bf16 on CUDA and the decode path change features, and only slightly."""

    device: str = "auto"
    runtime: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    strict: bool = False
    progress: bool = True
    cache_dir: Path | None = None
    use_cache: bool = True
    decode: str = "auto"

    def __post_init__(self) -> None:
        """Check every setting up front, so a bad one fails before any image is read."""
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        for option, value, allowed in (
            ("--device", self.device, DEVICES),
            ("--runtime", self.runtime, RUNTIMES),
            ("decode", self.decode, DECODES),
        ):
            if value not in allowed:
                raise InputError(f"{option}: unknown value {value!r}; choose one of {', '.join(allowed)}")
        for option, value, least in (
            ("--batch-size (batch_size)", self.batch_size, 1),
            ("--workers (num_workers)", self.num_workers, 0),
            ("--max-pixels (max_pixels)", self.max_pixels, 1),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise InputError(f"{option} must be a whole number of at least {least}, got {value!r}")
        if self.cache_dir is not None and self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise InputError(f"--cache-dir {self.cache_dir}: is a file, not a folder")


def embed(
    extractor: Extractor,
    images: ImageSet,
    options: ExtractOptions | None = None,
    *,
    label: str = "images",
    cache: FeatureCache | None = None,
) -> Embeddings:
    """Features for every readable image of ``images``; cached ones are not extracted again.

    Unreadable files are logged and listed in ``skipped`` (or raise under ``options.strict``).
    ``cache`` (default: the feature cache under ``options.cache_dir``) gets new vectors every
    ``cache.flush_seconds`` and at the end, so an interrupted run resumes where it stopped.
    """
    opts = options or ExtractOptions()
    if cache is None and opts.use_cache and opts.cache_dir is not None:
        cache = FeatureCache(opts.cache_dir, extractor.key, extractor.describe())
    vectors, done, keys = start_from_cache(extractor, images, cache, max_pixels=opts.max_pixels)
    n_cached = int(done.sum())
    todo = np.flatnonzero(~done).tolist()
    skipped: list[Skipped] = []
    if todo:
        job = _Job(vectors, done, todo, keys, extractor, images, cache, opts, label)
        skipped = job.run()
    indices = np.flatnonzero(done)
    return Embeddings(vectors[indices], indices, skipped, n_cached, len(indices) - n_cached)


def start_from_cache(
    extractor: Extractor,
    images: ImageSet,
    cache: FeatureCache | None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(vectors, done mask, file keys) for ``images``, with the cached rows already filled in.

    A cached row is taken only when the image's header (read, not decoded) is within ``max_pixels``
    (None: no check), so a vector cached under a higher limit is not used silently: such an image stays
    to do, and the decoder skips it with its usual "over the limit" reason (or raises under strict).
    """
    vectors = np.zeros((len(images), extractor.dim), dtype=np.float32)
    done = np.zeros(len(images), dtype=bool)
    keys = [file_key(p) for p in images.paths]
    if cache is not None:
        for i, key in enumerate(keys):
            row = cache.get(key) if key else None
            if row is not None and cached_row_fits(row, images.paths[i], extractor.dim, max_pixels):
                vectors[i], done[i] = row, True
    return vectors, done, keys


def cached_row_fits(row: np.ndarray, path: Path, dim: int, max_pixels: int | None) -> bool:
    """Whether a cached vector may stand for the image at ``path``: it has ``dim`` values and the
    image's header is within ``max_pixels`` (None: no check), so a vector cached under a higher
    limit is never used silently."""
    if row.shape != (dim,):
        return False
    if max_pixels is None:
        return True
    pixels = image_pixels(path)
    return pixels is not None and pixels <= max_pixels


@dataclass
class _Job:
    """One extraction pass over the images not found in the cache."""

    vectors: np.ndarray
    done: np.ndarray
    todo: list[int]
    keys: list[str | None]
    extractor: Extractor
    images: ImageSet
    cache: FeatureCache | None
    opts: ExtractOptions
    label: str

    def _loader(self, cuda: bool, device_decode: bool) -> DataLoader:
        batch_size = self.opts.batch_size or (256 if cuda else 32)
        workers = self.opts.num_workers
        if workers is None:
            enough = len(self.todo) >= 2 * batch_size
            workers = min(8 if cuda else 4, os.cpu_count() or 1) if enough else 0
        paths = [self.images.paths[i] for i in self.todo]
        kind = _JpegBytes if device_decode else DecodedImages
        pre = self.extractor.preprocess
        dataset = kind(paths, pre.size, self.opts.max_pixels, pre.resize)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=cuda,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=4 if workers else None,
        )

    def run(self) -> list[Skipped]:
        device = resolve_device(self.opts.device)
        if self.opts.decode not in DECODES:
            raise InputError(f"unknown decode {self.opts.decode!r}; choose one of {', '.join(DECODES)}")
        device_decode = self.opts.decode == "device" or (self.opts.decode == "auto" and device.type == "cuda")
        runner = make_runner(self.extractor, device, self.opts.runtime, self.opts.cache_dir)
        loader = self._loader(device.type == "cuda", device_decode)
        skipped: list[Skipped] = []
        quiet = not self.opts.progress or not sys.stderr.isatty()
        bar = tqdm(
            total=len(self.todo),
            unit="img",
            desc=f"extracting {self.label}",
            file=sys.stderr,
            disable=quiet,
            dynamic_ncols=True,
        )
        last_flush = time.monotonic()
        try:
            for batch in loader:
                for local, reason in batch.errors:
                    skipped.append(self._skip(self.todo[local], reason))
                for ids, pixels in self._assemble(batch, device, skipped):
                    self._store([self.todo[j] for j in ids], runner(pixels))
                bar.update(len(batch))
                if self.cache is not None and time.monotonic() - last_flush >= self.cache.flush_seconds:
                    self.cache.flush()
                    last_flush = time.monotonic()
        finally:
            bar.close()
            if self.cache is not None:
                self.cache.flush()
        return skipped

    def _assemble(
        self, batch: _Batch, device: torch.device, skipped: list[Skipped]
    ) -> list[tuple[list[int], torch.Tensor]]:
        """(ids, uint8 tensor on ``device``) for each input size of the batch: CPU-decoded pixels
        plus device-decoded JPEGs; a JPEG the device decoder rejects goes through the CPU decoder
        after all."""
        parts = [(ids, pixels.to(device, non_blocking=True)) for ids, pixels in batch.groups]
        pre = self.extractor.preprocess
        decoded, failed = decode_on_device(batch.jpegs, pre, device)
        parts += [([batch.jpeg_ids[p] for p in positions], pixels) for positions, pixels in decoded]
        if failed:
            fallback = DecodedImages(
                [self.images.paths[self.todo[batch.jpeg_ids[p]]] for p in failed],
                pre.size,
                self.opts.max_pixels,
                pre.resize,
            )
            for n, pos in enumerate(failed):
                _, tensor, reason = fallback[n]
                if tensor is None:
                    skipped.append(self._skip(self.todo[batch.jpeg_ids[pos]], reason))
                else:
                    parts.append(([batch.jpeg_ids[pos]], tensor[None].to(device)))
        return merge_sizes(parts)

    def _skip(self, i: int, reason: str) -> Skipped:
        if self.opts.strict:
            raise ImageError(self.images.paths[i], reason)
        log.warning("skipped %s: %s", self.images.paths[i], reason)
        return Skipped(self.images.names[i], reason)

    def _store(self, ids: list[int], out: np.ndarray) -> None:
        self.vectors[ids], self.done[ids] = out, True
        if self.cache is not None:
            for i, row in zip(ids, out, strict=True):
                key = self.keys[i]
                if key:
                    self.cache.put(key, row)
