"""The quality benchmark's report: read finished sweeps (tools/sweep.py) and print, per sweep, the
test mAP table, the localisation of every method's attention and the mAP breakdowns (labels per
image, object size), each averaged over the sweep's seeds; optionally copy the tables and draw
one mAP-vs-p figure with a panel per sweep.

    python benchmarks/quality_report.py runs/sweeps/lab_coco_vit runs/sweeps/lab_coco_rn \
        --copy-to benchmarks/results --plot benchmarks/results/quality.png
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from clipml.sweep import markdown


def _details(sweep: Dict[str, object]) -> Dict[str, Dict[float, List[Dict[str, object]]]]:
    """method -> p -> the test_details of every seed's run (trained runs only)."""
    found: Dict[str, Dict[float, List[Dict[str, object]]]] = defaultdict(lambda: defaultdict(list))
    for run in sweep["runs"]:
        summary = Path(run["folder"]) / "summary.json"
        if "+" in run["method"] or not summary.is_file():  # ensemble rows have no attention of their own
            continue
        details = json.loads(summary.read_text()).get("test_details")
        if details:
            found[run["method"]][run["p"]].append(details)
    return found


def _mean(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1f}"


def localisation_table(details, proportions: List[float]) -> str:
    """Pointing game / mass inside (%) of each method's attention, mean over seeds."""
    header = ["method", *[f"{p:g}" for p in proportions]]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method, by_p in details.items():
        if not any("pointing_game" in d for runs in by_p.values() for d in runs):
            continue
        cells = []
        for p in proportions:
            runs = by_p.get(p, [])
            cells.append(f"{_fmt(_mean([d.get('pointing_game') for d in runs]))} / "
                         f"{_fmt(_mean([d.get('mass_inside') for d in runs]))}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown_table(details, p: float) -> str:
    """Test mAP (%) by labels per image and by object size at one p, mean over seeds."""
    groups = [("mAP_by_labels", ["1", "2-3", "4+"]), ("mAP_by_size", ["small", "medium", "large"])]
    header = ["method", *[f"{k} labels" for k in groups[0][1]], *groups[1][1]]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method, by_p in details.items():
        runs = by_p.get(p, [])
        if not runs:
            continue
        cells = [_fmt(_mean([d.get(key, {}).get(bucket) for d in runs])) for key, buckets in groups for bucket in buckets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(folder: Path, breakdown_at: List[float]) -> str:
    sweep = json.loads((folder / "sweep.json").read_text())
    details = _details(sweep)
    parts = [markdown(sweep).replace("# Sweep", "## Sweep", 1)]
    parts.append("Localisation of the learned attention on the test split (pointing game / mass inside, %, "
                 "mean over seeds):\n\n" + localisation_table(details, sweep["proportions"]))
    for p in breakdown_at:
        if any(p in by_p for by_p in details.values()):
            parts.append(f"Test mAP (%) by labels per image and by object size at p = {p:g} (mean over seeds):\n\n"
                         + breakdown_table(details, p))
    return "\n\n".join(parts) + "\n"


def plot(folders: List[Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(folders), figsize=(5.2 * len(folders), 4.8), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors: Dict[str, str] = {}  # one colour per method in every panel; an ensemble takes its member's, dashed
    handles: Dict[str, object] = {}
    for ax, folder in zip(axes[0], folders):
        sweep = json.loads((folder / "sweep.json").read_text())
        ps = sweep["proportions"]
        for method, row in sweep["methods"].items():
            color = colors.setdefault(method.split("+")[0], palette[len(colors) % len(palette)])
            marker = "os^D"[(list(colors).index(method.split("+")[0]) // len(palette)) % 4]  # past the palette
            means = [row["cells"][f"{p:g}"]["mean"] for p in ps]
            stds = [row["cells"][f"{p:g}"]["std"] or 0.0 for p in ps]
            line, = ax.plot(ps, means, marker=marker, ms=3, color=color, ls="--" if "+" in method else "-")
            ax.fill_between(ps, np.subtract(means, stds), np.add(means, stds), color=color, alpha=0.15)
            handles.setdefault(method, line)
        zero = next(iter(sweep["methods"].values()))["zero_shot_test_mAP"]
        handles["zero-shot (reference line)"] = ax.axhline(zero, color="k", lw=0.8, ls=":")
        ax.set_title(sweep["name"])
        ax.set_xlabel("known-label proportion p")
        ax.set_ylabel("test mAP (%)")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 8), fontsize=7)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", type=Path, help="finished sweep folders (runs/sweeps/NAME)")
    parser.add_argument("--breakdown-at", nargs="+", type=float, default=[0.1, 0.5], help="p of the breakdown tables")
    parser.add_argument("--copy-to", type=Path, help="copy each sweep's sweep.csv / sweep.json here as quality_NAME.*")
    parser.add_argument("--plot", type=Path, help="write one mAP-vs-p figure, a panel per sweep")
    args = parser.parse_args()
    for folder in args.sweeps:
        print(report(folder, args.breakdown_at))
        if args.copy_to:
            for suffix in ("csv", "json"):
                shutil.copyfile(folder / f"sweep.{suffix}", args.copy_to / f"quality_{folder.name}.{suffix}")
    if args.plot:
        plot(args.sweeps, args.plot)


if __name__ == "__main__":
    main()
