"""Command-line entry points (also installed as console scripts). Argument parsing and output
only: the work is done by the library."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

import clipml
from clipml.errors import ClipmlError

REPO_CONFIGS = Path(clipml.__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = REPO_CONFIGS / "demo.yaml"


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
              f"p={cfg.data.known_ratio}, backbone {cfg.backbone.spec}, loss {cfg.loss.name} "
              f"reduction {cfg.loss.reduction})", file=sys.stderr)
        summary = train(cfg, resume=not args.no_resume, progress=_progress)
        keys = list(summary["test"])
        cells = lambda values: [f"{values[k]:.2f}" if k in values else "-" for k in keys]  # noqa: E731
        rows = [["test", *cells(summary["test"])], ["test, zero-shot", *cells(summary["zero_shot_test"])],
                [f"val (best epoch {summary['best_epoch'] + 1})", *cells(summary["val"])]]
        print(_table(rows, ["", *keys]))
        print("\n".join(f"{name}: {text}" for name, text in summary["evaluation"].items()))
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
    parser.add_argument("--checkpoint", help="score with a learned prompt checkpoint instead")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the config's test split)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    def main():
        from clipml.data import load_split, readable_names, templates
        from clipml.engine.builders import build_backbone
        from clipml.engine.evaluate import detail_summary, evaluate
        from clipml.engine.features import ImageFeatureSource
        from clipml.data.transforms import eval_transform
        from clipml.engine.train import load_model
        from clipml.model import ModelConfig, MultiLabelCLIP

        cfg = _config(args.config, args.overrides)
        split = load_split(cfg.data.dataset, cfg.data.root, args.split or cfg.data.test_split, **cfg.data.options)
        classnames = readable_names(split)
        backbone = build_backbone(cfg)
        if args.checkpoint:
            model = load_model(args.checkpoint, classnames, backbone)
            what = f"prompt checkpoint {args.checkpoint}"
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
        metrics = evaluate(model, source, _progress, settings=cfg.eval)
        percent = lambda value: f"{100 * value:.2f}" if value == value else "n/a"  # noqa: E731
        columns = {"AP": "AP", "pointing_game_per_class": "pointing game", "mass_inside_per_class": "mass inside"}
        columns = {key: label for key, label in columns.items() if key in metrics}
        rows = [[name, *[percent(metrics[key][c]) for key in columns]] for c, name in enumerate(classnames)]
        print(_table(rows, ["class", *columns.values()]))
        print(f"\n{what} on {cfg.data.dataset}/{split.split} ({len(split)} images): mAP {100 * metrics['mAP']:.2f} "
              f"({cfg.eval.ap} AP), CF1 {100 * metrics['CF1']:.2f}, OF1 {100 * metrics['OF1']:.2f}")
        _print_details([(split.split, detail_summary(metrics))])

    _run(main)


# predict ---------------------------------------------------------------------------------------
def predict(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Per-class probabilities of images from a prompt checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="prompts.safetensors from train_prompts")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--threshold", type=float, default=None,
                        help="list classes with probability >= this, in [0, 1] (default: the per-class thresholds "
                             "chosen on validation and stored in the checkpoint; 0.5 for older checkpoints)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="list at most the K most probable classes that pass the thresholds "
                             "(with --threshold 0: exactly the K most probable)")
    parser.add_argument("--output", help="write .csv or .json with every class's probability (default: print)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    def main():
        from clipml.engine.checkpoint import read_prompt_checkpoint
        from clipml.engine.inference import (check_output, choose_labels, decision_rule, find_images,
                                             logit_threshold, score_images, write_predictions)
        from clipml.engine.train import load_model

        if args.threshold is not None:
            logit_threshold(args.threshold)  # refuses a value outside [0, 1] before anything loads
        if args.top_k is not None and args.top_k < 1:
            raise ClipmlError(f"--top-k must be at least 1, got {args.top_k}")
        check_output(args.output)
        paths = find_images(args.inputs)
        model = load_model(args.checkpoint, device=args.device)
        thresholds, rule = decision_rule(read_prompt_checkpoint(args.checkpoint)[1], model.classnames, args.threshold)
        print(f"labels listed at {rule}", file=sys.stderr)
        scored = score_images(model, paths, args.batch_size)
        for path, why in scored.skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        if not scored.paths:
            raise ClipmlError(f"none of the {len(paths)} image file(s) could be read (reasons above)")
        labels = choose_labels(scored.logits, thresholds, model.classnames, args.top_k)
        if args.output:
            write_predictions(args.output, scored, model.classnames, labels)
            print(f"wrote {len(scored.paths)} predictions to {args.output}")
        else:
            for path, listed in zip(scored.paths, labels):
                shown = ", ".join(f"{name} ({probability:.3f})" for name, probability in listed)
                print(f"{path}: {shown or '(none above threshold)'}")
        if scored.skipped:
            print(f"{len(scored.skipped)} of {len(paths)} file(s) skipped (listed above)", file=sys.stderr)

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
    args = parser.parse_args(argv)

    def main():
        from tqdm import tqdm

        from clipml.sweep import SweepSpec, run_sweep

        def progress(iterable, desc):
            outer = desc == "sweep"  # the bar over runs stays; the per-epoch bars go
            return tqdm(iterable, desc=desc, leave=outer, dynamic_ncols=True, file=sys.stderr,
                        unit="run" if outer else "it", disable=None)

        spec = SweepSpec(args.configs, args.proportions, args.seeds, args.name, args.output_dir, args.overrides)
        result = run_sweep(spec, progress)
        print(result.files["md"].read_text())
        print(f"{result.trained} run(s) trained, {result.reused} read back; "
              f"tables and plot: {', '.join(str(path) for path in result.files.values())}")

    _run(main)


# visualize_attention ---------------------------------------------------------------------------
def visualize_attention(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Overlay the spatial attention of the top-k predicted classes on an image "
                    "(methods with spatial attention: sdm_csp, dualcoop).")
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
