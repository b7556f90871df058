"""benchmarks/gpu_suite.sh, the one command a GPU loan runs: its --smoke run on the CPU with tiny
models writes every section with measured numbers, and the COCO sweep projection is the sum it
says it is."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("1. encode_dense vs encode_image", "2. Cache extraction vs the bare tower", "3. Training step vs its floor",
            "4. evaluate() vs the bare tower", "5. Projected wall time of the 9-proportion COCO sweep")


@pytest.fixture(scope="module")
def gpu_suite():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_suite

        yield gpu_suite
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def table_rows(text: str, title: str):
    """The data rows (cells) of the first table under section `title`."""
    body = text.split(f"## {title}")[1].split("\n## ")[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| what") and not line.startswith("| model")
            and not line.startswith("| method")]


def test_smoke_run_writes_every_section_with_numbers(tmp_path):
    output = tmp_path / "gpu.md"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--smoke", "--output", str(output)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    text = output.read_text()
    assert "FAILED" not in text and "skipped" not in text
    for title in SECTIONS:
        assert f"## {title}" in text, title

    towers = table_rows(text, SECTIONS[0])
    assert [(row[0], row[1], row[2]) for row in towers] == [
        (spec, size, precision) for spec, size in (("open_clip:clipml-tiny-rn", "64"), ("open_clip:clipml-tiny-vit", "32"),
                                                   ("open_clip:clipml-tiny-vit", "64"))
        for precision in ("fp32", "bf16")]
    assert all(float(cell) > 0 for row in towers for cell in row[3:7])
    assert all(row[7:] == ["-", "-"] for row in towers)  # no peak memory off CUDA

    extraction = {row[0]: row for row in table_rows(text, SECTIONS[1])}
    for name in ("bare PIL decode loop", "loader alone (1 workers)", "bare tower on ready tensors",
                 "cache extraction (1 workers)"):
        assert float(extraction[name][2]) > 0, name  # images/s
    steps = table_rows(text, SECTIONS[2])
    assert [(row[0], row[1]) for row in steps] == [("sdm_csp", "fp32"), ("sdm_csp", "bf16"),
                                                   ("dualcoop", "fp32"), ("dualcoop", "bf16")]
    for row in steps:
        text_s, head_s, floor_s = map(float, row[2:5])
        assert math.isclose(floor_s, text_s + head_s, abs_tol=2e-4) and float(row[5]) > 0
    evaluation = table_rows(text, SECTIONS[3])
    assert len(evaluation) == 5 and all(float(row[2]) > 0 for row in evaluation)
    sweep = table_rows(text, SECTIONS[4])
    assert [(row[0], row[1]) for row in sweep] == [("sdm_csp", "cache"), ("sdm_csp", "re-encode"),
                                                   ("dualcoop", "cache"), ("dualcoop", "re-encode")]
    for row in sweep:
        parts = list(map(float, row[2:6]))
        assert all(value >= 0 for value in parts) and math.isclose(sum(parts[:3]), parts[3], abs_tol=0.02)
    assert re.search(r"total wall time: \d+ s", text)


def test_sweep_projection_adds_up_by_hand(gpu_suite):
    rates = {"extraction": 100.0, "step sdm_csp": 0.5, "evaluate per image": 0.02, "evaluate fixed": 3.0,
             "cached evaluate per image": 0.002, "cached evaluate fixed": 1.0}
    projected = gpu_suite.sweep_seconds(rates, batch=32)
    assert list(projected) == ["sdm_csp"]  # dualcoop was not measured
    cache, encode = projected["sdm_csp"]["cache"], projected["sdm_csp"]["re-encode"]
    # COCO 2014: 82,783 training images, 8,278 carved for validation, 74,505 fit in 2,329 steps of 32;
    # 40,504 test images; 50 epochs; 9 proportions; validation 52 times and test twice per run, each
    # evaluation paying the fixed cost per call once.
    assert math.isclose(cache["extraction"], (82_783 + 40_504) / 100.0)
    assert math.isclose(cache["training"], 9 * 50 * (2_329 * 0.5 + 74_505 * 0.002))
    assert math.isclose(cache["evaluation"], 9 * (52 * (8_278 * 0.002 + 1.0) + 2 * (40_504 * 0.002 + 1.0)))
    assert math.isclose(cache["total"], 602_004.722)
    assert encode["extraction"] == 0.0
    assert math.isclose(encode["total"], 9 * 50 * (2_329 * 0.5 + 74_505 * 0.02)
                        + 9 * (52 * (8_278 * 0.02 + 3.0) + 2 * (40_504 * 0.02 + 3.0)))
