"""Built-in plugins: modules that, when imported, register datasets, caption sources, vocabularies
and backbone names into the library's registries, exactly as a user's own module would. The
registries import them on their first lookup, so the library never imports them itself: the lab
(`clipml.lab`, the synthetic world and the toy CLIPs) is one of them, not part of clipml.data."""

from __future__ import annotations

import importlib

BUILTIN = ("clipml.lab",)
_loaded = False


def load_plugins() -> None:
    """Import the built-in plugins once (they register themselves); called by every registry lookup."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plugin that looks a name up while it registers must not re-enter
    for name in BUILTIN:
        importlib.import_module(name)
