"""Backbone families by name: each family module registers how it builds a tower from the source
part of a spec (``FAMILY:SOURCE``), and short names register the spec they stand for (the lab, a
built-in plugin of clipml.plugins, registers its toys ``toy`` and ``toy-rn``). `load_backbone`
dispatches through here, so adding a family is one module plus its ``@register_family`` line
(README, "Adding a backbone family")."""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

from clipml.backbones.config import BackboneConfig
from clipml.errors import BackboneError
from clipml.plugins import load_plugins

Builder = Callable[[str, BackboneConfig], "FrozenCLIP"]  # noqa: F821 (source, config) -> frozen tower


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    build: Builder
    usage: str  # the spec form shown in errors, e.g. "open_clip:MODEL@TAG_OR_FILE"


FAMILIES: Dict[str, Family] = {}
ALIASES: Dict[str, Callable[[], str]] = {}  # short spec -> the full spec it stands for (resolved at load)


def register_family(name: str, usage: str) -> Callable[[Builder], Builder]:
    """Decorator: `build(source, config)` makes the towers of specs ``name:source``."""
    if ":" in name or not name:
        raise ValueError(f"a backbone family name is a non-empty word without ':', got {name!r}")

    def register(build: Builder) -> Builder:
        if name in FAMILIES and FAMILIES[name].build is not build:
            raise ValueError(f"backbone family {name!r} is already registered (by {FAMILIES[name].build.__module__})")
        FAMILIES[name] = Family(name, build, usage)
        return build

    return register


def register_alias(name: str, resolve: Callable[[], str]) -> None:
    """A short spec (e.g. "toy") standing for the full spec `resolve()` returns when loaded."""
    ALIASES[name] = resolve


def resolve(spec: str) -> Tuple[Family, str]:
    """(family, source) of a spec, aliases expanded; an unknown spec is one BackboneError listing the forms."""
    load_plugins()  # the plugins' aliases (the lab's toys)
    if spec in ALIASES:
        spec = ALIASES[spec]()
    name, _, source = spec.partition(":")
    if name in FAMILIES and source:
        return FAMILIES[name], source
    forms = [f"'{family.usage}'" for family in FAMILIES.values()]
    raise BackboneError(f"unknown backbone spec {spec!r}: expected {', '.join(forms)} or one of {', '.join(ALIASES)}")
