"""Whitening learned from pairs the gallery makes itself: each gallery image and edited views of it.

    python benchmarks/learned_whitening.py [--tmp DIR] [--sets crop-copies:1 ...] [--views 2] [--dense] [--score-only]
    python benchmarks/learned_whitening.py --pipeline [--tmp DIR] [--sets ...] [--dense] [--classes orl]

Until 2026-12-07 the copies preset whitened with PCA fitted on the gallery (128-d, shrinkage 10): it
removes what the gallery's images share, but knows nothing of what copying changes. Radenovic et al.'s learned
whitening (Lw, "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018) learns that
from matching pairs: whiten by the covariance of the pairs' differences (what edits change), then
keep the 128 strongest directions of the gallery in that space. Here the pairs need no labels:
each gallery image is paired with ``--views`` edited views of itself, drawn by the self-supervised
trainer's own edits (:class:`lookalike.training.copyaug.CopyAugment` defaults: crops, turns,
colour, text, shapes, pasting into another gallery image, JPEG) and described by the preset's
network, as is everything else here (GeM, scales 1, 1/sqrt 2, 1/2; queries by their scale views,
a gallery image scored by the best view, as `--query-scales`). The difference covariance is
regularised by adding ``lam`` times its mean variance to each axis (``lam`` 0.1, 1, 10).

Rule as `benchmarks/whitening.py`: the highest mean validation mAP (crop-copies 1, 2, 3,
disc-copies 8, 9), then the test draws (crop-copies 0, disc-copies 7); ``--dense``: also the
disc-copies-like draws with 8 copies of each photo in the gallery of `benchmarks/gallery_norm.py`
(where gallery normalisation loses); ``--classes orl``: class retrieval too. Features are cached in DIR/lw-features/; `--score-only` scores
what is cached. Prints Markdown; writes benchmarks/out/learned-whitening.json. This mode describes
the images and draws the views itself, and fits :class:`lookalike.steps.LearnedWhitening` on them.

``--pipeline`` measures the lookalike option instead (``--preset copies --whiten-views 0``, PCA
whitening on the gallery, against ``--preset copies --whiten-views 2``, the preset since
2026-12-07), each a `lookalike.search` with evaluation, the feature cache shared (the second run
extracts only the views), with the search time of each after the features are cached (the second
run's includes drawing and describing the views). Writes ``--out`` (default
benchmarks/out/learned-whitening-pipeline.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from lookalike import ImageSet
from lookalike.images import load_image
from lookalike.steps import LearnedWhitening, PCAWhitening
from lookalike.training.copyaug import CopyAugment

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from copies import build  # noqa: E402
from gallery_norm import DENSE, dense_set  # noqa: E402
from preprocess import (  # noqa: E402
    QUERY_VIEWS,
    TEST,
    VAL,
    Variant,
    best_view_similarities,
    cached_features,
    features,
    preset_network,
)
from whitening import PRESET, parse_set, ranked_metrics  # noqa: E402

LAMS = (0.1, 1.0, 10.0)
DIM = 128


def edited_views(net: torch.nn.Module, G: ImageSet, views: int, folder: Path) -> np.ndarray:
    """(n, views, d) preset descriptors of ``views`` CopyAugment views of every gallery image, view j
    of image i drawn from the generator seeded (0, i, j), pasting into another gallery image."""
    folder.mkdir(parents=True, exist_ok=True)
    augment, n, paths = CopyAugment(), len(G.paths), []
    for i, path in enumerate(G.paths):
        base = load_image(path)
        for j in range(views):
            rng = np.random.default_rng([0, i, j])

            def other(rng: np.random.Generator = rng, i: int = i) -> object:
                return load_image(G.paths[(i + 1 + int(rng.integers(n - 1))) % n])

            out = folder / f"{i}_{j}.png"
            augment.view(base, rng, other).save(out)
            paths.append(out)
    return features(net, paths, Variant()).reshape(n, views, -1)


def extract(net: torch.nn.Module, Q: ImageSet, G: ImageSet, views: int, folder: Path) -> dict[str, np.ndarray]:
    """Query scale views (views, n, d), gallery vectors (n, d) and their edited views (n, views, d)."""
    return {
        "qv": features(net, Q.paths, QUERY_VIEWS, per_scale=True),
        "gw": features(net, G.paths, Variant()),
        "vw": edited_views(net, G, views, folder),
    }


def draw_list(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(key, set name, seed) of every draw asked for: the copy sets, the dense draws, the class sets."""
    draws = [(f"{n}:{s}", n, s) for n, s in args.sets]
    draws += [(f"dense:{s}", "dense", s) for s in DENSE] if args.dense else []
    return draws + [(name, name, 0) for name in args.classes]


