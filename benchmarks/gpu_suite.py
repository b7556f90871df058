"""Every GPU measurement clipml needs, in one command that fits a short loan of a GPU (run it as
`bash benchmarks/gpu_suite.sh`; at most 8 minutes on one H200) and writes benchmarks/results/gpu.md:

1. encode_dense vs the library's encode_image: RN101 @ 448, ViT-B/16 @ 224 and @ 448, fp32 and bf16;
2. cache extraction images/s vs the bare tower and the loader, on photo-sized JPEGs (bench_decode);
3. one training step of sdm_csp and dualcoop with C = 80 vs its floor (bench_train_step);
4. evaluate() images/s vs the bare tower, and from the feature cache (bench_eval);
5. the projected wall time of the 9-proportion COCO sweep, with the cache vs re-encoding every epoch,
   from the rates measured in 2-4.

Peak device memory (torch.cuda.max_memory_allocated over one call, weights included) is given
for each. Random weights (speed does not depend on them). Each section is appended to the file as
soon as it is measured, a section that fails writes its error and the next one runs, and sections
that would start after the time budget are skipped, so a run cut short keeps what it measured.

`--smoke` runs the same code on the CPU with tiny models and a few small images (under a minute;
a test of the default suite): bf16 then means fp32 (autocast is for CUDA only) and there is no
peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import open_clip
import torch
import torchvision

import bench_backbone
import bench_decode
import bench_eval
import bench_train_step
from jpegs import mean_file_kb, write_photo_jpegs

from clipml.backbones import BackboneConfig, FrozenCLIP, load_backbone
from clipml.metrics import PROPORTIONS

Model = Tuple[str, int]  # (spec, image size)

# COCO 2014 as the published runs use it (configs/_base/published.yaml, clipml defaults).
COCO = {"train": 82_783, "test": 40_504, "val_fraction": 0.1, "epochs": 50, "batch": 32}


@dataclasses.dataclass
class Plan:
    device: str
    towers: List[Model]  # section 1
    extraction: List[Model]  # section 2, at the published precision
    published: Model  # sections 3-5: the COCO setting
    precision: str  # the published precision
    tower_batch: int
    train_batch: int
    eval_batch: int
    images: int
    distinct: int  # distinct JPEG files among `images` (the rest are hard links: cheap to write)
    jpeg: Tuple[int, int]
    workers: int
    repeats: int
    budget_s: float
    classes: int = 80


PLANS = {
    "gpu": Plan("cuda", towers=[("open_clip:RN101", 448), ("open_clip:ViT-B-16", 224), ("open_clip:ViT-B-16", 448)],
                extraction=[("open_clip:RN101", 448), ("open_clip:ViT-B-16", 224)], published=("open_clip:RN101", 448),
                precision="bf16", tower_batch=64, train_batch=COCO["batch"], eval_batch=64, images=1536,
                distinct=384, jpeg=(640, 480), workers=min(8, os.cpu_count() or 1), repeats=5, budget_s=420),
    "smoke": Plan("cpu", towers=[("open_clip:clipml-tiny-rn", 64), ("open_clip:clipml-tiny-vit", 32),
                                 ("open_clip:clipml-tiny-vit", 64)],
                  extraction=[("open_clip:clipml-tiny-rn", 64)], published=("open_clip:clipml-tiny-rn", 64),
                  precision="bf16", tower_batch=4, train_batch=4, eval_batch=4, images=8, distinct=8,
                  jpeg=(160, 120), workers=1, repeats=1, budget_s=100),
}


def mib(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 2 ** 20:.0f}"


class Suite:
    """Loads each backbone once, runs the sections in order, appends their markdown to `output`."""

    def __init__(self, plan: Plan, output: Path, command: str) -> None:
        self.plan, self.output, self.command = plan, output, command
        self.start = time.perf_counter()
        self.backbones: Dict[Tuple[str, int, str], FrozenCLIP] = {}
        self.rates: Dict[str, float] = {}  # what section 5 projects from
        self.failed: List[str] = []

    def backbone(self, model: Model, precision: str) -> FrozenCLIP:
        key = (*model, precision)
        if key not in self.backbones:
            torch.manual_seed(0)
            self.backbones[key] = load_backbone(BackboneConfig(model[0], image_size=model[1], precision=precision,
                                                               allow_random=True), self.plan.device)
        return self.backbones[key]

    def write(self, text: str) -> None:
        with open(self.output, "a") as handle:
            handle.write(text.rstrip("\n") + "\n\n")

    def section(self, title: str, body: Callable[[], str]) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.plan.budget_s:
            self.write(f"## {title}\n\nskipped: the time budget ({self.plan.budget_s:.0f} s) was spent ({elapsed:.0f} s)")
            return
        began = time.perf_counter()
        try:
            text = body()
        except Exception:  # one failed section must not cost the others on a short GPU loan
            self.failed.append(title)
            text = "FAILED:\n\n```\n" + traceback.format_exc() + "```"
        self.write(f"## {title}\n\n{text}\n\n({time.perf_counter() - began:.0f} s)")
        print(f"{title}: {time.perf_counter() - began:.0f} s", flush=True)

    # Sections ----------------------------------------------------------------------------------
    def header(self) -> str:
        plan = self.plan
        device = torch.cuda.get_device_name(plan.device) if plan.device.startswith("cuda") else platform.processor() or "cpu"
        return "\n".join([
            "# GPU suite: towers, cache extraction, training step, evaluation, COCO sweep projection", "",
            f"- command: `{self.command}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {device} ({plan.device}), {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, open_clip {open_clip.__version__}, torch threads {torch.get_num_threads()}",
            f"- random weights; times are medians of {plan.repeats} interleaved rounds (benchmarks/timing.py), CUDA "
            "synchronised around each call; peak memory is torch.cuda.max_memory_allocated over one call "
            "(weights and inputs included; '-' off CUDA); bf16 is autocast of the frozen towers on CUDA "
            "(fp32 elsewhere)",
        ])

    def towers(self) -> str:
        plan = self.plan
        lines = [f"batch {plan.tower_batch}, random images\n",
                 "| model | size | precision | encode_image s | encode_dense s | dense / image | dense img/s "
                 "| peak MiB image | peak MiB dense |", "|---|---|---|---|---|---|---|---|---|"]
        for model in plan.towers:
            for precision in ("fp32", "bf16"):
                r = bench_backbone.measure(self.backbone(model, precision), plan.tower_batch, plan.repeats)
                lines.append(f"| {model[0]} | {model[1]} | {precision} | {r['plain']:.4f} | {r['dense']:.4f} | "
                             f"{r['dense'] / r['plain']:.3f} | {plan.tower_batch / r['dense']:.1f} | "
                             f"{mib(r['peak_plain'])} | {mib(r['peak_dense'])} |")
        return "\n".join(lines + ["", "target: dense / image <= 1.05"])

    def extraction(self, split) -> str:
        plan = self.plan
        parts = [f"{len(split)} JPEGs of {plan.jpeg[0]}x{plan.jpeg[1]} ({plan.distinct} distinct files, "
                 f"{mean_file_kb(split):.0f} KB on average), batch {plan.eval_batch}, {plan.workers} loader workers, "
                 f"precision {plan.precision}; every pass starts its loader workers (the rate after the first "
                 "batch leaves that out)"]
        for model in plan.extraction:
            result = bench_decode.measure(split, self.backbone(model, plan.precision), plan.eval_batch, plan.workers,
                                          plan.repeats, per_image=False)
            rate = result["images"] / result["seconds"][f"cache extraction ({plan.workers} workers)"]
            if model == plan.published:
                self.rates["extraction"] = rate
            parts.append(f"### {model[0]} @ {model[1]}\n\n{bench_decode.report(result, plan.workers)}\n\n"
                         f"peak MiB: bare tower {mib(result['peak_tower'])}, extraction {mib(result['peak_extraction'])}")
        return "\n\n".join(parts)

    def train_step(self) -> str:
        plan = self.plan
        model = plan.published
        lines = [f"{model[0]} @ {model[1]}, C = {plan.classes}, batch {plan.train_batch}, features as read from the "
                 "cache (random), ASL, SGD step\n",
                 "| method | precision | text fwd+bwd s | head fwd+bwd s | floor s | step s | step / floor | peak MiB step |",
                 "|---|---|---|---|---|---|---|---|"]
        for method in ("sdm_csp", "dualcoop"):
            for precision in ("fp32", "bf16"):
                r = bench_train_step.measure(self.backbone(model, precision), method, plan.classes, plan.train_batch,
                                             plan.repeats)
                if precision == plan.precision:
                    self.rates[f"step {method}"] = r["step"]
                lines.append(f"| {method} | {precision} | {r['text']:.4f} | {r['head']:.4f} | {r['floor']:.4f} | "
                             f"{r['step']:.4f} | {r['step'] / r['floor']:.3f} | {mib(r['peak_step'])} |")
        return "\n".join(lines + ["", "target: step / floor <= 1.2"])

    def evaluate(self, split) -> str:
        plan = self.plan
        model = plan.published
        result = bench_eval.measure(split, self.backbone(model, plan.precision), "sdm_csp", plan.eval_batch,
                                    plan.workers, plan.repeats)
        count, backbone = result["images"], self.backbone(model, plan.precision)
        for name, key in (("evaluate", "evaluate"), ("cached evaluate", "evaluate_cached")):
            self.rates[f"{name} per image"] = result["fits"][key]["per_image"]
            self.rates[f"{name} fixed"] = result["fits"][key]["fixed"]
        self.rates["tokens"], self.rates["dim"] = backbone.grid[0] * backbone.grid[1], backbone.embed_dim
        return (f"{model[0]} @ {model[1]}, {plan.precision}, sdm_csp, C = {result['classes']}, {count} JPEGs of "
                f"{plan.jpeg[0]}x{plan.jpeg[1]}, batch {plan.eval_batch}, {plan.workers} workers\n\n"
                f"{bench_eval.report(result)}\n\npeak MiB: evaluate {mib(result['peak_evaluate'])}, "
                f"bare tower {mib(result['peak_tower'])}")

    def projection(self) -> str:
        return project_sweep(self.rates, self.plan)

    def run(self) -> int:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text("")
        self.write(self.header())
        plan = self.plan
        self.section("1. encode_dense vs encode_image", self.towers)
        with tempfile.TemporaryDirectory() as tmp:
            split = write_photo_jpegs(Path(tmp), plan.images, *plan.jpeg, distinct=plan.distinct)
            self.section("2. Cache extraction vs the bare tower", lambda: self.extraction(split))
            self.section(f"3. Training step vs its floor (C = {plan.classes})", self.train_step)
            self.section("4. evaluate() vs the bare tower", lambda: self.evaluate(split))
        self.section("5. Projected wall time of the 9-proportion COCO sweep", self.projection)
        total = time.perf_counter() - self.start
        self.write(f"total wall time: {total:.0f} s" + (f"; FAILED sections: {self.failed}" if self.failed else ""))
        print(f"wrote {self.output} in {total:.0f} s", flush=True)
        return 1 if self.failed else 0


def sweep_seconds(rates: Dict[str, float], batch: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Seconds of the 9-proportion COCO sweep (one method, published recipe) from measured rates:
    {method: {"cache" | "re-encode": {"extraction", "training", "evaluation", "total"}}}.

    Per run: `epochs` epochs of ceil(fit / batch) steps, plus reading (cache) or decoding and encoding
    (re-encode) every training image once per epoch at the per-image cost of evaluate(); the
    validation part evaluated epochs + 2 times (zero-shot, untrained start, every epoch), the test
    split twice (zero-shot, final), each evaluation paying evaluate()'s fixed cost per call once.
    The cache adds one extraction of every training and test image."""
    train, test, epochs = COCO["train"], COCO["test"], COCO["epochs"]
    val = round(COCO["val_fraction"] * train)
    fit, runs = train - val, len(PROPORTIONS)
    steps = math.ceil(fit / batch)
    out = {}
    for method in ("sdm_csp", "dualcoop"):
        if f"step {method}" not in rates:
            continue
        step = rates[f"step {method}"]
        out[method] = {}
        for pipeline, name, extraction in (("cache", "cached evaluate", (train + test) / rates["extraction"]),
                                           ("re-encode", "evaluate", 0.0)):
            per_image, fixed = rates[f"{name} per image"], rates[f"{name} fixed"]
            evaluation = runs * ((epochs + 2) * (val * per_image + fixed) + 2 * (test * per_image + fixed))
            training = runs * epochs * (steps * step + fit * per_image)
            out[method][pipeline] = {"extraction": extraction, "training": training, "evaluation": evaluation,
                                     "total": extraction + training + evaluation}
    return out


