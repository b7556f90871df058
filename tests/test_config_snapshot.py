"""Every published config (configs/, benchmarks/quality/) resolves to the values stored in
tests/golden/resolved_configs.json, which was written by clipml before methods had their own
config sections (main at 28a41d8); keys that moved since are mapped here, by name. Base files
(configs/_base/, benchmarks/quality/base.yaml) are checked through the configs that name them.

Regenerate (only when a config's values are meant to change): python tests/test_config_snapshot.py --write
"""

import glob
import json
import sys
from pathlib import Path

import pytest

from clipml.config import config_to_dict
from clipml.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "golden" / "resolved_configs.json"

# Flat model.* keys of the snapshot -> (the method they apply to, their key in its section). For
# any other method the key had no effect and is no longer offered.
MOVED = {
    "model.negative_ctx_init": ("dualcoop", "model.dualcoop.negative_ctx_init"),
    "model.guidance": ("sdm_csp", "model.sdm_csp.guidance"),
    "model.decoupler_dim": ("sdm_csp", "model.sdm_csp.decoupler_dim"),
    "model.decoupler_init": ("sdm_csp", "model.sdm_csp.decoupler_init"),
    "model.decoupler_extra_linear": ("sdm_csp", "model.sdm_csp.decoupler_extra_linear"),
    "model.zero_shot_scoring": ("zero_shot", "model.zero_shot.scoring"),
}
# Sections every method carried in the snapshot; now only their own method has them.
OWN_SECTIONS = ("dualcoop", "taidpt")


def flat(data, prefix=""):
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "options":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def published_configs():
    paths = glob.glob("configs/**/*.yaml", recursive=True) + glob.glob("benchmarks/quality/*.yaml")
    # Bases are read through the files that name them (quality/base.yaml sets keys of several methods).
    return sorted(path for path in paths if "/_base/" not in path and Path(path).name != "base.yaml")


def resolve(path):
    return flat(config_to_dict(load_experiment(str(ROOT / path))))


def expected(old):
    method, out = old["model.method"], {}
    for key, value in old.items():
        if key in MOVED:
            owner, new = MOVED[key]
            if owner == method:
                out[new] = value
        elif key.split(".")[:2] in [["model", name] for name in OWN_SECTIONS]:
            if key.split(".")[1] == method:
                out[key] = value
        else:
            out[key] = value
    return out


SNAPSHOTS = json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize("path", sorted(SNAPSHOTS))
def test_published_config_resolves_as_before(path):
    assert (ROOT / path).is_file(), f"{path} was published and is gone"
    now, want = resolve(path), expected(SNAPSHOTS[path])
    differences = {key: (value, now.get(key, "<missing>")) for key, value in want.items() if now.get(key) != value
                   or key not in now}
    assert not differences, f"{path}: key: (before, now) {differences}"


def test_moved_keys_are_the_ones_each_method_declares():
    from clipml.methods import moved_keys

    assert {f"model.{old}": new for old, new in moved_keys().items()} == {
        old: new.replace("model.", "", 1) for old, (_, new) in MOVED.items()}


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import os

    os.chdir(ROOT)
    SNAPSHOT.write_text(json.dumps({path: resolve(path) for path in published_configs()}, indent=1, sort_keys=True))
