"""Training-step cost against the number of classes C, before (every class through the text
tower and the heads) and after the class-subset shortcut (only the batch's known classes,
optim.train_classes=known; PPRB: class sampling, optim.sampled_classes), next to the floor: the
text tower forward+backward on the classes actually encoded. Synthetic data: random dense
features of the tower's shape and ~`--known` known labels per image (a third positive), as Open
Images' image-level labels. Targets (issue 27): at C = 9,605 a step costs <= 3x and peaks <= 2x
its C = 80 values.

Each (method, C, pass) runs in its own process, so its peak memory is its own: CUDA's
max_memory_allocated on a GPU; on CPU the resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs) during one step minus the resident set before it, measured after the timed
steps with glibc's mmap threshold fixed and freed memory trimmed, so the resident set follows live
tensors. Times: medians after one warm-up step; on CPU the process's CPU seconds with one thread (other
jobs on a shared machine do not count), on CUDA wall seconds. A process is capped at `--max-gb` of
address space: a pass that needs more is reported as "over the cap", not run into swap.

    python benchmarks/bench_scaling.py                                  # toy-rn, every method, CPU
    python benchmarks/bench_scaling.py --spec open_clip:ViT-B-32 --methods csc_global --floor-only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CLASS_COUNTS = (80, 600, 2000, 9605)
METHODS = ("coop", "csc_global", "dualcoop", "positivecoop", "sdm_csp", "sdm_csp_pprb", "taidpt")


def child(args) -> dict:
    """One (method, C, pass) measured in this process."""
    import torch
    from timing import interleaved_medians

    from clipml.backbones import BackboneConfig, Dense, load_backbone
    from clipml.engine.classes import known_classes, sampled_classes
    from clipml.engine.train import build_optimizer, training_loss
    from clipml.experiment import OptimConfig
    from clipml.losses import build_loss
    from clipml.methods import BlendingConfig, Step
    from clipml.model import ModelConfig, MultiLabelCLIP

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = load_backbone(BackboneConfig(args.spec, image_size=args.image_size, allow_random=True), args.device)
    device = str(backbone.device)
    method, options = args.method, {}
    if method == "sdm_csp_pprb":  # DSRB's PPRB on: not exact on a class subset, so classes are sampled
        method = "sdm_csp"
        options["blending"] = BlendingConfig(instance=True, prototype=True, start_epoch=0)
    if method == "sdm_csp":
        options["decoupler_dim"] = args.decoupler_dim
    classnames = [f"class number {i}" for i in range(args.classes)]
    model = MultiLabelCLIP(backbone, classnames, ModelConfig.of(method=method, **options))
    if "blending" in options:  # prototypes as a prototype pass would leave them: every cell filled
        model.blending.prototypes.normal_()
        model.blending.prototype_valid.fill_(True)
    optimizer = build_optimizer(OptimConfig(), model)
    loss_fn = build_loss("ranking" if method == "taidpt" else "asl", reduction="mean")
    generator = torch.Generator().manual_seed(1)
    h, w = backbone.grid
    dense = Dense(torch.randn(args.batch, h * w, backbone.embed_dim, generator=generator).to(device),
                  torch.randn(args.batch, backbone.embed_dim, generator=generator).to(device), (h, w))
    labels = torch.full((args.batch, args.classes), -1, dtype=torch.int8)
    for row in labels:
        chosen = torch.randperm(args.classes, generator=generator)[:args.known]
        row[chosen] = 0
        row[chosen[: max(1, args.known // 3)]] = 1
    labels = labels.to(device)
    if args.mode == "before":
        classes = None
    elif args.method == "sdm_csp_pprb":
        classes = sampled_classes(labels, args.sampled, torch.Generator().manual_seed(2))
    else:
        classes = known_classes(labels)
    encoded = args.classes if classes is None else len(classes)

    def step():
        where = Step(epoch=1, batch=0, batches=1, generator=torch.Generator().manual_seed(3))
        loss = training_loss(model, loss_fn, dense, labels, where, classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def floor():
        text = model.text_features(classes)
        sum(t.sum() for t in (text if isinstance(text, tuple) else (text,))).backward()
        model.zero_grad(set_to_none=True)

    result = {"method": args.method, "classes": args.classes, "mode": args.mode, "encoded": encoded}
    fns = {"floor": floor} if args.floor_only else {"step": step, "floor": floor}
    # On CPU this process's CPU seconds (one thread: other jobs on a shared machine do not count).
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    result.update(interleaved_medians(fns, args.repeats, device, warmup=1, clock=clock))
    if not device.startswith("cuda"):
        release_freed_memory()
    for name, fn in fns.items():
        result[f"peak_{name}"] = peak_bytes(fn, device)
    return result


def release_freed_memory() -> None:
    """From here on glibc maps every block over 64 KiB on its own and unmaps it when freed, and
    what the timed steps freed goes back to the system: the resident set then follows live tensors."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD (a fixed threshold also stops glibc from raising it)
    libc.malloc_trim(0)


