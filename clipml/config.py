"""Typed configs: dataclasses <- YAML files (with ``base:`` inheritance) <- ``key=value`` overrides.

Works for any (nested) dataclass type. Every key and value is checked against the dataclass
type hints, and a mistake raises one ``ConfigError`` naming the key, where it came from (file
or command line) and, for an unknown key, the closest valid key.

- A YAML file may start with ``base: other.yaml`` (or a list of files, merged in order); paths
  are relative to the including file. Mappings are merged deeply, the file's own keys last.
  The top-level key ``base`` is therefore reserved.
- Overrides ``a.b.c=value`` parse ``value`` with YAML scalar rules (``0.002``, ``true``,
  ``null``, ``[1, 2]``, ``{x: 1}``) and are merged after all files.
- An empty mapping replaces instead of merging: ``data.options={}`` clears the options a file
  set, ``model.blending={}`` puts a section back to its defaults.
- ``save_config`` writes the fully resolved config; loading that file gives an equal config.
"""
import dataclasses
import difflib
import logging
import os
import pathlib
import types
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from clipml.errors import ConfigError

logger = logging.getLogger(__name__)
OVERRIDE = "command-line override"
T = TypeVar("T")
BASE_KEY = "base"
Key = Tuple[str, ...]
_UNIONS = (Union, getattr(types, "UnionType", Union))  # Optional[X] and, on 3.10+, X | None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _merge(base: Dict, over: Dict, source: str, sources: Dict[Key, str], prefix: Key = ()) -> Dict:
    """Deep-merge ``over`` into a copy of ``base``; ``sources`` records who set each key."""
    out = dict(base)
    for k, v in over.items():
        key = prefix + (str(k),)
        if isinstance(v, dict) and v and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, source, sources, key)
            sources.setdefault(key, source)
        else:
            out[k] = v
            for old in [s for s in sources if s[: len(key)] == key]:
                del sources[old]
            sources[key] = source
    return out


