"""Decoding real-sized JPEGs: the loader and the cache extraction against a bare PIL decode loop
and the bare image tower, and the decoders the ecosystem offers, all measured interleaved.

Rows (full passes over one folder of photo-sized JPEGs, see jpegs.py):
- bare PIL decode loop, one process: `Image.open(path).convert("RGB")`, the reference;
- one process, decode + the evaluation transform to the tower's uint8 input, per decoder:
  PIL (the path before), torchvision.io.decode_jpeg (the library's `read_image`), and PIL's
  reduced JPEG decoding (`Image.draft`, DCT scaling) where the target is at most half the source;
  each decoder's pixels against PIL's (max and mean absolute difference, grey levels);
- the loader alone (`make_loader`, --workers processes): target >= 0.8 of the bare decode loop;
  and the loader as it was before (PIL decode, images stacked by torch's default collate);
- the bare tower (`encode_dense` on ready, normalised tensors) and the cache extraction
  (`build_feature_cache` into a fresh folder, --workers processes), images/s, at --tower-sizes;
- on CUDA only: torchvision's batched GPU decode (`decode_jpeg(list, device="cuda")`) plus the
  resize on the device, and its pixels against the CPU path.

Examples:
    PYTHONPATH=. python benchmarks/bench_decode.py --images 300 --repeats 3
    PYTHONPATH=. python benchmarks/bench_decode.py --device cuda --spec open_clip:RN101 --image-size 448 --workers 8
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from jpegs import mean_file_kb, write_photo_jpegs
from timing import interleaved_times, peak_memory

from clipml.backbones import BackboneConfig, FrozenCLIP, load_backbone
from clipml.data.base import MultiLabelSplit
from clipml.data.loader import make_loader, read_image
from clipml.data.transforms import BICUBIC, Normalize255, eval_transform
from clipml.engine.cache import build_feature_cache


def pil_draft(split: MultiLabelSplit, index: int, size: int) -> Image.Image:
    """PIL's reduced decoding: libjpeg scales by 1/2, 1/4 or 1/8 while keeping both sides >= size."""
    with Image.open(split.image_path(index)) as image:
        image.draft("RGB", (size, size))
        return image.convert("RGB")


class PilImages(Dataset):
    """The loader's items before the torchvision decoder: PIL decode, then the transform."""

    def __init__(self, split: MultiLabelSplit, transform) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.transform(self.split.open_image(index))


def decoders(split: MultiLabelSplit, size: int) -> Dict[str, Callable[[int], object]]:
    """Per-image decoders feeding the evaluation transform; draft only where it reduces."""
    found = {"PIL": split.open_image, "torchvision decode_jpeg (read_image)": lambda i: read_image(split, i)}
    with Image.open(split.image_path(0)) as first:
        if 2 * size <= min(first.size):
            found["PIL draft (reduced DCT decode)"] = lambda i: pil_draft(split, i, size)
    return found


def row_name(decoder: str) -> str:
    return f"1 process: {decoder} + transform"


def pixel_differences(split: MultiLabelSplit, transform, found: Dict[str, Callable]) -> Dict[str, Dict[str, float]]:
    """Max and mean |difference| (grey levels) of each decoder's transformed pixels against PIL's,
    keyed by row name."""
    out = {}
    for name, decode in found.items():
        worst, total = 0, 0.0
        for i in range(len(split)):
            diff = (transform(decode(i)).int() - transform(split.open_image(i)).int()).abs()
            worst, total = max(worst, int(diff.max())), total + float(diff.float().mean())
        out[row_name(name)] = {"max": worst, "mean": total / len(split)}
    return out


GPU_ROW = "GPU batched decode + resize on device"


