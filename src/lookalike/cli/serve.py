"""``lookalike serve``: the HTTP API and search page over a saved index."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from ..config import SearchConfig
from ..errors import InputError
from ._app import app, err, friendly
from .options import SERVE_CONFIG, uses


@app.command("serve")
@friendly
@uses(SERVE_CONFIG)
def serve_command(
    index: Annotated[Path, typer.Argument(help="Index folder to serve.")],
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    k: Annotated[int, typer.Option("-k", min=1, help="Default results per search.")] = 10,
    max_k: Annotated[int, typer.Option("--max-k", min=1, help="Most results a request may ask for.")] = 100,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Upload size cap (413 past it).")
    ] = 20.0,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Largest image accepted.")
    ] = 50_000_000,
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    max_decodes: Annotated[
        int | None,
        typer.Option("--max-decodes", min=1, help="Uploads decoded at once (default: the cores, at most 4)."),
    ] = None,
    max_waiting: Annotated[
        int | None,
        typer.Option(
            "--max-waiting", min=0, help="Searches that may wait for a slot (default 4 x max-decodes)."
        ),
    ] = None,
    queue_timeout: Annotated[
        float,
        typer.Option("--queue-timeout", min=0.001, help="Seconds a search waits for a slot before 503."),
    ] = 30.0,
    min_score: Annotated[
        str | None,
        typer.Option(
            "--min-score",
            help="Threshold of POST /check: a score, or a threshold file from `lookalike calibrate`.",
        ),
    ] = None,
    config: SearchConfig | None = None,
) -> None:
    """Serve an index over HTTP: POST /search, a search page at /, /health and /docs. Search
    settings as for `lookalike search`: --qe and --rerank run on every request."""
    import uvicorn

    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level.lower() not in levels:
        raise InputError(f"--log-level: unknown level {log_level!r}; choose one of {', '.join(levels)}")
    log_level = log_level.lower()

    from ..server import create_app

    app_ = create_app(
        index,
        k=k,
        max_k=max_k,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        title=title,
        max_decodes=max_decodes,
        max_waiting=max_waiting,
        queue_timeout=queue_timeout,
        config=config,
        min_score=min_score,
    )
    err.print(f"serving {index} on http://{host}:{port}/ (API docs at /docs)")
    # uvicorn stops on SIGTERM itself and raises it again after a graceful shutdown: let that end
    # the process as it always did, not as lookalike's Ctrl-C path for batch commands
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    uvicorn.run(app_, host=host, port=port, log_level=log_level)
