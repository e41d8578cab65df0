#!/usr/bin/env bash
# The one folder to carry to a bare GPU machine (see tools/gpu_bundle.py): the wheels a stock PyTorch image lacks,
# both benchmarks' split lists and run.sh, the one command to run there.
#   tools/gpu_bundle.sh gpu-bundle [--list-dir /lists]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
py="${PYTHON:-$([ -x "${root}/.venv/bin/python" ] && echo "${root}/.venv/bin/python" || echo python3)}"
exec "$py" -m tools.gpu_bundle "$@"
