#!/usr/bin/env bash
# One GPU check of the fused kernels, <= 5 minutes on one H100/H200: correctness vs fp64, loss speed and
# memory vs a materialised bf16 loss, every false-negative mode, the PGD step, one R3D-18 training step
# under torchrun, and the roofline beside the measured times.
# Writes benchmarks/results/gpu_check.json and .md (see benchmarks/gpu_check.py and docs/kernels.md).
#
#   benchmarks/gpu_check.sh              # on the GPU machine, from anywhere in the repository
#   benchmarks/gpu_check.sh --dry-run    # CPU smoke run of the script itself (figures mean nothing)
#
# Needs the repository and its venv as `make test` installs it (.venv with torch 2.14.1 + triton);
# PYTHON=/path/to/python overrides the interpreter.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_check: $("$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')"
# the script keeps its own 290 s budget and writes its results after every section; this is a backstop
exec timeout --signal=INT --kill-after=20 420 "$PY" benchmarks/gpu_check.py "$@"
