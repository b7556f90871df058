"""Command-line entry points (also installed as console scripts). Argument parsing and output
only: the work is done by the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import List, Optional


from clipml.devices import select_device
from clipml.errors import ClipmlError

DEMO_CONFIG = resources.files("clipml").joinpath("assets", "demo.yaml")  # the config the tools default to
DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto (CUDA when available)"


def _rank() -> int:
    """This process's rank under `torchrun` (0 otherwise): only rank 0 prints results."""
    return int(os.environ.get("RANK", "0"))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default; an option without one (None) says in its help what happens."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser(description: str, epilog: Optional[str] = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=_HelpFormatter)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """--config, --device and --print-config, shared by the tools that read an experiment config."""
    parser.add_argument("--config", help="experiment YAML (default: the demo, clipml/assets/demo.yaml; zero_shot_eval "
                                          "with --checkpoint: the config the checkpoint was trained with)")
    parser.add_argument("--device", help=f"{DEVICE_HELP} (default: the config's device, auto)")
    parser.add_argument("--print-config", action="store_true",
                        help="print every config key with its value, default and help, then exit")


def _progress(iterable, desc, leave: bool = False, unit: str = "it"):
    from tqdm import tqdm

    # disable=None: bars only on a terminal (rank 0's); logs piped to a file keep the per-epoch lines.
    # A terminal that reports no size (a pseudo-terminal made without one, as `script` does when
    # not run from a terminal) would hide every bar (tqdm reads 0 columns, -1 rows): assume 80 x 24.
    try:
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        sized = False
    shape = {"dynamic_ncols": True} if sized else {"ncols": 80, "nrows": 24}
    return tqdm(iterable, desc=desc, leave=leave, unit=unit, file=sys.stderr, disable=True if _rank() else None,
                **shape)


def _config(args, checkpoint: Optional[str] = None):
    """The experiment config of a tool's --config, overrides and --device; --print-config prints it
    and exits. Without --config: the config `checkpoint` was trained with (its data, so a
    checkpoint is scored on its own dataset) if given, else the demo's."""
    from clipml.experiment import load_experiment

    path, base, shown = args.config, None, args.config
    if path is None and checkpoint:
        base = (_checkpoint_config(checkpoint), f"checkpoint {checkpoint}")
        shown = f"the config stored in {checkpoint}"
    if path is None and base is None:
        with resources.as_file(DEMO_CONFIG) as demo:  # package data: found in an installed wheel too
            cfg = load_experiment(str(demo), _overrides(args))
        shown = "the demo config (clipml/assets/demo.yaml)"
    else:
        cfg = load_experiment(path, _overrides(args), base)
    if args.print_config:
        _print_config(cfg, f"{shown} {' '.join(args.overrides)}".strip())
        sys.exit(0)
    if base is not None and not _rank():
        print(f"config: the one {checkpoint} was trained with (dataset {cfg.data.dataset}, root {cfg.data.root}); "
              f"--config FILE or key=value overrides change it", file=sys.stderr)
    select_device(cfg.device)  # a device the machine lacks stops here, before any data is read
    return cfg


def _overrides(args) -> List[str]:
    return list(args.overrides) + ([f"device={args.device}"] if args.device else [])


def _checkpoint_config(checkpoint: str) -> dict:
    """The resolved config stored in a prompt checkpoint (an ensemble spec: its first member's)."""
    from clipml.engine.checkpoint import read_prompt_checkpoint
    from clipml.ensemble import Ensemble

    if checkpoint.endswith(".json"):
        checkpoint = Ensemble.load(checkpoint, check_files=False).members[0].checkpoint
    return read_prompt_checkpoint(checkpoint)[1]["config"]


def _print_config(cfg, source: str) -> None:
    """One line per config key: its value (JSON), [its default] and its help."""
    from clipml.config import describe_config

    rows = [(f"{key} = {json.dumps(value)}", json.dumps(default), text)
            for key, value, default, text in describe_config(cfg)]
    width = max(len(setting) for setting, _, _ in rows)
    print(f"# {source}: key = value  [default]  help")
    for setting, default, text in rows:
        print(f"{setting.ljust(width)}  [{default}]  {text}")


