"""Sweeps over p: tables that match the runs, shared nested masks, resume after an interruption."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import clipml.sweep
from clipml.cli import sweep as sweep_cli
from clipml.data import load_mask, load_split, mask_path
from clipml.errors import ConfigError
from clipml.metrics import PROPORTIONS
from clipml.sweep import SweepSpec, markdown, plan, run_sweep, summarize, write_tables

pytestmark = pytest.mark.integration  # trains end to end: left out of the quick subset

METHODS = ("sdm_csp", "dualcoop")
PS, SEEDS = (0.2, 0.6), (0,)  # one seed keeps this fast; test_spread_over_seeds_and_average checks seeds


def write_configs(tmp: Path, **data):
    base = {
        "backbone": {"spec": "open_clip:clipml-tiny-vit", "image_size": 32, "allow_random": True},
        "data": {"options": {"num_images": 48}, "mask_dir": str(tmp / "masks"), "workers": 0,
                 "batch_size": 64, "val_fraction": 0.25, **data},
        "model": {"n_ctx": 4},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 1},
        "loss": {"reduction": "mean"},
    }
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    paths = []
    for method in METHODS:
        path = tmp / f"{method}.yaml"
        small = {"sdm_csp": {"decoupler_dim": 16}} if method == "sdm_csp" else {}
        path.write_text(yaml.safe_dump({"base": "base.yaml", "model": {"method": method, **small}}))
        paths.append(str(path))
    return paths


class InterruptSecondRun:
    """Progress callback that stops the sweep in the second run, after its training epoch and
    during its final test evaluation (so the run has a training state but no summary)."""

    def __init__(self):
        self.epochs = self.evals = 0

    def __call__(self, iterable, desc):
        if desc.startswith("epoch"):
            self.epochs, self.evals = self.epochs + 1, 0
        elif desc == "eval" and self.epochs == 2:
            self.evals += 1
            if self.evals == 2:
                raise KeyboardInterrupt
        return iterable


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    spec = SweepSpec(write_configs(tmp), PS, SEEDS, name="tiny", output_dir=str(tmp / "sweeps"))
    folder, runs = plan(spec)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, InterruptSecondRun())
    first_summary = runs[0].folder / "summary.json"
    before = first_summary.stat().st_mtime_ns

    calls = []
    real_train = clipml.sweep.train

    def counting_train(cfg, resume=True, progress=None):
        descs = []
        calls.append({"name": cfg.name, "resume": resume, "descs": descs})
        return real_train(cfg, resume, lambda iterable, desc: descs.append(desc) or iterable)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clipml.sweep, "train", counting_train)
        result = run_sweep(spec)
    return {"tmp": tmp, "spec": spec, "runs": runs, "result": result, "calls": calls,
            "first_unchanged": first_summary.stat().st_mtime_ns == before}


def test_interrupted_sweep_resumes_without_redoing_finished_runs(swept):
    runs, calls, result = swept["runs"], swept["calls"], swept["result"]
    assert len(runs) == len(METHODS) * len(PS) * len(SEEDS)
    assert [c["name"] for c in calls] == [r.config.name for r in runs[1:]]  # the finished first run is skipped
    assert (result.trained, result.reused) == (len(runs) - 1, 1)
    assert swept["first_unchanged"]
    assert all(c["resume"] for c in calls)
    interrupted = calls[0]
    assert interrupted["name"] == "tiny/dualcoop/p0.2/s0"
    # It resumed from its saved state: no training epoch again, only the evaluations.
    assert not any(desc.startswith("epoch") for desc in interrupted["descs"])
    assert any(desc.startswith("epoch") for desc in calls[1]["descs"])
    assert len((runs[1].folder / "log.jsonl").read_text().splitlines()) == 1


def test_tables_hold_the_runs_test_map(swept):
    result, runs = swept["result"], swept["runs"]
    folder = result.folder
    assert folder == swept["tmp"] / "sweeps" / "tiny"
    assert {name: path.name for name, path in result.files.items()} == {
        "md": "sweep.md", "csv": "sweep.csv", "json": "sweep.json", "png": "sweep.png"}
    table = json.loads((folder / "sweep.json").read_text())
    assert table["proportions"] == list(PS) and table["seeds"] == list(SEEDS)
    assert list(table["methods"]) == list(METHODS)
    zero_shot = set()
    for method in METHODS:
        row = table["methods"][method]
        assert row["avg"] is None  # p is not the full 0.1 ... 0.9 set
        for p in PS:
            values = []
            for seed in SEEDS:
                summary = json.loads((folder / method / f"p{p:g}" / f"s{seed}" / "summary.json").read_text())
                assert summary["known_ratio"] == p and summary["method"] == method
                values.append(summary["test"]["mAP"])
                zero_shot.add(summary["zero_shot_test"]["mAP"])
            cell = row["cells"][f"{p:g}"]
            assert cell == {"mean": values[0], "std": None, "values": values}
            assert f"| {values[0]:.2f} |" in (folder / "sweep.md").read_text()
    assert len(zero_shot) == 1  # same backbone and templates: one reference row
    zero_shot_map = zero_shot.pop()
    assert f"| zero-shot | {zero_shot_map:.2f} |" in (folder / "sweep.md").read_text()
    assert len(table["runs"]) == len(runs)

    rows = list(csv.reader((folder / "sweep.csv").open()))
    assert rows[0] == ["method", "0.2_mean", "0.2_std", "0.6_mean", "0.6_std"]
    assert rows[-1] == ["zero-shot", f"{zero_shot_map:.3f}", "", f"{zero_shot_map:.3f}", ""]
    for row in rows[1:-1]:
        cells = table["methods"][row[0]]["cells"]
        assert float(row[3]) == pytest.approx(cells["0.6"]["mean"], abs=5e-4)
        assert row[4] == ""  # one seed: no spread
    with Image.open(folder / "sweep.png") as image:
        assert image.format == "PNG" and image.size == (720, 480)


def test_masks_are_shared_and_nested(swept):
    tmp = swept["tmp"]
    split = load_split("synthetic", None, "train", num_images=48)
    expected = {mask_path(tmp / "masks", split, p, 1).name for p in PS}  # mask_seed 1 (the default)
    assert {path.name for path in (tmp / "masks").iterdir()} == expected  # one file per p for all runs
    low, high = (load_mask(mask_path(tmp / "masks", split, p, 1), split, p, 1) for p in PS)
    assert (low <= high).all() and low.sum() < high.sum()


def test_cli_reads_finished_runs_back(swept, capsys):
    spec = swept["spec"]
    sweep_cli([*spec.configs, "-p", "0.2", "0.6", "--seeds", "0", "--name", "tiny",
               "--output-dir", spec.output_dir])
    out = capsys.readouterr().out
    assert "0 run(s) trained, 4 read back" in out and "| sdm_csp |" in out


def test_finished_run_with_another_config_is_refused(swept):
    spec = swept["spec"]
    other = SweepSpec(spec.configs, spec.proportions, spec.seeds, spec.name, spec.output_dir, ["optim.lr=0.5"])
    with pytest.raises(ConfigError, match="finished run with another config"):
        run_sweep(other)


def test_finished_runs_are_read_back_on_another_device_or_worker_count(swept):
    """Keys that change no result (device, workers, evaluation batch) do not make a finished run
    "another config" (issue 25: sweep --device refused every finished run)."""
    spec = swept["spec"]
    again = SweepSpec(spec.configs, spec.proportions, spec.seeds, spec.name, spec.output_dir,
                      ["device=cpu", "data.workers=1", "data.eval_batch_size=7"])
    result = run_sweep(again)
    assert result.trained == 0 and result.reused == len(plan(spec)[1])


def test_spread_over_seeds_and_average(tmp_path):
    spec = SweepSpec(write_configs(tmp_path), PROPORTIONS, (0, 1), name="full", output_dir=str(tmp_path / "out"))
    folder, runs = plan(spec)
    scores = {(r.method, r.p, r.seed): 10 * r.p + 5 * r.seed + (1 if r.method == "dualcoop" else 0) for r in runs}
    summaries = [{"test": {"mAP": scores[r.method, r.p, r.seed]}, "val": {"mAP": 0.0}, "best_epoch": 0,
                  "zero_shot_test": {"mAP": 3.0 if r.method == "dualcoop" else 2.0}} for r in runs]
    table = summarize(folder.name, runs, summaries)
    cell = table["methods"]["sdm_csp"]["cells"]["0.5"]
    assert cell["values"] == [5.0, 10.0] and cell["mean"] == 7.5 and cell["std"] == pytest.approx(5 / np.sqrt(2))
    # Per-seed averages over p = 0.1 ... 0.9 are 5 + 5·seed (+1): mean 7.5 (8.5), sample std 5/√2.
    for method, offset in (("sdm_csp", 0), ("dualcoop", 1)):
        avg = table["methods"][method]["avg"]
        assert avg["values"] == pytest.approx([5 + offset, 10 + offset])
        assert avg["std"] == pytest.approx(5 / np.sqrt(2))
    text = markdown(table)
    assert "| method | 0.1 | 0.2 |" in text and "| Avg. |" in text and "| 8.50 ± 3.54 |" in text
    assert "| zero-shot (sdm_csp) | 2.00 |" in text and "| zero-shot (dualcoop) | 3.00 |" in text
    folder.mkdir(parents=True)
    files = write_tables(table, folder)
    rows = list(csv.reader(files["csv"].open()))
    assert rows[0][-2:] == ["avg_mean", "avg_std"] and rows[1][-2:] == ["7.500", "3.536"]
    assert [row[0] for row in rows[3:]] == ["zero-shot (sdm_csp)", "zero-shot (dualcoop)"]

    one_seed = [(r, s) for r, s in zip(runs, summaries) if r.seed == 0]
    single = summarize("full", *map(list, zip(*one_seed)))
    assert single["methods"]["sdm_csp"]["cells"]["0.5"] == {"mean": 5.0, "std": None, "values": [5.0]}
    assert "| 5.00 |" in markdown(single)


def test_sweep_mistakes_are_clear_errors(tmp_path):
    configs = write_configs(tmp_path)
    assert plan(SweepSpec(configs))[0] == Path("runs/sweeps/synthetic")  # default name: the dataset
    other = _with(tmp_path / "other" / "coop.yaml", {"data": {"dataset": "voc2007"}})
    with pytest.raises(ConfigError, match=r"different data: .*data.dataset='synthetic'.*data.dataset='voc2007'"):
        plan(SweepSpec([configs[0], str(other)]))
    reseeded = _with(tmp_path / "reseeded" / "coop.yaml", {"data": {"mask_seed": 7}})
    with pytest.raises(ConfigError, match="data.mask_seed=1.*data.mask_seed=7"):
        plan(SweepSpec([configs[0], str(reseeded)]))
    with pytest.raises(ConfigError, match="sets data.known_ratio, which the sweep sets"):
        plan(SweepSpec(configs, overrides=["data.known_ratio=0.5"]))
    with pytest.raises(ConfigError, match="share a file name"):
        plan(SweepSpec([configs[0], str(_with(tmp_path / "again" / "sdm_csp.yaml", {}))]))
    with pytest.raises(ConfigError, match=r"proportions must be in \(0, 1\]"):
        plan(SweepSpec(configs, proportions=[0.0, 0.5]))
    with pytest.raises(ConfigError, match=r"seeds \[1\] given more than once"):
        plan(SweepSpec(configs, seeds=[1, 1]))


def test_one_table_one_ap_and_it_is_named(swept, tmp_path):
    """A sweep compares methods on one AP (eval.ap of every config), and its tables say which."""
    table = swept["result"].table
    assert table["metric"] == "test mAP (%, envelope AP)"
    assert "AP: envelope (VOC 2010+ all-point" in (swept["result"].folder / "sweep.md").read_text()
    configs = write_configs(tmp_path)
    raw = _with(tmp_path / "raw" / "coop.yaml", {"eval": {"ap": "raw"}})
    with pytest.raises(ConfigError, match=r"score differently: .*eval.ap='envelope'.*eval.ap='raw'.*--set eval.ap="):
        plan(SweepSpec([configs[0], str(raw)]))
    _, runs = plan(SweepSpec([configs[0], str(raw)], overrides=["eval.ap=raw"]))
    assert {r.config.eval.ap for r in runs} == {"raw"}


def _with(path: Path, content: dict) -> Path:
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({"base": "../base.yaml", **content}))
    return path
