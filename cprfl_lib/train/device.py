"""Where and how a run computes: the device it names, and the seeds and numerical modes it runs under."""

from __future__ import annotations

import os

import numpy as np
import torch

from cprfl_lib.errors import CprflError


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU where there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:<i>``; a missing GPU in one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CprflError("train.device is 'cuda' but no CUDA device is available; use train.device=cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch and numpy; ``deterministic``: deterministic algorithms, no cuDNN autotuning, no TF32."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:  # cuBLAS needs a fixed workspace for deterministic matrix products
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)  # set either way: a previous run's choice must not linger
    torch.backends.cudnn.benchmark = not deterministic  # autotuned convolutions, unless results must repeat
    if torch.cuda.is_available():  # TF32 for the float32 matmuls that remain (the EMA's evaluation), unless exact
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not deterministic
