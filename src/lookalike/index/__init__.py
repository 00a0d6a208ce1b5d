"""Indexes: backends behind one protocol, and saved gallery indexes with incremental updates."""

from .backends import (
    ExactIndex,
    FaissIndex,
    VectorIndex,
    backend_file,
    create_backend,
    load_backend,
    register_backend,
    resolve_backend,
)
from .milvus import MilvusIndex
from .store import AddReport, GalleryIndex, build_index, is_index

__all__ = [
    "AddReport",
    "ExactIndex",
    "FaissIndex",
    "GalleryIndex",
    "MilvusIndex",
    "VectorIndex",
    "backend_file",
    "build_index",
    "create_backend",
    "is_index",
    "load_backend",
    "register_backend",
    "resolve_backend",
]
