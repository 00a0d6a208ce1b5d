"""lookalike: for every query image, the gallery images that show the same thing.

The public API: ``search`` and ``evaluate`` run the whole pipeline; ``ImageSet``,
``create_extractor``, ``embed`` and ``topk`` are its parts.
"""

from .errors import ImageError, InputError, LookalikeError, WeightsUnavailableError
from .extract import Embeddings, ExtractOptions, embed
from .features import Extractor, create_extractor, list_extractors
from .images import ImageSet, load_image
from .knn import topk
from .metrics import RetrievalMetrics, average_precision
from .pipeline import SearchRun, evaluate, search

__version__ = "0.1.0"

__all__ = [
    "Embeddings",
    "ExtractOptions",
    "Extractor",
    "ImageError",
    "ImageSet",
    "InputError",
    "LookalikeError",
    "RetrievalMetrics",
    "SearchRun",
    "WeightsUnavailableError",
    "average_precision",
    "create_extractor",
    "embed",
    "evaluate",
    "list_extractors",
    "load_image",
    "search",
    "topk",
]