def gpu_decode_pass(paths: List[str], size: int, batch: int, device: str) -> torch.Tensor:
    """torchvision's batched nvJPEG decode on the device, then the bicubic resize there; last batch."""
    images = None
    for start in range(0, len(paths), batch):
        data = [read_file(path) for path in paths[start:start + batch]]
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        images = torch.stack([TF.resize(image, [size, size], interpolation=BICUBIC, antialias=True)
                              for image in decoded])
    return images


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (loader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def median(values: List[float]) -> float:
    return sorted(values)[len(values) // 2]


def measure(split: MultiLabelSplit, backbone: FrozenCLIP, batch: int, workers: int, repeats: int,
            per_image: bool = True, towers: bool = True) -> Dict[str, object]:
    """Median seconds and CPU seconds per pass of every row over the interleaved rounds, the
    loader's rate after its first batch (worker start-up excluded), the pixel differences, and the
    peak device memory of the tower and of the extraction (CUDA; None elsewhere). `per_image=False`
    leaves out the one-process decoder rows, `towers=False` the tower and extraction rows.

    CPU seconds (process time plus the workers') tell what a row costs whatever share of the cores
    a shared machine gave it: images per CPU second compare decoders and loaders fairly there."""
    device = str(backbone.device)
    size, count = backbone.image_size, len(split)
    transform = eval_transform(size, backbone.mean, backbone.std, normalize=False)
    normalize = Normalize255(backbone.mean, backbone.std).to(backbone.device)
    ready = [normalize(torch.stack([transform(read_image(split, i)) for i in range(s, min(count, s + batch))]))
             for s in range(0, count, batch)] if towers else []
    paths = [str(split.image_path(i)) for i in range(count)]

    def bare_decode():
        for path in paths:
            with Image.open(path) as image:
                image.convert("RGB")

    steady = []

    def loader():
        first = None
        for _ in make_loader(split, transform, batch, workers=workers, pin_memory=device.startswith("cuda")):
            first = first or time.perf_counter()
        if count > batch:
            steady.append((count - batch) / (time.perf_counter() - first))

    def tower():
        with torch.no_grad():
            for images in ready:
                backbone.encode_dense(images)

    def extraction():
        folder = tempfile.mkdtemp(prefix="bench-decode-cache-")
        try:
            build_feature_cache(split, backbone, folder, batch_size=batch, workers=workers)
        finally:
            shutil.rmtree(folder)

    rows: Dict[str, Callable[[], object]] = {"bare PIL decode loop": bare_decode}
    found = decoders(split, size) if per_image else {}
    for name, decode in found.items():
        rows[row_name(name)] = (lambda d=decode: [transform(d(i)) for i in range(count)])
    rows[f"loader alone ({workers} workers)"] = loader
    rows[f"loader as before: PIL decode, default collate ({workers} workers)"] = lambda: list(DataLoader(
        PilImages(split, transform), batch, num_workers=workers, collate_fn=default_collate))
    if towers:
        rows["bare tower on ready tensors"] = tower
        rows[f"cache extraction ({workers} workers)"] = extraction
    differences = pixel_differences(split, transform, found) if per_image else {}
    gpu_error = None
    if device.startswith("cuda"):
        try:
            on_device = gpu_decode_pass(paths[:batch], size, batch, device).cpu().int()
        except Exception as error:  # e.g. a torchvision without nvJPEG: say so, measure the rest
            gpu_error = str(error).strip().splitlines()[0]
        else:
            reference = torch.stack([transform(read_image(split, i)) for i in range(len(on_device))]).int()
            diff = (on_device - reference).abs()
            differences[GPU_ROW] = {"max": int(diff.max()), "mean": float(diff.float().mean())}
            rows[GPU_ROW] = lambda: gpu_decode_pass(paths, size, batch, device)
    cpu: Dict[str, List[float]] = {name: [] for name in rows}

    def accounted(name: str, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            start = cpu_seconds()
            fn()
            cpu[name].append(cpu_seconds() - start)
        return run

    times = interleaved_times({name: accounted(name, fn) for name, fn in rows.items()}, repeats, device)
    return {"seconds": {name: median(ts) for name, ts in times.items()},
            "cpu": {name: median(values[-repeats:]) for name, values in cpu.items()},
            "differences": differences, "images": count, "gpu_error": gpu_error,
            "loader_steady": median(steady) if steady else None,
            "peak_tower": peak_memory(tower, device) if towers else None,
            "peak_extraction": peak_memory(extraction, device) if towers else None}


def report(result: Dict[str, object], workers: int) -> str:
    count, seconds, cpu = result["images"], result["seconds"], result["cpu"]
    rate = {name: count / s for name, s in seconds.items()}
    per_cpu = {name: count / max(c, 1e-9) for name, c in cpu.items()}
    bare, tower = "bare PIL decode loop", "bare tower on ready tensors"
    towers = tower in rate
    lines = ["| what | s per pass | images/s | / bare decode | / bare tower | CPU s per pass | cores used "
             "| images per CPU s | per CPU s / bare decode | pixels vs PIL: max, mean |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in seconds:
        pixels = result["differences"].get(name)
        shown = f"{pixels['max']}, {pixels['mean']:.3f}" if pixels else ""
        versus_tower = f"{rate[name] / rate[tower]:.2f}" if towers else ""
        lines.append(f"| {name} | {seconds[name]:.3f} | {rate[name]:.1f} | {rate[name] / rate[bare]:.2f} | "
                     f"{versus_tower} | {cpu[name]:.3f} | {cpu[name] / seconds[name]:.2f} | {per_cpu[name]:.1f} | "
                     f"{per_cpu[name] / per_cpu[bare]:.2f} | {shown} |")
    if result.get("gpu_error"):
        lines.append(f"\nGPU batched decode unavailable: {result['gpu_error']}")
    loader, extraction = f"loader alone ({workers} workers)", f"cache extraction ({workers} workers)"
    lines.append(f"\nloader / bare decode loop: {rate[loader] / rate[bare]:.2f} in images/s (target >= 0.8), "
                 f"{per_cpu[loader] / per_cpu[bare]:.2f} in images per CPU second")
    if result["loader_steady"]:
        lines.append(f"loader after its first batch (worker start-up excluded): {result['loader_steady']:.1f} "
                     f"images/s, {result['loader_steady'] / rate[bare]:.2f} of the bare decode loop")
    if towers:
        lines.append(f"cache extraction / bare tower: {rate[extraction] / rate[tower]:.2f}; / min(loader, tower): "
                     f"{rate[extraction] / min(rate[loader], rate[tower]):.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="open_clip:clipml-tiny-rn")
    parser.add_argument("--image-size", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--tower-sizes", type=int, nargs="*", default=[224],
                        help="image sizes at which the tower and the cache extraction are measured too")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the main process (1: stable timings on a shared machine)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # random-weight notices
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        split = write_photo_jpegs(Path(tmp), args.images, args.width, args.height)
        print(f"{args.images} JPEGs of {args.width}x{args.height}, {mean_file_kb(split):.0f} KB on average "
              f"(written in {time.perf_counter() - start:.0f} s); device={args.device}, torch threads="
              f"{torch.get_num_threads()}, batch {args.batch}, {args.repeats} interleaved rounds")
        for size in args.image_size:
            torch.manual_seed(0)
            backbone = load_backbone(BackboneConfig(args.spec, image_size=size, allow_random=True), args.device)
            result = measure(split, backbone, args.batch, args.workers, args.repeats,
                             towers=size in args.tower_sizes)
            print(f"\n{args.spec} @ {size} px\n")
            print(report(result, args.workers), flush=True)


if __name__ == "__main__":
    main()
