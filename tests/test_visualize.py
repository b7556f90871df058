"""Attention maps: the top-k classes and their maps for one image, the PNG, and the global-head error."""

import numpy as np
import pytest
import torch
from PIL import Image

from clipml.cli import visualize_attention as visualize_cli
from clipml.config import config_to_dict, load_config
from clipml.lab.world import synthetic_split
from clipml.data.transforms import eval_transform
from clipml.engine.builders import build_backbone
from clipml.engine.checkpoint import save_prompt_checkpoint
from clipml.errors import CheckpointError, ConfigError, DataError
from clipml.experiment import ExperimentConfig
from clipml.model import MultiLabelCLIP
from clipml.visualize import attention_maps, plot_attention, visualize_attention

CLASSES = ["cat", "dog", "car", "tree", "boat", "person"]
WIDTH, HEIGHT = 96, 64


def checkpoint(folder, method):
    """A prompt checkpoint of an untrained model (its attention is as valid as a trained one's)."""
    cfg = load_config(ExperimentConfig, None, [
        "backbone.spec=open_clip:clipml-tiny-vit", "backbone.image_size=64", "backbone.allow_random=true",
        f"model.method={method}", "model.n_ctx=4", *(["model.sdm_csp.decoupler_dim=16"] if method == "sdm_csp" else [])])
    torch.manual_seed(0)
    model = MultiLabelCLIP(build_backbone(cfg), CLASSES, cfg.model)
    path = folder / f"{method}.safetensors"
    save_prompt_checkpoint(path, model, config_to_dict(cfg))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("visualize")
    image = synthetic_split("test", num_images=1, image_size=64).open_image(0).resize((WIDTH, HEIGHT))
    image.save(folder / "scene.png")
    return {"image": folder / "scene.png", **{m: checkpoint(folder, m) for m in ("sdm_csp", "dualcoop", "taidpt", "coop")}}


