"""Class vocabularies and prompt templates shipped as package data (`clipml/assets/prompts/`).

A vocabulary file lists a dataset's classes in the dataset's order, each as its official name
or `official: readable`; the readable names are what CLIP reads. An optional `synonyms:` section
maps a class (official or readable name) to other words for it, which label captions
(clipml.data.captions).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import yaml

from clipml.data._files import read_text
from clipml.data.base import MultiLabelSplit
from clipml.errors import ConfigError, DataError
from clipml.plugins import load_plugins


def _asset(name: str):
    return resources.files("clipml").joinpath("assets", "prompts", name)


def available_vocabularies() -> List[str]:
    return sorted(p.name[: -len(".yaml")] for p in _asset("").iterdir() if p.name.endswith(".yaml"))


def vocabulary(dataset: str) -> List[Tuple[str, str]]:
    """(official name, readable name) per class, in the dataset's class order."""
    asset = _asset(f"{dataset}.yaml")
    if not asset.is_file():
        raise ConfigError(
            f"no shipped class vocabulary for {dataset!r} (have: {', '.join(available_vocabularies())}); "
            "its class names come from the dataset's own class file"
        )
    entries = yaml.safe_load(asset.read_text(encoding="utf-8"))["classes"]
    pairs = []
    for entry in entries:
        if isinstance(entry, dict) and len(entry) == 1:
            official, readable = next(iter(entry.items()))
        else:
            official = readable = entry
        pairs.append((str(official), str(readable)))
    return pairs


_REGISTERED_SYNONYMS: Dict[str, Mapping[str, Sequence[str]]] = {}


def register_synonyms(dataset: str, synonyms: Mapping[str, Sequence[str]]) -> None:
    """Other words for the classes of a dataset without a vocabulary file (the lab's world registers
    its own): {class name: [phrase, ...]}; classes a split lacks are passed over."""
    _REGISTERED_SYNONYMS[dataset] = synonyms


def shipped_synonyms(dataset: str, known: Optional[Set[str]] = None) -> Dict[str, List[str]]:
    """The `synonyms:` section of a dataset's vocabulary file, else its registered synonyms (of the
    `known` class names only); {} when it has neither."""
    load_plugins()
    if dataset in _REGISTERED_SYNONYMS:
        return {name: list(words) for name, words in _REGISTERED_SYNONYMS[dataset].items()
                if known is None or name in known}
    if dataset not in available_vocabularies():
        return {}
    asset = _asset(f"{dataset}.yaml")
    entries = yaml.safe_load(asset.read_text(encoding="utf-8")).get("synonyms") or {}
    if not isinstance(entries, dict):
        raise DataError(f"vocabulary {dataset}: 'synonyms' must map class names to lists of words")
    return entries


def class_names(dataset: str) -> List[str]:
    """Readable class names of a shipped vocabulary, in the dataset's order."""
    return [readable for _, readable in vocabulary(dataset)]


def official_names(dataset: str) -> List[str]:
    return [official for official, _ in vocabulary(dataset)]


def readable_names(split: MultiLabelSplit) -> List[str]:
    """Names to prompt CLIP with for `split`'s classes.

    Datasets with a shipped vocabulary must list exactly its official names, in order (a
    different order would silently attach names to the wrong columns); other datasets use
    their own class names with underscores turned into spaces. Two classes that read alike
    (`hot_dog` and `hot dog`) are refused: they would share one prompt in a checkpoint.
    """
    if split.dataset not in available_vocabularies():
        return _distinct(split, [name.replace("_", " ") for name in split.classes])
    pairs = vocabulary(split.dataset)
    if [official for official, _ in pairs] != list(split.classes):
        mismatch = next(
            (i for i, (a, b) in enumerate(zip(pairs, split.classes)) if a[0] != b), min(len(pairs), len(split.classes))
        )
        raise DataError(
            f"{split.dataset}/{split.split}: classes do not match the shipped vocabulary "
            f"({len(split.classes)} vs {len(pairs)} classes, first difference at index {mismatch})"
        )
    return _distinct(split, [readable for _, readable in pairs])


def _distinct(split: MultiLabelSplit, readable: List[str]) -> List[str]:
    first = {}
    for index, name in enumerate(readable):
        if name in first:
            raise DataError(
                f"{split.dataset}/{split.split}: classes {split.classes[first[name]]!r} (index {first[name]}) and "
                f"{split.classes[index]!r} (index {index}) both read as {name!r}; prompts and checkpoints key "
                "classes by that name, so rename one"
            )
        first[name] = index
    return readable


def available_template_sets() -> List[str]:
    """Names of the shipped template sets: `default` (templates.txt) and each templates_<name>.txt."""
    names = [p.name[len("templates_"): -len(".txt")] for p in _asset("").iterdir()
             if p.name.startswith("templates_") and p.name.endswith(".txt")]
    return ["default", *sorted(names)]


def templates(name: str = "default") -> List[str]:
    """Prompt templates with one `{}` placeholder, in file order, repeated lines kept: a shipped
    set (`available_template_sets()`: default, single, imagenet, taidpt) or a `.txt` file of them."""
    if name.endswith(".txt"):
        text = read_text(Path(name), "template file")
    else:
        asset = _asset("templates.txt" if name == "default" else f"templates_{name}.txt")
        if not asset.is_file():
            raise ConfigError(f"no prompt template set named {name!r} (have: {', '.join(available_template_sets())})")
        text = asset.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if line and not line.startswith("#")]
    bad = [line for line in found if line.count("{}") != 1]
    if bad:
        raise DataError(f"template set {name!r}: templates need exactly one '{{}}', found {bad}")
    if not found:
        raise DataError(f"template set {name!r} holds no template")
    return found
