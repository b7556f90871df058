"""Captions as training data (TaI-DPT, METHODS §12): caption sources and class labels read off
the caption's words.

A caption is labelled with every class it names: the class's official or readable name, one of
its synonyms (the `synonyms:` section of the dataset's vocabulary file, plus an optional file of
the user's) or a plural of any of these. Matching is on whole words, longest phrase first, so
"hot dog" is a hot dog and not a dog, and "teddy bear" is not a bear. Captions that name no class
are left out (TaI-DPT does the same); every class missing from a caption counts as absent.

Sources: COCO's `captions_*.json`, a text file (one caption per line), JSON lines
(`{"caption": ...}`), a CSV file with a caption column, or a source registered by name with
`register_caption_source` (the lab registers "synthetic": the synthetic world's captions from its
pretrain stream only, never the streams that make the train/val/test splits).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import yaml

from clipml.data._files import read_text
from clipml.config import require
from clipml.errors import ConfigError, DataError
from clipml.plugins import load_plugins

logger = logging.getLogger(__name__)
FILE_OPTIONS = ("limit", "seed", "column")  # what read_caption_file takes

# A named caption source: (dataset, the dataset's data.options, **data.captions.options) ->
# (captions, their true labels [N, K] or None, the K class names of those labels or None).
CaptionReader = Callable[..., Tuple[List[str], Optional[np.ndarray], Optional[List[str]]]]
_SOURCES: Dict[str, CaptionReader] = {}


def register_caption_source(name: str, read: CaptionReader) -> None:
    """Make `data.captions.source=name` read its captions with `read` (see CaptionReader)."""
    if not name or "." in name or "/" in name:
        raise ConfigError(f"a caption source name is a word, not a file name; got {name!r}")
    _SOURCES[name] = read


def caption_sources() -> List[str]:
    """The registered caption source names (any other source is a file)."""
    load_plugins()
    return sorted(_SOURCES)


@dataclasses.dataclass
class CaptionConfig:
    """Where text-as-image training (model.method=taidpt) reads its captions."""

    source: Optional[str] = None  # COCO captions JSON, .txt / .jsonl / .csv file, or a registered source ("synthetic")
    # Reader options. Files: limit (a seeded random subset of that many captions), seed, and
    # column (the JSONL key / CSV column, default "caption"). "synthetic" (the lab's): num_captions
    # and seed, every other key goes to clipml.lab.world.SceneGenerator (image_size, preset, ...);
    # the dataset's own data.options (seed, image_size, ...) are the defaults.
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    synonyms: Optional[str] = None  # YAML {synonyms: {class: [phrase, ...]}} added to the shipped ones
    # Also train on class prompts: every template of class_prompt_templates filled with every class
    # name, each prompt labelled with its class alone (TaI-DPT adds such prompts to its captions).
    class_prompts: bool = True
    # Templates of the class prompts: a shipped set (clipml/assets/prompts/templates_<name>.txt):
    # "default" (16 hand-made templates), "single", "imagenet" (CLIP's 80 ImageNet templates),
    # "taidpt" (TaI-DPT's: 'a photo of a {}.' 9 times, then the 80 ImageNet ones), or a .txt file,
    # one template a line. A template listed k times gives k prompts (repetition weights it).
    class_prompt_templates: str = "default"

    def __post_init__(self) -> None:
        from clipml.data.vocab import available_template_sets

        require(self.source != "", "data.captions.source", self.source, "a captions file, a source name or null")
        if self.source is not None and self.source not in caption_sources():
            unknown = sorted(set(self.options) - set(FILE_OPTIONS))
            if unknown:
                raise ConfigError(f"data.captions.options: unknown keys {unknown} for a caption file "
                                  f"(accepted: {', '.join(FILE_OPTIONS)})")
        for key in ("limit", "num_captions"):
            value = self.options.get(key)
            if value is not None:
                require(isinstance(value, int) and value >= 1, f"data.captions.options.{key}", value,
                        "a whole number of captions, at least 1")
        name = self.class_prompt_templates
        if name not in available_template_sets() and not name.endswith(".txt"):
            raise ConfigError(f"data.captions.class_prompt_templates must be a shipped template set "
                              f"({', '.join(available_template_sets())}) or a .txt file, got {name!r}")


# Words --------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")

_IRREGULAR_PLURALS: Dict[str, Tuple[str, ...]] = {
    "person": ("people", "persons"),
    "man": ("men",),
    "woman": ("women",),
    "child": ("children",),
    "mouse": ("mice",),
    "goose": ("geese",),
    "foot": ("feet",),
    "tooth": ("teeth",),
    "ox": ("oxen",),
    "calf": ("calves",),
    "cactus": ("cacti",),
    "fish": ("fish",),
    "sheep": ("sheep",),
    "deer": ("deer",),
}


def words(text: str) -> List[str]:
    """Lower-case words of `text`; punctuation and hyphens separate words ("t-shirt": t, shirt)."""
    return _WORD.findall(text.lower())


def plural_forms(word: str) -> Set[str]:
    """English plural candidates of a noun (regular rules plus a table of irregular ones).

    Candidates that are not words do no harm: they never occur in a caption."""
    forms = {word + "s", *_IRREGULAR_PLURALS.get(word, ())}
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.add(word + "es")
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    elif word.endswith("f"):
        forms.add(word[:-1] + "ves")
    if word.endswith("man") and word != "man":  # fireman -> firemen
        forms.add(word[:-3] + "men")
    return forms


def phrase_forms(phrase: str) -> Set[Tuple[str, ...]]:
    """Word tuples that name `phrase`: itself, with a plural last word, and (for several words)
    written as one word ("motor bike" -> "motorbike", "motorbikes")."""
    base = tuple(words(phrase))
    if not base:
        return set()
    forms = {base} | {base[:-1] + (plural,) for plural in plural_forms(base[-1])}
    if len(base) > 1:
        joined = "".join(base)
        forms |= {(joined,)} | {(plural,) for plural in plural_forms(joined)}
    return forms


class CaptionLabeler:
    """Derives class labels from caption text by matching class phrases on whole words."""

    def __init__(self, phrases: Sequence[Iterable[str]]) -> None:
        """`phrases[c]`: the names and synonyms of class c (plurals are added here)."""
        self.num_classes = len(phrases)
        self._forms: Dict[Tuple[str, ...], Set[int]] = {}
        for index, names in enumerate(phrases):
            for name in names:
                for form in phrase_forms(name):
                    self._forms.setdefault(form, set()).add(index)
        self._longest = max((len(form) for form in self._forms), default=0)

    def classes_named(self, caption: str) -> Set[int]:
        """Indices of the classes `caption` names; the longest phrase at a position wins."""
        tokens = words(caption)
        found: Set[int] = set()
        position = 0
        while position < len(tokens):
            for length in range(min(self._longest, len(tokens) - position), 0, -1):
                classes = self._forms.get(tuple(tokens[position : position + length]))
                if classes:
                    found |= classes
                    position += length
                    break
            else:
                position += 1
        return found

    def labels(self, captions: Sequence[str]) -> np.ndarray:
        """int8 [N, C]: 1 where the caption names the class, else 0."""
        out = np.zeros((len(captions), self.num_classes), dtype=np.int8)
        for row, caption in enumerate(captions):
            out[row, sorted(self.classes_named(caption))] = 1
        return out


# Synonyms -----------------------------------------------------------------------------------
def read_synonyms(path: str, official: Sequence[str], readable: Sequence[str]) -> Dict[int, List[str]]:
    """Extra phrases per class index from a YAML file `{synonyms: {class: [phrase, ...]}}`; a
    class may be named by its official or its readable name."""
    try:
        data = yaml.safe_load(read_text(Path(path), "synonyms file"))
    except yaml.YAMLError as error:
        raise DataError(f"synonyms file {path} is not valid YAML: {error}") from None
    entries = data.get("synonyms") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise DataError(f"synonyms file {path}: expected a mapping 'synonyms: {{class: [phrase, ...]}}'")
    return _synonym_entries(entries, official, readable, str(path))


def _synonym_entries(entries: Mapping, official: Sequence[str], readable: Sequence[str],
                     where: str) -> Dict[int, List[str]]:
    index = {name: i for i, name in enumerate(official)}
    index.update((name, i) for i, name in enumerate(readable))
    out: Dict[int, List[str]] = {}
    for name, phrases in entries.items():
        if name not in index:
            raise DataError(f"{where}: synonyms for {name!r}, which is not one of the dataset's classes")
        if isinstance(phrases, str):
            phrases = [phrases]
        if not isinstance(phrases, list) or not all(isinstance(p, str) and words(p) for p in phrases):
            raise DataError(f"{where}: synonyms of {name!r} must be a list of words or phrases, got {phrases!r}")
        out.setdefault(index[name], []).extend(phrases)
    return out


def class_phrases(dataset: str, official: Sequence[str], readable: Sequence[str],
                  extra: Optional[str] = None) -> List[List[str]]:
    """Names and synonyms of every class: official and readable name, the dataset's shipped or
    registered synonyms (clipml.data.vocab.shipped_synonyms) and those of the file `extra`."""
    from clipml.data.vocab import shipped_synonyms

    phrases = [sorted({o, r}) for o, r in zip(official, readable)]
    shipped = shipped_synonyms(dataset, known=set(official) | set(readable))
    sources = [_synonym_entries(shipped, official, readable, f"vocabulary {dataset}")]
    if extra:
        sources.append(read_synonyms(extra, official, readable))
    for source in sources:
        for index, more in source.items():
            phrases[index].extend(more)
    return phrases


# Sources ------------------------------------------------------------------------------------
def _subset(captions: List[str], limit: Optional[int], seed: int, where: str) -> List[str]:
    if limit is None or limit >= len(captions):
        return captions
    if limit < 1:
        raise ConfigError(f"{where}: caption limit must be at least 1, got {limit}")
    chosen = np.sort(np.random.RandomState(seed).permutation(len(captions))[:limit])
    return [captions[i] for i in chosen]


def read_caption_file(path: str, column: str = "caption", limit: Optional[int] = None, seed: int = 0) -> List[str]:
    """Captions of a file, by suffix: .json (COCO `captions_*.json`), .jsonl, .csv or text."""
    path = Path(path)
    text = read_text(path, "caption file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        captions = _coco_captions(text, path)
    elif suffix == ".jsonl":
        captions = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error})") from None
            if not isinstance(record, dict) or not isinstance(record.get(column), str):
                raise DataError(f"{path}, line {number}: expected an object with a text field {column!r}")
            captions.append(record[column])
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if column not in (reader.fieldnames or []):
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames or [])})")
        captions = [row[column] or "" for row in reader]
    else:
        captions = text.splitlines()
    captions = [caption.strip() for caption in captions if caption and caption.strip()]
    if not captions:
        raise DataError(f"caption file {path} holds no captions")
    return _subset(captions, limit, seed, str(path))


def _coco_captions(text: str, path: Path) -> List[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DataError(f"{path}: expected COCO captions ({{'annotations': [{{'caption': ...}}, ...]}})")
    captions = []
    for number, entry in enumerate(annotations):
        if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
            raise DataError(f"{path}: annotation {number} has no text field 'caption'")
        captions.append(entry["caption"])
    return captions


def _aligned(true: np.ndarray, world: Sequence[str], official: Sequence[str], readable: Sequence[str]
             ) -> Tuple[np.ndarray, np.ndarray]:
    """A source's true labels in the dataset's class order, and which dataset classes the source has."""
    column = {name: i for i, name in enumerate(world)}
    out = np.zeros((len(true), len(official)), dtype=np.int8)
    present = np.zeros(len(official), dtype=bool)
    for c, names in enumerate(zip(official, readable)):
        source = next((column[name] for name in names if name in column), None)
        if source is not None:
            out[:, c], present[c] = true[:, source], True
    return out, present


# The caption set ----------------------------------------------------------------------------
@dataclasses.dataclass
class CaptionSet:
    """Captions with their derived labels (int8 [N, C], every entry known), ready to train on."""

    captions: List[str]
    labels: np.ndarray
    report: Dict[str, object]


def label_report(derived: np.ndarray, true: Optional[np.ndarray] = None, columns: Optional[np.ndarray] = None
                 ) -> Dict[str, object]:
    """How many captions got at least one label and, where the true objects are known, how well
    the derived labels agree with them (over the classes in `columns`)."""
    count = len(derived)
    labelled = int((derived.sum(axis=1) > 0).sum())
    report: Dict[str, object] = {
        "captions": count,
        "with_label": labelled,
        "with_label_fraction": labelled / count if count else 0.0,
        "labels_per_caption": float(derived.sum(axis=1).mean()) if count else 0.0,
    }
    if true is not None:
        columns = np.ones(derived.shape[1], dtype=bool) if columns is None else columns
        d, t = derived[:, columns] == 1, true[:, columns] == 1
        hits = int((d & t).sum())
        report.update({
            "exact_match_fraction": float((d == t).all(axis=1).mean()) if count else 0.0,
            "precision": hits / max(int(d.sum()), 1),
            "recall": hits / max(int(t.sum()), 1),
        })
    return report


def load_captions(config: CaptionConfig, dataset: str, official: Sequence[str], readable: Sequence[str],
                  dataset_options: Optional[Mapping[str, Any]] = None) -> CaptionSet:
    """The captions of `config.source` labelled with the dataset's classes; captions naming no
    class are dropped, and (with `class_prompts`) one templated prompt per class and template of
    `class_prompt_templates` is added. The report counts the source's captions only."""
    from clipml.data.vocab import templates

    if not config.source:
        raise ConfigError("data.captions.source is not set: name a captions file (COCO captions JSON, "
                          ".txt, .jsonl or .csv) or 'synthetic'")
    options = dict(config.options)
    labeler = CaptionLabeler(class_phrases(dataset, official, readable, config.synonyms))
    true = columns = None
    if config.source in caption_sources():
        captions, source_true, source_classes = _SOURCES[config.source](dataset, dict(dataset_options or {}),
                                                                        **options)
        if source_true is not None:
            true, columns = _aligned(source_true, source_classes, official, readable)
    else:
        captions = read_caption_file(config.source, **options)
    derived = labeler.labels(captions)
    report = label_report(derived, true, columns)
    report["source"] = config.source
    logger.info("captions: %d of %d name at least one class (%.1f%%)%s", report["with_label"], report["captions"],
                100 * report["with_label_fraction"],
                "" if true is None else f"; agreement with the true objects: exact {100 * report['exact_match_fraction']:.1f}%, "
                f"precision {100 * report['precision']:.1f}%, recall {100 * report['recall']:.1f}%")
    keep = derived.sum(axis=1) > 0
    if not keep.any():
        raise DataError(f"no caption of {config.source} names any class of {dataset}: check the class names and synonyms")
    captions = [caption for caption, kept in zip(captions, keep) if kept]
    labels = derived[keep]
    if config.class_prompts:
        prompts = [template.format(name) for template in templates(config.class_prompt_templates)
                   for name in readable]
        captions += prompts
        labels = np.concatenate([labels, np.tile(np.eye(len(readable), dtype=np.int8), (len(prompts) // len(readable), 1))])
    report["training_captions"] = len(captions)
    return CaptionSet(captions, labels, report)


__all__ = ["CaptionConfig", "CaptionLabeler", "CaptionSet", "caption_sources", "class_phrases", "label_report",
           "load_captions", "phrase_forms", "plural_forms", "read_caption_file", "read_synonyms",
           "register_caption_source", "words"]
