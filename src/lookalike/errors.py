"""Errors lookalike raises on purpose: each carries a message a user can act on."""

from __future__ import annotations

from pathlib import Path

# Exit codes of the ``lookalike`` command, the same in every subcommand.
EXIT_OK = 0
EXIT_NO_INPUT = 1  # nothing readable to work on, or --strict met an unreadable image
EXIT_USAGE = 2  # a bad option, path or label file, or a request refused to protect files
EXIT_INTERRUPTED = 130  # Ctrl-C


class LookalikeError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class InputError(LookalikeError):
    """A path, option or label file the user gave cannot be used."""


class ImageError(LookalikeError):
    """One image file cannot be decoded (empty, truncated, not an image, too large)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsUnavailableError(LookalikeError):
    """Pretrained weights are neither in the local cache nor given as a file."""


class NothingToProcessError(LookalikeError):
    """Every image of a set was unreadable, so there is nothing to search."""