def _run(main) -> None:
    """Show user errors and Ctrl-C as one line, not a traceback; under torchrun only rank 0 prints
    results (other ranks' errors are shown with their rank)."""
    # open_clip logs its own INFO lines through the root logger: show clipml's INFO only.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rank = _rank()
    logging.getLogger("clipml").setLevel(logging.WARNING if rank else logging.INFO)
    prefix = f"rank {rank}: " if rank else ""
    try:
        with contextlib.ExitStack() as stack:
            if rank:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            main()
    except ClipmlError as error:
        print(f"{prefix}error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:
        if not rank:
            print(str(interrupt) or "interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head`: stop quietly (as the Python docs advise)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _table(rows, headers) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _ap(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}"


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
    parser = _parser(
        "Train prompts (and the decoupler) on a frozen CLIP with partial labels.",
        epilog="Example: train_prompts.py --config configs/coco2014/sdm_csp.yaml data.known_ratio=0.3 optim.lr=0.001",
    )
    _add_config_options(parser)
    parser.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a saved state")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start training from a prompt checkpoint's tensors (the config key init_from; "
                             "to continue a run for more epochs, raise optim.epochs instead) (default: none)")
    parser.add_argument("--export-scores", metavar="FILE.csv",
                        help="also write the test split's scores: image, class, score, logit, label (default: none)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.epochs=5")
    args = parser.parse_intermixed_args(argv)  # overrides may follow flags

    def main():
        from clipml.engine.train import labels_text, train

        if args.init_from:
            args.overrides.append(f"init_from={json.dumps(args.init_from)}")  # quoted: any path is a string
        cfg = _config(args)
        if not _rank():
            print(f"run folder: {cfg.run_dir()}  (method {cfg.model.method}, {cfg.data.dataset}, "
                  f"p={cfg.data.known_ratio} on complete labels, own partial labels: {cfg.data.partial_labels}, "
                  f"backbone {cfg.backbone.spec}, loss {cfg.loss.name} "
                  f"reduction {cfg.loss.reduction})", file=sys.stderr)
        summary = train(cfg, resume=not args.no_resume, progress=_progress, scores_path=args.export_scores)
        ap = [[name, _ap(value), _ap(summary["zero_shot_test_ap"][name])] for name, value in summary["test_ap"].items()]
        print(_table(ap, ["class", "test AP", "zero-shot AP"]) + "\n")
        keys = list(summary["test"])
        cells = lambda values: [f"{values[k]:.2f}" if k in values else "-" for k in keys]  # noqa: E731
        best = f"best epoch {summary['best_epoch']}" if summary["best_epoch"] else "no training"
        rows = [[f"test: {summary['splits']['test']}", *cells(summary["test"])],
                ["test, zero-shot", *cells(summary["zero_shot_test"])],
                [f"val: {summary['splits']['val'].split(' (')[0]}, {best}", *cells(summary["val"])]]
        print(_table(rows, ["", *keys]))
        print("\n".join(f"{name}: {text}" for name, text in summary["evaluation"].items()))
        _print_details([("test", summary["test_details"]), ("test, zero-shot", summary["zero_shot_test_details"])])
        took = f"{summary['seconds']} s"
        if summary["seconds_this_call"] != summary["seconds"]:
            took += f" (this call: {summary['seconds_this_call']} s)"
        saved = f"; prompt checkpoint: {Path(cfg.run_dir()) / 'prompts.safetensors'}" if summary["trainable_parameters"] else ""
        print(f"\ntraining labels: {labels_text(summary)}")
        coverage = summary.get("test_classes", {}).get("text")  # absent from summaries written before it
        print(f"{summary['trainable_parameters']} trainable parameters, {took}{saved}"
              + (f"; test mAP {coverage}" if coverage else ""))
        if args.export_scores:
            print(f"test scores: {args.export_scores}")

    _run(main)


# zero_shot_eval --------------------------------------------------------------------------------
CARVED = "carved-val"


def zero_shot_eval(argv: Optional[List[str]] = None) -> None:
    parser = _parser("Evaluate CLIP with hand-crafted prompts (or a learned prompt checkpoint) on a split.")
    _add_config_options(parser)
    parser.add_argument("--templates", default="single",
                        help="template set: 'single' (a photo of a {}.), 'default' (16), 'imagenet' (CLIP's 80), "
                             "'taidpt' or a text file")
    parser.add_argument("--scoring", choices=["global", "dense"], default="global",
                        help="global: CLIP's pooled image feature; dense: per-class spatial pooling")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="score with a learned prompt checkpoint instead; give it twice or more for an ensemble "
                             "fit on the config's validation split, or an ensemble spec (.json) (default: zero-shot)")
    parser.add_argument("--save-ensemble", metavar="FILE",
                        help="write the fitted ensemble spec (.json) for predict (default: none)")
    parser.add_argument("--split", default=None,
                        help=f"a split of the dataset (its own, e.g. val or test), or '{CARVED}': the validation "
                             "split train_prompts selects epochs on (the part it carves from the training split, "
                             "or data.val_split) "
                             "(default: the config's data.test_split)")
    parser.add_argument("--export-scores", metavar="FILE.csv",
                        help="also write the scores: image, class, score, logit, label (default: none)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.root=/data/coco")
    args = parser.parse_intermixed_args(argv)  # overrides may follow flags

    def main():
        from clipml.data import load_split, readable_names
        from clipml.data.lvis import check_disjoint
        from clipml.data.transforms import tower_eval_transform
        from clipml.engine.builders import build_backbone, build_splits, validation_description
        from clipml.engine.evaluate import evaluate
        from clipml.engine.features import ImageFeatureSource
        from clipml.predictor import Predictor

        cfg = _config(args, args.checkpoint[0] if args.checkpoint else None)
        for checkpoint in args.checkpoint:  # LVIS and COCO 2014 share images: never train on one, test on the other
            check_disjoint(_checkpoint_config(checkpoint)["data"]["dataset"], cfg.data.dataset,
                           f"checkpoint {checkpoint}")
        if args.split == CARVED:
            split = build_splits(cfg)[1]
            where = f"the validation split train_prompts selects epochs on: {validation_description(cfg, split)}"
        else:
            name = args.split or cfg.data.test_split
            split = load_split(cfg.data.dataset, cfg.data.root, name, **cfg.data.options)
            where = f"the dataset's own split '{name}' ({len(split)} images)"
        classnames = readable_names(split)
        if len(args.checkpoint) > 1 or any(c.endswith(".json") for c in args.checkpoint):
            return _ensemble_eval(cfg, args, split if args.split else None)
        if args.save_ensemble:
            raise ClipmlError("--save-ensemble needs two or more --checkpoint files to ensemble")
        backbone = build_backbone(cfg)
        if args.checkpoint:
            model = Predictor.from_checkpoint(args.checkpoint[0], classnames=classnames, backbone=backbone).model
            what = f"prompt checkpoint {args.checkpoint[0]}"
        else:
            model = Predictor.zero_shot(classnames, backbone, args.templates, args.scoring, base=cfg.model).model
            what = f"zero-shot, {len(model.config.templates)} template(s), {args.scoring} scoring"
        transform = tower_eval_transform(backbone.preprocess, normalize=False)
        source = ImageFeatureSource(split, backbone, transform,
                                    cfg.data.eval_batch_size, cfg.data.workers)
        metrics = evaluate(model, source, _progress, settings=cfg.eval, scores_path=args.export_scores)
        _print_metrics(what, where, cfg, classnames, metrics)
        if args.export_scores:
            print(f"scores: {args.export_scores}")

    _run(main)


