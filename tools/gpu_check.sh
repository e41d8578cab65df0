#!/usr/bin/env bash
# GPU smoke test of the paper's model at full size: see tools/gpu_check.py. Run it first on a GPU box.
# No install: the checkout's cprfl_lib goes on PYTHONPATH and runs on the `python3` that has torch
# (PYTHON=/path/to/python to choose another). Offline: random weights and random data.
#   tools/gpu_check.sh                 # full size, CUDA, < 5 min on one H100
#   tools/gpu_check.sh --cpu --tiny    # the same code path at toy sizes, on a CPU
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
export HF_HUB_OFFLINE=1
# caches (the random CLIP's class embeddings) go to a scratch folder unless the caller chose one
export CPRFL_CACHE="${CPRFL_CACHE:-${TMPDIR:-/tmp}/cprfl-gpu-smoke-cache}"
exec "${PYTHON:-python3}" -m tools.gpu_check "$@"
