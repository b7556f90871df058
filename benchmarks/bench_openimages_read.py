"""Reading speed of the Open Images label files (the V6 train human labels are ~19M rows).

Writes a synthetic V6 layout (9,605 trainable classes of 19,958 described, ~8.5 labels per image
as in the real train file, 60 % of them on trainable classes) with `--rows` human label rows and
as many machine rows, then times `read_image_labels` (human, then human+machine) and the dense
matrix. Example:
    python benchmarks/bench_openimages_read.py --rows 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from clipml.data.openimages import LAYOUTS, read_image_labels


def write_files(folder: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.RandomState(seed)
    layout = LAYOUTS["v6"]
    labels = [f"/m/{k:07x}" for k in range(19958)]
    (folder / layout["descriptions"]).write_text(
        "LabelName,DisplayName\n" + "".join(f"{label},Class {k}\n" for k, label in enumerate(labels)))
    (folder / layout["trainable"][0]).write_text("\n".join(labels[::2][:9605]) + "\n")
    images = [f"{k:016x}" for k in range(rows // 8 + 1)]
    image_index = np.sort(rng.randint(0, len(images), rows))  # the real files are sorted by ImageID
    human = rng.rand(rows) < 0.6
    for kind, column in (("human", np.where(human, "1", "0")), ("machine", np.round(rng.rand(rows), 1).astype(str))):
        classes = rng.randint(0, len(labels), rows)  # each file its own classes: machine labels add positives
        source = "verification" if kind == "human" else "machine"
        with open(folder / layout[kind]["train"], "w") as handle:
            handle.write("ImageID,Source,LabelName,Confidence\n")
            handle.writelines(f"{images[i]},{source},{labels[c]},{v}\n"
                              for i, c, v in zip(image_index, classes, column))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per label file (default 1M)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_files(folder, args.rows)
        for sources, files in (("human", 1), ("human+machine", 2)):
            started, cpu = time.perf_counter(), time.process_time()
            labels, names, _ = read_image_labels(folder, "train", sources=sources)
            read, cpu = time.perf_counter() - started, time.process_time() - cpu
            started = time.perf_counter()
            sparse = labels.sparse()
            build = time.perf_counter() - started
            print(f"{sources}: {files * args.rows:,} rows in {read:.2f} s = {files * args.rows / read:,.0f} rows/s "
                  f"(CPU {cpu:.2f} s = {files * args.rows / cpu:,.0f} rows/s); "
                  f"{len(labels.images):,} images x {len(names):,} classes, {len(labels.values):,} known labels; "
                  f"sparse labels {sparse.nbytes / 1e6:,.1f} MB in {build:.2f} s "
                  f"(a dense matrix would take {len(labels.images) * len(names) / 1e6:,.0f} MB)")


if __name__ == "__main__":
    main()