def _print_metrics(what, where, cfg, classnames, metrics) -> None:
    from clipml.engine.evaluate import detail_summary

    percent = lambda value: f"{100 * value:.2f}" if value == value else "n/a"  # noqa: E731
    columns = {"AP": "AP", "pointing_game_per_class": "pointing game", "mass_inside_per_class": "mass inside"}
    columns = {key: label for key, label in columns.items() if key in metrics}
    reasons = metrics["coverage"]["reason"]  # why a class has no AP (clipml.metrics.class_coverage)
    rows = [[name, *[f"n/a ({reasons[c]})" if key == "AP" and reasons[c] else percent(metrics[key][c])
                     for key in columns]] for c, name in enumerate(classnames)]
    print(_table(rows, ["class", *columns.values()]))
    print(f"\n{what} on {cfg.data.dataset}, {where}: mAP {100 * metrics['mAP']:.2f} ({cfg.eval.ap} AP; "
          f"{metrics['coverage_text']}), CF1 {100 * metrics['CF1']:.2f}, OF1 {100 * metrics['OF1']:.2f}")
    _print_details([(where, detail_summary(metrics))])


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
    where = f"split '{result.split.split}' ({len(result.split)} images)"
    _print_metrics(what, where, cfg, readable_names(result.split), result.metrics)


