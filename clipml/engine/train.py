"""The training loop: partial-label loss on the trainable parts, validation each epoch, best
checkpoint by validation mAP, a final test evaluation, and exact resume from the last epoch."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clipml.config import config_to_dict, save_config
from clipml.data import readable_names
from clipml.data.lvis import check_disjoint
from clipml.data.splits import warn_small_validation
from clipml.engine import Progress, distributed
from clipml.engine.builders import (build_backbone, build_sources, build_splits, data_identity, known_percent,
                                    label_source, load_splits, select_device, validation_description)
from clipml.engine.checkpoint import (
    load_into,
    load_training_state,
    model_tensors,
    read_prompt_checkpoint,
    save_prompt_checkpoint,
    save_training_state,
)
from clipml.engine.classes import ClassSelector
from clipml.engine.evaluate import decision_thresholds, detail_summary, detail_table, evaluate, evaluation_notes
from clipml.engine.features import CountedPass
from clipml.engine.tensorboard import EpochScalars, summary_writer_class
from clipml.errors import CheckpointError, ConfigError, TrainingInterrupted
from clipml.experiment import (DataConfig, ExperimentConfig, LossConfig, OptimConfig, config_differences,
                               describe_differences)
from clipml.losses import build_loss
from clipml.methods import Step, baseline_config
from clipml.model import ModelConfig, MultiLabelCLIP

logger = logging.getLogger(__name__)

BEST, LAST, STATE, LOG = "best.safetensors", "last.safetensors", "state.pt", "log.jsonl"
DATA = "data.json"  # the run's data identity (builders.data_identity)
SCORES = "test_scores.npz"  # the final model's test logits and labels, for the report's curves


def build_optimizer(cfg: OptimConfig, model: MultiLabelCLIP) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; scalars (temperatures, blend weights) get no
    weight decay, and the semantic decoupler runs at lr × decoupler_lr_scale."""
    if cfg.decoupler_lr_scale <= 0:
        raise ConfigError(f"optim.decoupler_lr_scale must be > 0, got {cfg.decoupler_lr_scale}")
    decoupler = model.method.scaled_module(model)
    # With one rate for all, the groups (and so saved optimizer states) stay as they always were.
    scaled = decoupler is not None and cfg.decoupler_lr_scale != 1.0
    in_decoupler = {id(p) for p in decoupler.parameters()} if scaled else set()
    groups: Dict[Tuple[bool, bool], List[torch.nn.Parameter]] = {}
    for parameter in model.trainable_parameters():
        groups.setdefault((parameter.dim() == 0, id(parameter) in in_decoupler), []).append(parameter)
    param_groups = [
        {"params": params, "weight_decay": 0.0 if scalar else cfg.weight_decay,
         "lr": cfg.lr * (cfg.decoupler_lr_scale if coupled else 1.0)}
        for (scalar, coupled), params in sorted(groups.items())
    ]
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def dassl_cosine(optimizer, warmup_epochs: int, epochs: int, warmup_lr: float,
                 steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Dassl's build_lr_scheduler (cosine, constant warm-up, recounted), stepped every step here:
    epoch e < W runs at `warmup_lr`, epoch e >= W at lr·(1 + cos(π (e − W) / epochs)) / 2, one
    rate for the whole epoch (DualCoOp and TaI-DPT step it once per epoch)."""

    def group_factor(base_lr: float):
        def factor(step: int) -> float:
            epoch = step // steps_per_epoch
            if epoch < warmup_epochs:
                return warmup_lr / base_lr
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))
        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [group_factor(g["lr"]) for g in optimizer.param_groups])


def build_scheduler(cfg: OptimConfig, optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of `cfg.schedule`, stepped after every optimizer step."""
    if cfg.schedule == "dassl":
        return dassl_cosine(optimizer, int(cfg.warmup_epochs), cfg.epochs, cfg.warmup_lr, steps_per_epoch)
    return cosine_with_warmup(optimizer, int(round(cfg.warmup_epochs * steps_per_epoch)), cfg.epochs * steps_per_epoch)


def build_training_loss(cfg: LossConfig):
    """The partial-label loss of `cfg` with its settings bound (loss.weight is applied by the loop)."""
    settings = {"reduction": cfg.reduction}
    if cfg.name == "asl":
        settings.update(gamma_pos=cfg.gamma_pos, gamma_neg=cfg.gamma_neg, clip=cfg.clip, eps=cfg.eps,
                        soft_focusing=cfg.soft_focusing)
    if cfg.name == "ranking":
        settings.update(margin=cfg.margin)
    return build_loss(cfg.name, **settings)


def _headline(metrics: Dict[str, object]) -> Dict[str, float]:
    """mAP, CF1, OF1 and their top-3 and tuned-threshold variants, in %."""
    return {key: round(100 * float(value), 3) for key, value in metrics.items()
            if key in ("mAP", "CF1", "OF1") or key.startswith(("CF1_", "OF1_"))}


def _trained_files(run: Path) -> List[str]:
    return [name for name in (STATE, LAST, BEST, "summary.json") if (run / name).is_file()]


def _check_resumable(run: Path, cfg: ExperimentConfig) -> None:
    """A run folder with trained state belongs to one config: resuming with another would mix two
    experiments. Only keys that change results count (RUN_ONLY_KEYS aside), and optim.epochs may
    change (raising it continues the run). A folder with only its config (a run that failed before
    training) is free."""
    saved = run / "config.yaml"
    trained = _trained_files(run)
    if saved.is_file() and trained:
        import yaml

        previous = yaml.safe_load(saved.read_text())
        differences = config_differences(previous, cfg)
        if list(differences) == ["optim.epochs"]:
            logger.info("%s: optim.epochs is now %d (was %s): the run continues from its last epoch",
                        run, cfg.optim.epochs, differences["optim.epochs"][0])
        elif differences:
            raise ConfigError(
                f"{run} holds a run with another config ({describe_differences(differences)}) in "
                f"{', '.join(trained)}; choose another name or output_dir, or start it over with --no-resume "
                f"(train(..., resume=False))"
            )


def check_same_data(run: Path, identity: Dict[str, Dict[str, Optional[str]]], data: DataConfig, hint: str) -> None:
    """Refuse a run folder whose data.json records other data than `identity` (all its parts, or
    those `identity` has), naming what differs; a folder without data.json is refused too."""
    try:
        before = json.loads((run / DATA).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run} holds a run ({', '.join(_trained_files(run))}) that does not record the data it "
                          f"was trained on ({DATA}, written since clipml fingerprints the data); {hint}") from None
    except ValueError as error:
        raise ConfigError(f"{run / DATA} cannot be read ({error}); {hint}") from None
    changed = [f"{part} {what}" for part, digests in identity.items() for what, value in digests.items()
               if (before.get(part) or {}).get(what) != value]
    if changed:
        raise ConfigError(
            f"{run} holds a run trained on other data: {', '.join(changed)} differ (data.dataset={data.dataset}, "
            f"data.root={data.root}, splits '{data.train_split}' and '{data.test_split}'); {hint}")


