"""Every fault a user can hit, one test each: a one-line error naming the file, line or value;
exit code 2 from the ``cprfl`` command where there is a command for it; nothing lost or
half-written.

To add a fault: write one ``test_<what goes wrong>`` in its group below. Use
``one_line_error(call, *needles)`` for a library call and ``cli_error(done, *needles)`` for a
``cprfl`` run (a subprocess costs ~10 s of imports here, so only a few representative faults
go through the command; the rest call the library). Slow tests are marked ``slow`` and still
run in ``make test``.

Groups: data, semantics, checkpoints, notebooks, runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path
from unittest import mock

import conftest
import numpy as np
import psutil
import pytest
import torch
from conftest import ROOT, SCRIPT, SMOKE, as_args, cli_error, cprfl, one_line_error, run_cli, train_killed_after_one_epoch
from PIL import Image, ImageFile

from cprfl_lib import runinfo
from cprfl_lib.data.benchmarks import load_benchmark
from cprfl_lib.data.datasets import MultiLabelImageDataset, check_images
from cprfl_lib.data.lists import SplitList, fetch_split_lists, read_labels, read_split
from cprfl_lib.data.transforms import preprocessing
from cprfl_lib.errors import CprflError
from cprfl_lib.train import engine
from cprfl_lib.train.checkpoint import FORMAT, load_checkpoint
from cprfl_lib.train.recipes import load_recipe

SMOKE_DATA = "synth-voc-lt-s0-32px-limit300"  # the folder the tiny recipe generates
EPOCHS = 6  # the reference run: long enough that a kill lands before its end


# ---------------------------------------------------------------- helpers


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def record(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file of a run folder by its content and its time stamp."""
    return {name: (hashlib.sha256((folder / name).read_bytes()).hexdigest(), (folder / name).stat().st_mtime_ns)
            for name in files_in(folder)}


