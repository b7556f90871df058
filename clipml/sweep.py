"""Sweeps over the known-label proportion p: several method configs × p values × seeds on one
dataset, one training run each, collected into the papers' table (test mAP per p and "Avg.").

Every run lives in ``<output_dir>/<name>/<method>/p<p>/s<seed>`` and the tables next to them in
``<output_dir>/<name>``. A run whose ``summary.json`` exists is finished and only read back; any
other run goes through ``train(resume=True)``, so an interrupted sweep continues where it stopped.

The experiment seed varies over ``seeds``; the partial-label mask seed (``data.mask_seed``) stays
the config's, so every method and every seed trains on the same mask for a given p (the masks are
nested across p). Seeds thus measure optimisation noise, not mask-draw noise.

``ensemble_with`` names fixed checkpoints (e.g. one TaI-DPT model, which uses no image labels)
to ensemble with every trained run (clipml.ensemble: weights chosen on that run's validation
split); each adds rows ``<method>+<its method>``. The fitted spec and its numbers are kept in the
run folder (``ensemble-<method>.json``, ``ensemble-<method>-summary.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from clipml.engine import Progress
from clipml.engine.evaluate import AP_NAMES
from clipml.data.base import MultiLabelSplit
from clipml.engine.builders import load_splits, loaded_identity
from clipml.engine.train import check_same_data, train
from clipml.errors import ConfigError
from clipml.experiment import ExperimentConfig, config_differences, describe_differences, load_experiment
from clipml.metrics import PROPORTIONS, sweep_average

logger = logging.getLogger(__name__)

# The data keys that decide which images, labels and masks a run sees: they must agree across methods.
DATA_IDENTITY = ("dataset", "root", "options", "train_split", "test_split", "mask_seed", "mask_dir", "val_fraction")
SWEPT_KEYS = ("name", "seed", "output_dir", "data.known_ratio")


@dataclasses.dataclass
class SweepSpec:
    """What to sweep: method configs (YAML paths; the file stem names the method in the table)."""

    configs: Sequence[str]
    proportions: Sequence[float] = PROPORTIONS
    seeds: Sequence[int] = (0,)
    name: Optional[str] = None  # default: the dataset name
    output_dir: str = "runs/sweeps"
    overrides: Sequence[str] = ()  # key=value for every run, e.g. optim.epochs=2
    ensemble_with: Sequence[str] = ()  # fixed prompt checkpoints ensembled with every trained run


@dataclasses.dataclass
class SweepRun:
    method: str
    config_path: str
    p: float
    seed: int
    config: ExperimentConfig

    @property
    def folder(self) -> Path:
        return Path(self.config.run_dir())


@dataclasses.dataclass
class SweepResult:
    folder: Path
    table: Dict[str, object]  # the content of sweep.json
    files: Dict[str, Path]  # md, csv, json, png
    trained: int  # runs trained (or resumed) in this call
    reused: int  # finished runs read back


def _unique(values: Sequence, what: str) -> List:
    if not values:
        raise ConfigError(f"sweep: no {what} given")
    duplicates = sorted({v for v in values if list(values).count(v) > 1})
    if duplicates:
        raise ConfigError(f"sweep: {what} {duplicates} given more than once")
    return list(values)


def plan(spec: SweepSpec) -> Tuple[Path, List[SweepRun]]:
    """The sweep folder and its runs (seed, then p, then method order); checks the configs agree
    on the data so that all methods are compared on the same images and masks."""
    for text in spec.overrides:
        key = text.partition("=")[0].strip()
        if key in SWEPT_KEYS:
            raise ConfigError(f"sweep: override {text!r} sets {key}, which the sweep sets for each run")
    proportions = [float(p) for p in _unique(spec.proportions, "proportions")]
    bad = [p for p in proportions if not 0.0 < p <= 1.0]
    if bad:
        raise ConfigError(f"sweep: proportions must be in (0, 1], got {bad}")
    seeds = [int(s) for s in _unique(spec.seeds, "seeds")]
    paths = _unique([str(c) for c in spec.configs], "configs")
    methods = [Path(c).stem for c in paths]
    if len(set(methods)) < len(methods):
        raise ConfigError(f"sweep: configs {paths} share a file name; the file name (without .yaml) "
                          f"names the method in the table, so rename one")
    configs = {method: load_experiment(path, spec.overrides) for method, path in zip(methods, paths)}
    _check_same_data(configs, dict(zip(methods, paths)))
    first = next(iter(configs.values()))
    name = spec.name or first.data.dataset
    folder = Path(spec.output_dir) / name
    runs = []
    for seed in seeds:
        for p in proportions:
            for method, cfg in configs.items():
                run_name = f"{name}/{method}/p{p:g}/s{seed}"
                config = dataclasses.replace(cfg, name=run_name, seed=seed,
                                             output_dir=str(Path(spec.output_dir) / "{name}"),
                                             data=dataclasses.replace(cfg.data, known_ratio=p))
                runs.append(SweepRun(method, paths[methods.index(method)], p, seed, config))
    return folder, runs


def _check_same_data(configs: Dict[str, ExperimentConfig], paths: Dict[str, str]) -> None:
    (first, reference), *others = configs.items()
    if reference.data.mask_file:
        raise ConfigError(f"{paths[first]}: data.mask_file={reference.data.mask_file!r} fixes the labels, "
                          f"so a sweep over p is meaningless; remove it to simulate masks per p")
    for method, cfg in others:
        if cfg.eval != reference.eval:
            raise ConfigError(
                f"sweep: the configs score differently: {paths[first]} has eval.ap={reference.eval.ap!r}, "
                f"eval.top3={reference.eval.top3!r}, {paths[method]} has eval.ap={cfg.eval.ap!r}, "
                f"eval.top3={cfg.eval.top3!r}; one table needs one AP: pass e.g. --set eval.ap=raw"
            )
        for key in DATA_IDENTITY + ("mask_file",):
            mine, theirs = getattr(reference.data, key), getattr(cfg.data, key)
            if mine != theirs:
                raise ConfigError(
                    f"sweep: the configs name different data: {paths[first]} has data.{key}={mine!r}, "
                    f"{paths[method]} has data.{key}={theirs!r}; a sweep compares methods on one dataset and mask"
                )


def _finished_summary(run: SweepRun, data: Dict[str, Dict[str, Optional[str]]]) -> Optional[Dict[str, object]]:
    """The summary of a finished run, checked to belong to this run's config and to the dataset
    as it is now (`data`: builders.loaded_identity); None if unfinished."""
    summary = run.folder / "summary.json"
    if not summary.is_file():
        return None
    saved = run.folder / "config.yaml"
    hint = "give the sweep another name or output_dir, or remove that folder"
    differences = (config_differences(yaml.safe_load(saved.read_text()), run.config) if saved.is_file()
                   else {"config.yaml": ("missing", None)})
    if differences:
        raise ConfigError(f"{run.folder} holds a finished run with another config ({describe_differences(differences)}); "
                          f"{hint}")
    check_same_data(run.folder, data, run.config.data, hint)
    return json.loads(summary.read_text())


def _check_p_applies(cfg: ExperimentConfig, train_split: MultiLabelSplit) -> None:
    """A sweep over p on labels that are already partial needs data.partial_labels=simulate: kept
    as they are, every p would train the same run."""
    if not train_split.labels_complete and cfg.data.partial_labels == "keep" and not cfg.data.mask_file:
        raise ConfigError(
            f"sweep: the training labels of {cfg.data.dataset} (data.root={cfg.data.root}) are already partial "
            f"({100 * train_split.known_fraction:.1f}% known), and data.partial_labels=keep uses them as they are at "
            f"every p; add --set data.partial_labels=simulate to simulate each p on top of them")


def run_sweep(spec: SweepSpec, progress: Progress = None) -> SweepResult:
    """Train (or read back) every run of the sweep, then write its tables and plot."""
    folder, runs = plan(spec)
    loaded = load_splits(runs[0].config)  # the configs agree on the data (plan checks it)
    _check_p_applies(runs[0].config, loaded[0])
    data = loaded_identity(loaded)
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("sweep %s: %d runs (%d methods x %d proportions x %d seeds)", folder, len(runs),
                len({r.method for r in runs}), len({r.p for r in runs}), len({r.seed for r in runs}))
    summaries, trained, reused = [], 0, 0
    iterable = progress(runs, "sweep") if progress is not None else runs
    for index, run in enumerate(iterable):
        summary = _finished_summary(run, data)
        if summary is None:
            logger.info("run %d/%d: %s p=%g seed %d", index + 1, len(runs), run.method, run.p, run.seed)
            summary = train(run.config, resume=True, progress=progress)
            trained += 1
        else:
            logger.info("run %d/%d: %s p=%g seed %d already finished", index + 1, len(runs), run.method, run.p,
                        run.seed)
            reused += 1
        summaries.append(summary)
    if spec.ensemble_with:
        extra_runs, extra = _ensemble_rows(runs, summaries, spec.ensemble_with, progress)
        runs, summaries = runs + extra_runs, summaries + extra
    table = summarize(folder.name, runs, summaries, spec.overrides)
    files = write_tables(table, folder)
    return SweepResult(folder, table, files, trained, reused)


def _ensemble_rows(runs: List[SweepRun], summaries: List[Dict[str, object]], checkpoints: Sequence[str],
                   progress: Progress) -> Tuple[List[SweepRun], List[Dict[str, object]]]:
    """Every trained run ensembled with every fixed checkpoint, as extra table rows."""
    from clipml.engine.checkpoint import read_prompt_checkpoint
    from clipml.engine.ensemble import evaluate_ensemble
    from clipml.ensemble import Ensemble
    from clipml.errors import CheckpointError

    names = [read_prompt_checkpoint(path)[1]["method"] for path in checkpoints]
    if len(set(names)) < len(names):
        raise ConfigError(f"sweep: the ensemble checkpoints {list(checkpoints)} hold the same method twice ({names})")
    memo: dict = {}
    extra_runs, extra = [], []
    for path, name in zip(checkpoints, names):
        for run, summary in zip(runs, summaries):
            own = run.folder / "prompts.safetensors"
            if not own.is_file():  # nothing learned (zero-shot): nothing to ensemble
                continue
            spec_file, result_file = run.folder / f"ensemble-{name}.json", run.folder / f"ensemble-{name}-summary.json"
            record = None
            if spec_file.is_file() and result_file.is_file():
                try:
                    fitted = Ensemble.load(spec_file)
                    if [Path(m.checkpoint).resolve() for m in fitted.members] == [own.resolve(), Path(path).resolve()]:
                        record = json.loads(result_file.read_text())
                except CheckpointError:
                    record = None  # a member changed: fit again
            if record is None:
                result = evaluate_ensemble(run.config, [str(own), str(path)], progress=progress, memo=memo)
                result.ensemble.save(spec_file)
                record = {"weights": result.ensemble.weights, "val_mAP": 100 * result.ensemble.validation["mAP"],
                          "test_mAP": 100 * result.metrics["mAP"]}
                result_file.write_text(json.dumps(record, indent=1))
            extra_runs.append(dataclasses.replace(run, method=f"{run.method}+{name}"))
            extra.append({"test": {"mAP": record["test_mAP"]}, "val": {"mAP": record["val_mAP"]},
                          "zero_shot_test": summary["zero_shot_test"], "best_epoch": summary["best_epoch"]})
    return extra_runs, extra


def _stats(values: List[float]) -> Dict[str, object]:
    """Mean and sample standard deviation (None for one seed) of a cell."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "std": std, "values": values}