def folders(name: str, seed: int, tmp: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """(query, gallery) of one draw, built under ``tmp`` (class sets are read from ``--data``)."""
    if name == "dense":
        return dense_set(tmp, seed)
    if name in args.classes:
        return args.data / name / "query", args.data / name / "gallery"
    return build(name, tmp, seed)


def pipeline_rows(draws: list[tuple[str, Path, Path]], views: int, cache: Path) -> dict[str, dict[str, list]]:
    """(top-1, mAP, µAP, seconds) of the copies preset with PCA whitening (``--whiten-views 0``, the
    preset before 2026-12-07) and with the whitening learned from ``views`` views, per draw."""
    import time

    from lookalike import ExtractOptions
    from lookalike.config import SearchConfig
    from lookalike.pipeline import search

    opts = ExtractOptions(cache_dir=cache, progress=False, num_workers=0)
    settings = {"--preset copies --whiten-views 0": 0, f"--preset copies --whiten-views {views}": views}
    rows: dict[str, dict[str, list]] = {label: {} for label in settings}
    for key, query, gallery in draws:
        for label, n in settings.items():
            config = SearchConfig.from_preset("copies", refinement={"whiten_views": n}, extract=opts)
            if not n:  # fills the feature cache, so the timings below exclude the preset's features
                search(query, gallery, k=10, config=config)
            start = time.perf_counter()
            m = search(query, gallery, k=10, evaluate=True, config=config).metrics
            cells = [m.top_k[1], m.mean_ap, float(m.micro_ap), time.perf_counter() - start]
            rows[label][key] = cells
            print(label, key, "{:.3f} / {:.3f} / {:.3f}  {:.1f} s".format(*cells), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tmp", type=Path, default=None, help="Keep the sets and the feature cache here.")
    parser.add_argument("--sets", nargs="*", type=parse_set, default=VAL + TEST)
    parser.add_argument("--views", type=int, default=2, help="Edited views per gallery image.")
    parser.add_argument("--dense", action="store_true", help="Also the dense draws of gallery_norm.py.")
    parser.add_argument("--classes", nargs="*", default=[], help="Class sets of --data too (orl, fmnist).")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="Where the class sets are.")
    parser.add_argument("--score-only", action="store_true", help="Score the cached sets; extract nothing.")
    parser.add_argument("--pipeline", action="store_true", help="Measure the lookalike option, not this script's fit.")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "learned-whitening-pipeline.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.pipeline:
        return run_pipeline(args)
    net = preset_network()
    rows = ["copies preset (PCA whitening on the gallery)", *(f"learned whitening, lam {lam:g}" for lam in LAMS)]
    results: dict[str, dict[str, tuple]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.tmp or Path(scratch)
        cache = tmp / f"lw-features-{args.views}"
        cache.mkdir(parents=True, exist_ok=True)
        draws = draw_list(args)
        for key, name, seed in draws:
            path = cache / f"{name}-{seed}.npz"
            if args.score_only and not path.exists():
                continue
            query, gallery = folders(name, seed, tmp, args)
            Q, G = ImageSet.from_path(query), ImageSet.from_path(gallery)
            f = cached_features(path, Q, G, partial(extract, net, Q, G, args.views, tmp / f"views-{name}-{seed}"))
            fitted = [PCAWhitening(*PRESET).fit(f["gw"])]
            pairs = (np.arange(len(f["gw"])), f["vw"])
            fitted += [LearnedWhitening(DIM, lam, args.views).fit(f["gw"], pairs) for lam in LAMS]
            for label, white in zip(rows, fitted, strict=True):
                sims = best_view_similarities(white, f["qv"], white.transform(f["gw"]))
                results.setdefault(label, {})[key] = ranked_metrics(sims, Q, G)
                print(label, key, "{:.3f} / {:.3f} / {:.3f}".format(*results[label][key]), flush=True)
    keys = [key for key, _, _ in draws if key in results[rows[0]]]
    val = [k for k in keys if k in {f"{n}:{s}" for n, s in VAL}]
    score = {label: float(np.mean([cells[k][1] for k in val])) if val else None for label, cells in results.items()}
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    doc = {"views": args.views, "dim": DIM, "results": results, "score": score}
    (out / "learned-whitening.json").write_text(json.dumps(doc, indent=2))
    print("\n| whitening | mean val mAP (rule) |" + "".join(f" {k} |" for k in keys))
    print("| --- | --- |" + " --- |" * len(keys))
    for label, cells in results.items():
        rule = "-" if score[label] is None else f"{score[label]:.3f}"
        print(f"| {label} | {rule} |" + "".join(" {:.3f} / {:.3f} / {:.3f} |".format(*cells[k]) for k in keys))


def run_pipeline(args: argparse.Namespace) -> None:
    """``--pipeline``: the preset with and without the option, through lookalike's own search."""
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.tmp or Path(scratch)
        draws = [(key, *folders(name, seed, tmp, args)) for key, name, seed in draw_list(args)]
        rows = pipeline_rows(draws, args.views, tmp / "pipeline-cache")
    keys = [key for key, _, _ in draws]
    val = [k for k in keys if k in {f"{n}:{s}" for n, s in VAL}]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"views": args.views, "results": rows}, indent=2))
    print("\n| configuration | mean val mAP (rule) |" + "".join(f" {k} |" for k in keys))
    print("| --- | --- |" + " --- |" * len(keys))
    for label, cells in rows.items():
        rule = f"{np.mean([cells[k][1] for k in val]):.3f}" if val else "-"
        print(f"| {label} | {rule} |" + "".join(" {:.3f} / {:.3f} / {:.3f} ({:.1f} s) |".format(*cells[k]) for k in keys))


if __name__ == "__main__":
    main()
