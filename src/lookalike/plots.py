"""Off-screen matplotlib figures for the PNGs lookalike writes (loss curves, comparisons).

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