def start_train(env: dict, cwd: Path, out: Path, *args, output=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([str(SCRIPT), "train", "--recipe", "tiny", "--output-dir", str(out), *map(str, args)],
                            env=env, cwd=cwd, stdout=output, stderr=output, text=True, stdin=subprocess.DEVNULL)


def wait_for_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    """Until the run ``proc`` has saved its first checkpoint into ``out`` (at most 4 min)."""
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never saved its first checkpoint"
        time.sleep(0.01)


def write_images(root: Path, n: int) -> list[str]:
    """``n`` small JPEGs under ``root``; their relative paths."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"img/{i}.jpg")
    return [f"img/{i}.jpg" for i in range(n)]


PREP = preprocessing("imagenet", 12)


def split_of(paths: list[str], num_classes: int = 3) -> SplitList:
    return SplitList(paths=paths, targets=np.zeros((len(paths), num_classes), np.uint8), source=Path("list.txt"))


REFERENCE = {"data.synthetic_limit": 300, "train.deterministic": True, "optim.epochs": EPOCHS}


def smoke_config(**overrides) -> dict:
    """The shared smoke configuration on the recipe's 300 images, deterministic, EPOCHS epochs: the reference run."""
    return conftest.smoke_config(**{**REFERENCE, **overrides})


def smoke_args(**overrides) -> list[str]:
    """The CLI overrides of :func:`smoke_config` (the same run)."""
    return as_args({**SMOKE, **REFERENCE, **overrides})


def train_here(config: dict, out: Path, resume: bool = False, progress: bool = False) -> dict:
    try:
        return engine.train(config, out, resume=resume, progress=progress)
    finally:  # seed_everything switches this on for the whole process
        torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def env(cli_env) -> dict[str, str]:
    """The session's fresh offline cache (:func:`conftest.cli_env`), shared by the library calls (os.environ) and the
    ``cprfl`` subprocesses."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in cli_env.items():
            mp.setenv(key, value)
        yield dict(os.environ)


@pytest.fixture(scope="module")
def reference_run(env, tmp_path_factory) -> Path:
    """An uninterrupted deterministic smoke run, trained in this process in the session's fresh cache."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train_here(smoke_config(), out)
    return out


@pytest.fixture
def run_copy(reference_run, tmp_path) -> Path:
    """A copy of the reference run that a test may damage."""
    return Path(shutil.copytree(reference_run, tmp_path / "run"))


# ================================================================ data


def test_missing_data_root_is_named(tmp_path):
    absent = tmp_path / "no-such-root"
    one_line_error(lambda: MultiLabelImageDataset(absent, split_of(["a.jpg"]), PREP), f"data root {absent} does not "
                   "exist", "--data-root")
    one_line_error(lambda: check_images(absent, ["a.jpg"]), f"data root {absent} does not exist")
    one_line_error(lambda: MultiLabelImageDataset(None, split_of(["a.jpg"]), PREP), "no image folder given; pass "
                   "--data-root")


@pytest.mark.shared_data
def test_data_check_names_a_missing_data_root(shared_data, capsys):
    cli_error(run_cli(capsys, "data", "check", "--dataset", "voc-lt", "--list-dir", shared_data / "voc_lt",
                      "--data-root", "/nonexistent"), "/nonexistent", only=True)


def test_missing_images_are_counted_and_listed_before_training(tmp_path):
    paths = write_images(tmp_path, 7)
    for i in (1, 4, 6):
        (tmp_path / paths[i]).unlink()
    one_line_error(lambda: check_images(tmp_path, paths), "3 of 7 images are missing", str(tmp_path),
                   "img/1.jpg", "img/4.jpg", "img/6.jpg")
    one_line_error(lambda: MultiLabelImageDataset(tmp_path, split_of(paths), PREP),  # checked when the data is built
                   f"3 of 7 images are missing under {tmp_path} (first: img/1.jpg, img/4.jpg", "--data-root")
    one_line_error(lambda: check_images(tmp_path, [f"x{i}" for i in range(1200)], show=2),
                   "1,200 of 1,200 images are missing", "(first: x0, x1, ...)")


@pytest.mark.slow
def test_missing_images_through_the_command(env, cli_cwd, reference_run, tmp_path):
    """`cprfl train` on a data folder with 3 images deleted: exit 2 before anything is written."""
    data = tmp_path / "data"
    shutil.copytree(Path(env["CPRFL_CACHE"]) / "synthetic" / SMOKE_DATA, data / SMOKE_DATA)
    for name in ("000002.jpg", "000050.jpg", "000299.jpg"):
        (data / SMOKE_DATA / "images" / "train" / name).unlink()
    done = cprfl(env, cli_cwd, "train", "--recipe", "tiny", "--data-root", data, "--output-dir", tmp_path / "out")
    cli_error(done, "3 of 300 images are missing", "images/train/000002.jpg", "images/train/000299.jpg")
    assert files_in(tmp_path / "out") == []


def _large_and_cut(path: Path) -> None:
    """A 40 x 30 JPEG cut inside its image data (its header still parses)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:600])


DAMAGE = {"not an image": lambda p: p.write_bytes(b"this is text"),
          "random bytes": lambda p: p.write_bytes(random.Random(0).randbytes(2000)),
          "truncated header": lambda p: p.write_bytes(p.read_bytes()[:60]),
          "truncated data": _large_and_cut}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_unreadable_image_is_named(tmp_path, damage):
    from torch._utils import ExceptionWrapper

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    paths = write_images(tmp_path, 2)
    bad = tmp_path / paths[1]
    DAMAGE[damage](bad)
    dataset = MultiLabelImageDataset(tmp_path, split_of(paths), PREP)  # both exist
    dataset[0]  # the good one still loads
    message = one_line_error(lambda: dataset[1], str(bad), "cannot read image", "replace the file")
    assert "remove it from the list" not in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # not switched on to read it
    # With data.num_workers > 0 torch re-raises a worker's error with its traceback as the message: still one line.
    # Torch's own wrapper, as its worker loop uses it (a real worker takes 5 s to shut down after an error).
    try:
        dataset[1]
    except CprflError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    one_line_error(wrapped.reraise, str(bad), "cannot read image")


@pytest.mark.parametrize("name, content, needle", [
    ("train.txt", "img/1.jpg 1\n\nimg/0.jpg 0 x 2\n", "train.txt:3: label 'x' is not an integer"),
    ("train.txt", "img/1.jpg 1\n\nimg/0.jpg 0 3\n", "train.txt:3: label 3 is out of range 0..2"),
    ("train.txt", "img/1.jpg 1\n\nimg/0.jpg -1\n", "train.txt:3: label -1 is out of range 0..2"),
    ("train.txt", "img/1.jpg 1\n\n7 1\n", "train.txt:3: no image path (the line starts with '7')"),
    ("train.txt", "\n  \n", "train.txt: the list is empty"),
    ("train.txt", None, "train.txt: file not found"),
    ("labels.txt", "cat 0\ndog 2\n", "labels.txt:2: class index '2' should be 1"),
    ("labels.txt", "cat 0\ndog\n", "labels.txt:2: expected 'class name INDEX', got 'dog'"),
    ("labels.txt", "cat 0\nbig dog one\n", "labels.txt:2: class index 'one' should be 1"),
    ("labels.txt", "cat 0\ncat 1\n", "labels.txt:2: class name 'cat' appears twice"),
    ("labels.txt", "\n", "labels.txt: no class names"),
])
def test_bad_list_file_names_file_line_and_value(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    one_line_error(lambda: read_labels(path) if name == "labels.txt" else read_split(path, 3), str(path), needle)


@pytest.mark.parametrize("dataset, needles", [
    ("voc-lt", ["sha256", "is not that of the published voc_labels.txt"]),  # the pinned checksum, first
    ("synth-voc-lt", ["19 classes", "synth-voc-lt has 20"])])  # by its class count, not by a later list line
def test_labels_with_19_classes_are_named(env, reference_run, tmp_path, dataset, needles):
    """The VOC class names but the last in a list folder's labels.txt: hand-made voc-lt lists, or an edited
    generated set."""
    folder = tmp_path / SMOKE_DATA
    folder.mkdir()
    for name in ("train.txt", "test.txt", "labels.txt", "GENERATOR.json"):  # the images are not needed
        shutil.copy(Path(env["CPRFL_CACHE"]) / "synthetic" / SMOKE_DATA / name, folder / name)
    labels = folder / "labels.txt"
    labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:19]))
    one_line_error(lambda: load_benchmark("voc-lt", list_dir=folder, download=False) if dataset == "voc-lt" else
                   load_benchmark("synth-voc-lt", data_root=tmp_path, synthetic_options={"image_size": 32, "limit": 300}),
                   str(labels), *needles)


def test_split_list_with_another_checksum_is_named_and_left_alone(shared_data, tmp_path):
    """The published lists with a label removed from a train line: named, neither deleted nor changed (read_split
    itself never checks sums: a hand-edited list still parses)."""
    shutil.copytree(shared_data / "voc_lt", tmp_path / "lists")
    train = tmp_path / "lists" / "train.txt"
    train.write_text(train.read_text().replace(" 14 4 19", " 14 4", 1))
    before = train.read_bytes()
    message = one_line_error(lambda: fetch_split_lists("voc-lt", list_dir=tmp_path / "lists", download=False),
                             f"{train}: sha256", "is not that of the published voc_lt_train.txt",
                             "replace it with the published file")
    assert "delete" not in message and train.read_bytes() == before
    assert len(read_split(train, 20)) == 1142


# ================================================================ semantics


@pytest.mark.parametrize("stored, needles", [("other class names", ["'car'", "delete the file"]),
                                            ("other dimension", ["(dim 32)", "delete the file"]),
                                            ("unreadable", ["unreadable embedding cache", "delete it"])])
def test_cached_embeddings_that_disagree_with_the_run(tmp_path, monkeypatch, stored, needles):
    from cprfl_lib.semantics import encode_classes

    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path))
    names = ["cat", "dog", "bus"]
    emb = encode_classes("clip-tiny", names)  # random weights, cached
    (file,) = (tmp_path / "embeddings").glob("clip-tiny-*.pt")
    payload = torch.load(file, weights_only=True)
    if stored == "other class names":
        payload["class_names"] = ["cat", "dog", "car"]
    else:
        payload["embeddings"], payload["dim"] = emb[:, :32].clone(), 32
    torch.save(payload, file)
    if stored == "unreadable":
        file.write_bytes(b"not a torch file")
    one_line_error(lambda: encode_classes("clip-tiny", names), str(file), *needles)


def test_clip_weights_offline_fail_in_seconds(env, reference_run, tmp_path, offline):
    """HF_HUB_OFFLINE=1 and a pretrained CLIP tag: one line saying how to pass a local file; nothing written."""
    out = tmp_path / "out"
    config = smoke_config(**{"semantics.encoder": "clip-rn50", "semantics.weights": "openai", "semantics.dim": None})
    start = time.monotonic()
    one_line_error(lambda: engine.train(config, out, progress=False), "'openai'", "RN50", "weights=/path/to/")
    print(f"offline CLIP error after {time.monotonic() - start:.1f} s")  # informative, not asserted
    assert files_in(out) == []


def test_glove_file_missing_class_words_lists_them(tmp_path):
    from cprfl_lib.semantics import encode_classes

    glove = tmp_path / "glove.txt"
    glove.write_text("cat 0.1 0.2 0.3\ntraffic 0.5 0.5 0.5\ndog 0.3 0.2 0.1\n")
    message = one_line_error(lambda: encode_classes("glove", ["cat", "traffic light", "zebra", "pottedplant"], path=glove,
                                                    cache=False), str(glove), "'traffic light': light", "'zebra': zebra",
                             "potted")
    assert "'cat'" not in message


# ================================================================ checkpoints


@pytest.mark.parametrize("overrides, recipe, needles", [
    ({"optim.lr": 5e-3, "loss.params": {"reduction": "mean", "gamma_neg": 2}}, "tiny",
     ["optim.lr: 0.001 vs 0.005", "loss.params.gamma_neg: (not set) vs 2"]),  # a nested key by its dotted key
    ({"model.dim": 64}, "tiny-wide", ["model.dim: 32 vs 64", "'tiny-wide'"]),
    ({"data.dataset": "synth-coco-lt", "data.synthetic_limit": 40}, "tiny",
     ["data.dataset: 'synth-voc-lt' vs 'synth-coco-lt'"])])
def test_resume_of_a_finished_run_with_other_settings_is_refused_naming_them(run_copy, overrides, recipe, needles):
    """One line naming each differing key; config.yaml, weights.pt and every other file as they were."""
    before = record(run_copy)
    config = {**smoke_config(**overrides), "recipe": recipe}
    one_line_error(lambda: engine.train(config, run_copy, resume=True, progress=False),
                   str(run_copy / "weights.pt"), *needles)
    assert record(run_copy) == before


def test_checkpoint_whose_weights_do_not_fit_its_model(run_copy):
    from cprfl_lib.inference import load_model

    ckpt = torch.load(run_copy / "weights.pt", weights_only=True)
    ckpt["config"]["model"]["dim"] = 48  # the config no longer describes the weights
    bad = run_copy / "edited.pt"
    torch.save(ckpt, bad)
    one_line_error(lambda: load_model(bad), str(bad), "do not fit", "head.")


@pytest.mark.parametrize("cut", [0, 100, "half"])
def test_truncated_checkpoint_is_named(run_copy, cut):
    path = run_copy / "weights.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if cut == "half" else cut])
    one_line_error(lambda: load_checkpoint(path), str(path), "not a readable cprfl checkpoint", "was not loaded")
    # resuming from it says the same, and writes nothing
    before = files_in(run_copy)
    one_line_error(lambda: engine.train(smoke_config(), run_copy, resume=True, progress=False), str(path))
    assert files_in(run_copy) == before


@pytest.mark.parametrize("kind, command", [("missing", "evaluate"), ("text", "evaluate"), ("truncated", "predict")])
def test_a_file_that_is_not_a_checkpoint_is_one_line_from_evaluate_and_predict(reference_run, tmp_path, capsys, kind,
                                                                              command):
    bad = tmp_path / "checkpoint.pt"
    if kind == "text":
        bad.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        bad.write_bytes((reference_run / "weights.pt").read_bytes()[:4096])
    image = sorted((Path(os.environ["CPRFL_CACHE"]) / "synthetic" / SMOKE_DATA / "images" / "test").glob("*.jpg"))[0]
    extra = [image] if command == "predict" else []
    cli_error(run_cli(capsys, command, bad, *extra, "--device", "cpu"), str(bad),
              *(["does not exist"] if kind == "missing" else []), only=True)


class _Payload:
    """Unpickling this object calls ``Path.touch(marker)``: code from the file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["pickle", pytest.param("torch.save", marks=pytest.mark.slow)])
