"""Off-screen matplotlib figures for the PNGs lookalike writes (loss curves, comparisons, calibrations).

Figures are drawn on their own Agg canvas, so making one never switches pyplot's global backend
in the caller's program.
"""

from __future__ import annotations

import io
from typing import Any


def figure(**kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` (``figsize``, ``dpi``, ...) attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    """The figure, laid out tightly, as PNG bytes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def precision_recall_png(
    thresholds: Any,
    precision: Any,
    recall: Any,
    *,
    chosen: int | None = None,
    score: str = "score",
    title: str = "",
) -> bytes:
    """PNG bytes of a calibration: precision against recall, and both against the threshold,
    with the chosen threshold marked, so a person can see what a stricter one would cost."""
    fig = figure(figsize=(9.0, 3.8), dpi=120)
    pr, by_t = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    pr.plot(recall, precision, color="C0")
    pr.set_xlabel("recall")
    pr.set_ylabel("precision")
    pr.set_xlim(0, 1.02)
    by_t.plot(thresholds, precision, color="C0", label="precision")
    by_t.plot(thresholds, recall, color="C1", label="recall")
    by_t.set_xlabel(f"threshold ({score})")
    if chosen is not None:
        t, p, r = thresholds[chosen], precision[chosen], recall[chosen]
        pr.plot([r], [p], "o", color="C3", label=f"threshold {t:.4g}: P {p:.3f}, R {r:.3f}")
        pr.legend(fontsize=8, loc="lower left")
        by_t.axvline(t, color="C3", linestyle="--", linewidth=1)
    by_t.legend(fontsize=8)
    for ax in (pr, by_t):
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(fig)