def _read_yaml(path: str, sources: Dict[Key, str], chain: Tuple[str, ...] = ()) -> Dict:
    """One YAML file with its bases merged under it; ``chain`` holds the files including it."""
    real = os.path.realpath(path)
    if real in chain:
        cycle = " -> ".join([*chain[chain.index(real):], real])
        raise ConfigError(f"config inheritance cycle: {cycle}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        where = f" (included from {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path} not found{where}") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at top level, found {data!r}")
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config file {path}: '{BASE_KEY}' must be a file name or a list of them")
    merged: Dict = {}
    for b in bases:
        base_path = os.path.join(os.path.dirname(path), b)
        merged = _merge(merged, _read_yaml(base_path, sources, chain + (real,)), "", {})
    return _merge(merged, data, path, sources)


def _parse_override(text: str) -> Dict:
    """``a.b=1`` as the nested mapping ``{a: {b: 1}}``, the value read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=0.002)")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _field_names(cls: type) -> List[str]:
    """The keys a dataclass takes by its own name (a selected section's key is its selector's value)."""
    return [f.name for f in dataclasses.fields(cls) if f.init and not _selector(f)]


def selected_section(selector: str, sections: Callable[[], Dict[str, Optional[type]]],
                     moved: Callable[[], Dict[str, str]] = dict) -> Any:
    """A field whose key is the value of the field ``selector``: ``model.method: dualcoop`` takes the
    section ``model.dualcoop``, built with ``sections()[value]`` (None: that value has no section).
    Sections of other values are refused by name. ``moved()`` maps keys that older configs held
    beside the selector to their place in a section (``guidance`` -> ``sdm_csp.guidance``), for hints."""
    return dataclasses.field(default=None, metadata={"selected_by": selector, "sections": sections,
                                                     "moved": moved})


def _selector(f: dataclasses.Field) -> Optional[str]:
    return f.metadata.get("selected_by")


def _selected_fields(cls: type) -> List[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init and _selector(f)]


def _schema_keys(cls: type, prefix: str) -> List[str]:
    """All dotted keys of a dataclass type (into nested dataclasses), for suggestions."""
    keys, hints = [], typing.get_type_hints(cls)
    for name in _field_names(cls):
        tp = hints[name]
        keys.append(prefix + name)
        if typing.get_origin(tp) in _UNIONS:  # Optional[SomeDataclass]
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = members[0] if len(members) == 1 else tp
        if dataclasses.is_dataclass(tp):
            keys += _schema_keys(tp, f"{prefix}{name}.")
    return keys


def _suggest(cls: type, prefix: str, name: str) -> Optional[str]:
    """The valid key closest to an unknown one: a similar sibling, an abbreviation
    (``lr`` for ``learning_rate``) or the same name elsewhere (``lr`` -> ``optim.lr``)."""
    siblings = _field_names(cls)
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    initials = "".join(w[:1] for w in name.split("_"))
    close += [s for s in siblings if s == initials or name == "".join(w[:1] for w in s.split("_"))]
    close += [k for k in _schema_keys(cls, "") if k.rsplit(".", 1)[-1] == name]
    return prefix + close[0] if close else None


class _Builder:
    """Converts merged plain data into a dataclass instance, checking every key and value."""

    def __init__(self, sources: Dict[Key, str]):
        self.sources = sources

    def where(self, key: Key) -> str:
        for n in range(len(key), 0, -1):
            if self.sources.get(key[:n]):
                return f" in {self.sources[key[:n]]}"
        return ""

    def fail(self, key: Key, tp: Any, value: Any) -> ConfigError:
        name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        return ConfigError(
            f"config key '{'.'.join(key)}'{self.where(key)}: expected {name}, "
            f"found {value!r} ({type(value).__name__})"
        )

    def dataclass(self, cls: type, data: Any, key: Key) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise self.fail(key, cls, data)
        hints = typing.get_type_hints(cls)
        names = _field_names(cls)
        prefix = "".join(k + "." for k in key)
        values, taken = self.sections(cls, data, key)
        for k in data:
            if k not in names and k not in taken:
                close = _suggest(cls, prefix, str(k))
                hint = f"; did you mean '{close}'?" if close else ""
                where = self.where(key + (str(k),))
                raise ConfigError(f"unknown key '{prefix}{k}'{where}{hint}")
        for f in dataclasses.fields(cls):
            if f.init and f.name in data:
                value = data[f.name]
                default = _default(f) if isinstance(value, dict) else None
                if dataclasses.is_dataclass(default):  # keep what a non-default default sets
                    value = _merge(_defaults_dict(default), value, "", {})
                values[f.name] = self.value(hints[f.name], value, key + (f.name,))
            elif f.init and _default(f) is _REQUIRED:
                raise ConfigError(f"missing required config key '{prefix}{f.name}'")
        return cls(**values)

    def sections(self, cls: type, data: Dict, key: Key) -> Tuple[Dict[str, Any], set]:
        """The selected sections of ``cls`` (see `selected_section`) and the data keys they take;
        a section of another selector value, or a key that moved into a section, is refused by name."""
        values, taken = {}, set()
        prefix = "".join(k + "." for k in key)
        for f in _selected_fields(cls):
            selector = _selector(f)
            default = next(_default(g) for g in dataclasses.fields(cls) if g.name == selector)
            chosen = data.get(selector, default)
            sections = f.metadata["sections"]()
            if chosen not in sections:
                raise ConfigError(f"config key '{prefix}{selector}'{self.where(key + (selector,))}: expected one "
                                  f"of {sorted(sections)}, found {chosen!r}")
            overridden = self.sources.get(key + (selector,), "").startswith(OVERRIDE)
            for name in sections:
                from_file = not self.sources.get(key + (name,), "").startswith(OVERRIDE)
                if name in data and name != chosen and overridden and from_file:
                    # the command line switched methods: the file's options for its own method go
                    logger.warning("dropped %s%s%s: %s is %r on the command line", prefix, name,
                                   self.where(key + (name,)), selector, chosen)
                    taken.add(name)
                elif name in data and (name != chosen or sections[name] is None):
                    whose = (f"'{prefix}{selector}' is {chosen!r}" if name != chosen
                             else f"{selector} {chosen!r} has no options of its own")
                    raise ConfigError(f"config key '{prefix}{name}'{self.where(key + (name,))} holds the options "
                                      f"of {selector} {name!r}, but {whose}")
            for old, new in f.metadata["moved"]().items():
                if old in data:
                    owner = new.split(".")[0]
                    where = self.where(key + (old,))
                    raise ConfigError(f"config key '{prefix}{old}'{where} moved to '{prefix}{new}' (options of "
                                      f"{selector} {owner!r}; set only for it)")
            tp = sections[chosen]
            values[f.name] = None if tp is None else self.value(tp, data.get(chosen, {}), key + (chosen,))
            taken.add(chosen)
        return values, taken

    def value(self, tp: Any, value: Any, key: Key) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, key)
        if origin in _UNIONS:
            members = [a for a in args if a is not type(None)]
            if value is None and len(members) < len(args):
                return None
            if len(members) == 1:
                return self.value(members[0], value, key)
            for member in members:
                try:
                    return self.value(member, value, key)
                except ConfigError:
                    pass
            raise self.fail(key, tp, value)
        if origin is typing.Literal:
            if not any(value == a and type(value) is type(a) for a in args):
                raise ConfigError(
                    f"config key '{'.'.join(key)}'{self.where(key)}: expected one of "
                    f"{list(args)}, found {value!r}"
                )
            return value
        if origin in (list, tuple) or tp in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise self.fail(key, tp, value)
            fixed = origin is tuple and args and args[-1] is not Ellipsis
            if fixed and len(args) != len(value):
                raise self.fail(key, tp, value)
            item_tps = args if fixed else [args[0] if args else Any] * len(value)
            items = [self.value(t, v, key[:-1] + (f"{key[-1]}[{i}]",))
                     for i, (t, v) in enumerate(zip(item_tps, value))]
            return items if list in (origin, tp) else tuple(items)
        if origin is dict or tp is dict:
            if value is None:
                raise ConfigError(f"{self.fail(key, tp, value)}; to clear it, give an empty mapping: "
                                  f"{'.'.join(key)}={{}}")
            if not isinstance(value, dict):
                raise self.fail(key, tp, value)
            key_tp, val_tp = args or (Any, Any)
            return {self.value(key_tp, k, key): self.value(val_tp, v, key + (str(k),))
                    for k, v in value.items()}
        if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)  # YAML 1.1 reads '1e-3' as a string
            except ValueError:
                raise self.fail(key, tp, value) from None
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is pathlib.Path and isinstance(value, (str, pathlib.Path)):
            return pathlib.Path(value)
        if tp in (bool, str) and isinstance(value, tp):
            return value
        raise self.fail(key, tp, value)


_REQUIRED = object()


def _defaults_dict(cfg: Any) -> Dict:
    """`config_to_dict` of a default without its selected sections: they follow the selector
    the data gives, not the default's."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.init and not _selector(f):
            value = getattr(cfg, f.name)
            out[f.name] = _defaults_dict(value) if dataclasses.is_dataclass(value) else config_to_dict(value)
    return out


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """The check a config dataclass's ``__post_init__`` makes of one value, so that a bad value is one
    ConfigError naming its key when the config is read, before any data or weights load."""
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _default(f: dataclasses.Field) -> Any:
    """The field's default value, or ``_REQUIRED`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _REQUIRED


def _build(cls: Type[T], data: Dict, sources: Dict[Key, str]) -> T:
    if BASE_KEY in _field_names(cls):
        raise TypeError(f"{cls.__name__} may not have a field named '{BASE_KEY}' (reserved)")
    return _Builder(sources).dataclass(cls, data, ())


def config_from_dict(cls: Type[T], data: Dict, source: str = "") -> T:
    """Build ``cls`` from plain data (e.g. a config saved in checkpoint metadata)."""
    return _build(cls, data, {(str(k),): source for k in data})


def load_config(
    cls: Type[T], path: Optional[Union[str, os.PathLike]] = None, overrides: Sequence[str] = (),
    base: Optional[Tuple[Dict, str]] = None,
) -> T:
    """``cls`` defaults <- YAML file ``path`` (and its bases) <- ``key=value`` overrides. Instead
    of a file, ``base`` may give (plain data, where it came from), e.g. a checkpoint's config."""
    sources: Dict[Key, str] = {}
    data = _read_yaml(str(path), sources) if path is not None else {}
    if base is not None:
        data = _merge(data, base[0], base[1], sources)
    for text in overrides:
        data = _merge(data, _parse_override(text), f"{OVERRIDE} {text!r}", sources)
    return _build(cls, data, sources)


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-safe data for a config: dataclasses and tuples become dicts and lists."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {}
        for f in dataclasses.fields(cfg):
            if f.init and _selector(f):
                section = getattr(cfg, f.name)
                if section is not None:
                    out[getattr(cfg, _selector(f))] = config_to_dict(section)
            elif f.init:
                out[f.name] = config_to_dict(getattr(cfg, f.name))
        return out
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, pathlib.PurePath):
        return str(cfg)
    return cfg