def summarize(name: str, runs: List[SweepRun], summaries: List[Dict[str, object]],
              overrides: Sequence[str] = ()) -> Dict[str, object]:
    """The sweep table as plain data: test mAP (%) per method and p, mean ± std over seeds; the
    "Avg." over p (per seed, then mean ± std) only when p covers exactly 0.1 ... 0.9."""
    proportions = list(dict.fromkeys(r.p for r in runs))
    seeds = list(dict.fromkeys(r.seed for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    full = {round(p, 6) for p in proportions} == {round(p, 6) for p in PROPORTIONS}
    test = {(r.method, r.p, r.seed): float(s["test"]["mAP"]) for r, s in zip(runs, summaries)}
    zero_shot: Dict[str, List[float]] = {m: [] for m in methods}
    for r, s in zip(runs, summaries):
        zero_shot[r.method].append(float(s["zero_shot_test"]["mAP"]))
    rows = {}
    for method in methods:
        cells = {f"{p:g}": _stats([test[method, p, seed] for seed in seeds]) for p in proportions}
        average = None
        if full:
            average = _stats([sweep_average({p: test[method, p, seed] for p in proportions}) for seed in seeds])
        rows[method] = {"config": next(r.config_path for r in runs if r.method == method),
                        "cells": cells, "avg": average,
                        "zero_shot_test_mAP": float(np.mean(zero_shot[method]))}
    return {
        "name": name,
        "dataset": runs[0].config.data.dataset,
        "metric": f"test mAP (%, {runs[0].config.eval.ap} AP)",
        "ap": AP_NAMES[runs[0].config.eval.ap],
        "proportions": proportions,
        "seeds": seeds,
        "overrides": list(overrides),
        "methods": rows,
        "runs": [{"method": r.method, "p": r.p, "seed": r.seed, "folder": str(r.folder),
                  "test_mAP": test[r.method, r.p, r.seed], "val_mAP": float(s["val"]["mAP"]),
                  "best_epoch": s["best_epoch"]} for r, s in zip(runs, summaries)],
    }


def _cell(stats: Optional[Dict[str, object]]) -> str:
    if stats is None:
        return ""
    return f"{stats['mean']:.2f}" if stats["std"] is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _zero_shot_rows(table: Dict[str, object]) -> List[Tuple[str, float, Optional[str]]]:
    """(label, test mAP, method): one "zero-shot" row when all methods share it (same backbone and
    templates), else one per method."""
    values = {m: row["zero_shot_test_mAP"] for m, row in table["methods"].items()}
    if max(values.values()) - min(values.values()) < 1e-6:
        return [("zero-shot", next(iter(values.values())), None)]
    return [(f"zero-shot ({m})", v, m) for m, v in values.items()]


def markdown(table: Dict[str, object]) -> str:
    labels = [f"{p:g}" for p in table["proportions"]]
    has_avg = any(row["avg"] is not None for row in table["methods"].values())
    header = ["method", *labels] + (["Avg."] if has_avg else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method, row in table["methods"].items():
        cells = [_cell(row["cells"][label]) for label in labels] + ([_cell(row["avg"])] if has_avg else [])
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for label, value, _ in _zero_shot_rows(table):
        lines.append(f"| {label} | " + " | ".join([f"{value:.2f}"] * (len(header) - 1)) + " |")
    seeds = table["seeds"]
    spread = f"mean ± sample std over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}"
    return (f"# Sweep {table['name']}: {table['metric']} on {table['dataset']}\n\n"
            f"Columns: proportion p of known training labels; cells: {spread}. AP: {table['ap']}."
            + (" Avg.: mean over p = 0.1 ... 0.9." if has_avg else "")
            + (f" Overrides: {' '.join(table['overrides'])}." if table["overrides"] else "")
            + "\n\n" + "\n".join(lines) + "\n")


def write_tables(table: Dict[str, object], folder: Path) -> Dict[str, Path]:
    """sweep.md, sweep.csv (one row per method: mean and std per p, then avg), sweep.json, sweep.png."""
    files = {suffix: folder / f"sweep.{suffix}" for suffix in ("md", "csv", "json", "png")}
    files["md"].write_text(markdown(table))
    files["json"].write_text(json.dumps(table, indent=2))
    labels = [f"{p:g}" for p in table["proportions"]]
    has_avg = any(row["avg"] is not None for row in table["methods"].values())
    columns = labels + (["avg"] if has_avg else [])
    number = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    with open(files["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *[f"{c}_{stat}" for c in columns for stat in ("mean", "std")]])
        for method, row in table["methods"].items():
            stats = [row["cells"][label] for label in labels] + ([row["avg"]] if has_avg else [])
            writer.writerow([method, *[number(s[stat]) for s in stats for stat in ("mean", "std")]])
        for label, value, _ in _zero_shot_rows(table):
            writer.writerow([label, *[number(x) for _ in columns for x in (value, None)]])
    plot_sweep(table, files["png"])
    return files


def plot_sweep(table: Dict[str, object], path: Optional[Path] = None):
    """Test mAP against p, one line per method (error bars: std over seeds), the zero-shot
    reference dashed; returns the matplotlib Figure (saved to `path` when given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    proportions = table["proportions"]
    colors = {}
    for method, row in table["methods"].items():
        cells = [row["cells"][f"{p:g}"] for p in proportions]
        errors = [0.0 if c["std"] is None else c["std"] for c in cells]
        lines = axes.errorbar(proportions, [c["mean"] for c in cells], yerr=errors, marker="o", capsize=3,
                              label=method)
        colors[method] = lines[0].get_color()
    for label, value, method in _zero_shot_rows(table):
        axes.axhline(value, linestyle="--", color=colors.get(method, "gray"), linewidth=1, label=label)
    axes.set_xlabel("proportion of known training labels p")
    axes.set_ylabel(table["metric"])
    axes.set_title(f"{table['name']} ({table['dataset']})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


__all__ = ["SweepSpec", "SweepRun", "SweepResult", "plan", "run_sweep", "summarize", "markdown",
           "write_tables", "plot_sweep"]