def project_sweep(rates: Dict[str, float], plan: Plan) -> str:
    needed = ("extraction", "step sdm_csp", "evaluate per image", "evaluate fixed", "cached evaluate per image",
              "cached evaluate fixed")
    missing = [name for name in needed if name not in rates]
    if missing:
        return f"not projected: sections 2-4 did not measure {missing}"
    train, test = COCO["train"], COCO["test"]
    size_gb = (train + test) * (rates["tokens"] + 1) * rates["dim"] * 2 / 1e9
    lines = [f"{plan.published[0]} @ {plan.published[1]}, {plan.precision}; COCO 2014: {train} training images "
             f"({COCO['val_fraction']:.0%} carved for validation) and {test} test images, {COCO['epochs']} epochs, "
             f"batch {plan.train_batch}, {len(PROPORTIONS)} proportions of one method. Training images cost what "
             "evaluate() costs per image (decode + tower, or a read from the cache) plus the measured step; "
             "evaluations: validation every epoch and twice more, test twice (gpu_suite.sweep_seconds). "
             f"The cache holds one view: {size_gb:.1f} GB in fp16.\n",
             "| method | pipeline | extraction h | training h | evaluation h | total h | speed-up of the cache |",
             "|---|---|---|---|---|---|---|"]
    hours = lambda seconds: f"{seconds / 3600:.2f}"  # noqa: E731
    for method, pipelines in sweep_seconds(rates, plan.train_batch).items():
        speedup = pipelines["re-encode"]["total"] / pipelines["cache"]["total"]
        for pipeline, parts in pipelines.items():
            lines.append(f"| {method} | {pipeline} | {hours(parts['extraction'])} | {hours(parts['training'])} | "
                         f"{hours(parts['evaluation'])} | {hours(parts['total'])} | "
                         f"{f'{speedup:.1f}x' if pipeline == 'cache' else ''} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, a few images (a test)")
    parser.add_argument("--output", help="markdown file (default benchmarks/results/gpu.md; gpu_smoke.md with --smoke)")
    parser.add_argument("--budget", type=float, help="seconds after which no section starts")
    args = parser.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "gpu"]
    if args.budget is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget)
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here; run it on a GPU machine, or with --smoke on the CPU", file=sys.stderr)
        return 2
    results = Path(__file__).resolve().parent / "results"
    output = Path(args.output) if args.output else results / ("gpu_smoke.md" if args.smoke else "gpu.md")
    logging.disable(logging.WARNING)  # random-weight notices
    command = "bash benchmarks/gpu_suite.sh" + (" --smoke" if args.smoke else "")
    return Suite(plan, output, command).run()


if __name__ == "__main__":
    sys.exit(main())
