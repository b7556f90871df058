"""Validation mAP of finished runs, for choosing a recipe on validation alone: per run folder the
best validation mAP, its epoch and the first epoch's; with --rows, one row per method and a column
per (sweep, p), each cell the mean over the seeds given (n), so two settings (e.g. two losses) sit
side by side. Test numbers are not read.

    python benchmarks/validation_table.py runs/sweeps/lab_coco_rn{,_loss_bce}/{csc_global,sdm_csp}/p{0.1,0.5}/s0 --rows
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

from clipml.errors import ClipmlError, DataError


def validation_curve(run: Path) -> List[float]:
    """Validation mAP after every epoch of a run, from its log.jsonl."""
    log = run / "log.jsonl"
    if not log.is_file():
        raise DataError(f"{log}: not found; is {run} a finished run folder?")
    try:
        curve = [json.loads(line)["val"]["mAP"] for line in log.read_text().splitlines() if line.strip()]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{log}: expected one JSON object with val.mAP per line ({error!r})") from error
    if not curve:
        raise DataError(f"{log}: no epoch logged")
    return curve


def _parts(run: Path) -> Tuple[str, str, str, str]:
    """(sweep, method, p, seed) of a sweep's run folder SWEEP/METHOD/pP/sS."""
    if not (run.parent.name.startswith("p") and run.name.startswith("s")):
        raise DataError(f"{run}: --rows needs sweep run folders SWEEP/METHOD/pP/sS")
    return run.parent.parent.parent.name, run.parent.parent.name, run.parent.name[1:], run.name


def main() -> None:
    try:
        _main()
    except ClipmlError as error:
        raise SystemExit(f"error: {error}")


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (log.jsonl)")
    parser.add_argument("--rows", action="store_true", help="one row per method, a column per (sweep, p)")
    args = parser.parse_args()
    if not args.rows:
        print("| run | best val mAP | best epoch | epoch 1 |\n|---|---|---|---|")
        for run in args.runs:
            curve = validation_curve(run)
            best = max(curve)
            print(f"| {run} | {best:.2f} | {curve.index(best) + 1} | {curve[0]:.2f} |")
        return
    cells: Dict[str, Dict[Tuple[str, str], List[float]]] = defaultdict(lambda: defaultdict(list))
    columns: List[Tuple[str, str]] = []
    for run in args.runs:
        sweep, method, p, _ = _parts(run)
        cells[method][sweep, p].append(max(validation_curve(run)))
        if (sweep, p) not in columns:
            columns.append((sweep, p))
    print("| method | " + " | ".join(f"{sweep} p={p}" for sweep, p in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for method, by_column in cells.items():
        values = [by_column.get(column) for column in columns]
        # n: the seeds averaged, so unequal counts show
        print(f"| {method} | " + " | ".join("–" if not v else f"{sum(v) / len(v):.2f} (n={len(v)})" for v in values)
              + " |")


if __name__ == "__main__":
    main()
