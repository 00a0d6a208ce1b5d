"""How the copies preset's images reach the network: input size, upscaling, extra scales, rotations.

    python benchmarks/preprocess.py [--tmp DIR] [--variants NAME ...] [--name SUFFIX]

The copies preset (efficientnet-lite0, GeM, scales 1, 1/sqrt 2, 1/2, whitening 128-d / shrinkage 10
fitted on the gallery) squashes every image to 224 x 224, so an 80-100 px crop query is blown up
2.4 times while the photo it was cut from is shrunk: the crop's content reaches the network at about
twice the scale of the same content in the gallery image. Each variant here changes only how the
pixels reach the preset's network (the same weights, pooling and whitening), and is measured on the
validation draws of the copy sets that `benchmarks/whitening.py` uses (crop-copies 1, 2, 3,
disc-copies 8, 9), then on the test draws (crop-copies 0, disc-copies 7). The rule, as there: the
highest mean validation mAP. Variants are not lookalike options (this script runs the network
itself); `squash-224` is the preset and reproduces its figures. Writes
benchmarks/out/preprocess[-NAME].json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

import lookalike
from lookalike import ImageSet
from lookalike.config import PRESETS
from lookalike.extract import DecodedImages
from lookalike.features.base import MULTISCALE
from lookalike.images import DEFAULT_MAX_PIXELS, load_image
from lookalike.steps import GalleryNorm, PCAWhitening

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from copies import build  # noqa: E402
from whitening import PRESET, measure, ranked_metrics  # noqa: E402

VAL = [("crop-copies", 1), ("crop-copies", 2), ("crop-copies", 3), ("disc-copies", 8), ("disc-copies", 9)]
TEST = [("crop-copies", 0), ("disc-copies", 7)]
MIN_SIDE = 128  # "fit" never makes a short side smaller: its half scale must still fill the network


@dataclass(frozen=True)
class Variant:
    """``size`` px; ``fit``: keep the aspect, bring the long side down to ``size`` and enlarge only
    up to a MIN_SIDE short side (else squash to size x size); ``scales`` averaged as the preset does; ``angles`` (degrees) averaged too."""

    size: int = 224
    fit: bool = False
    scales: tuple[float, ...] = MULTISCALE
    angles: tuple[float, ...] = (0.0,)
    query_max: bool = False  # queries: one descriptor per scale, each gallery image scored by the best
    with_mean: bool = False  # with query_max: the usual (mean) descriptor is one of the query's views too
    gallery_squash: bool = False  # with fit: only the queries are fitted, the gallery is squashed

    def gallery(self) -> Variant:
        """How the gallery's images are read (the same, or squashed with ``gallery_squash``)."""
        return Variant(self.size, False, self.scales, self.angles) if self.gallery_squash else self


QUERY_VIEWS = Variant(query_max=True, with_mean=True)  # the preset's query scales, with the average


def preset_network() -> torch.nn.Module:
    """The copies preset's network (efficientnet-lite0, GeM, multi-scale), in eval mode."""
    return lookalike.create_extractor("efficientnet-lite0", **PRESETS["copies"]["model_options"]).module.eval()