# predict ---------------------------------------------------------------------------------------
def predict(argv: Optional[List[str]] = None) -> None:
    parser = _parser("Per-class probabilities of images from a prompt checkpoint or an ensemble spec, or "
                     "zero-shot CLIP on a class list (--classes and --backbone, no checkpoint).")
    parser.add_argument("--checkpoint", help="prompts.safetensors from train_prompts, or an ensemble spec (.json) "
                                             "from zero_shot_eval --save-ensemble (default: zero-shot, see --classes)")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--threshold", type=float, default=None,
                        help="list classes with probability >= this, in [0, 1] (default: the per-class thresholds "
                             "chosen on validation and stored in the checkpoint; 0.5 for older checkpoints and "
                             "zero-shot prediction)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="list at most the K most probable classes that pass the thresholds "
                             "(with --threshold 0: exactly the K most probable) (default: no limit)")
    parser.add_argument("--output", help="write .csv or .json with every class's probability (default: print)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_zero_shot_options(parser)
    args = parser.parse_args(argv)

    def main():
        from clipml.engine.inference import check_output, find_images, logit_threshold, write_predictions

        select_device(args.device)
        if args.threshold is not None:
            logit_threshold(args.threshold)  # refuses a value outside [0, 1] before anything loads
        if args.top_k is not None and args.top_k < 1:
            raise ClipmlError(f"--top-k must be at least 1, got {args.top_k}")
        check_output(args.output)
        paths = find_images(args.inputs)
        predictor = _predictor(args)
        result = predictor.predict(paths, threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                                   skip_unreadable=True)
        print(f"labels listed at {result.rule}", file=sys.stderr)
        for path, why in result.skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        if not result.images:
            raise ClipmlError(f"none of the {len(paths)} image file(s) could be read (reasons above)")
        if args.output:
            write_predictions(args.output, result)
            print(f"wrote {len(result.images)} predictions to {args.output}")
        else:
            column = {name: c for c, name in enumerate(result.classnames)}
            for path, listed, probabilities in zip(result.images, result.labels, result.probabilities):
                shown = ", ".join(f"{name} ({probabilities[column[name]]:.3f})" for name in listed)
                print(f"{path}: {shown or '(none above threshold)'}")
        if result.skipped:
            print(f"{len(result.skipped)} of {len(paths)} file(s) skipped (listed above)", file=sys.stderr)

    _run(main)


def _add_zero_shot_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("zero-shot prediction (without --checkpoint)")
    group.add_argument("--classes", help="class names: a text file (one a line) or a comma-separated list "
                                         "(default: none; needed without --checkpoint)")
    group.add_argument("--backbone", default="toy", help="backbone spec, e.g. open_clip:ViT-B-16@openai (README)")
    group.add_argument("--image-size", type=int, help="input size (default: the backbone's native size)")
    group.add_argument("--templates", default="single",
                       help="template set: 'single', 'default' (16), 'imagenet' (CLIP's 80), 'taidpt' or a text file")


def _predictor(args):
    """The Predictor of --checkpoint (a prompt checkpoint or an ensemble spec), or zero-shot CLIP
    over --classes (CLIP's softmax over them: the probabilities sum to 1 over the classes, so a
    lower --threshold such as 0.2 lists several)."""
    from clipml.predictor import Predictor

    if args.checkpoint:
        if args.classes:
            raise ClipmlError("--classes is for zero-shot prediction; a checkpoint brings its own classes")
        return Predictor.from_checkpoint(args.checkpoint, device=args.device)
    if not args.classes:
        raise ClipmlError("give --checkpoint FILE, or --classes (and --backbone) for zero-shot prediction")
    path = Path(args.classes)
    names = path.read_text().splitlines() if path.is_file() else args.classes.split(",")
    names = [name.strip() for name in names if name.strip()]
    if len(set(names)) != len(names) or not names:
        raise ClipmlError(f"--classes {args.classes}: expected distinct class names, found {names}")
    return Predictor.zero_shot(names, backbone=args.backbone, templates=args.templates, image_size=args.image_size,
                               device=args.device)


# complete_labels -------------------------------------------------------------------------------
def complete_labels(argv: Optional[List[str]] = None) -> None:
    parser = _parser(
        "Fill the unknown entries of a training manifest with a prompt checkpoint's probabilities and "
        "labels (at its validation thresholds); known entries are copied unchanged.",
        epilog="Example: complete_labels.py --checkpoint runs/demo/prompts.safetensors data/train.jsonl "
               "--output data/train_completed.jsonl")
    parser.add_argument("--checkpoint", required=True, help="prompts.safetensors from train_prompts (required)")
    parser.add_argument("manifest", help="the manifest to complete (.jsonl or .csv)")
    parser.add_argument("--output", required=True, help="the completed manifest to write (.jsonl) (required)")
    parser.add_argument("--classes", help="classes file, one name a line (default: classes.txt beside the manifest)")
    parser.add_argument("--unlisted", choices=["negative", "unknown"], default=None,
                        help="what the classes a record does not list are, as data.options.unlisted; 'unknown' "
                             "fills them too (default: none, every record lists every class)")
    parser.add_argument("--image-root", help="folder the image paths are relative to (default: the manifest's folder)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="label a filled entry positive at probability >= this, in [0, 1] (default: the "
                             "per-class thresholds stored in the checkpoint; 0.5 for older checkpoints)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = parser.parse_args(argv)

    def main():
        from clipml.completion import complete_labels as complete

        select_device(args.device)
        result = complete(args.checkpoint, args.manifest, args.output, classes=args.classes, unlisted=args.unlisted,
                          image_root=args.image_root, threshold=args.threshold, batch_size=args.batch_size,
                          device=args.device, progress=_progress)
        for path, why in result.skipped:
            print(f"skipped {path}: {why} (its unknown entries stay unknown)", file=sys.stderr)
        print(f"filled {result.filled} unknown entries of {result.completed_images} of {result.images} images "
              f"({result.predicted_positive} predicted positive, at {result.rule}); wrote {result.output}")

    _run(main)


# export_onnx -----------------------------------------------------------------------------------
def export_onnx(argv: Optional[List[str]] = None) -> None:
    parser = _parser(
        "Export a prompt checkpoint as ONNX for serving: normalised images in, per-class probabilities "
        "out (the prompts' text features folded in as constants), checked against PyTorch with onnxruntime.",
        epilog="Example: export_onnx.py --checkpoint runs/demo/prompts.safetensors --output model.onnx")
    parser.add_argument("--checkpoint", required=True, help="prompts.safetensors from train_prompts (required)")
    parser.add_argument("--output", required=True, help="the .onnx file to write (required)")
    parser.add_argument("--device", default="cpu", help="cpu only: the export traces on the CPU")
    args = parser.parse_args(argv)

    def main():
        from clipml.export import export_onnx as export

        if select_device(args.device) != "cpu":
            raise ClipmlError(f"--device {args.device}: the ONNX export runs on the CPU; pass --device cpu")
        result = export(args.checkpoint, args.output)
        prep = result.preprocessing
        print(f"wrote {result.path}: image [batch, 3, {prep['image_size']}, {prep['image_size']}] -> probabilities "
              f"[batch, {len(result.classes)}]; max |ONNX - PyTorch| {result.max_abs_difference:.2g}")
        print(f"preprocess: resize {prep['resize']}; {prep['scaling']}; mean {prep['mean']}, std {prep['std']}")

    _run(main)


# sweep -----------------------------------------------------------------------------------------
def sweep(argv: Optional[List[str]] = None) -> None:
    from clipml.metrics import PROPORTIONS

    parser = _parser(
        "Train several methods over known-label proportions p (and seeds) on one dataset; "
        "write the test mAP table (Markdown, CSV, JSON) and plot. Re-running resumes.",
        epilog="Example: sweep.py configs/voc2007/coop.yaml configs/voc2007/sdm_csp.yaml --seeds 0 1 2 "
               "--set optim.epochs=20 data.cache=true",
    )
    parser.add_argument("configs", nargs="+", help="method config YAMLs (same dataset); the file name names the row")
    parser.add_argument("-p", "--proportions", nargs="+", type=float, default=list(PROPORTIONS),
                        help="known-label proportions")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="experiment seeds (the mask seed stays the config's data.mask_seed)")
    parser.add_argument("--name", help="sweep name (default: the dataset name)")
    parser.add_argument("--output-dir", default="runs/sweeps", help="the sweep folder is OUTPUT_DIR/NAME")
    parser.add_argument("--device", help=f"{DEVICE_HELP} (default: the configs' device, auto)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="key=value",
                        help="config overrides for every run, e.g. optim.epochs=2")
    parser.add_argument("--ensemble-with", nargs="+", action="extend", default=[], metavar="CHECKPOINT",
                        help="prompt checkpoints (e.g. one TaI-DPT) to ensemble with every trained run, weights "
                             "chosen on the run's validation split; adds rows METHOD+THEIR_METHOD")
    args = parser.parse_args(argv)

    def main():
        from clipml.sweep import SweepSpec, run_sweep

        def progress(iterable, desc):
            outer = desc == "sweep"  # the bar over runs stays; the per-epoch bars go
            return _progress(iterable, desc, leave=outer, unit="run" if outer else "it")

        overrides = args.overrides + ([f"device={args.device}"] if args.device else [])
        if args.device:
            select_device(args.device)
        spec = SweepSpec(args.configs, args.proportions, args.seeds, args.name, args.output_dir, overrides,
                         args.ensemble_with)
        result = run_sweep(spec, progress)
        print(result.files["md"].read_text())
        print(f"{result.trained} run(s) trained, {result.reused} read back; "
              f"tables and plot: {', '.join(str(path) for path in result.files.values())}")

    _run(main)


# visualize_attention ---------------------------------------------------------------------------
def visualize_attention(argv: Optional[List[str]] = None) -> None:
    from clipml.methods import spatial_methods

    parser = _parser(
        "Overlay the spatial attention of the top-k predicted classes on images "
        f"(methods with spatial attention: {', '.join(spatial_methods())}).")
    parser.add_argument("--checkpoint", required=True, help="prompts.safetensors from train_prompts (required)")
    parser.add_argument("images", nargs="+", metavar="image",
                        help="image files or folders (searched recursively; the model loads once for all)")
    parser.add_argument("--output", help="one image file: the PNG to write; several or a folder: a folder for "
                                         "them (default: <image name>_attention.png here)")
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per image, most probable first")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    parser.add_argument("--labels", metavar="MANIFEST",
                        help="a manifest (.jsonl or .csv, as data.dataset=manifest reads) whose positive classes "
                             "are shown as each listed image's true labels (default: none shown)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = parser.parse_args(argv)

    def main():
        from clipml.engine.inference import find_images
        from clipml.visualize import visualize_many

        select_device(args.device)
        paths = find_images(args.images)
        names = [f"{path.stem}_attention.png" for path in paths]
        if len(args.images) == 1 and Path(args.images[0]).is_file():
            outputs = [args.output or names[0]]
        else:
            if len(set(names)) < len(names):
                clashes = sorted({str(p) for p, n in zip(paths, names) if names.count(n) > 1})
                raise ClipmlError(f"images {clashes[:6]} share file names; their PNGs would overwrite each other")
            folder = Path(args.output or ".")
            if folder.suffix.lower() == ".png":
                raise ClipmlError(f"--output {folder}: with several images or a folder, --output is a folder")
            folder.mkdir(parents=True, exist_ok=True)
            outputs = [str(folder / name) for name in names]
        result = visualize_many(args.checkpoint, paths, outputs, args.top_k, args.device, args.alpha, args.labels)
        for path, why in result.skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        for _, output, maps in result.written:
            if maps.true_labels is not None:
                print(f"true labels: {', '.join(maps.true_labels) or '(none)'}")
            for name, probability in zip(maps.classes, maps.probabilities):
                print(f"{name}: {probability:.3f}")
            print(f"wrote {output}")
        if result.skipped:
            print(f"{len(result.skipped)} of {len(paths)} file(s) skipped (listed above)", file=sys.stderr)

    _run(main)


# report ----------------------------------------------------------------------------------------
def report(argv: Optional[List[str]] = None) -> None:
    parser = _parser(
        "Write a run's report.html (per-class AP, precision-recall curves, mAP breakdowns, training curves, "
        "attention on test images, config): one file that opens offline. Training writes it too.",
        epilog="Example: report.py runs/demo --images 8")
    parser.add_argument("run", help="a finished run folder (with summary.json)")
    parser.add_argument("--images", type=int, help="test images with attention overlays (default: the run's "
                                                    "train.report_images)")
    parser.add_argument("--curves", type=int,
                        help="with more than 100 classes, draw the mean precision-recall curve and this many best "
                             "and worst classes instead of every class (default 8)")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    args = parser.parse_args(argv)

    def main():
        from clipml.report import write_report

        device = select_device(args.device)
        curves = {} if args.curves is None else {"curves": args.curves}
        print(f"wrote {write_report(args.run, images=args.images, device=device, **curves)}")

    _run(main)
