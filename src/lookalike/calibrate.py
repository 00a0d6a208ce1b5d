"""Score thresholds people can trust: measured on a labelled set for a target precision.

``calibrate(query, gallery, precision=0.99)`` searches a labelled query set against a labelled
gallery, pools every pair of the top-k short lists (positives: same label) and finds the loosest
score threshold whose precision still reaches the target, with the recall it keeps there. Recall
is over every same-label pair, listed or not, so a small ``k`` shows up as lost recall. The
threshold file it writes (``-o threshold.json``) is what ``dedup --threshold-file`` and
``search --min-score`` read back through :func:`load_threshold`, which refuses a file measured on
another kind of score.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .fileio import printable, write_json
from .images import ImageSet, loose_images_message
from .index import GalleryIndex, is_index
from .metrics import (
    PrecisionRecallCurve,
    accepts,
    is_higher_better,
    precision_recall_curve,
    scored_pairs,
)
from .pipeline import search
from .steps import default_shrinkage

if TYPE_CHECKING:
    from .config import SearchConfig

MAX_CURVE_POINTS = 200
THRESHOLD_KEYS = ("threshold", "score")
_NEEDS_LABELS = (
    "calibrate needs labels for queries and gallery: put images in class folders (query/<label>/x.jpg), "
    "or path,label CSVs: --query-labels / --gallery-labels (one labels.csv beside query/ and gallery/ serves both)"
)


@dataclass
class Calibration:
    """What a calibration found: the threshold for ``target_precision`` (None when no threshold
    reaches it), the precision and recall it achieves, and the whole precision/recall curve."""

    target_precision: float
    score: str
    model: dict[str, Any]
    curve: PrecisionRecallCurve
    k: int
    chosen: int | None = None
    skipped: dict[str, list[Any]] = field(default_factory=dict)
    refinement: dict[str, Any] = field(default_factory=dict)  # the search's steps, as a run reports them

    @property
    def reached(self) -> bool:
        """Whether some threshold reaches the target precision."""
        return self.chosen is not None

    @property
    def threshold(self) -> float | None:
        """The score threshold: pairs scoring at least this well (>= for similarities, <= for
        distances) are accepted."""
        return None if self.chosen is None else float(self.curve.thresholds[self.chosen])

    @property
    def precision(self) -> float | None:
        """Precision on this set at the threshold."""
        return None if self.chosen is None else float(self.curve.precision[self.chosen])

    @property
    def recall(self) -> float | None:
        """Recall on this set at the threshold (over every same-label pair)."""
        return None if self.chosen is None else float(self.curve.recall[self.chosen])

    @property
    def best_precision(self) -> float:
        """The highest precision any threshold reaches (the strictest ones are the candidates)."""
        return float(self.curve.precision.max()) if len(self.curve) else 0.0

    def to_json(self) -> dict[str, Any]:
        """The threshold file's document; the curve thinned to at most 200 points."""
        if self.chosen is None:
            raise InputError(self.unreachable_message())
        points = self.curve.thinned(MAX_CURVE_POINTS, keep=[self.chosen])
        return {
            "threshold": self.threshold,
            "score": self.score,
            "higher_is_better": self.curve.higher_is_better,
            "model": self.model,
            "refinement": self.refinement,
            "target_precision": self.target_precision,
            "precision": self.precision,
            "recall": self.recall,
            "pairs": self.curve.n_pairs,
            "positives": self.curve.n_positives,
            "k": self.k,
            "curve": self.curve.rows(points),
        }

    def write(self, path: str | Path) -> Path:
        """Write the threshold file atomically; refused when the target was not reached."""
        write_json(path, self.to_json())
        return Path(path)

    def plot_png(self) -> bytes:
        """PNG bytes of the precision/recall curve with the chosen threshold marked."""
        from .plots import precision_recall_png

        c = self.curve
        title = (
            f"{self.model.get('name', '')}: target precision {self.target_precision:g}, top-{self.k} pairs"
        )
        return precision_recall_png(
            c.thresholds, c.precision, c.recall, chosen=self.chosen, score=self.score, title=title
        )

    def unreachable_message(self) -> str:
        """One line saying the target precision is out of reach and what was reached."""
        if self.curve.n_positives == 0 or not len(self.curve):
            why = "no query has a same-label gallery image in its short list"
        else:
            best = int(np.argmax(self.curve.precision))
            why = (
                f"the best is {self.curve.precision[best]:.4f} (recall {self.curve.recall[best]:.4f}, "
                f"at {self.score} {self.curve.thresholds[best]:.6g})"
            )
        return f"precision {self.target_precision:g} is not reachable on this set: {why}; nothing written"

    def table(self, rows: int = 12) -> list[tuple[float, float, float, int, bool]]:
        """(threshold, precision, recall, pairs accepted, chosen) for about ``rows`` points spread
        along the curve, the chosen threshold among them."""
        if not len(self.curve):
            return []
        keep = [] if self.chosen is None else [self.chosen]
        idx = self.curve.thinned(max(2, rows), keep=keep)
        c = self.curve
        return [
            (
                float(c.thresholds[i]),
                float(c.precision[i]),
                float(c.recall[i]),
                int(c.accepted[i]),
                i == self.chosen,
            )
            for i in idx
        ]


