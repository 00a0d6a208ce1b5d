"""Components from outside the package: modules that register extractors, detectors, training
methods, index backends or re-rankers when imported.

The ``lookalike`` command imports, before it parses anything, every module named in
``$LOOKALIKE_PLUGINS`` (comma-separated) and every entry point of the group ``lookalike.plugins``
(``[project.entry-points."lookalike.plugins"] mine = "my_package.lookalike_plugin"``), so a new
component is one file plus one registration, usable by every command. In Python, importing the
module yourself is enough.
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points

from .errors import InputError

ENV = "LOOKALIKE_PLUGINS"
GROUP = "lookalike.plugins"
log = logging.getLogger("lookalike")
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import the plugin modules (once each); returns their names. A module named in the
    environment that cannot be imported is an error naming it; a broken entry point of some
    installed package is a warning, so it cannot stop every command."""
    names = []
    for name in filter(None, (n.strip() for n in os.environ.get(ENV, "").split(","))):
        if name not in _loaded:
            try:
                importlib.import_module(name)
            except Exception as exc:
                raise InputError(f"${ENV}: cannot import plugin module {name!r} ({exc})") from None
            _loaded.add(name)
        names.append(name)
    for point in entry_points(group=GROUP):
        if point.value in _loaded:
            continue
        try:
            point.load()
        except Exception as exc:  # another package's plugin: report it, keep working
            log.warning("plugin %s (%s) could not be loaded: %s", point.name, point.value, exc)
            continue
        _loaded.add(point.value)
        names.append(point.value)
    return names