def _claim_data(run: Path, identity: Dict[str, Dict[str, Optional[str]]], resume: bool,
                data: DataConfig) -> None:
    """Record the data a run is trained on (data.json); a run folder with trained state resumes
    only on the same data, so a summary never mixes two versions of the labels or images."""
    if resume and _trained_files(run):
        check_same_data(run, identity, data, "choose another name or output_dir, or start it over with "
                                             "--no-resume (train(..., resume=False))")
    (run / DATA).write_text(json.dumps(identity, indent=1))


def train(cfg: ExperimentConfig, resume: bool = True, progress: Progress = None,
          scores_path: Optional[str] = None) -> Dict[str, object]:
    """Run one experiment end to end; returns the summary that is also written to the run folder.
    `scores_path`: also write the final model's test scores there (CSV: image, class, score, logit, label).
    Ctrl-C raises TrainingInterrupted, whose message says what was saved and how to resume."""
    run = Path(cfg.run_dir())
    try:
        return _train(cfg, run, resume, progress, scores_path)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted(run, cfg.optim.epochs)) from None


def _train(cfg: ExperimentConfig, run: Path, resume: bool, progress: Progress,
           scores_path: Optional[str]) -> Dict[str, object]:
    writer_class = summary_writer_class(cfg.train.tensorboard)  # `true` without TensorBoard: stop here
    context = distributed.setup(select_device(cfg.device))

    def claim_run_folder() -> None:
        if resume:
            _check_resumable(run, cfg)
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")

    if cfg.init_from:  # a missing or foreign file fails here, before data or weights load
        trained_on = read_prompt_checkpoint(cfg.init_from)[1]["config"].get("data", {}).get("dataset")
        check_disjoint(trained_on, cfg.data.dataset, f"init_from={cfg.init_from}")
    context.on_main(claim_run_folder)
    started = time.time()
    previous = _previous_summary(run) if resume else None

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    # Data before weights: a wrong root or file fails before a backbone is loaded or downloaded.
    # Rank 0 writes the mask files first; the other ranks then read them.
    loaded = load_splits(cfg)
    train_split, val_split, test_split = context.main_first(lambda: build_splits(cfg, loaded))
    identity = data_identity(loaded, train_split, val_split)
    context.on_main(lambda: _claim_data(run, identity, resume, cfg.data))
    classnames = readable_names(train_split)
    backbone = build_backbone(cfg, context.device)
    # Every rank encodes its share of the feature caches.
    sources = build_sources(cfg, backbone, train_split, val_split, test_split, context)
    for source in sources:
        source.context = context
    train_source, val_source, test_source = sources
    torch.manual_seed(cfg.seed)
    model = MultiLabelCLIP(backbone, classnames, cfg.model)
    train_source = model.method.training_source(cfg, backbone, train_split, context, train_source)
    if cfg.init_from:
        load_into(model, *read_prompt_checkpoint(cfg.init_from), cfg.init_from)
        logger.info("training starts from the tensors of %s", cfg.init_from)
    config_dict = config_to_dict(cfg)
    labels = label_source(cfg, train_split)
    splits = {"val": validation_description(cfg, val_split),
              "test": f"split '{cfg.data.test_split}' ({len(test_split)} images)"}

    zero_shot = MultiLabelCLIP(backbone, classnames, baseline_config(cfg.model))
    zero_shot_val = _headline(evaluate(zero_shot, val_source, progress, details=False, settings=cfg.eval))
    zero_shot_test_metrics = evaluate(zero_shot, test_source, progress, settings=cfg.eval)
    zero_shot_test = _headline(zero_shot_test_metrics)
    logger.info("zero-shot mAP: %.2f on the validation split, %.2f on split '%s'",
                zero_shot_val["mAP"], zero_shot_test["mAP"], cfg.data.test_split)
    history, trained_now, prior_seconds = [], 0, 0.0

    # The untrained model: where learning starts.
    initial_val = _headline(evaluate(model, val_source, progress, details=False, settings=cfg.eval))
    if model.trainable_parameters():
        history, best, trained_now, prior_seconds = _fit(
            cfg, model, train_source, val_source, run, config_dict, resume, progress, context,
            lambda: time.time() - started, splits["val"], writer_class)
        context.barrier()  # rank 0 has written the best checkpoint
        tensors, metadata = read_prompt_checkpoint(run / BEST)
        load_into(model, tensors, metadata, run / BEST)
    else:
        best = {"epoch": 0, "val": _headline(evaluate(model, val_source, progress, details=False,
                                                      settings=cfg.eval))}  # 0: not trained

    thresholds = decision_thresholds(model, val_source, progress, cfg.eval)  # chosen on validation, reported on test
    test_metrics = evaluate(model, test_source, progress, settings=cfg.eval, thresholds=thresholds,
                            scores_path=scores_path, arrays_path=str(run / SCORES))
    test = _headline(test_metrics)
    call_seconds = time.time() - started
    # A finished run read back again keeps the time it took; a resumed one adds this call's.
    seconds = previous["seconds"] if previous and not trained_now else prior_seconds + call_seconds
    summary = {
        "name": cfg.name,
        "method": cfg.model.method,
        "dataset": cfg.data.dataset,
        "known_ratio": cfg.data.known_ratio,
        # Where the training labels came from (label_source) and the % of entries known.
        "training_labels": {"source": labels, "known": round(known_percent(cfg, train_split, val_split), 3)},
        "backbone": backbone.identity,
        "loss": f"{cfg.loss.name} ({cfg.loss.reduction} over known entries)"
                + (f" x {cfg.loss.weight:g}" if cfg.loss.weight != 1 else ""),
        "evaluation": evaluation_notes(cfg.eval, len(classnames)),
        "splits": splits,
        "best_epoch": best["epoch"],
        "val": best["val"],
        "test": test,
        "initial_val": initial_val,
        "zero_shot_val": zero_shot_val,
        "zero_shot_test": zero_shot_test,
        "test_ap": _per_class(classnames, test_metrics),
        # Which test classes the mAP scores and why the others are not (clipml.metrics.class_coverage).
        "test_classes": _coverage(test_metrics),
        "zero_shot_test_ap": _per_class(classnames, zero_shot_test_metrics),
        # Localisation and mAP breakdowns (METHODS §11), where the test split allows them.
        "test_details": detail_summary(test_metrics),
        "zero_shot_test_details": detail_summary(zero_shot_test_metrics),
        "history": history,
        "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
        "thresholds": thresholds,
        "init_from": cfg.init_from,
        "seconds": round(seconds, 1),
        "seconds_this_call": round(call_seconds, 1),
    }
    summary.update(model.method.summary(train_source))
    if context.is_main:
        if model.trainable_parameters():
            save_prompt_checkpoint(run / "prompts.safetensors", model, config_dict, {"val": best["val"], "test": test},
                                   thresholds=thresholds)
        (run / "summary.json").write_text(json.dumps(summary, indent=2))
        (run / "summary.md").write_text(_markdown(summary))
        if cfg.train.report:
            from clipml.report import write_report

            write_report(run, model=model, test_split=test_split)
    context.barrier()
    return summary