def test_checkpoint_that_would_run_code_is_refused_without_running_it(env, cli_cwd, tmp_path, container):
    # The payload is live: a plain unpickler runs it.
    probe = tmp_path / "probe-ran"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    marker, bad = tmp_path / "code-ran", tmp_path / "checkpoint.pt"
    payload = {"format": FORMAT, "model": _Payload(marker)}
    if container == "pickle":
        bad.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, bad)
    message = one_line_error(lambda: load_checkpoint(bad), str(bad), "not a cprfl checkpoint", "it was not loaded")
    assert "weights_only" not in message and "Re-running" not in message  # no advice to load it unsafely
    if container == "torch.save":  # and through the command (one is enough: ~10 s of imports)
        cli_error(cprfl(env, cli_cwd, "evaluate", bad), str(bad))
    assert not marker.exists(), "loading the checkpoint ran code from it"


# ================================================================ notebooks


def test_mistyped_notebook_parameter_is_rejected_by_name():
    from cprfl_repro.reproduce import check_parameters

    notebook = ROOT / "notebooks" / "04_training.ipynb"
    one_line_error(lambda: check_parameters(notebook, {"nmae": "x", "profile": "smoke"}),
                   "04_training.ipynb", "'nmae'", "name")


# ================================================================ runs


def _fake_checkout(root: Path) -> Path:
    """pyproject.toml, one notebook that writes its metrics then sleeps, and earlier results."""
    import nbformat

    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\noutput_dir = None')
    params.metadata["tags"] = ["parameters"]
    work = nbformat.v4.new_code_cell(
        "import time\nfrom cprfl_repro.context import resolve\n"
        "resolve(profile, output_dir).metrics('01_sleep', {'done': 1})\ntime.sleep(120)")
    nb.cells = [params, work]
    nb.metadata["kernelspec"] = {"name": "cprfl", "display_name": "Python (cprfl)", "language": "python"}
    nbformat.write(nb, root / "notebooks" / "01_sleep.ipynb")
    (root / "results" / "smoke").mkdir(parents=True)
    (root / "results" / "smoke" / "marker.txt").write_text("previous results\n")
    return root


