"""Score ensembling: Platt calibration against scikit-learn, the weight grid, ensembles of
hand-built scores, the spec file, and ensembles of trained checkpoints in the tools and sweeps."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import yaml

from clipml.ensemble import Calibration, Ensemble, EnsembleMember, fit_calibration, fit_ensemble, weight_grid
from clipml.errors import CheckpointError, ConfigError, DataError
from clipml.metrics import mean_average_precision

pytestmark = pytest.mark.integration  # trains end to end: left out of the quick subset


def test_calibration_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = (rng.random((200, 4)) < 0.3).astype(np.int8)
    logits = 3.0 * labels + rng.normal(0, 2.0, labels.shape) - 1.0
    fitted = fit_calibration(logits, labels, ridge=0.0)
    reference = LogisticRegression(C=1e12, tol=1e-10, max_iter=10_000).fit(logits.reshape(-1, 1), labels.ravel())
    assert fitted.scale == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert fitted.bias == pytest.approx(reference.intercept_[0], rel=1e-4, abs=1e-4)
    # Unknown entries (-1) take no part, whatever their logits.
    hidden = labels.copy()
    hidden[:50] = -1
    noisy = logits.copy()
    noisy[:50] = 1e3
    assert fit_calibration(noisy, hidden, ridge=0.0).scale == pytest.approx(
        fit_calibration(logits[50:], labels[50:], ridge=0.0).scale, rel=1e-9)


def test_calibration_stays_finite_on_separable_labels():
    labels = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.int8)
    fitted = fit_calibration(np.where(labels == 1, 5.0, -5.0), labels)
    assert np.isfinite(fitted.scale) and fitted.scale > 0


def test_calibration_needs_both_label_values():
    with pytest.raises(DataError, match="positive and negative"):
        fit_calibration(np.zeros((3, 2)), np.array([[1, -1], [1, 1], [-1, 1]], dtype=np.int8))


def test_weight_grid():
    assert weight_grid(2, 0.5) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    three = weight_grid(3, 0.5)
    assert len(three) == 6 and all(sum(w) == pytest.approx(1.0) for w in three)
    assert len(set(three)) == 6 and (1.0, 0.0, 0.0) in three
    with pytest.raises(ConfigError, match="must divide 1"):
        weight_grid(2, 0.3)


def test_combine_is_the_weighted_sum_of_calibrated_logits():
    ensemble = Ensemble([EnsembleMember("a", 0.25, Calibration(2.0, -1.0)),
                         EnsembleMember("b", 0.75, Calibration(0.5, 3.0))], ["x", "y"])
    a, b = np.array([[1.0, -2.0]]), np.array([[4.0, 0.0]])
    np.testing.assert_allclose(ensemble.combine([a, b]), [[0.25 * 1.0 + 0.75 * 5.0, 0.25 * -5.0 + 0.75 * 3.0]])


def _members(tmp_path, count):
    paths = []
    for k in range(count):
        path = tmp_path / f"m{k}.safetensors"
        path.write_bytes(bytes([k]) * 16)
        paths.append(str(path))
    return paths


def test_two_noisy_views_of_one_signal_ensemble_better(tmp_path):
    """Members with independent noise on the same scores: the average ranks better than either,
    the chosen weights are interior, and the ensemble never loses to its best member on validation."""
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 5)) < 0.3).astype(np.int8)
    a = labels + rng.normal(0, 0.8, labels.shape)
    b = 10.0 * (labels + rng.normal(0, 0.8, labels.shape)) - 4  # another scale: calibration evens it out
    ensemble = fit_ensemble([a, b], labels, _members(tmp_path, 2), list("abcde"), step=0.05)
    single = [mean_average_precision(a, labels), mean_average_precision(b, labels)]
    assert ensemble.validation["member_mAP"] == pytest.approx(single)
    assert ensemble.validation["mAP"] > max(single) + 0.01
    assert 0.2 < ensemble.weights[0] < 0.8 and sum(ensemble.weights) == pytest.approx(1.0)
    assert mean_average_precision(ensemble.combine([a, b]), labels) == pytest.approx(ensemble.validation["mAP"])
    # The grid holds each member alone: calibration keeps its ranking, so its mAP is the member's.
    grid = {tuple(row[:2]): row[2] for row in ensemble.validation["grid"]}
    assert grid[(1.0, 0.0)] == pytest.approx(single[0]) and grid[(0.0, 1.0)] == pytest.approx(single[1])


def test_a_useless_member_gets_no_weight(tmp_path):
    rng = np.random.default_rng(2)
    labels = (rng.random((200, 3)) < 0.4).astype(np.int8)
    good = labels + rng.normal(0, 0.3, labels.shape)
    noise = rng.normal(0, 1.0, labels.shape)
    ensemble = fit_ensemble([noise, good], labels, _members(tmp_path, 2), list("abc"), step=0.1)
    assert ensemble.weights[1] >= 0.8
    assert ensemble.validation["mAP"] >= mean_average_precision(good, labels)


def test_spec_round_trip_and_changed_member(tmp_path):
    paths = _members(tmp_path, 2)
    ensemble = Ensemble([EnsembleMember(paths[0], 0.4, Calibration(1.5, -2.0), _digest(paths[0])),
                         EnsembleMember(paths[1], 0.6, Calibration(0.2, 0.1), _digest(paths[1]))],
                        ["x", "y"], {"mAP": 0.5})
    spec = ensemble.save(tmp_path / "specs" / "e.json")
    assert json.loads(spec.read_text())["members"][0]["checkpoint"] == "../m0.safetensors"
    loaded = Ensemble.load(spec)
    assert loaded.weights == [0.4, 0.6] and loaded.members[1].calibration == Calibration(0.2, 0.1)
    assert loaded.classes == ["x", "y"] and loaded.validation == {"mAP": 0.5}
    with open(paths[1], "ab") as handle:
        handle.write(b"retrained")
    with pytest.raises(CheckpointError, match="changed since the ensemble was fit"):
        Ensemble.load(spec)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a clipml ensemble spec"):
        Ensemble.load(tmp_path / "bad.json")


def _digest(path):
    from clipml.ensemble import file_digest

    return file_digest(path)


# Trained checkpoints in the tools -------------------------------------------------------------
@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A DualCoOp run on 10% of the image labels and a TaI-DPT run on captions, tiny backbone."""
    from clipml.cli import train_prompts

    tmp = tmp_path_factory.mktemp("ensemble")
    config = {
        "name": "ens",
        "output_dir": str(tmp / "runs" / "{name}"),
        "backbone": {"spec": "open_clip:clipml-tiny-vit", "image_size": 32, "allow_random": True},
        "data": {"options": {"num_images": 64}, "mask_dir": str(tmp / "masks"), "workers": 0, "batch_size": 16,
                 "val_fraction": 0.25, "known_ratio": 0.5,
                 "captions": {"source": "synthetic", "options": {"num_captions": 60}, "class_prompts": False}},
        "model": {"n_ctx": 4},
        "loss": {"reduction": "mean"},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 1},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    with contextlib.redirect_stdout(io.StringIO()):
        train_prompts(["--config", str(path), "--no-resume", "name=dualcoop", "model.method=dualcoop"])
        train_prompts(["--config", str(path), "--no-resume", "name=taidpt", "model.method=taidpt", "loss.name=ranking"])
    return path, tmp, [str(tmp / "runs" / name / "prompts.safetensors") for name in ("dualcoop", "taidpt")]


