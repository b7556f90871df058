"""Methods as registered units: each method's own config section, old flat configs and
checkpoints read in the new layout, and no method named by the trainer or the tools."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clipml.config import describe_config, load_config
from clipml.engine.checkpoint import load_model
from clipml.errors import ConfigError
from clipml.experiment import ExperimentConfig
from clipml.methods import METHODS

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["sdm_csp", "dualcoop"])
def test_checkpoints_written_before_sections_load_and_score_as_then(method):
    # Written by clipml 5812127..f2b8029 (flat model.* keys, every method's sections): the sdm_csp
    # one with model.guidance=learned and decoupler_dim=8, the dualcoop one with negative_ctx_init
    # and shared contexts; their logits on fixed images were computed by that code.
    model = load_model(str(GOLDEN / f"main_{method}.safetensors"))
    own = model.config.method_options
    if method == "sdm_csp":
        assert (own.guidance, own.decoupler_dim) == ("learned", 8)
    else:
        assert (own.negative_ctx_init, own.class_specific) == ("a photo", False)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(images).logits.numpy()
    np.testing.assert_allclose(logits, np.load(GOLDEN / "main_checkpoints.npz")[method], rtol=1e-5, atol=1e-5)


def test_a_section_is_offered_for_its_own_method_only():
    cfg = load_config(ExperimentConfig, None, ["model.method=dualcoop", "model.dualcoop.mean_token=true"])
    assert cfg.model.method_options.mean_token is True
    with pytest.raises(ConfigError, match=r"'model.dualcoop' .*options of method 'dualcoop', but 'model.method' "
                                          r"is 'coop'"):
        load_config(ExperimentConfig, None, ["model.method=coop", "model.dualcoop.mean_token=true"])
    with pytest.raises(ConfigError, match="method 'coop' has no options of its own"):
        load_config(ExperimentConfig, None, ["model.method=coop", "model.coop={x: 1}"])
    with pytest.raises(ConfigError, match=r"'model.decoupler_dim' .*moved to 'model.sdm_csp.decoupler_dim'"):
        load_config(ExperimentConfig, None, ["model.decoupler_dim=8"])
    with pytest.raises(ConfigError, match=r"model.method.*expected one of \['coop'"):
        load_config(ExperimentConfig, None, ["model.method=nope"])


def test_switching_the_method_on_the_command_line_drops_the_files_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {method: sdm_csp, sdm_csp: {decoupler_dim: 8}}\n")
    cfg = load_config(ExperimentConfig, str(path), ["model.method=coop"])
    assert cfg.model.method == "coop" and cfg.model.method_options is None


def test_print_config_lists_the_selected_methods_section_only():
    keys = {key for key, *_ in describe_config(load_config(ExperimentConfig, None, ["model.method=taidpt"]))}
    assert "model.taidpt.global_weight" in keys
    assert not [key for key in keys if key.split(".")[:2] in [["model", name] for name in METHODS if name != "taidpt"]]
    assert "model.decoupler_dim" not in keys


def test_engine_and_tools_name_no_method():
    names = "|".join(sorted(METHODS))
    pattern = re.compile(rf"""["'.=]({names})["'\s)]""")
    files = [*sorted((ROOT / "clipml" / "engine").glob("*.py")), ROOT / "clipml" / "cli.py",
             ROOT / "clipml" / "visualize.py", ROOT / "clipml" / "report.py"]
    found = [f"{path.name}:{n}: {line.strip()}" for path in files
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line) and "text file" not in line]  # template sets share names ('taidpt')
    assert not found, found