def _per_class(classnames, metrics: Dict[str, object]) -> Dict[str, Optional[float]]:
    """AP (%) per class; None for a class the mAP does not score (see `_coverage`)."""
    return {name: round(100 * float(ap), 3) if ap == ap else None for name, ap in zip(classnames, metrics["AP"])}


def _coverage(metrics: Dict[str, object]) -> Dict[str, object]:
    """The counts of scored and unscored classes with the sentence summaries show."""
    counts = {key: value for key, value in metrics["coverage"].items() if key != "reason"}
    return {"text": metrics["coverage_text"], **counts}


def _previous_summary(run: Path) -> Optional[Dict[str, object]]:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _interrupted(run: Path, epochs: int) -> str:
    """What an interrupted run left in its folder, and how to go on."""
    done = 0
    if (run / STATE).is_file():
        try:
            done = _epochs_done(load_training_state(run / STATE))
        except CheckpointError:
            pass
    if not done:
        return f"interrupted before the first epoch was saved; the same command starts {run} again"
    if done >= epochs:
        return (f"interrupted after training: {run} holds all {epochs} epochs; the same command evaluates "
                f"the test split and writes the summary")
    return (f"interrupted: {run} holds epochs 1-{done} of {epochs} (state.pt, last.safetensors, best.safetensors); "
            f"the same command resumes at epoch {done + 1} (--no-resume starts over)")


