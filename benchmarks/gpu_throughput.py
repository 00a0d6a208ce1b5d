"""End-to-end extraction rate on a GPU, stage by stage: JPEG files on disk -> features.

    python benchmarks/gpu_throughput.py --images 20000 --device cuda      # on the GPU machine
    python benchmarks/gpu_throughput.py --images 64 --device cpu          # smoke run anywhere

Model: ResNet50 with random weights (speed only). Stages, each timed alone and reported in
images/s: reading the files; decoding + resizing them (torchvision decode_jpeg on the device,
batched); the model alone on synthetic input (bf16, channels_last, torch.compile on CUDA);
and lookalike's whole path (`lookalike.embed`, device decode, DataLoader workers reading files,
pinned memory) with a PIL-decoding DataLoader baseline in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lookalike
from lookalike import ExtractOptions, ImageSet
from lookalike.extract import decode_on_device
from lookalike.samples import PHOTOS, edited_copy, sample_photo


def make_jpegs(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    sources = [sample_photo(n) for n in PHOTOS]
    base = [edited_copy(sources[i % len(sources)], rng).resize((500, 375)) for i in range(64)]
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        base[i % len(base)].save(path, quality=85 + i % 10)  # distinct bytes, realistic size
        paths.append(path)
    return paths


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(15, os.cpu_count() or 1))
    args = parser.parse_args()
    device = torch.device(args.device)
    extractor = lookalike.create_extractor("resnet50", weights="random")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        images = ImageSet.from_path(tmp)

        start = time.perf_counter()
        blobs = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
        rows.append(("read files (1 thread)", rate(len(paths), time.perf_counter() - start)))

        decode_on_device(blobs[: args.batch_size], (224, 224), device)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for s in range(0, len(blobs), args.batch_size):
            decode_on_device(blobs[s : s + args.batch_size], (224, 224), device)
        _sync(device)
        rows.append((f"decode + resize on {device.type} (torchvision)", rate(len(blobs), time.perf_counter() - start)))

        module = extractor.module.to(device).eval().to(memory_format=torch.channels_last)
        runner = torch.compile(module) if device.type == "cuda" else module
        x = torch.randint(0, 255, (args.batch_size, 3, 224, 224), device=device).float()
        x = x.contiguous(memory_format=torch.channels_last)
        steps = max(3, args.images // args.batch_size)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for _ in range(3):
                runner(x)
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                runner(x)
            _sync(device)
        rows.append(("model alone (bf16, channels_last, compiled on CUDA)", rate(steps * args.batch_size, time.perf_counter() - start)))

        for decode in ("pil", "device"):
            opts = ExtractOptions(device=args.device, runtime="torch", decode=decode, batch_size=args.batch_size,
                                  num_workers=args.workers, use_cache=False, progress=False)
            lookalike.embed(extractor, images.subset(range(min(len(images), 2 * args.batch_size))), opts)
            start = time.perf_counter()
            emb = lookalike.embed(extractor, images, opts)
            _sync(device)
            name = "lookalike end to end, PIL DataLoader" if decode == "pil" else "lookalike end to end, device decode"
            rows.append((name, rate(len(emb.indices), time.perf_counter() - start)))
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else platform.machine()
    print(f"device: {gpu}; {args.images} JPEGs 500x375; ResNet50 (random weights); batch {args.batch_size}; {args.workers} workers")
    print("| stage | images/s |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
