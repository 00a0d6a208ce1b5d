"""The ``lookalike`` command: option groups declared once, thin commands over the Python API.

``_app`` holds the Typer app and the shared error path, ``options`` the option groups that build
one :class:`~lookalike.config.SearchConfig`, ``output`` what commands print; the commands live in
``search``, ``index``, ``train`` and ``serve``.
"""

from . import calibrate, dedup, index, search, serve, train  # noqa: F401  (registers the commands)
from ._app import app

__all__ = ["app"]