def _group_empty(pgid: int, wait: float = 10) -> bool:
    """Whether every process of the group has exited (orphans are reaped by init within moments)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_interrupted_reproduce_keeps_the_previous_results(env, tmp_path):
    """SIGTERM to one `make reproduce`, SIGINT to another, while their notebook runs (both at once: the
    kernels' start-up is what takes time). Each exits non-zero with results/smoke as it was."""
    signals = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
    roots = {name: _fake_checkout(tmp_path / name) for name in signals}
    # Ctrl-C as in a terminal: a shell that starts a job in the background (a CI runner's) hands it SIGINT ignored
    procs = {name: subprocess.Popen([sys.executable, "-m", "cprfl_repro.reproduce", "--profile", "smoke"], cwd=root,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
             for name, root in roots.items()}
    stderr = {}
    try:
        deadline = time.monotonic() + 240
        waiting = set(signals)
        while waiting:  # signal each run once its notebook is running
            for name in sorted(waiting):
                assert procs[name].poll() is None, procs[name].communicate()
                if list((roots[name] / "results").glob(".smoke.*.tmp-dir/metrics/01_sleep.json")):
                    procs[name].send_signal(signals[name])
                    waiting.discard(name)
            assert time.monotonic() < deadline, f"the notebook never started in {sorted(waiting)}"
            time.sleep(0.1)
        for name, proc in procs.items():
            stderr[name] = proc.communicate(timeout=60)[1]
            assert _group_empty(proc.pid), f"{name}: a process of the interrupted run (its kernel?) still runs"
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):  # the kernel is in the process group we started
                os.killpg(proc.pid, signal.SIGKILL)
    for name, root in roots.items():
        assert procs[name].returncode != 0, stderr[name]
        assert "previous results are unchanged" in stderr[name], stderr[name][-2000:]
        assert (root / "results" / "smoke" / "marker.txt").read_text() == "previous results\n"
        assert files_in(root / "results") == ["smoke", "smoke/marker.txt"], name  # no staging or old folder


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_an_interrupted_run_resumes_to_identical_metrics(env, cli_cwd, reference_run, tmp_path, capfd, how):
    """`cprfl train` killed (SIGKILL) or stopped (SIGTERM: at a safe point, exit 130, one line) after its first
    checkpoint: the checkpoint whole, no litter; resumed, the uninterrupted run's metrics. While it lives, a second
    run into its folder is refused in one line naming the folder and the process; a killed run's lock file stays,
    and a new run (no --resume) into a copy of its folder takes the folder over with a note and replaces it.

    The reference run computed its cached features; this one reads them, so the test also checks
    that a cold and a warm feature cache give the same run.
    """
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    proc = start_train(env, cli_cwd, out, *smoke_args())
    try:
        wait_for_checkpoint(proc, out)
        one_line_error(lambda: train_here(smoke_config(**{"optim.epochs": 1}), out), str(out), "is in use",
                       f"process {proc.pid}")
        assert proc.poll() is None
        proc.send_signal(getattr(signal, how))
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # the process we started, by its id (a no-op once it has ended)
    assert not (out / "metrics.json").exists(), "the run finished before it was stopped"
    if how == "SIGTERM":
        assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
        lines = [line for line in stderr.splitlines() if line.startswith("cprfl:")]
        assert lines == ["cprfl: interrupted by SIGTERM; the run continues from its last checkpoint with --resume"]
    interrupted_at = load_checkpoint(out / "checkpoint.pt")["epoch"]  # complete, thanks to the atomic write
    assert 1 <= interrupted_at < EPOCHS
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    if how == "SIGKILL":
        assert (out / "run.lock").is_file()  # SIGKILL gives it no chance to remove it
        shutil.copytree(out, fresh)
        capfd.readouterr()
        train_here(smoke_config(**{"optim.epochs": 1}), fresh)
        err = capfd.readouterr().err
        assert f"run.lock was left by process {proc.pid}" in err and "takes the folder over" in err, err
        assert _setting(fresh, "optim.epochs") == (1, 1)
        assert load_checkpoint(fresh / "weights.pt")["config"] == smoke_config(**{"optim.epochs": 1})
        assert files_in(fresh) == ["config.yaml", "metrics.json", "predictions.npz", "summary.csv", "weights.pt"]
    capfd.readouterr()
    train_here(smoke_config(), out, resume=True, progress=True)
    assert f"from epoch {interrupted_at}" in capfd.readouterr().out
    ours, reference = (json.loads((d / "metrics.json").read_text()) for d in (out, reference_run))
    for key in ("epochs", "last_epoch", "best_on_test"):
        assert ours[key] == reference[key], key


@pytest.mark.parametrize("fault, needle", [("full disk", "only 10 MiB free"), ("unwritable", "not writable")])
def test_a_full_disk_or_an_unwritable_output_directory_is_reported_before_training(env, reference_run, tmp_path,
                                                                                   monkeypatch, fault, needle):
    from cprfl_lib.train import features

    monkeypatch.setattr(features, "extract_features", lambda *a, **k: pytest.fail("features computed"))
    usage = namedtuple("usage", "total used free")(100 * 2**20, 90 * 2**20, 10 * 2**20)
    monkeypatch.setattr(runinfo.shutil, "disk_usage", lambda path: usage)  # noticed only where the folder is writable
    (tmp_path / "a-file").write_text("")
    out = tmp_path / ("run" if fault == "full disk" else "a-file/run")
    one_line_error(lambda: engine.train(smoke_config(), out, progress=False), str(out), needle)
    assert files_in(out) == []


# ================================================================ configuration values (one validation)


@pytest.mark.parametrize("override, needle", [
    ("optim.batch_size=0", "'optim.batch_size' must be a whole number >= 1, got 0"),
    ("optim.epochs=0", "'optim.epochs' must be a whole number >= 1, got 0"),
    ("optim.lr=nan", "'optim.lr' must be a finite number > 0, got nan"),
    ("optim.lr=-0.1", "'optim.lr' must be a finite number > 0, got -0.1"),
    ("optim.lr=inf", "'optim.lr' must be a finite number > 0, got inf"),
    ("optim.weight_decay=-1", "'optim.weight_decay'"),
    ("train.ema=1.5", "'train.ema' must be a finite number in (0, 1)"),
    ("model.dropout=1", "'model.dropout'"),
    ("model.heads=0", "'model.heads'"),
    ("train.threshold=0", "'train.threshold'"),
    ("data.image_size=8", "'data.image_size' must be a whole number >= 16, got 8"),
    ("data.num_workers=-1", "'data.num_workers' must be 'auto' or a whole number >= 0, got -1"),
    ("optim.grad_accum=0", "'optim.grad_accum'"),
    ("train.device=tpu", "'train.device' must be one of ['auto', 'cpu', 'cuda'], got 'tpu'"),
    ("model.backbone=vgg", "'model.backbone' must be one of"),
    ("loss.name=hinge", "'loss.name' must be one of"),
    ("loss.params={gama_neg: 2}", "loss.params ['gama_neg'] are not parameters of loss 'asl'"),
    ("loss.params={gamma_neg: -4}", "'loss.params.gamma_neg' must be a finite number >= 0 for loss 'asl', got -4"),
    ("data.data_root=5", "'data.data_root' must be a path (or a tag) as text, or null, got 5"),
    ("semantics.template=photo", "'semantics.template' must be a text holding {}"),
    ("optim.schedule_epochs=1", "optim.schedule_epochs (1) must be at least optim.epochs (6)"),
    ("semantics.trainable=true", "semantics.trainable=true needs a CLIP encoder"),
    ("data.synthetic_limit=0", "'data.synthetic_limit' must be a whole number >= 1 or null, got 0"),
])
def test_a_bad_value_is_one_line_before_anything_is_built(tmp_path, override, needle):
    out = tmp_path / "run"
    one_line_error(lambda: engine.train(load_recipe("tiny", [*smoke_args(), override]), out, progress=False), needle)
    assert not out.exists()


def test_a_bad_value_through_make_reproduce(tmp_path):
    """`make reproduce`'s overrides refuse the same values in the same words (the command's words:
    test_a_bad_loss_parameter_is_refused_before_the_cache_is_touched)."""
    from cprfl_repro.context import resolve

    ctx = resolve("smoke", tmp_path / "out", tmp_path / "work", overrides=["optim.lr=-1"])
    one_line_error(lambda: ctx.recipe("tiny"), "'optim.lr' must be a finite number > 0, got -1")
    one_line_error(lambda: resolve("smoke", tmp_path / "out", overrides=["optim.lerning_rate=1"]),
                   "unknown configuration key 'optim.lerning_rate'")


def test_divergence_names_the_epoch_the_step_and_the_setting(env, tmp_path):
    config = smoke_config(**{"optim.lr": 1e6, "optim.epochs": 3})
    message = one_line_error(lambda: engine.train(config, tmp_path / "run", progress=False), "training diverged at epoch",
                             "optimizer step", "lr ", "lower optim.lr")
    assert "NaN" in message or "inf" in message


# ================================================================ caches keyed by content


def test_replaced_images_miss_the_features_cache_and_the_finished_run(env, reference_run, tmp_path):
    """Other images under the same names (with the old times): new features, and the run store retrains."""
    from cprfl_lib.train import features
    from cprfl_repro import studies

    data = tmp_path / "data"
    shutil.copytree(Path(env["CPRFL_CACHE"]) / "synthetic" / SMOKE_DATA, data / SMOKE_DATA)
    config = smoke_config(**{"data.data_root": str(data), "optim.epochs": 1})
    run_dir = studies.run_dir_for(config, tmp_path / "store")
    first = studies.run_once(config, run_dir)
    calls = []
    real = features.extract_features
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
        assert studies.run_once(config, run_dir) == first and calls == []  # nothing changed: reused
        for path in sorted((data / SMOKE_DATA / "images" / "test").glob("*.jpg"))[:40]:
            stat = path.stat()
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same time stamp
        studies._inputs_memo.clear()
        again = studies.run_once(config, run_dir)
    assert calls, "the replaced test images were not extracted again"
    assert again["last_epoch"] != first["last_epoch"]


def test_a_weights_file_replaced_with_its_old_time_misses_the_embeddings_cache(tmp_path, monkeypatch):
    from cprfl_lib import semantics
    from cprfl_lib.semantics.clip import load_clip

    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "tiny-openai.bin"
    torch.save(load_clip("clip-tiny", None, seed=1).state_dict(), weights)
    a = semantics.encode_classes("clip-tiny", ["cat", "dog"], weights=weights)
    stat = weights.stat()
    torch.save(load_clip("clip-tiny", None, seed=2).state_dict(), weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    b = semantics.encode_classes("clip-tiny", ["cat", "dog"], weights=weights)
    assert not torch.allclose(a, b) and len(list((tmp_path / "cache" / "embeddings").glob("*.pt"))) == 2


def test_the_features_key_holds_the_backbone_weights(tmp_path):
    """A random-weight backbone (the tiny recipe's) is keyed by its weights: a run of another seed (other weights)
    does not read the features of the first. A backbone weights file replaced under its old time: keyed anew."""
    from types import SimpleNamespace

    import torchvision

    from cprfl_lib import digest
    from cprfl_lib.backbones import build_backbone
    from cprfl_lib.train.features import features_key

    dataset = MultiLabelImageDataset(tmp_path, split_of(write_images(tmp_path, 2)), PREP)

    def key(seed: int, name: str = "tiny", weights: Path | None = None) -> str:
        torch.manual_seed(seed)
        return features_key(SimpleNamespace(backbone=build_backbone(name, weights)), dataset)

    assert key(0) == key(0) != key(1)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    first = key(0, "resnet18", weights)
    stat = weights.stat()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # other random weights
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    digest._memo.clear()
    assert key(0, "resnet18", weights) != first


def test_generated_data_from_other_code_are_made_again(tmp_path, monkeypatch):
    from cprfl_lib.data import synthetic

    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    folder = synthetic.generated_folder("synth-voc-lt", image_size=16, limit=3)
    monkeypatch.setattr(synthetic, "generator_digest", lambda: "other code")
    synthetic.generated_folder("synth-voc-lt", image_size=16, limit=3)
    assert json.loads((folder / "GENERATOR.json").read_text())["source"] == "other code"


# ================================================================ nothing written where it does not belong


def snapshot(*folders: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for f in folders if f.exists() for p in f.rglob("*")}


@pytest.mark.slow
def test_outputs_go_only_to_the_run_folder_and_the_cache(env, reference_run, tmp_path):
    """A home folder, a working folder and a data folder of the user's own: the commands write into none of
    them (only the run folder and the cache), and the data folder is never written to."""
    home, work, data = tmp_path / "home", tmp_path / "work", tmp_path / "data"
    for folder in (home, work):
        folder.mkdir()
    shutil.copytree(Path(env["CPRFL_CACHE"]) / "synthetic" / SMOKE_DATA, data / SMOKE_DATA)
    (data / "VOCdevkit").mkdir()  # a real tree beside it, as a user has one
    cache = tmp_path / "cache"
    run_env = {**env, "HOME": str(home), "CPRFL_CACHE": str(cache), "TORCH_HOME": str(cache / "torch"),
               "HF_HOME": str(cache / "hf")}
    before = snapshot(home, work, data)
    run = tmp_path / "run"
    done = cprfl(run_env, work, "train", "--recipe", "tiny", "--data-root", data, "--output-dir", run, "optim.epochs=1")
    assert done.returncode == 0, done.stderr[-2000:]
    image = sorted((data / SMOKE_DATA / "images" / "test").glob("*.jpg"))[0]
    for args in (("evaluate", run, "--data-root", data), ("predict", run, image, "--top-k", "2"),
                 ("data", "check", "--dataset", "synth-voc-lt", "--data-root", data / SMOKE_DATA, "--deep"),
                 ("recipes", "tiny"), ("embed", "--encoder", "randn", "--dim", "8")):
        done = cprfl(run_env, work, *args)
        assert done.returncode in (0, 2), done.stderr[-2000:]
    # generated data never go into a folder the user named: the real tree is refused, not filled
    done = cprfl(run_env, work, "train", "--recipe", "tiny", "--data-root", data / "VOCdevkit", "--output-dir",
               tmp_path / "run2")
    cli_error(done, "holds no generated synth-voc-lt", "drop --data-root")
    assert snapshot(home, work, data) == before
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_honour_the_umask(tmp_path, umask):
    from cprfl_lib import io

    before = os.umask(umask)
    try:
        importlib.reload(io)  # the umask is read once, at import
        io.atomic_write_text(tmp_path / "table.md", "x")
        io.atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "weights.pt")
    finally:
        os.umask(before)
        importlib.reload(io)
    for name in ("table.md", "weights.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ================================================================ interrupted and killed


def test_a_read_only_cache_is_one_line(env, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        monkeypatch.setenv("CPRFL_CACHE", str(cache))
        if os.access(cache, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        one_line_error(lambda: engine.train(smoke_config(), tmp_path / "run", progress=False), str(cache),
                       "set CPRFL_CACHE")
    finally:
        cache.chmod(0o755)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    from cprfl_lib import io

    target = tmp_path / "checkpoint.pt"
    io.atomic_torch_save({"epoch": 1}, target)
    monkeypatch.setattr(torch, "save", mock.Mock(side_effect=OSError(28, "No space left on device")))
    one_line_error(lambda: io.atomic_torch_save({"epoch": 2}, target), str(target), "disk is full", "intact")
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_sigterm_stops_a_study_and_its_workers(env, cli_cwd, tmp_path):
    """SIGTERM to a process training a study in two worker processes: it exits (130, one line) within seconds and
    its workers stop with it, instead of training their runs to the end first."""
    script = tmp_path / "study.py"
    script.write_text(
        "import sys\n"
        "from cprfl_lib.errors import run_command\n"
        "from cprfl_repro.studies import run_study\n"
        "variants = {f'tau={t}': {'model.tau': t} for t in (0.25, 0.5, 1.0, 2.0)}\n"
        f"job = lambda: run_study('s', 'tiny', variants, [0], {str(tmp_path / 'runs')!r}, "
        "{'optim.epochs': 400, 'train.max_steps_per_epoch': None}, progress=True, workers=2)\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(run_command('study', job))\n")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=cli_cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(workers := [c for c in psutil.Process(proc.pid).children() if _running(c)]) < 2 or \
                not list((tmp_path / "runs").rglob("config.yaml")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the workers never started training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    # the one line; Python's resource tracker may add its note on a queue lock of the stopped pool
    ours = [line for line in stderr.strip().splitlines() if line.startswith("study:")]
    assert ours == ["study: interrupted by SIGTERM"], stderr[-2000:]
    time.sleep(1)
    alive = [w.pid for w in workers if _running(w)]
    assert not alive, f"worker processes {alive} outlived the study"
    assert not list((tmp_path / "runs").rglob("metrics.json"))  # nothing trained to the end after the signal


# ================================================================ the same inputs, the same numbers (issue 19)
# Caches that do not change the results, one configuration per run folder, one writer at a time.

TINY = {"train.deterministic": True, "optim.epochs": 2, "train.max_steps_per_epoch": 2, "data.synthetic_limit": 60,
        "semantics.encoder": "clip-tiny", "semantics.weights": None, "semantics.dim": None}  # clip-tiny: cached


def same_predictions(a: Path, b: Path) -> bool:
    """The predictions.npz of runs ``a`` and ``b`` bit for bit: the same arrays, the same bytes."""
    with np.load(a / "predictions.npz") as x, np.load(b / "predictions.npz") as y:
        return x.files == y.files and all(x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k])
                                          for k in x.files if k != "class_names")


def entries(cache: Path) -> dict[str, list[str]]:
    """The cache's entries by kind (lock files would show too)."""
    return {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(cache.iterdir()) if d.is_dir()}


@pytest.mark.filterwarnings("ignore:no positive image")  # 60 images leave some classes out of a split
@pytest.mark.parametrize("backbone", ["trained", "frozen"])
def test_a_cold_and_a_warm_cache_give_identical_predictions(tmp_path, monkeypatch, backbone):
    """The same run on a cold cache (it fills it) and on the warm one (it reads it): bit-identical predictions.
    A trained backbone reads generated data, class embeddings and decoded images; a frozen one backbone features
    instead of decoded images. (The decoded-image cache's loader drew its seed from the global generator: the
    cold run's dropout differed.)"""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CPRFL_CACHE", str(cache))
    config = load_recipe("tiny", {**TINY, "model.freeze_backbone": backbone == "frozen"})
    train_here(config, tmp_path / "cold")
    filled = entries(cache)
    used = {"synthetic", "embeddings", "features" if backbone == "frozen" else "decoded"}
    assert used <= {kind for kind, names in filled.items() if names}, filled
    assert not [n for names in filled.values() for n in names if n.endswith(".lock")], filled
    train_here(config, tmp_path / "warm")
    assert entries(cache) == filled  # read, not made again
    assert same_predictions(tmp_path / "cold", tmp_path / "warm")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:no positive image")
def test_two_runs_filling_one_cold_cache_at_once_give_identical_predictions(env, cli_cwd, tmp_path, monkeypatch):
    """Two `cprfl train` of one command started together on a cold cache (generated data, embeddings, decoded
    images): both finish, with the predictions of a later run on the warm cache, bit for bit."""
    run_env = {**env, "CPRFL_CACHE": str(tmp_path / "cache")}
    args = as_args({**TINY, "model.freeze_backbone": False})
    procs = [start_train(run_env, cli_cwd, tmp_path / f"run{i}", *args) for i in (0, 1)]
    try:
        done = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()  # the processes we started, by their ids (a no-op once they have ended)
    for p, (_, stderr) in zip(procs, done):
        assert p.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert same_predictions(tmp_path / "run0", tmp_path / "run1")
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    train_here(load_recipe("tiny", {**TINY, "model.freeze_backbone": False}), tmp_path / "warm")
    assert same_predictions(tmp_path / "run0", tmp_path / "warm")


def test_a_finished_run_resumed_is_kept_as_it_is(run_copy, capsys):
    """`cprfl train --resume optim.lr=5e-3 ...` on a finished run: exit 2, one line naming the key. --resume with a
    setting that cannot change the results changed: its metrics, and not one file written (no re-evaluation
    rewriting its record); only what a SIGKILL during a checkpoint save leaves (a temporary file of a dead writer)
    goes, a live writer's file stays."""
    from cprfl_lib import io

    before = record(run_copy)
    line = cli_error(run_cli(capsys, "train", "--recipe", "tiny", "--output-dir", run_copy, "--resume",
                             *smoke_args(**{"optim.lr": "5e-3"})), "optim.lr: 0.001 vs 0.005", only=True)
    assert "loss.params" not in line
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run_copy / f".checkpoint.pt.{io._HOST}-{dead.pid}.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = run_copy / f".checkpoint.pt.{io._HOST}-{os.getpid()}.efgh5678.tmp"
    live.write_bytes(b"someone is writing")
    metrics = engine.train(smoke_config(**{"data.num_workers": 0}), run_copy, resume=True, progress=False)
    assert metrics == json.loads((run_copy / "metrics.json").read_text())
    assert not stale.exists() and live.exists()
    live.unlink()
    assert record(run_copy) == before


def test_an_interrupted_run_resumes_only_with_its_own_settings(env, reference_run, tmp_path):
    """A run stopped after epoch 1: resuming it with optim.lr=5e-3 is refused (checkpoint and config.yaml as they
    were); with data.num_workers changed (it cannot change the results) it resumes, the change is recorded in
    resumes.json, and the run ends with the uninterrupted run's metrics."""
    out = tmp_path / "run"
    train_killed_after_one_epoch(smoke_config(), out)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    before = record(out)
    one_line_error(lambda: engine.train(smoke_config(**{"optim.lr": 5e-3}), out, resume=True, progress=False),
                   str(out / "checkpoint.pt"), "optim.lr: 0.001 vs 0.005")
    assert record(out) == before
    metrics = train_here(smoke_config(**{"data.num_workers": 0}), out, resume=True)
    (entry,) = json.loads((out / "resumes.json").read_text())
    assert entry["from_epoch"] == 2 and entry["changed"] == {"data.num_workers": {"was": "auto", "now": 0}}
    assert metrics["last_epoch"] == json.loads((reference_run / "metrics.json").read_text())["last_epoch"]
    assert load_checkpoint(out / "weights.pt")["config"] == smoke_config(**{"data.num_workers": 0})


def _setting(run: Path, key: str) -> tuple:
    """A setting (its dotted key) in a finished run's config.yaml and in its weights.pt."""
    import yaml

    section, name = key.split(".")
    return (yaml.safe_load((run / "config.yaml").read_text())[section][name],
            load_checkpoint(run / "weights.pt")["config"][section][name])


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder_leave_one_consistent_run(env, cli_cwd, reference_run, tmp_path):
    """Two `cprfl train` (optim.lr 1e-3 and 5e-3) started together into one folder: each finishes or is refused in
    one line naming the folder; the folder then holds one run: config.yaml, weights.pt and metrics of the same lr."""
    out = tmp_path / "run"
    procs = {lr: start_train(env, cli_cwd, out, *smoke_args(**{"optim.lr": lr})) for lr in ("1e-3", "5e-3")}
    try:
        done = {lr: p.communicate(timeout=300) for lr, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    finished = []
    for lr, p in procs.items():
        if p.returncode == 0:
            finished.append(float(lr))
        else:
            cli_error(subprocess.CompletedProcess(p.args, p.returncode, *done[lr]), str(out), "is in use")
    assert finished, "neither run finished"
    lr = _setting(out, "optim.lr")
    assert lr[0] == lr[1] and lr[0] in finished
    assert sorted(files_in(out)) == ["config.yaml", "metrics.json", "predictions.npz", "summary.csv", "weights.pt"]


def test_a_bad_loss_parameter_is_refused_before_the_cache_is_touched(tmp_path, monkeypatch, capsys):
    """loss.params checked per loss by its dotted key, by the command and by the library, before a file is written
    (the cache is empty, no run folder)."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    monkeypatch.setenv("CPRFL_CACHE", str(cache))
    line = cli_error(run_cli(capsys, "train", "--recipe", "tiny", "--output-dir", out, "loss.params={reduction: avg}"),
                     only=True)
    assert line.startswith("cprfl: error: configuration key 'loss.params.reduction' must be one of ['sum', 'mean', "
                           "'batchmean']"), line
    config = smoke_config()
    config["loss"]["params"] = {"gamma_neg": -4}  # past load_recipe: the engine validates again
    one_line_error(lambda: engine.train(config, out, progress=False), "'loss.params.gamma_neg' must be a finite "
                   "number >= 0", "got -4")
    assert files_in(cache) == [] and not out.exists()


def test_predict_top_k_beyond_the_classes_says_so(reference_run, capsys):
    image = sorted((Path(os.environ["CPRFL_CACHE"]) / "synthetic" / SMOKE_DATA / "images" / "test").glob("*.jpg"))[0]
    code, out, err = run_cli(capsys, "predict", reference_run, image, "--top-k", "1000", "--device", "cpu")
    assert code == 0 and err.strip().splitlines() == [
        "cprfl: note: --top-k 1000 is more than the model's 20 classes; all 20 are listed"], err
    assert len(out.strip().splitlines()) == 1 + 20