def best_view_similarities(white: Any, views: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(queries x gallery): each whitened ``gallery`` vector's best cosine over the query ``views``
    (views, n, d) whitened by ``white`` (any fitted whitening with ``transform``)."""
    return np.max([white.transform(q) @ gallery.T for q in views], axis=0)


def cached_features(path: Path, Q: ImageSet, G: ImageSet, make: Callable[[], dict[str, np.ndarray]]) -> dict:
    """The arrays ``make()`` gives for a set, saved at ``path`` the first time (with the images'
    names, checked on every later load so a cache of other images is never scored)."""
    if not path.exists():
        np.savez(path, **make(), qnames=np.array(Q.names), gnames=np.array(G.names))
    f = dict(np.load(path))
    if list(f["qnames"]) != list(Q.names) or list(f["gnames"]) != list(G.names):
        raise SystemExit(f"{path}: cached for other images; delete it")
    return f


VARIANTS = {
    "squash-224": Variant(),
    "squash-192": Variant(size=192),
    "squash-256": Variant(size=256),
    "fit-224": Variant(fit=True),
    "fit-192": Variant(size=192, fit=True),
    "scales+sqrt2": Variant(scales=(2**0.5, *MULTISCALE)),
    "turns-20": Variant(angles=(-20.0, 0.0, 20.0)),
    "squash-224+query-max": Variant(query_max=True),
    "fit-224+query-max": Variant(fit=True, query_max=True),
    "squash-224+query-max+mean": Variant(query_max=True, with_mean=True),
    "fit-224+query-max+mean": Variant(fit=True, query_max=True, with_mean=True),
    "query-fit-224": Variant(fit=True, gallery_squash=True),
    "query-fit-224+query-max+mean": Variant(fit=True, query_max=True, with_mean=True, gallery_squash=True),
}


def pixels(path: Path, v: Variant) -> torch.Tensor:
    """(3, h, w) float 0..255 pixels of one image as the variant resizes it (a squash is the
    pipeline's own decoder, so squash-224 is the preset's input)."""
    if not v.fit:
        _, squashed, reason = DecodedImages([path], (v.size, v.size), DEFAULT_MAX_PIXELS)[0]
        if squashed is None:
            raise SystemExit(f"{path}: {reason}")
        return squashed.float()
    img = load_image(path, draft_size=v.size)
    w, h = img.size
    f = max(min(1.0, v.size / max(w, h)), MIN_SIDE / min(w, h))
    target = (max(1, round(w * f)), max(1, round(h * f)))
    if img.size != target:
        img = img.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()


@torch.no_grad()
def features(net: torch.nn.Module, paths: list[Path], v: Variant, per_scale: bool = False) -> np.ndarray:
    """The preset's descriptors (normalised mean over scales and angles) under variant ``v``;
    ``per_scale``: (views, n, d), each scale's descriptor normalised on its own (after the mean
    descriptor with ``v.with_mean``)."""
    batch = 1 if v.fit else 32  # fitted images differ in size
    out = []
    for s in range(0, len(paths), batch):
        x = (torch.stack([pixels(p, v) for p in paths[s : s + batch]]) - net.mean) / net.std
        parts = []
        for angle in v.angles:
            turned = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR) if angle else x
            for scale in v.scales:
                xs = (
                    turned
                    if scale == 1
                    else torch.nn.functional.interpolate(
                        turned, scale_factor=scale, mode="bilinear", align_corners=False
                    )
                )
                parts.append(net._embed(xs))  # FeatureNet's own per-scale step
        if per_scale:
            views = [sum(parts), *parts] if v.with_mean else parts
            out.append(torch.nn.functional.normalize(torch.stack(views), dim=2).numpy())
        else:
            out.append(torch.nn.functional.normalize(sum(parts), dim=1).numpy())
    return np.concatenate(out, axis=1 if per_scale else 0)


def measure_query_max(
    data: dict, dim: int | None, shrinkage: float, gallery_norm: int = 0
) -> tuple[float, float, float]:
    """(top-1, mAP, µAP) as ``whitening.measure``, each gallery image scored by its best query scale
    (minus its ``--gallery-norm`` offset, the library's own GalleryNorm, when ``gallery_norm``)."""
    white = PCAWhitening(dim, shrinkage).fit(data["g"])
    g = white.transform(data["g"])
    sims = best_view_similarities(white, data["q"], g)
    if gallery_norm:
        sims = sims - GalleryNorm(gallery_norm).offsets(g)[None]
    return ranked_metrics(sims, data["Q"], data["G"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--tmp", type=Path, default=None, help="Keep the sets here.")
    parser.add_argument("--name", default="", help="Suffix of the results file.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = preset_network()
    results: dict[str, dict[str, tuple]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.tmp or Path(scratch)
        sets = {}
        for name, seed in VAL + TEST:
            query, gallery = build(name, tmp, seed)
            sets[f"{name}:{seed}"] = (ImageSet.from_path(query), ImageSet.from_path(gallery))
        for label in args.variants:
            v = VARIANTS[label]
            for key, (Q, G) in sets.items():
                q = features(net, Q.paths, v, per_scale=v.query_max)
                data = {"q": q, "g": features(net, G.paths, v.gallery()), "Q": Q, "G": G}
                results.setdefault(label, {})[key] = (measure_query_max if v.query_max else measure)(
                    data, *PRESET
                )
                print(label, key, "{:.3f} / {:.3f} / {:.3f}".format(*results[label][key]), flush=True)
    val_keys, test_keys = [f"{n}:{s}" for n, s in VAL], [f"{n}:{s}" for n, s in TEST]
    score = {label: float(np.mean([cells[k][1] for k in val_keys])) for label, cells in results.items()}
    pick = max(score, key=score.get)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    doc = {
        "whitening": {"dim": PRESET[0], "shrinkage": PRESET[1]},
        "results": results,
        "score": score,
        "pick": pick,
    }
    (out / f"preprocess{'-' + args.name if args.name else ''}.json").write_text(json.dumps(doc, indent=2))
    print(
        "\n| variant | crop val mean top-1 | crop val mean mAP | disc val mean mAP | mean val mAP (rule) |"
        + "".join(f" {k} |" for k in test_keys)
    )
    print("| --- |" + " --- |" * (4 + len(test_keys)))
    for label, cells in results.items():
        crop = [cells[k] for k in val_keys if k.startswith("crop")]
        disc = [cells[k] for k in val_keys if k.startswith("disc")]
        tests = "".join(" {:.3f} / {:.3f} / {:.3f} |".format(*cells[k]) for k in test_keys)
        print(
            f"| {label} | {np.mean([c[0] for c in crop]):.3f} | {np.mean([c[1] for c in crop]):.3f} | "
            f"{np.mean([c[1] for c in disc]):.3f} | {score[label]:.3f} |{tests}"
        )
    print(f"\npick (mean validation mAP): {pick}")


if __name__ == "__main__":
    main()