def _epochs_done(state: dict) -> int:
    # Before epochs were counted from 1 everywhere, the state held the 0-based "epoch".
    return int(state["epochs_done"]) if "epochs_done" in state else int(state["epoch"]) + 1


class TrainingStep(nn.Module):
    """The loss of one batch as a module call, so DistributedDataParallel can hook it."""

    def __init__(self, model: MultiLabelCLIP, loss_fn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, dense, labels: torch.Tensor, step: Step, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        return training_loss(self.model, self.loss_fn, dense, labels, step, classes)


def _fit(cfg, model, train_source, val_source, run, config_dict, resume, progress, context, elapsed, val_where,
         writer_class=None):
    """Train the remaining epochs. Returns (history, best, epochs trained in this call, seconds
    the run had taken before this call). Epochs are counted from 1 in every record and file.
    `val_where` says where the validation split comes from (for the small-split warning);
    `writer_class`: TensorBoard's SummaryWriter, to log each record there too (None: log.jsonl only)."""
    optim = cfg.optim
    optimizer = build_optimizer(optim, model)
    steps_per_epoch = len(train_source)
    scheduler = build_scheduler(optim, optimizer, steps_per_epoch)
    loss_fn = build_training_loss(cfg.loss)

    start_epoch, history, best, prior_seconds = 0, [], {"epoch": 0, "val": {"mAP": -1.0}}, 0.0
    if resume and (run / STATE).is_file():
        state = load_training_state(run / STATE)
        load_into(model, state["model"], json.loads(state["metadata"]), run / STATE)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = _epochs_done(state), json.loads(state["history"]), json.loads(state["best"])
        if "epochs_done" not in state:  # a state saved with 0-based epochs
            history = [dict(record, epoch=record["epoch"] + 1) for record in history]
            best = dict(best, epoch=best["epoch"] + 1)
        prior_seconds = float(state.get("seconds", 0.0))  # the earlier calls' time, up to their last save
        if start_epoch > optim.epochs:
            raise ConfigError(f"{run} holds {start_epoch} trained epochs, more than optim.epochs={optim.epochs}; "
                              f"raise optim.epochs to continue it, or start over with --no-resume")
        # optim.epochs may have been raised: the cosine then runs over the new length, so training
        # goes on at the rate the longer schedule has at this step and decays to 0 at its new end.
        for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(scheduler.last_epoch)
        logger.info("resuming %s after epoch %d of %d", run, start_epoch, optim.epochs)

    if context.is_main and start_epoch < optim.epochs:
        warn_small_validation(val_source.split, val_where)
    select_classes = ClassSelector(optim, model, seed=cfg.seed)
    step = TrainingStep(model, loss_fn)
    if context.active:
        # e.g. blend weights go unused before the blending epochs start
        skipping = any(term.may_skip_parameters for term in model.terms)
        step = DistributedDataParallel(step, find_unused_parameters=skipping)
    # DDP averages gradients over ranks; a summed loss must add them up instead.
    loss_scale = context.world if cfg.loss.reduction == "sum" else 1
    weight = cfg.loss.weight  # the objective is weight × loss; logged as such
    log = open(run / LOG, "w") if context.is_main else None  # rewritten from the state: no stale lines
    board = EpochScalars(writer_class, run) if writer_class is not None and context.is_main else None
    for record in history if log is not None else []:
        log.write(json.dumps(record) + "\n")
        if board is not None:
            board.write(record)
    try:
        for epoch in range(start_epoch, optim.epochs):  # 0-based here; every record counts from 1
            model.train()
            losses = []
            batches = train_source.batches(seed=cfg.seed * 100_003 + epoch)
            if progress is not None:
                batches = progress(CountedPass(batches, len(train_source)), f"epoch {epoch + 1}/{optim.epochs}")
            for term in model.terms:
                term.on_epoch_start(model, epoch, train_source, seed=cfg.seed * 100_003 + epoch)
            select_classes.on_epoch_start(epoch)
            generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            for index, (dense, labels, _) in enumerate(batches):
                where = Step(epoch, index, len(train_source), generator)
                loss = step(dense, labels, where, select_classes(labels)) * (loss_scale * weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), optim.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()) / loss_scale)
            val = _headline(evaluate(model, val_source, progress, details=False, settings=cfg.eval))
            # The loss of the whole global batch: per-rank sums add up, per-rank means average.
            epoch_loss = distributed.all_reduce(context, float(np.mean(losses)), average=loss_scale == 1)
            record = {"epoch": epoch + 1, "loss": epoch_loss, "lr": scheduler.get_last_lr()[0], "val": val}
            history.append(record)
            if val["mAP"] > best["val"]["mAP"]:
                best = {"epoch": epoch + 1, "val": val}
            if not context.is_main:
                continue
            log.write(json.dumps(record) + "\n")
            log.flush()
            if board is not None:
                board.write(record)
            logger.info("epoch %d loss %.4f val mAP %.2f", epoch + 1, record["loss"], val["mAP"])
            if best["epoch"] == epoch + 1:
                save_prompt_checkpoint(run / BEST, model, config_dict, {"val": val, "epoch": epoch + 1})
            save_prompt_checkpoint(run / LAST, model, config_dict, {"val": val, "epoch": epoch + 1})
            save_training_state(run / STATE, {
                "epochs_done": epoch + 1,
                "seconds": prior_seconds + elapsed(),
                "model": model_tensors(model),
                "metadata": json.dumps({"method": model.config.method, "classes": model.classnames,
                                        "backbone": model.backbone.identity}),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": json.dumps(history),
                "best": json.dumps(best),
            })
    finally:
        if log is not None:
            log.close()
        if board is not None:
            board.close()
    return history, best, optim.epochs - start_epoch, prior_seconds