def test_evaluate_ensemble_fits_on_validation_and_scores_test(two_checkpoints, monkeypatch):
    import clipml.engine.ensemble as engine
    from clipml.config import load_config
    from clipml.engine.builders import build_splits
    from clipml.engine.evaluate import predict
    from clipml.engine.features import ImageFeatureSource
    from clipml.data.transforms import eval_transform
    from clipml.engine.checkpoint import load_model
    from clipml.experiment import ExperimentConfig

    path, _, checkpoints = two_checkpoints
    cfg = load_config(ExperimentConfig, path)
    seen = []
    original = engine.fit_ensemble
    monkeypatch.setattr(engine, "fit_ensemble", lambda logits, labels, *a, **k: seen.append(labels) or original(
        logits, labels, *a, **k))
    result = engine.evaluate_ensemble(cfg, checkpoints, memo={})
    _, val, test = build_splits(cfg)
    assert len(seen) == 1 and np.array_equal(seen[0], val.labels)  # weights from validation labels only
    member_test = []
    for checkpoint in checkpoints:  # each member scored alone, independently of the engine
        model = load_model(checkpoint, classnames=None)
        backbone = model.backbone
        source = ImageFeatureSource(test, backbone, eval_transform(backbone.image_size, backbone.mean, backbone.std,
                                                                   normalize=False), 64, 0)
        member_test.append(predict(model, source)[0])
    for logits, metrics in zip(member_test, result.member_metrics):
        assert metrics["mAP"] == pytest.approx(mean_average_precision(logits, test.labels))
    expected = mean_average_precision(result.ensemble.combine(member_test), test.labels)
    assert result.metrics["mAP"] == pytest.approx(expected)


