"""``python -m lookalike.cli``: the same command as ``lookalike``."""

from . import app

app()