@pytest.mark.parametrize("method", ["sdm_csp", "dualcoop", "taidpt"])
def test_top_k_classes_and_maps(files, method):
    from clipml.engine.checkpoint import load_model

    model = load_model(str(files[method]))
    image = Image.open(files["image"]).convert("RGB")
    maps = attention_maps(model, image, top_k=3)

    pixels = eval_transform(64, model.backbone.mean, model.backbone.std)(image)
    with torch.no_grad():
        output = model(pixels[None])
    logits = output.logits[0].numpy()
    probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
    order = np.argsort(-logits, kind="stable")[:3]  # ranked by logit: probabilities may tie at 1.0
    assert maps.classes == [CLASSES[i] for i in order]
    np.testing.assert_allclose(maps.probabilities, probabilities[order], rtol=1e-6)
    assert maps.grid == (8, 8) and maps.maps.shape == (3, HEIGHT, WIDTH)
    assert maps.image.shape == (HEIGHT, WIDTH, 3)
    for heat, index in zip(maps.maps, order):
        grid = output.attention[0, index].reshape(8, 8).numpy()
        # Bilinear upsampling interpolates between cell values: it stays within their range and
        # peaks next to the centre of the most attended cell.
        assert grid.min() - 1e-6 <= heat.min() and heat.max() <= grid.max() + 1e-6
        row, col = np.unravel_index(heat.argmax(), heat.shape)
        cell = np.unravel_index(grid.argmax(), grid.shape)
        assert (row * 8 // HEIGHT, col * 8 // WIDTH) == cell


def test_plot_has_one_panel_per_class_and_the_expected_size(files, tmp_path):
    from clipml.engine.checkpoint import load_model

    maps = attention_maps(load_model(str(files["sdm_csp"])), Image.open(files["image"]), top_k=2)
    figure = plot_attention(maps, tmp_path / "plot.png", panel_inches=3.0, title_inches=0.6, dpi=50)
    axes = figure.get_axes()
    assert len(axes) == 4 and axes[0].get_title() == "image"  # image, 2 classes, colour bar
    for ax, name, probability in zip(axes[1:3], maps.classes, maps.probabilities):
        assert ax.get_title() == f"{name}\np = {probability:.3f}"
        assert len(ax.get_images()) == 2  # the image and its heatmap
    with Image.open(tmp_path / "plot.png") as png:
        # 3 panels of 3 in plus a 0.9 in colour bar at 50 dpi; height 3 in x 64/96 + 0.6 in of titles.
        assert png.format == "PNG" and png.size == (495, 130)


def test_plot_shares_one_colour_scale_and_names_the_file_and_true_labels(files):
    """Issue 24: a colour bar on one scale for every class panel (maps that are one map look
    alike), the file name and the true labels above the panels, each class marked true or not."""
    from clipml.engine.checkpoint import load_model

    maps = attention_maps(load_model(str(files["sdm_csp"])), Image.open(files["image"]), top_k=3)
    maps.name, maps.true_labels = "scene.png", [maps.classes[1], "boat"]
    figure = plot_attention(maps, dpi=50)
    heading = figure.get_suptitle()
    assert heading == f"scene.png\ntrue labels: {maps.classes[1]}, boat"
    panels, bar = figure.get_axes()[1:4], figure.get_axes()[4]
    for ax, name in zip(panels, maps.classes):
        heat = ax.get_images()[1]
        assert heat.get_clim() == (0.0, pytest.approx(float(maps.maps.max())))
        assert ax.get_title().endswith(", true" if name in (maps.classes[1], "boat") else ", not true")
    assert bar.get_ylabel() == "attention per grid cell"
    maps.true_labels = []
    assert plot_attention(maps, dpi=50).get_suptitle() == "scene.png\ntrue labels: (none)"


def test_cli_writes_the_png(files, tmp_path, capsys):
    output = tmp_path / "attention.png"
    visualize_cli(["--checkpoint", str(files["dualcoop"]), str(files["image"]), "--output", str(output),
                   "--top-k", "4"])
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and printed[0].split(":")[0] in CLASSES and str(output) in printed[-1]
    with Image.open(output) as png:
        assert png.size == (1590, 285)  # 5 panels of 3 in + 0.9 in of colour bar at 100 dpi; (2 + 0.6 + 0.25) in high


def test_cli_shows_true_labels_from_a_manifest(files, tmp_path, capsys):
    """--labels MANIFEST: the image's positive classes from a manifest in clipml's format."""
    import shutil

    (tmp_path / "classes.txt").write_text("".join(name + "\n" for name in CLASSES))
    shutil.copy(files["image"], tmp_path / "scene.png")
    (tmp_path / "test.jsonl").write_text('{"image": "scene.png", "positive": ["dog", "boat"], "negative": ["car"]}\n')
    visualize_cli(["--checkpoint", str(files["sdm_csp"]), str(tmp_path / "scene.png"), "--output",
                   str(tmp_path / "a.png"), "--labels", str(tmp_path / "test.jsonl")])
    assert "true labels: dog, boat" in capsys.readouterr().out.splitlines()
    visualize_cli(["--checkpoint", str(files["sdm_csp"]), str(files["image"]), "--output",
                   str(tmp_path / "b.png"), "--labels", str(tmp_path / "test.jsonl")])
    assert "true labels" not in capsys.readouterr().out  # not listed in the manifest: unknown
    with pytest.raises(SystemExit):
        visualize_cli(["--checkpoint", str(files["sdm_csp"]), str(files["image"]), "--labels", "missing.jsonl"])
    assert "labels manifest not found: missing.jsonl" in capsys.readouterr().err


def test_global_head_and_bad_inputs_are_clear_errors(files, tmp_path, capsys):
    from clipml.engine.checkpoint import load_model

    with pytest.raises(CheckpointError, match=r"coop.safetensors holds a 'coop' model.*no spatial attention.*sdm_csp"):
        visualize_attention(files["coop"], files["image"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(ConfigError, match="model.method 'coop'.*no spatial"):
        attention_maps(load_model(str(files["coop"])), Image.open(files["image"]))
    with pytest.raises(SystemExit) as exit_info:
        visualize_cli(["--checkpoint", str(files["coop"]), str(files["image"]), "--output", str(tmp_path / "y.png")])
    assert exit_info.value.code == 2 and "no spatial attention" in capsys.readouterr().err
    with pytest.raises(DataError, match="image file not found"):
        visualize_attention(files["sdm_csp"], tmp_path / "missing.png", tmp_path / "z.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot decode image .*text.png"):
        visualize_attention(files["sdm_csp"], tmp_path / "text.png", tmp_path / "z.png")