def training_loss(model: MultiLabelCLIP, loss_fn, dense, labels: torch.Tensor,
                  step: Optional[Step] = None, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Partial-label loss of one batch plus each training term's share (`step`: where the batch
    is in training, for terms on a schedule; None: those are off). `classes` (indices): encode and
    score only these (clipml.engine.classes.ClassSelector); the loss sees their columns alone."""
    if classes is not None and not len(classes):
        # No class known in the batch: the loss is 0 either way. One class (the first) gives the full
        # pass's zero gradients on the same parameters, so AdamW's zero-gradient step (momentum,
        # decay) moves the weights as after the full pass, which a skipped step would not.
        classes = classes.new_zeros(1)
    if classes is not None:
        labels = labels[:, classes]
    targets, known = (labels == 1).float(), labels != -1
    output = model.forward_dense(dense, classes=classes)
    if output.parts is None:
        loss = loss_fn(output.logits, targets, known)
    else:  # a head with several branches: the loss on each
        loss = sum(loss_fn(part, targets, known) for part in output.parts)
    for term in model.terms:
        for extra in term.extra_losses(model, output, dense, targets, known, loss_fn, step, classes):
            loss = loss + extra
    return loss


def _markdown(summary: Dict[str, object]) -> str:
    keys = list(summary["test"])
    rows = ["| split | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label, key in (("validation (best epoch)", "val"), ("test", "test"), ("test, zero-shot", "zero_shot_test")):
        values = summary[key]
        rows.append(f"| {label} | " + " | ".join(f"{values[k]:.2f}" if k in values else "–" for k in keys) + " |")
    per_class = ["| class | test AP | zero-shot AP |", "|---|---|---|"] + [
        f"| {name} | {_ap_text(ap)} | {_ap_text(summary['zero_shot_test_ap'][name])} |"
        for name, ap in summary["test_ap"].items()]
    coverage = summary.get("test_classes", {}).get("text")  # absent in summaries written before it
    best = f"best epoch {summary['best_epoch']}" if summary["best_epoch"] else "nothing trained"
    notes = summary["evaluation"]
    return (
        f"# {summary['name']}\n\n{summary['method']} on {summary['dataset']}, "
        f"{labels_text(summary)}, backbone "
        f"{summary['backbone']['model']} ({summary['backbone']['weights']}, dense map "
        f"{summary['backbone'].get('dense', 'tokens')}), loss {summary['loss']}, "
        f"{summary['trainable_parameters']} trainable parameters, {best}, "
        f"{summary['seconds']} s.\n\nValidation: {summary['splits']['val']}. Test: {summary['splits']['test']}.\n\n"
        + "\n".join(rows) + "\n\n" + (f"Test mAP: {coverage} (a class needs a known positive and a known "
                                       "negative; n/a below).\n\n" if coverage else "")
        + "".join(f"- {name}: {text}\n" for name, text in notes.items())
        + _details_markdown(summary)
        + "\n## AP per class (test)\n\n" + "\n".join(per_class) + "\n"
    )


def labels_text(summary: Dict[str, object]) -> str:
    """The training labels in a few words: how many are known, and where they come from."""
    labels = summary["training_labels"]
    source = {"own partial labels, kept": "the dataset's own partial labels kept as they are",
              "simulated": f"simulated protocol at p={summary['known_ratio']:g}",
              "simulated on own partial labels": f"simulated protocol at p={summary['known_ratio']:g} on top of the "
                                                 "dataset's own partial labels"}.get(labels["source"], labels["source"])
    return f"{labels['known']:.1f}% of training labels known ({source})"


def _ap_text(ap: Optional[float]) -> str:
    return "n/a" if ap is None else f"{ap:.2f}"


def _details_markdown(summary: Dict[str, object]) -> str:
    """The test split's localisation and mAP breakdowns (METHODS §11), when it has them."""
    headers, rows, note = detail_table([("test", summary.get("test_details", {})),
                                        ("test, zero-shot", summary.get("zero_shot_test_details", {}))])
    if not headers:
        return ""
    lines = ["| split | " + " | ".join(headers[1:]) + " |", "|---|" + "---|" * (len(headers) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n## Localisation and mAP breakdowns (test)\n\n" + "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


__all__ = ["train", "build_optimizer", "build_scheduler", "build_training_loss", "cosine_with_warmup", "dassl_cosine",
           "ModelConfig"]