def _check_precision(precision: float) -> None:
    if not (isinstance(precision, int | float) and math.isfinite(precision) and 0.0 < precision <= 1.0):
        raise InputError(f"--precision must be a number in (0, 1], got {precision!r}")


def _gallery_labels(
    gallery: str | Path | ImageSet, labels_csv: str | Path | None
) -> tuple[Any, dict[str, str]]:
    """(what to search, {gallery name: label}) for a folder, list, CSV, ImageSet or saved index."""
    if not isinstance(gallery, ImageSet) and is_index(gallery):
        if labels_csv is not None:
            raise InputError(
                f"{gallery} is an index: its labels are stored in it, --gallery-labels cannot apply"
            )
        index = GalleryIndex.open(gallery)
        if index.labels is None:
            raise InputError(_NEEDS_LABELS)
        return gallery, dict(zip(index.names, index.labels, strict=True))
    g_set = gallery if isinstance(gallery, ImageSet) else ImageSet.from_path(gallery, labels_csv=labels_csv)
    if g_set.labels is None:
        raise InputError(loose_images_message("calibrate", g_set) or _NEEDS_LABELS)
    return g_set, dict(zip(g_set.names, g_set.labels, strict=True))


def calibrate(
    query: str | Path | ImageSet,
    gallery: str | Path | ImageSet,
    precision: float = 0.99,
    *,
    config: SearchConfig | None = None,
    k: int = 10,
    query_labels: str | Path | None = None,
    gallery_labels: str | Path | None = None,
) -> Calibration:
    """Find the score threshold with the highest recall whose precision reaches ``precision`` on
    the top-``k`` pairs of a labelled split (``config`` chooses model, metric and refinement, as
    for ``lookalike.search``). Check ``.reached`` before using ``.threshold``."""
    _check_precision(precision)
    if not isinstance(k, int) or k < 1:
        raise InputError(f"-k must be a positive whole number, got {k!r}")
    q_set = query if isinstance(query, ImageSet) else ImageSet.from_path(query, labels_csv=query_labels)
    if q_set.labels is None:
        raise InputError(loose_images_message("calibrate", q_set) or _NEEDS_LABELS)
    searched, g_label = _gallery_labels(gallery, gallery_labels)
    run = search(q_set, searched, k=k, config=config)
    q_label = dict(zip(q_set.names, q_set.labels, strict=True))
    scores, hits, n_positives = scored_pairs(
        run.indices,
        run.scores,
        [q_label[n] for n in run.query_names],
        [g_label[n] for n in run.gallery_names],
    )
    higher = is_higher_better(run.metric)
    curve = precision_recall_curve(scores, hits, n_positives, higher_is_better=higher)
    chosen = curve.best_for_precision(precision) if n_positives else None
    return Calibration(float(precision), run.metric, run.model, curve, k, chosen, run.skipped, run.refinement)


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold read back from its file: the value, the score it applies to and the
    direction, and what it was measured to give (``float(t)`` is the value)."""

    value: float
    score: str
    higher_is_better: bool
    model: dict[str, Any]
    target_precision: float | None = None
    precision: float | None = None
    recall: float | None = None
    path: str = ""

    def __float__(self) -> float:
        return self.value

    def accepts(self, scores: np.ndarray | float) -> np.ndarray:
        """Which scores pass: at least the threshold for similarities, at most it for distances."""
        return accepts(scores, self.value, higher_is_better=self.higher_is_better)


def load_threshold(
    path: str | Path,
    score: str | None = None,
    model: str | dict[str, Any] | None = None,
    refinement: dict[str, Any] | None = None,
) -> Threshold:
    """Read a threshold file written by ``lookalike calibrate``; with ``score`` (the search's
    ``SearchRun.metric``, e.g. "cosine"), ``model`` (a name or ``describe()`` dict) or
    ``refinement`` (the steps as a run reports them), a file measured on another kind of score,
    another model or with other score-changing steps is refused with one line (a file that
    records no steps, as older ones, is taken as it is)."""
    p = Path(path)
    where = printable(str(p))
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{where}: no such threshold file (write one with `lookalike calibrate`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}: not a threshold file written by `lookalike calibrate` ({exc})") from None
    if not isinstance(doc, dict) or any(key not in doc for key in THRESHOLD_KEYS):
        raise InputError(f'{where}: not a threshold file: it needs "threshold" and "score" keys')
    value, kind = doc["threshold"], doc["score"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f'{where}: "threshold" must be a finite number, got {value!r}')
    if not isinstance(kind, str):
        raise InputError(f'{where}: "score" must name a kind of score, got {kind!r}')
    if score is not None and kind != score:
        raise InputError(
            f"{where}: a threshold for {kind} scores, but this search scores by {score}; "
            "calibrate again with the same model, --metric and refinement"
        )
    stored = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    if model is not None:
        _check_model(where, stored, model)
    if "refinement" in doc and not isinstance(doc["refinement"], dict):
        raise InputError(f'{where}: "refinement" must be an object of steps, got {doc["refinement"]!r}')
    if refinement is not None and "refinement" in doc:
        _check_steps(where, doc["refinement"], refinement)
    higher = doc.get("higher_is_better")
    return Threshold(
        value=float(value),
        score=kind,
        higher_is_better=is_higher_better(kind) if not isinstance(higher, bool) else higher,
        model=stored,
        target_precision=doc.get("target_precision"),
        precision=doc.get("precision"),
        recall=doc.get("recall"),
        path=str(p),
    )


def threshold_value(
    value: float | str | Path,
    score: str | None = None,
    model: str | dict[str, Any] | None = None,
    refinement: dict[str, Any] | None = None,
) -> float:
    """A score threshold given as a number (or its text, as ``--min-score 0.8``) or as a file written
    by ``lookalike calibrate`` (checked against ``score``, ``model`` and ``refinement`` as
    :func:`load_threshold` does): one place for ``search --min-score``, ``serve --min-score`` and the server's requests."""
    if isinstance(value, bool):
        raise InputError(f"--min-score must be a number or a threshold file, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(str(value))
        except ValueError:
            return float(load_threshold(value, score=score, model=model, refinement=refinement))
    if not math.isfinite(number):
        raise InputError(f"--min-score must be a finite number or a threshold file, got {value!r}")
    return number


def _check_model(where: str, stored: dict[str, Any], model: str | dict[str, Any]) -> None:
    """Refuse a threshold measured with another model (name, or name and options)."""
    name = model if isinstance(model, str) else model.get("name")
    if stored.get("name") != name:
        raise InputError(
            f"{where}: a threshold measured with model {stored.get('name')!r}, not {name!r}; "
            "scores of different models are not comparable: calibrate this one"
        )
    if isinstance(model, dict) and "options" in model and stored.get("options") != model["options"]:
        raise InputError(
            f"{where}: a threshold measured with {name} options {stored.get('options')}, not {model['options']}; "
            "calibrate with the same options"
        )


def score_steps(refinement: dict[str, Any]) -> dict[str, Any]:
    """The steps of a run's refinement (``SearchRun.refinement``, a search's or an index's) that
    change what a score means, in one form whether they ran at search time or were stored with
    the index: whitening (dimension asked for, shrinkage, views it was learned from), DBA, query expansion, query scales and
    resize, query regions, gallery normalisation and score normalisation (k, and whether a
    background set was given).
    Re-ranking names its own kind of score; the gallery's regions are the model's options.
    TypeError for a refinement that is not shaped as a run reports it."""

    def step(where: dict[str, Any], name: str) -> dict[str, Any]:
        value = where.get(name)
        if value is None or value is False:
            return {}
        if not isinstance(value, dict):
            raise TypeError(f"{name} is {value!r}, not an object of settings")
        return value

    index = step(refinement, "index")
    out: dict[str, Any] = {}
    whiten = step(refinement, "whiten") or step(index, "whiten")
    if whiten:
        out["whiten"] = {"dim": whiten.get("requested_dim", whiten.get("dim")), "shrinkage": whiten.get("shrinkage")}
        if whiten.get("views"):  # learned from edited views (absent: PCA, as files before it record)
            out["whiten"]["views"] = whiten["views"]
    for name in ("dba", "qe"):
        found = step(refinement, name) or step(index, name)
        if found:
            out[name] = {"k": found.get("k"), "alpha": found.get("alpha")}
    for name, kind in (("query_scales", bool), ("query_resize", str)):
        value = refinement.get(name)
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name} is {value!r}, not a {kind.__name__}")
        if value:
            out[name] = value
    if step(refinement, "regions").get("query"):  # (the gallery's regions are the model's options)
        out["query_regions"] = True
    gallery_norm = step(refinement, "gallery_norm")
    if gallery_norm:
        out["gallery_norm"] = {"k": gallery_norm.get("k")}
    norm = step(refinement, "score_norm")
    if norm:
        out["score_norm"] = {"k": norm.get("k"), "background": norm.get("background") is not None}
    return out


