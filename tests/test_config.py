import os
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple

import pytest
import yaml

from clipml.config import config_from_dict, config_to_dict, load_config, save_config
from clipml.errors import ConfigError


@dataclass
class Optim:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: List[int] = field(default_factory=lambda: [10, 20])


@dataclass
class Data:
    root: Optional[str] = None
    image_size: int = 448
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    splits: Dict[str, float] = field(default_factory=lambda: {"train": 0.9})


@dataclass
class Head:
    width: int = 8
    learn_tau: bool = False


@dataclass
class Experiment:
    seed: int = 0
    amp: bool = False
    tag: Optional[str] = None
    out: pathlib.Path = pathlib.Path("runs")
    optim: Optim = field(default_factory=Optim)
    data: Data = field(default_factory=lambda: Data(image_size=224))  # non-default nested default
    head: Optional[Head] = None
    per_group: Dict[str, Optim] = field(default_factory=dict)


@dataclass
class NeedsName:
    name: str
    size: int = 1


def write(path: pathlib.Path, data) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------- overrides


def test_defaults_without_file():
    assert load_config(Experiment) == Experiment()


def test_overrides_nested_and_typed():
    cfg = load_config(
        Experiment,
        overrides=[
            "seed=3", "amp=true", "tag=baseline", "optim.lr=0.01", "optim.momentum=1",
            "optim.weight_decay=1e-4", "optim.milestones=[5, 15]", "optim.name=adamw",
            "data.mean=[0.1, 0.2, 0.3]", "data.root=/data/coco", "data.splits={train: 0.8}",
            "out=/tmp/x",
        ],
    )
    assert cfg.seed == 3 and cfg.amp is True and cfg.tag == "baseline"
    assert cfg.optim == Optim(name="adamw", lr=0.01, momentum=1.0, weight_decay=1e-4,
                              milestones=[5, 15])
    assert isinstance(cfg.optim.momentum, float)
    assert cfg.data.mean == (0.1, 0.2, 0.3) and isinstance(cfg.data.mean, tuple)
    assert cfg.data.root == "/data/coco"
    assert cfg.data.splits == {"train": 0.8}
    assert cfg.out == pathlib.Path("/tmp/x")
    assert cfg.data.image_size == 224  # the field's own default instance is kept under overrides


def test_override_null_and_optional_dataclass():
    cfg = load_config(Experiment, overrides=["tag=x", "tag=null", "head.width=3"])
    assert cfg.tag is None
    assert cfg.head == Head(width=3)
    assert load_config(Experiment, overrides=["head.width=3", "head=null"]).head is None


@pytest.mark.skipif(sys.version_info < (3, 10), reason="X | None needs Python 3.10")
def test_pep604_optional_and_builtin_generics():
    ns = {}
    exec(
        "from dataclasses import dataclass, field\n"
        "@dataclass\n"
        "class New:\n"
        "    size: int | None = None\n"
        "    sizes: list[int] = field(default_factory=list)\n",
        ns,
    )
    cfg = load_config(ns["New"], overrides=["size=3", "sizes=[1, 2]"])
    assert (cfg.size, cfg.sizes) == (3, [1, 2])
    assert load_config(ns["New"], overrides=["size=null"]).size is None
    with pytest.raises(ConfigError, match="'size'.*expected int, found 'x'"):
        load_config(ns["New"], overrides=["size=x"])


