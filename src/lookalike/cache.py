"""On-disk feature cache: vectors keyed by model and file identity (path, size, mtime).

Each extractor key gets its own folder of append-only shards written atomically, so an
interrupted extraction keeps every flushed batch and two runs never corrupt each other.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import atomic_write, crashpoint

MAX_SHARDS = 16


def default_cache_dir() -> Path:
    """``$LOOKALIKE_CACHE``, else ``$XDG_CACHE_HOME/lookalike``, else ``~/.cache/lookalike``."""
    env = os.environ.get("LOOKALIKE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lookalike"


def file_key(path: Path) -> str | None:
    """Identity of an image file's current content: absolute path, size and mtime in ns."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


class FeatureCache:
    """Cached vectors of one extractor: ``get`` what is known, ``put`` new rows, ``flush`` them.

    ``flush_seconds`` is how often an extraction flushes (0: after every batch, for resumable
    index builds); ``max_shards`` bounds the shard count by compaction (None: never compact).
    """

    def __init__(
        self,
        root: str | Path,
        extractor_key: str,
        description: dict | None = None,
        *,
        flush_seconds: float = 30.0,
        max_shards: int | None = MAX_SHARDS,
    ) -> None:
        self.folder = Path(root) / "features" / extractor_key
        self.description = description or {}
        self.flush_seconds = flush_seconds
        self.max_shards = max_shards
        self._rows: dict[str, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}
        self._load()

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []

    def _load(self) -> None:
        for shard in self._shards():
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, vectors = data["keys"], data["vectors"]
            except Exception:  # a foreign or damaged shard only costs a re-extraction
                continue
            for k, v in zip(keys.tolist(), vectors, strict=True):
                self._rows[k] = v

    def __len__(self) -> int:
        return len(self._rows) + len(self._pending)

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector for a file key, or None."""
        row = self._pending.get(key)
        return row if row is not None else self._rows.get(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        """Remember a vector; it reaches the disk on the next :meth:`flush`."""
        self._pending[key] = np.asarray(vector, dtype=np.float32)

    def flush(self) -> None:
        """Write pending vectors as a new shard (atomically); compact when shards pile up."""
        if not self._pending:
            return
        try:
            self._write_shard(self._pending)
            crashpoint("cache-flush")
            self._rows.update(self._pending)
            self._pending = {}
            # listing the folder after every flush would make a resumable build (a shard per
            # batch, never compacted) quadratic in its batches
            shards = self._shards() if self.max_shards is not None else []
            if self.max_shards is not None and len(shards) > self.max_shards:
                self._write_shard(self._rows)
                newest = self._shards()[-1]
                for old in shards:
                    if old != newest:
                        old.unlink(missing_ok=True)
        except OSError as exc:
            raise InputError(f"feature cache {self.folder}: cannot write ({exc})") from None

    def _write_shard(self, rows: dict[str, np.ndarray]) -> None:
        keys = np.array(list(rows), dtype=str)
        vectors = np.stack(list(rows.values())).astype(np.float32)
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        atomic_write(self.folder / name, lambda h: np.savez(h, keys=keys, vectors=vectors))
        meta = self.folder / "extractor.json"
        if self.description and not meta.exists():
            text = json.dumps(self.description, indent=2).encode()
            atomic_write(meta, lambda h: h.write(text))