def _shown(value: Any) -> str:
    """A step's settings in a few words: ``dim 8, shrinkage 10.0``; ``on``; ``off``."""
    if value is None:
        return "off"
    if value is True:
        return "on"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _check_steps(where: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a threshold measured with other score-changing steps than this run's."""
    ours = score_steps(current)
    try:
        theirs = score_steps(stored)
    except TypeError as exc:
        raise InputError(f'{where}: "refinement" is not as lookalike calibrate writes it: {exc}') from None
    if ours == theirs:
        return
    differ = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
    shown = "; ".join(f"{k}: {_shown(theirs.get(k))} there, {_shown(ours.get(k))} here" for k in differ)
    # the flags that make a new calibration match this run's steps (dedup's: no query scales, PCA)
    flags = [flag for step, flag in (("query_scales", "--no-query-scales"), ("gallery_norm", "--gallery-norm 0"))
             if step in theirs and step not in ours]
    mine, measured = ours.get("whiten") or {}, theirs.get("whiten") or {}
    views = mine.get("views", 0)  # (a file from before --whiten-views records none: PCA)
    if mine and measured and mine.get("dim") == measured.get("dim") and measured.get("views", 0) != views:
        flags.append(f"--whiten-views {views}")
        if mine.get("shrinkage") not in (None, default_shrinkage(views)):
            flags.append(f"--whiten-shrinkage {mine['shrinkage']:g}")
    hint = f" ({' '.join(flags)}, as this run has them)" if flags else ""
    raise InputError(
        f"{where}: a threshold measured with other steps ({shown}); scores change with them: "
        f"calibrate again with the same refinement{hint}"
    )
