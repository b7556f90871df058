"""Methods by name: each method module registers its class with ``@register_method("name")``, so
the model, trainer, checkpoints and tools find a method's parts here and name none of them.
Adding a method is one module plus its configs (README, "Adding a method")."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Type

from clipml.errors import ConfigError

METHODS: Dict[str, Type["Method"]] = {}  # noqa: F821 (clipml.methods.base.Method)


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: the method ``model.method=name``; its ``options`` dataclass (if any) is
    the config section ``model.<name>``."""
    if not name.isidentifier():
        raise ValueError(f"a method name is a Python identifier (it is also a config key), got {name!r}")

    def register(cls: type) -> type:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered (by {METHODS[name].__module__})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return register


def get_method(name: str) -> "Method":  # noqa: F821
    """A fresh instance of the method registered as `name`; an unknown name is a ConfigError."""
    if name not in METHODS:
        raise ConfigError(f"model.method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]()


def method_sections() -> Dict[str, Optional[type]]:
    """Each method's config section type (None: it has none), for `clipml.config.selected_section`."""
    return {name: cls.options for name, cls in METHODS.items()}


def moved_keys() -> Dict[str, str]:
    """Flat ``model.*`` keys of configs written before sections -> ``<method>.<key>``."""
    return {old: f"{name}.{new}" for name, cls in METHODS.items() for old, new in cls.moved.items()}


def upgrade_model_dict(data: Dict, default_method: str) -> Dict:
    """A saved ``model`` mapping of an older clipml (every method's keys in one flat section, and
    a ``dualcoop``/``taidpt`` section whatever the method) in today's layout: the selected method's
    keys moved into its section, the other methods' keys dropped (they had no effect)."""
    out = dict(data)
    chosen = out.get("method", default_method)
    for name, cls in METHODS.items():
        section = out.pop(name, None)
        section = dict(section) if isinstance(section, dict) else {}
        for old, new in cls.moved.items():
            if old in out:
                section.setdefault(new, out.pop(old))
        if name == chosen and cls.options is not None and section:
            out[name] = section
    return out