def save_config(cfg: Any, path: Union[str, os.PathLike]) -> None:
    """Write the fully resolved config as YAML, so a run can be repeated from it."""
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, allow_unicode=True)


def field_help(cls: type) -> Dict[str, str]:
    """Each field's comment in the dataclass source: the one on its line, else the comment lines
    right above it. The comments are the documentation, so `--print-config` shows them."""
    import inspect
    import io
    import textwrap
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    names, comments, code_lines = set(_field_names(cls)), {}, set()
    fields: Dict[int, str] = {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for previous, token in zip([None, *tokens], tokens):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(token.start[0])
            starts_line = previous is None or previous.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT,
                                                                tokenize.DEDENT, tokenize.COMMENT)
            if token.type == tokenize.NAME and token.string in names and starts_line:
                fields[token.start[0]] = token.string
    helps = {}
    for line, name in fields.items():
        if line in comments:
            helps[name] = comments[line]
            continue
        above, row = [], line - 1
        while row in comments and row not in code_lines:
            above.insert(0, comments[row])
            row -= 1
        helps[name] = " ".join(above)
    return helps


def describe_config(cfg: Any, prefix: str = "") -> List[Tuple[str, Any, Any, str]]:
    """(dotted key, value, default, help) for every key of a config, nested sections expanded."""
    rows = []
    helps = field_help(type(cfg))
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value, default = getattr(cfg, f.name), _default(f)
        if _selector(f):  # the selected section, under its selector's value
            if value is not None:
                rows += describe_config(value, f"{prefix}{getattr(cfg, _selector(f))}.")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            rows += describe_config(value, f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, config_to_dict(value),
                         None if default is _REQUIRED else config_to_dict(default), helps.get(f.name, "")))
    return rows
