#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md, one after the other on an otherwise idle machine; each
# prints its figures and saves benchmarks/results/<name>.json. Needs the README's main-job set-up
# (.venv and data/ravdess). Without CUDA the training grid shrinks to fold 0 x 1 epoch (the full
# 5 x 5 grid takes hours on a CPU); set GRID_ARGS to choose, e.g. GRID_ARGS="" for the full grid.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
if [ -z "${GRID_ARGS+set}" ]; then
  if "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then GRID_ARGS=""; else GRID_ARGS="--folds 0 --epochs 1"; fi
fi
"$py" benchmarks/features.py
"$py" benchmarks/train_throughput.py
"$py" benchmarks/train_step.py
"$py" benchmarks/augment_throughput.py --repeats 3
"$py" benchmarks/predict.py --untrained
# shellcheck disable=SC2086
"$py" benchmarks/grid.py $GRID_ARGS
