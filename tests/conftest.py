"""Shared test setup and the helpers every test module uses (one definition each):

- ``one_line_error(call, *needles)``: a library call raises a one-line CprflError naming every needle;
- ``cli_error(done, *needles)``: a ``cprfl`` run exits 2, without a traceback, with one ``cprfl: error:`` line;
- ``cprfl(env, cwd, *args)``: the console script in a subprocess; ``run_cli(capsys, *args)``: ``cli.main`` in process;
- ``smoke_config(**overrides)``: the tiny recipe at test scale (64 generated images, CPU, one thread); ``as_args``:
  overrides as the command's ``key=value`` arguments; ``fake_training(monkeypatch, score)``: the run store's stub;
  ``spy(monkeypatch, owner, name)``: a function that runs as before and notes its calls;
  ``train_killed_after_one_epoch(config, out)``: a run stopped as by a kill after its first epoch;
- fixtures: ``shared_data``, ``cprfl_cache``, ``private_cache``, ``offline``, ``cli_env`` and ``cli_cwd`` (a fresh
  offline cache and a working folder for the subprocesses), ``smoke_run`` (one finished smoke run for the session),
  ``close_figures``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
TESTS = str(Path(__file__).parent)
if TESTS not in sys.path:  # the helper modules beside the tests (own_dataset.py)
    sys.path.insert(0, TESTS)

from cprfl_lib.errors import CprflError  # noqa: E402

matplotlib.use("Agg")  # every figure of the tests off-screen

# The published split lists, kept outside the repository (never copied into it).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCRIPT = Path(sys.executable).parent / "cprfl"
# The tiny recipe on 64 generated images per split (4 steps of 16 per epoch, 2 epochs), on the CPU. One torch
# thread: on a busy 2-core machine two threads spin-wait on each other (seen: 5x slower).
SMOKE = {"data.synthetic_limit": 64, "train.device": "cpu", "train.max_steps_per_epoch": None,
         "train.num_threads": 1}


# ---------------------------------------------------------------- helpers


def one_line_error(call, *needles) -> str:
    """``call()`` raises a one-line CprflError that names every needle; its message."""
    with pytest.raises(CprflError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in: {message}"
    return message


def cli_error(done, *needles, only: bool = False) -> str:
    """A ``cprfl`` run (a CompletedProcess, or :func:`run_cli`'s tuple) exits 2, without a traceback, with one stderr
    line ``cprfl: error: ...`` naming every needle; ``only``: and no other line on stderr. (Progress bars redraw with
    \\r, which splitlines() splits on too.) The line."""
    code, out, err = (done.returncode, done.stdout, done.stderr) if hasattr(done, "returncode") else done
    assert "Traceback" not in out + err, err[-3000:]
    assert code == 2, f"exit code {code}: {err[-2000:]}"
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cprfl: error: ")]
    assert len(errors) == 1 and (not only or len(lines) == 1), err[-2000:]
    for needle in needles:
        assert str(needle) in errors[0], f"{needle!r} not in: {errors[0]}"
    return errors[0]


def cprfl(env: dict, cwd: Path, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """The ``cprfl`` console script, run as a user runs it (no stdin)."""
    assert SCRIPT.is_file(), f"console script {SCRIPT} missing: run `make env`"
    return subprocess.run([str(SCRIPT), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``cprfl ARGS`` in this process (no ~10 s of imports): exit code, stdout, stderr."""
    from cprfl_lib import cli

    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def smoke_config(**overrides) -> dict:
    """The tiny recipe at test scale (:data:`SMOKE`), with ``overrides`` (dotted keys)."""
    from cprfl_lib.train.recipes import load_recipe

    return load_recipe("tiny", {**SMOKE, **overrides})


def as_args(overrides: dict) -> list[str]:
    """Overrides as the command's ``key=value`` arguments (None as null, booleans in lower case)."""
    text = lambda v: "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)  # noqa: E731
    return [f"{k}={text(v)}" for k, v in overrides.items()]


def fake_training(monkeypatch, score, split: str = "test") -> list[Path]:
    """The run store trains nothing: each run writes a metrics.json with every column at ``score(config)``, on the
    test split (last epoch and best on test, epoch 1) or on the validation split alone (``split="val"``). The
    folders it was asked to train, in order."""
    import json

    from cprfl_repro import studies
    from cprfl_repro.reported import COLUMNS

    trained = []

    def train(config, run_dir, resume=False, progress=True):
        trained.append(Path(run_dir))
        row = {c: score(config) for c in COLUMNS}
        on = {"val_last_epoch": {"model": row}} if split == "val" else {"last_epoch": {"model": row},
                                                                         "best_on_test": {**row, "epoch": 1}}
        metrics = {"dataset": config["data"]["dataset"], "wall_s": 0.0, **on}
        (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(studies, "train", train)
    return trained


def spy(monkeypatch, owner, name: str, note=lambda *args, **kwargs: 1) -> list:
    """``owner.name`` runs as it did; the list returned gets ``note(*args, **kwargs)`` of each call, before it runs."""
    real, notes = getattr(owner, name), []

    def noted(*args, **kwargs):
        notes.append(note(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, noted)
    return notes


class Killed(Exception):
    """Stands for the process being killed between two epochs."""


def train_killed_after_one_epoch(config: dict, out: Path) -> None:
    """``config`` trained into ``out`` in this process until it is "killed" (:class:`Killed`) after its first epoch;
    torch's determinism switch, which a deterministic run turns on for the process, as it was."""
    from cprfl_lib.train import engine

    real, calls, deterministic = engine.train_one_epoch, [], torch.are_deterministic_algorithms_enabled()

    def once_too_many(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise Killed
        return real(*args, **kwargs)

    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(engine, "train_one_epoch", once_too_many)
            with pytest.raises(Killed):
                engine.train(config, out, progress=False)
    finally:
        torch.use_deterministic_algorithms(deterministic)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference split lists folder; the test is skipped where it is absent."""
    if not (SHARED_DATA / "voc_lt" / "train.txt").is_file():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def cprfl_cache(tmp_path_factory):
    """$CPRFL_CACHE when set (the Makefile sets it: generated data are reused between sessions), else one
    temporary cache for the whole session; the torch determinism switch is restored afterwards."""
    before = os.environ.get("CPRFL_CACHE")
    if not before:
        os.environ["CPRFL_CACHE"] = str(tmp_path_factory.getbasetemp() / "cprfl-cache")
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield Path(os.environ["CPRFL_CACHE"])
    torch.use_deterministic_algorithms(deterministic)
    if not before:
        del os.environ["CPRFL_CACHE"]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache of the test's own, so that nothing is reused from (or left in) the shared one."""
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def offline(monkeypatch):
    """The hub offline and no word-vector files, whatever the environment of this run says."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: the variable alone is too late
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hf-cache")
    monkeypatch.delenv("CPRFL_GLOVE", raising=False)
    monkeypatch.delenv("CPRFL_WORD2VEC", raising=False)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """The environment of the ``cprfl`` subprocesses: offline, a fresh cache shared by the session (the smoke data
    is generated once), a home of its own for matplotlib and Jupyter."""
    cache, home = tmp_path_factory.mktemp("cli-cache"), tmp_path_factory.mktemp("cli-home")
    return dict(os.environ, CPRFL_CACHE=str(cache), HF_HUB_OFFLINE="1", MPLCONFIGDIR=str(home / "mpl"),
                IPYTHONDIR=str(home / "ipython"), JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"),
                TORCH_HOME=os.environ.get("TORCH_HOME", str(cache / "torch")))


@pytest.fixture(scope="session")
def cli_cwd(tmp_path_factory) -> Path:
    """The working folder of every subprocess: nothing may land in the repository or in the caller's cwd."""
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="session")
def smoke_run(cli_env, cli_cwd, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One finished run of :func:`smoke_config`, trained by `cprfl train` as a user trains it, for every test that
    only needs a finished run (its folder and the command's result). Tests of training itself train their own."""
    run = tmp_path_factory.mktemp("smoke") / "run"
    done = cprfl(cli_env, cli_cwd, "train", "--recipe", "tiny", "--output-dir", run, *as_args(SMOKE))
    assert done.returncode == 0, done.stderr[-3000:]
    return run, done


@pytest.fixture
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")

