#!/usr/bin/env bash
# The GPU measurements in one command (see benchmarks/gpu_suite.py): on a GPU machine, from the
# repository root, `bash benchmarks/gpu_suite.sh` writes benchmarks/results/gpu.md in at most
# 8 minutes; `--smoke` runs the same code on the CPU with tiny models (benchmarks/results/gpu_smoke.md).
# The hard limit below stops a run that overruns; the sections measured by then stay in the file.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=INT --kill-after=20 470 python benchmarks/gpu_suite.py "$@"