def test_literal_rejects_other_values():
    with pytest.raises(ConfigError, match=r"'optim.name'.*one of \['sgd', 'adamw'\].*'adam'"):
        load_config(Experiment, overrides=["optim.name=adam"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("seed=1.5", r"'seed'.*expected int, found 1.5 \(float\)"),
        ("seed=true", r"'seed'.*expected int, found True \(bool\)"),
        ("amp=1", r"'amp'.*expected bool, found 1 \(int\)"),
        ("optim.lr=fast", r"'optim.lr'.*expected float, found 'fast' \(str\)"),
        ("tag=5", r"'tag'.*expected str, found 5 \(int\)"),
        ("optim.milestones=[1, x]", r"'optim.milestones\[1\]'.*expected int, found 'x'"),
        ("optim.milestones=3", r"'optim.milestones'.*expected List\[int\], found 3"),
        ("data.mean=[1, 2]", r"'data.mean'.*expected Tuple\[float, float, float\]"),
        ("data.splits={train: no}", r"'data.splits.train'.*expected float, found False"),
        ("optim=0.1", r"'optim'.*expected Optim, found 0.1"),
        ("seed=null", r"'seed'.*expected int, found None"),
    ],
)
def test_type_errors_name_key_type_and_value(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(Experiment, overrides=[override])
    assert "command-line override" in str(info.value)


@pytest.mark.parametrize("bad", ["seed", "=3", "optim..lr=1", ".lr=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Experiment, overrides=[bad])


@pytest.mark.parametrize(
    "override, unknown, suggestion",
    [
        ("optim.learning_rate=0.1", "optim.learning_rate", "optim.lr"),
        ("optim.moment=0.8", "optim.moment", "optim.momentum"),
        ("data.imagesize=224", "data.imagesize", "data.image_size"),
        ("lr=0.1", "lr", "optim.lr"),
        ("sed=1", "sed", "seed"),
        ("head.widht=2", "head.widht", "head.width"),
        ("per_group.a.lrr=0.1", "per_group.a.lrr", "per_group.a.lr"),
        ("optim.wd=0.1", "optim.wd", "optim.weight_decay"),
    ],
)
def test_unknown_override_key_suggests(override, unknown, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(Experiment, overrides=[override])
    msg = str(info.value)
    assert f"unknown key '{unknown}'" in msg and f"did you mean '{suggestion}'?" in msg
    assert override in msg


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as info:
        load_config(Experiment, overrides=["zzzzzz=1"])
    assert "unknown key 'zzzzzz'" in str(info.value) and "did you mean" not in str(info.value)


# ---------------------------------------------------------------- YAML files and inheritance


def test_unknown_key_in_yaml_names_file(tmp_path):
    path = write(tmp_path / "configs" / "coco.yaml", {"optim": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError) as info:
        load_config(Experiment, path)
    assert str(info.value) == (
        f"unknown key 'optim.learning_rate' in {path}; did you mean 'optim.lr'?"
    )


def test_error_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yaml", {"data": {"imagesize": 1}})
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "tag": "child"})
    with pytest.raises(ConfigError, match=f"'data.imagesize' in {base}; did you mean"):
        load_config(Experiment, child)
    write(base, {"seed": "one"})
    with pytest.raises(ConfigError, match=f"'seed' in {base}: expected int, found 'one'"):
        load_config(Experiment, child)


def test_deep_merge_and_precedence(tmp_path):
    write(tmp_path / "base.yaml", {"seed": 1, "optim": {"lr": 0.1, "momentum": 0.5},
                                   "data": {"root": "/b"}})
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "optim": {"lr": 0.2}})
    cfg = load_config(Experiment, child, overrides=["optim.momentum=0.7"])
    assert cfg.seed == 1 and cfg.data.root == "/b"
    assert (cfg.optim.lr, cfg.optim.momentum) == (0.2, 0.7)
    assert cfg.optim.weight_decay == 5e-4 and cfg.data.image_size == 224  # untouched defaults


def test_error_location_follows_the_last_setter(tmp_path):
    path = write(tmp_path / "c.yaml", {"optim": {"lr": "fast", "momentum": 0.5}})
    assert load_config(Experiment, path, overrides=["optim.lr=0.1"]).optim.lr == 0.1
    with pytest.raises(ConfigError, match=r"'optim.momentum' in command-line override"):
        load_config(Experiment, path, overrides=["optim.lr=0.1", "optim.momentum=x"])
    with pytest.raises(ConfigError, match=f"'optim.lr' in {path}: expected float"):
        load_config(Experiment, path, overrides=["optim.momentum=0.1"])


def test_multi_level_and_relative_paths(tmp_path, monkeypatch):
    write(tmp_path / "common" / "root.yaml", {"seed": 1, "tag": "root", "amp": True})
    write(tmp_path / "common" / "mid.yaml", {"base": "root.yaml", "tag": "mid", "seed": 2})
    leaf = write(tmp_path / "exp" / "deep" / "leaf.yaml",
                 {"base": "../../common/mid.yaml", "seed": 3})
    monkeypatch.chdir(tmp_path / "exp")  # paths resolve against the including file, not cwd
    cfg = load_config(Experiment, os.path.relpath(leaf))
    assert (cfg.seed, cfg.tag, cfg.amp) == (3, "mid", True)


def test_list_of_bases_merged_in_order(tmp_path):
    write(tmp_path / "a.yaml", {"seed": 1, "optim": {"lr": 0.1}, "tag": "a"})
    write(tmp_path / "b.yaml", {"seed": 2, "optim": {"momentum": 0.1}})
    child = write(tmp_path / "c.yaml", {"base": ["a.yaml", "b.yaml"]})
    cfg = load_config(Experiment, child)
    assert (cfg.seed, cfg.tag, cfg.optim.lr, cfg.optim.momentum) == (2, "a", 0.1, 0.1)


def test_diamond_is_not_a_cycle(tmp_path):
    write(tmp_path / "d.yaml", {"seed": 7})
    write(tmp_path / "b.yaml", {"base": "d.yaml"})
    write(tmp_path / "c.yaml", {"base": "d.yaml", "tag": "c"})
    top = write(tmp_path / "a.yaml", {"base": ["b.yaml", "c.yaml"]})
    assert load_config(Experiment, top).seed == 7


def test_cycles_are_detected(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(Experiment, tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Experiment, tmp_path / "self.yaml")


def test_file_errors(tmp_path):
    child = write(tmp_path / "child.yaml", {"base": "missing.yaml"})
    with pytest.raises(ConfigError, match=r"missing\.yaml not found \(included from .*child"):
        load_config(Experiment, child)
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_config(Experiment, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Experiment, write(tmp_path / "bad.yaml", "seed: [1, 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Experiment, write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(Experiment, write(tmp_path / "dup.yaml", "seed: 1\namp: true\nseed: 2\n"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(Experiment, tmp_path)
    with pytest.raises(ConfigError, match="'base' must be"):
        load_config(Experiment, write(tmp_path / "b.yaml", "base: 3\n"))
    assert load_config(Experiment, write(tmp_path / "empty.yaml", "")) == Experiment()


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing required config key 'name'"):
        load_config(NeedsName)
    assert load_config(NeedsName, overrides=["name=x"]) == NeedsName("x")


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; a float field still gets the number.
    cfg = load_config(Experiment, write(tmp_path / "e.yaml", "optim:\n  lr: 1e-3\n"))
    assert cfg.optim.lr == 0.001


# ---------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    cfg = load_config(
        Experiment,
        overrides=["tag=run 1", "head.learn_tau=true", "per_group.text.lr=0.5",
                   "data.root=null", "optim.lr=1e-5", "data.splits={train: 0.7, val: 0.3}"],
    )
    save_config(cfg, tmp_path / "out" / "resolved.yaml")
    text = (tmp_path / "out" / "resolved.yaml").read_text()
    assert "!!python" not in text
    assert load_config(Experiment, tmp_path / "out" / "resolved.yaml") == cfg
    assert config_from_dict(Experiment, yaml.safe_load(text)) == cfg
    assert config_to_dict(cfg)["data"]["mean"] == [0.5, 0.5, 0.5]
    assert config_to_dict(cfg)["out"] == "runs"


def test_reserved_base_field():
    @dataclass
    class Bad:
        base: int = 0

    with pytest.raises(TypeError, match="reserved"):
        load_config(Bad)
