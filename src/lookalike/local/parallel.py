"""Running per-image and per-pair work on every core, with a progress bar.

The heavy parts (our numba kernels, OpenCV, BLAS) release the GIL, so threads share the gallery's
features without copying or pickling them and start instantly. While several run, OpenCV and BLAS
are held to one thread each so the cores are not oversubscribed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cv2
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ..errors import InputError

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(requested: int | None, n_tasks: int) -> int:
    """Threads to use: ``requested`` (0 or 1: this thread only), else one per core, at most one per task."""
    if requested is not None and requested < 0:
        raise InputError(f"num_workers must be 0 or more, got {requested}")
    wanted = cpu_count() if requested is None else max(1, requested)
    return max(1, min(wanted, n_tasks))


@contextlib.contextmanager
def single_threaded_libraries() -> Iterator[None]:
    """Hold OpenCV and BLAS to one thread each (restored afterwards): our own threads are the
    parallelism, and a BLAS pool on small products under load is many times slower than one thread."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        cv2.setNumThreads(before)


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int,
    desc: str,
    unit: str,
    progress: bool,
    on_result: Callable[[int, R], None] | None = None,
    size_of: Callable[[T], int] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads, in order, with a tqdm bar on stderr
    (hidden when ``progress`` is off or stderr is not a terminal). ``on_result(i, r)`` runs in
    this thread as each result arrives, in order; ``size_of(x)`` is how many ``unit`` an item
    counts for on the bar (1 by default)."""
    quiet = not progress or not sys.stderr.isatty()
    sizes = [size_of(x) for x in items] if size_of is not None else [1] * len(items)
    bar = tqdm(total=sum(sizes), desc=desc, unit=unit, file=sys.stderr, disable=quiet, dynamic_ncols=True)
    results: list[R] = []
    try:
        with single_threaded_libraries():
            stream: Iterable[R]
            if workers > 1:
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-local")
                stream = pool.map(fn, items)
            else:
                pool, stream = None, map(fn, items)
            try:
                for i, result in enumerate(stream):
                    if on_result is not None:
                        on_result(i, result)
                    results.append(result)
                    bar.update(sizes[i])
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results