def peak_bytes(fn, device: str) -> int:
    """Peak memory of one call of `fn` beyond what was held before it (see the module docstring)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    fn()
    return (_status_kb("VmHWM") - before) * 1024


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def run_child(args, method: str, classes: int, mode: str) -> dict:
    command = [sys.executable, __file__, "--child", "--method", method, "--classes", str(classes), "--mode", mode,
               *passthrough(args)]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        over = "memory" in tail.lower() or "alloc" in tail.lower()
        return {"method": method, "classes": classes, "mode": mode,
                "error": f"over the {args.max_gb:g} GB cap" if over else tail[:120]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = time.time() - started
    return result


def passthrough(args):
    keys = ("spec", "image_size", "device", "batch", "known", "sampled", "decoupler_dim", "repeats", "threads", "max_gb")
    out = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in keys if getattr(args, key) is not None]
    return out + (["--floor-only"] if args.floor_only else [])


def mb(value) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


def table(results, args) -> str:
    """Markdown: one row per (method, C, pass), then the C = 9,605 / C = 80 ratios after the shortcut."""
    rows = ["| method | C | pass | classes encoded | step s | floor s | step / floor | step peak MB | floor peak MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['classes']:,} | {r['mode']} | – | {r['error']} | | | | |")
            continue
        step, floor = r.get("step"), r["floor"]
        seconds, share = ("–", "–") if step is None else (f"{step:.4f}", f"{step / floor:.1f}")
        rows.append(f"| {r['method']} | {r['classes']:,} | {r['mode']} | {r['encoded']:,} | {seconds} | "
                    f"{floor:.4f} | {share} | {mb(r.get('peak_step'))} | {mb(r['peak_floor'])} |")
    key = "floor" if args.floor_only else "step"
    ratios = [f"\n| method | pass | time C={max(args.counts):,} / C={min(args.counts):,} | "
              f"peak C={max(args.counts):,} / C={min(args.counts):,} |", "|---|---|---|---|"]
    found = {(r["method"], r["classes"], r["mode"]): r for r in results if "error" not in r}
    for method in args.methods:
        for mode in ("before", "after"):
            low, high = found.get((method, min(args.counts), mode)), found.get((method, max(args.counts), mode))
            if low and high:
                ratios.append(f"| {method} | {mode} | {high[key] / low[key]:.2f} | "
                              f"{high[f'peak_{key}'] / max(1, low[f'peak_{key}']):.2f} |")
    return "\n".join(rows + ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="toy-rn")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--counts", type=int, nargs="+", default=list(CLASS_COUNTS))
    parser.add_argument("--passes", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--known", type=int, default=10, help="known labels per image (a third positive)")
    parser.add_argument("--sampled", type=int, default=512, help="K of class sampling (sdm_csp_pprb)")
    parser.add_argument("--decoupler-dim", type=int, default=64, help="sdm_csp's decoupler width (the demo's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gb", type=float, default=8.0, help="address-space cap of each measuring process")
    parser.add_argument("--floor-only", action="store_true", help="the text tower alone (real-width towers on CPU)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cap = int(args.max_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(child(args)))
        return
    print(f"# {args.spec} on {args.device}, batch {args.batch}, {args.known} known labels per image, "
          f"{args.threads} thread(s), medians of {args.repeats}; memory: "
          f"{'CUDA max_memory_allocated' if args.device.startswith('cuda') else 'CPU resident-set high-water delta'}",
          flush=True)
    results = []
    for method in args.methods:
        for classes in args.counts:
            for mode in args.passes:
                results.append(run_child(args, method, classes, mode))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(table(results, args))


if __name__ == "__main__":
    main()