def test_zero_shot_eval_and_predict_with_an_ensemble(two_checkpoints, capsys):
    from clipml.cli import predict, zero_shot_eval
    from clipml.lab.world import write_synthetic_dataset

    path, tmp, checkpoints = two_checkpoints
    spec = tmp / "ensemble.json"
    zero_shot_eval(["--config", str(path), "--checkpoint", checkpoints[0], "--checkpoint", checkpoints[1],
                    "--save-ensemble", str(spec)])
    out = capsys.readouterr().out
    assert "weights chosen on the validation split" in out and "ensemble on synthetic, split 'test'" in out
    assert spec.is_file()
    zero_shot_eval(["--config", str(path), "--checkpoint", str(spec)])
    again = capsys.readouterr().out
    assert again.splitlines()[-1].split(": ", 1)[1] == out.splitlines()[-1].split(": ", 1)[1]  # same metrics

    images = write_synthetic_dataset(tmp / "images", {"test": 3}, image_size=32) / "images" / "test"
    output = tmp / "predictions.json"
    predict(["--checkpoint", str(spec), str(images), "--output", str(output)])
    records = json.loads(output.read_text())
    assert len(records) == 3 and all(0 <= p <= 1 for r in records for p in r["probabilities"].values())
    predict(["--checkpoint", checkpoints[1], str(images), "--output", str(tmp / "single.json")])
    assert len(json.loads((tmp / "single.json").read_text())) == 3

    with pytest.raises(SystemExit):
        zero_shot_eval(["--config", str(path), "--checkpoint", checkpoints[0], "--save-ensemble", str(spec)])
    assert "two or more" in capsys.readouterr().err


def test_sweep_rows_with_an_ensemble(two_checkpoints, tmp_path, monkeypatch):
    from clipml.sweep import SweepSpec, run_sweep

    path, tmp, checkpoints = two_checkpoints
    method_config = tmp_path / "coop.yaml"
    method_config.write_text(yaml.safe_dump({"base": str(path), "model": {"method": "coop"}}))
    taidpt = tmp_path / "taidpt.safetensors"
    shutil.copy(checkpoints[1], taidpt)
    spec = SweepSpec([str(method_config)], proportions=[0.5], output_dir=str(tmp_path / "sweeps"),
                     ensemble_with=[str(taidpt)])
    result = run_sweep(spec)
    rows = result.table["methods"]
    assert list(rows) == ["coop", "coop+taidpt"]
    record = json.loads((tmp_path / "sweeps" / "synthetic" / "coop" / "p0.5" / "s0" /
                         "ensemble-taidpt-summary.json").read_text())
    assert rows["coop+taidpt"]["cells"]["0.5"]["mean"] == pytest.approx(record["test_mAP"])
    assert "coop+taidpt" in result.files["md"].read_text()

    import clipml.engine.ensemble as engine

    monkeypatch.setattr(engine, "evaluate_ensemble", lambda *a, **k: pytest.fail("a finished ensemble is refit"))
    assert run_sweep(spec).table["methods"]["coop+taidpt"] == rows["coop+taidpt"]


def test_a_member_ranking_against_the_labels_gets_no_say():
    rng = np.random.default_rng(3)
    labels = (rng.random((100, 3)) < 0.5).astype(np.int8)
    fitted = fit_calibration(-(labels + rng.normal(0, 0.5, labels.shape)), labels)
    assert fitted.scale == 0.0 and fitted.bias == pytest.approx(np.log(labels.mean() / (1 - labels.mean())))


def test_an_ensemble_member_is_scored_on_its_whole_saved_backbone_config(tmp_path):
    """A member learned on the ViT toy with backbone.dense=clearclip and the antialiased resize
    at 48 px comes back with both (they were dropped, scoring it on 'tokens' and plain bicubic),
    beside a member on the default backbone: each scores as it did when saved."""
    import torch

    from clipml.config import config_to_dict, load_config
    from clipml.engine.builders import build_backbone
    from clipml.engine.checkpoint import save_prompt_checkpoint
    from clipml.engine.ensemble import load_members
    from clipml.experiment import ExperimentConfig
    from clipml.model import MultiLabelCLIP

    classes = ["cat", "dog", "car"]
    settings = {"clearclip": ["backbone.dense=clearclip", "backbone.pos_embed_resize=bicubic_antialias",
                              "backbone.image_size=48"],
                "plain": ["backbone.image_size=48"]}
    saved, paths = {}, []
    for name, overrides in settings.items():
        cfg = load_config(ExperimentConfig, None, ["backbone.spec=toy", "model.method=sdm_csp", "model.n_ctx=2",
                                                   "model.sdm_csp.decoupler_dim=16", *overrides])
        torch.manual_seed(0)
        saved[name] = MultiLabelCLIP(build_backbone(cfg), classes, cfg.model)
        paths.append(str(save_prompt_checkpoint(tmp_path / f"{name}.safetensors", saved[name], config_to_dict(cfg))))
    members = load_members(paths, None, "cpu")
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    for member, name in zip(members, settings):
        original = saved[name].backbone
        assert member.backbone.identity == original.identity
        assert (member.backbone.dense, member.backbone.pos_embed_resize) == (original.dense, original.pos_embed_resize)
        with torch.no_grad():
            torch.testing.assert_close(member(images).logits, saved[name](images).logits, rtol=1e-5, atol=1e-5)
    assert members[0].backbone is not members[1].backbone
