#!/usr/bin/env bash
# The GPU check (see tools/gpu_check.py): one complete paper-voc run on a bare GPU machine and the projected
# hours of the paper profile. No install: the checkout goes on PYTHONPATH and runs on the `python3` that has
# torch (PYTHON=/path/to/python to choose another). Offline: random weight files, random-content JPEGs.
#   tools/gpu_check.sh --list-dir /lists                # CUDA: 30 epochs at 448 px, a few minutes on an H200
#   tools/gpu_check.sh --cpu --tiny --list-dir /lists   # the same code path at toy sizes, on a CPU
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
export HF_HUB_OFFLINE=1
# caches (decoded images, the random CLIP's class embeddings) go to a scratch folder unless the caller chose one
export CPRFL_CACHE="${CPRFL_CACHE:-${TMPDIR:-/tmp}/cprfl-gpu-check-cache}"
exec "${PYTHON:-python3}" -m tools.gpu_check "$@"
