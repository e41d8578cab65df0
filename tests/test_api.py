"""The public API of ``cprfl_lib``: the README's example as written, every name of ``__all__``, the factories' checks."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import cprfl_lib
from cprfl_lib.errors import CprflError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The python block under "## Use the library in your own code"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use the library in your own code"):]
    return re.search(r"```python\n(.*?)```", section[:section.index("\n## ", 3)], re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """In this process (torch is loaded already: seconds saved), with the random state given back afterwards."""
    import torch

    example = tmp_path / "example.py"
    example.write_text(readme_example())
    monkeypatch.chdir(tmp_path)
    with torch.random.fork_rng(devices=[]):
        runpy.run_path(str(example), run_name="__main__")
    loss, mean_ap = re.fullmatch(r"loss (\S+), mAP (\S+)\n", capsys.readouterr().out).groups()
    assert float(loss) > 0 and 0 < float(mean_ap) <= 100
    assert list(tmp_path.iterdir()) == [example]  # nothing written beside it


def test_importing_the_library_loads_neither_torch_nor_numpy():
    code = "import sys, cprfl_lib; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout == "[]\n", done.stderr[-2000:]


def test_every_name_in_all_resolves():
    assert len(set(cprfl_lib.__all__)) == len(cprfl_lib.__all__)
    for name in cprfl_lib.__all__:
        assert getattr(cprfl_lib, name) is not None, name
    assert set(cprfl_lib.__all__) <= set(dir(cprfl_lib))
    with pytest.raises(AttributeError, match="no attribute 'create_modle'"):
        cprfl_lib.create_modle  # noqa: B018


def test_create_model_takes_model_keys_and_overrides_and_checks_them():
    from cprfl_lib.model import LinearHead

    names = ["a", "b", "c"]
    model, preprocess = cprfl_lib.create_model("tiny", class_names=names, head="linear",
                                               overrides=["data.image_size=40"])
    assert isinstance(model.head, LinearHead) and preprocess.image_size == 40
    with pytest.raises(CprflError, match="unknown configuration key 'model.dimm'"):
        cprfl_lib.create_model("tiny", class_names=names, dimm=8)
    with pytest.raises(CprflError, match="unknown recipe 'smoke'"):
        cprfl_lib.create_model("smoke", class_names=names)


def test_create_loss_checks_its_parameters_as_a_recipe_does():
    assert cprfl_lib.create_loss("asl", gamma_neg=2.0).gamma_neg == 2.0
    with pytest.raises(CprflError, match=r"\['gamma_nge'\] are not parameters of loss 'asl'"):
        cprfl_lib.create_loss("asl", gamma_nge=2.0)
    with pytest.raises(CprflError, match="'loss.params.clip' must be"):
        cprfl_lib.create_loss("asl", clip=2.0)
    with pytest.raises(CprflError, match="training counts"):
        cprfl_lib.create_loss("db_focal")
    assert cprfl_lib.create_loss("db_focal", train_counts=[5, 50, 200], num_train=300, family="voc") is not None


def test_train_recipe_and_evaluate_are_the_engine_and_inference_with_the_recipe_resolved(monkeypatch, tmp_path):
    from cprfl_lib import inference
    from cprfl_lib.train import engine

    seen = {}
    monkeypatch.setattr(engine, "train", lambda config, out, resume, progress: seen.update(config=config, out=out,
                                                                                          resume=resume) or {"ok": 1})
    assert cprfl_lib.train_recipe("tiny", tmp_path, {"optim.lr": 0.5}, resume=True) == {"ok": 1}
    assert seen["config"]["recipe"] == "tiny" and seen["config"]["optim"]["lr"] == 0.5 and seen["resume"] is True
    config = seen["config"]
    assert cprfl_lib.train_recipe(config, tmp_path, ["train.seed=4"]) == {"ok": 1}
    assert seen["config"]["train"]["seed"] == 4 and config["train"]["seed"] != 4  # the caller's configuration is kept
    with pytest.raises(CprflError, match="optim.lrr"):
        cprfl_lib.train_recipe("tiny", tmp_path, {"optim.lrr": 0.5})
    monkeypatch.setattr(inference, "evaluate_checkpoint", lambda run, **kw: {"run": run, **kw})
    assert cprfl_lib.evaluate(tmp_path, data_root="d")["data_root"] == "d"
