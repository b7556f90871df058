"""Command-line entry points (also installed as console scripts). Argument parsing and output
only: the work is done by the library."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

import clipml
from clipml.errors import ClipmlError

REPO_CONFIGS = Path(clipml.__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = REPO_CONFIGS / "demo.yaml"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def _progress(iterable, desc):
    from tqdm import tqdm

    # disable=None: bars only on a terminal; logs piped to a file keep the per-epoch log lines only.
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr, disable=None)


def _config(path: Optional[str], overrides: List[str]):
    from clipml.config import load_config
    from clipml.experiment import ExperimentConfig

    if path is None:
        if not DEMO_CONFIG.is_file():
            raise ClipmlError("no --config given and the demo config is not here; pass --config FILE.yaml")
        path = str(DEMO_CONFIG)
    return load_config(ExperimentConfig, path, overrides)


def _run(main) -> None:
    """Show user errors as one line, not a traceback."""
    # open_clip logs its own INFO lines through the root logger: show clipml's INFO only.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("clipml").setLevel(logging.INFO)
    try:
        main()
    except ClipmlError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _table(rows, headers) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _print_details(named) -> None:
    """Localisation and mAP breakdowns (METHODS §11) of evaluations that have them."""
    from clipml.engine.evaluate import detail_table

    headers, rows, note = detail_table(named)
    if headers:
        print("\n" + _table(rows, headers))
        if note:
            print(note)


# train_prompts ---------------------------------------------------------------------------------
def train_prompts(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train prompts (and the decoupler) on a frozen CLIP with partial labels.",
        epilog="Example: train_prompts.py --config configs/coco2014/sdm_csp.yaml data.known_ratio=0.3 optim.lr=0.001",
    )
    parser.add_argument("--config", help=f"experiment YAML (default: {DEMO_CONFIG.relative_to(REPO_CONFIGS.parent)})")
    parser.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a saved state")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.epochs=5")
    args = parser.parse_args(argv)

    def main():
        from clipml.engine.train import train

        cfg = _config(args.config, args.overrides)
        print(f"run folder: {cfg.run_dir()}  (method {cfg.model.method}, {cfg.data.dataset}, "
              f"p={cfg.data.known_ratio}, backbone {cfg.backbone.spec})", file=sys.stderr)
        summary = train(cfg, resume=not args.no_resume, progress=_progress)
        keys = list(summary["test"])
        rows = [["test", *[f"{summary['test'][k]:.2f}" for k in keys]],
                ["test, zero-shot", *[f"{summary['zero_shot_test'].get(k, float('nan')):.2f}" for k in keys]],
                [f"val (best epoch {summary['best_epoch'] + 1})", *[f"{summary['val'].get(k, float('nan')):.2f}" for k in keys]]]
        print(_table(rows, ["", *keys]))
        _print_details([("test", summary["test_details"]), ("test, zero-shot", summary["zero_shot_test_details"])])
        print(f"\n{summary['trainable_parameters']} trainable parameters, {summary['seconds']} s; "
              f"prompt checkpoint: {Path(cfg.run_dir()) / 'prompts.safetensors'}")

    _run(main)


# zero_shot_eval --------------------------------------------------------------------------------
def zero_shot_eval(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Evaluate CLIP with hand-crafted prompts (or a learned prompt checkpoint) on a split.")
    parser.add_argument("--config", help="experiment YAML naming the dataset and backbone (default: the demo)")
    parser.add_argument("--templates", default="single",
                        help="template set: 'single' (a photo of a {}.), 'default' (ensemble) or a text file")
    parser.add_argument("--scoring", choices=["global", "dense"], default="global",
                        help="global: CLIP's pooled image feature; dense: per-class spatial pooling")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="score with a learned prompt checkpoint instead; give it twice or more for an ensemble "
                             "fit on the config's validation split, or an ensemble spec (.json)")
    parser.add_argument("--save-ensemble", metavar="FILE", help="write the fitted ensemble spec (.json) for predict")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the config's test split)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    def main():
        from clipml.data import load_split, readable_names, templates
        from clipml.engine.builders import build_backbone
        from clipml.engine.evaluate import evaluate
        from clipml.engine.features import ImageFeatureSource
        from clipml.data.transforms import eval_transform
        from clipml.engine.train import load_model
        from clipml.model import ModelConfig, MultiLabelCLIP

        cfg = _config(args.config, args.overrides)
        split = load_split(cfg.data.dataset, cfg.data.root, args.split or cfg.data.test_split, **cfg.data.options)
        classnames = readable_names(split)
        if len(args.checkpoint) > 1 or any(c.endswith(".json") for c in args.checkpoint):
            return _ensemble_eval(cfg, args, split if args.split else None)
        if args.save_ensemble:
            raise ClipmlError("--save-ensemble needs two or more --checkpoint files to ensemble")
        backbone = build_backbone(cfg)
        if args.checkpoint:
            model = load_model(args.checkpoint[0], classnames, backbone)
            what = f"prompt checkpoint {args.checkpoint[0]}"
        else:
            path = Path(args.templates)
            chosen = ([line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
                      if path.is_file() else templates(args.templates))
            model_cfg = ModelConfig(method="zero_shot", templates=chosen, zero_shot_scoring=args.scoring,
                                    temperature=cfg.model.temperature)
            model = MultiLabelCLIP(backbone, classnames, model_cfg)
            what = f"zero-shot, {len(chosen)} template(s), {args.scoring} scoring"
        transform = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)
        source = ImageFeatureSource(split, backbone, transform,
                                    cfg.data.eval_batch_size, cfg.data.workers)
        metrics = evaluate(model, source, _progress)
        _print_metrics(what, cfg, split, classnames, metrics)

    _run(main)


def _print_metrics(what, cfg, split, classnames, metrics) -> None:
    from clipml.engine.evaluate import detail_summary

    percent = lambda value: f"{100 * value:.2f}" if value == value else "n/a"  # noqa: E731
    columns = {"AP": "AP", "pointing_game_per_class": "pointing game", "mass_inside_per_class": "mass inside"}
    columns = {key: label for key, label in columns.items() if key in metrics}
    rows = [[name, *[percent(metrics[key][c]) for key in columns]] for c, name in enumerate(classnames)]
    print(_table(rows, ["class", *columns.values()]))
    print(f"\n{what} on {cfg.data.dataset}/{split.split} ({len(split)} images): mAP {100 * metrics['mAP']:.2f}, "
          f"CF1 {100 * metrics['CF1']:.2f}, OF1 {100 * metrics['OF1']:.2f}")
    _print_details([(split.split, detail_summary(metrics))])


def _ensemble_eval(cfg, args, split) -> None:
    """zero_shot_eval with an ensemble: fit on the validation split (or read a spec), then score."""
    from clipml.data import readable_names
    from clipml.engine.ensemble import evaluate_ensemble
    from clipml.ensemble import Ensemble

    if len(args.checkpoint) == 1:
        fitted = Ensemble.load(args.checkpoint[0])
        result = evaluate_ensemble(cfg, ensemble=fitted, split=split, progress=_progress)
        what = f"ensemble {args.checkpoint[0]}"
    else:
        if any(c.endswith(".json") for c in args.checkpoint):
            raise ClipmlError("give either one ensemble spec (.json) or two or more prompt checkpoints, not both")
        result = evaluate_ensemble(cfg, args.checkpoint, split=split, progress=_progress)
        what = "ensemble"
    ensemble = result.ensemble
    rows = [[m.checkpoint, f"{m.weight:.2f}", f"{m.calibration.scale:.4g}", f"{m.calibration.bias:.4g}",
             f"{100 * metrics['mAP']:.2f}"] for m, metrics in zip(ensemble.members, result.member_metrics)]
    print(_table(rows, ["member", "weight", "scale", "bias", f"mAP alone ({result.split.split})"]))
    if "mAP" in ensemble.validation:
        print(f"weights chosen on the validation split: mAP {100 * ensemble.validation['mAP']:.2f} "
              f"(members alone: {', '.join(f'{100 * m:.2f}' for m in ensemble.validation['member_mAP'])})\n")
    if args.save_ensemble:
        print(f"ensemble spec written to {ensemble.save(args.save_ensemble)}\n")
    _print_metrics(what, cfg, result.split, readable_names(result.split), result.metrics)


# predict ---------------------------------------------------------------------------------------
def predict(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Per-class probabilities of images from a prompt checkpoint.")
    parser.add_argument("--checkpoint", required=True,
                        help="prompts.safetensors from train_prompts, or an ensemble spec (.json) from "
                             "zero_shot_eval --save-ensemble")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--threshold", type=float, default=0.5, help="labels with probability >= this are listed")
    parser.add_argument("--output", help="write .csv or .json (default: print)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    def main():
        from clipml.data.base import MultiLabelSplit
        from clipml.engine.ensemble import ImageScorer, probabilities

        paths = []
        for entry in map(Path, args.inputs):
            if entry.is_dir():
                paths += sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            elif entry.is_file():
                paths.append(entry)
            else:
                raise ClipmlError(f"input not found: {entry}")
        if not paths:
            raise ClipmlError(f"no images found in {', '.join(args.inputs)}")
        scorer = ImageScorer(args.checkpoint, device=args.device)
        classnames = scorer.classnames
        split = MultiLabelSplit("images", "predict", classnames, [str(p.resolve()) for p in paths],
                                torch.zeros(len(paths), len(classnames), dtype=torch.int8).numpy(), Path("/"))
        probs = []
        for start in range(0, len(split), args.batch_size):
            images = [split.open_image(i) for i in range(start, min(start + args.batch_size, len(split)))]
            probs.append(probabilities(scorer.logits(images)))
        probs = np.concatenate(probs)
        records = [{"image": str(path), "labels": [c for c, p in zip(classnames, row) if p >= args.threshold],
                    "probabilities": {c: round(float(p), 5) for c, p in zip(classnames, row)}}
                   for path, row in zip(paths, probs)]
        if args.output and args.output.endswith(".json"):
            Path(args.output).write_text(json.dumps(records, indent=1))
        elif args.output:
            with open(args.output, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", "labels", *classnames])
                for record, row in zip(records, probs):
                    writer.writerow([record["image"], ";".join(record["labels"]), *[f"{p:.5f}" for p in row]])
        else:
            for record in records:
                print(f"{record['image']}: {', '.join(record['labels']) or '(none above threshold)'}")
        if args.output:
            print(f"wrote {len(records)} predictions to {args.output}")

    _run(main)


# sweep -----------------------------------------------------------------------------------------
def sweep(argv: Optional[List[str]] = None) -> None:
    from clipml.metrics import PROPORTIONS

    parser = argparse.ArgumentParser(
        description="Train several methods over known-label proportions p (and seeds) on one dataset; "
                    "write the test mAP table (Markdown, CSV, JSON) and plot. Re-running resumes.",
        epilog="Example: sweep.py configs/voc2007/coop.yaml configs/voc2007/sdm_csp.yaml --seeds 0 1 2 "
               "--set optim.epochs=20 data.cache=true",
    )
    parser.add_argument("configs", nargs="+", help="method config YAMLs (same dataset); the file name names the row")
    parser.add_argument("-p", "--proportions", nargs="+", type=float, default=list(PROPORTIONS),
                        help="known-label proportions (default: 0.1 ... 0.9)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="experiment seeds (the mask seed stays the config's data.mask_seed)")
    parser.add_argument("--name", help="sweep name (default: the dataset name)")
    parser.add_argument("--output-dir", default="runs/sweeps", help="the sweep folder is OUTPUT_DIR/NAME (default: runs/sweeps)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="key=value",
                        help="config overrides for every run, e.g. optim.epochs=2")
    parser.add_argument("--ensemble-with", nargs="+", action="extend", default=[], metavar="CHECKPOINT",
                        help="prompt checkpoints (e.g. one TaI-DPT) to ensemble with every trained run, weights "
                             "chosen on the run's validation split; adds rows METHOD+THEIR_METHOD")
    args = parser.parse_args(argv)

    def main():
        from tqdm import tqdm

        from clipml.sweep import SweepSpec, run_sweep

        def progress(iterable, desc):
            outer = desc == "sweep"  # the bar over runs stays; the per-epoch bars go
            return tqdm(iterable, desc=desc, leave=outer, dynamic_ncols=True, file=sys.stderr,
                        unit="run" if outer else "it", disable=None)

        spec = SweepSpec(args.configs, args.proportions, args.seeds, args.name, args.output_dir, args.overrides,
                         args.ensemble_with)
        result = run_sweep(spec, progress)
        print(result.files["md"].read_text())
        print(f"{result.trained} run(s) trained, {result.reused} read back; "
              f"tables and plot: {', '.join(str(path) for path in result.files.values())}")

    _run(main)


# visualize_attention ---------------------------------------------------------------------------
def visualize_attention(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Overlay the spatial attention of the top-k predicted classes on an image "
                    "(methods with spatial attention: sdm_csp, dualcoop, taidpt).")
    parser.add_argument("--checkpoint", required=True, help="prompts.safetensors from train_prompts")
    parser.add_argument("image", help="an image file")
    parser.add_argument("--output", help="PNG to write (default: <image name>_attention.png here)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    def main():
        from clipml.visualize import visualize_attention as run

        output = args.output or f"{Path(args.image).stem}_attention.png"
        maps = run(args.checkpoint, args.image, output, args.top_k, args.device, args.alpha)
        for name, probability in zip(maps.classes, maps.probabilities):
            print(f"{name}: {probability:.3f}")
        print(f"wrote {output}")

    _run(main)
