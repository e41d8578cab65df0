"""A study as a YAML file: the format and its validation (a user's study through notebook 05 end to end, as the README
writes it: test_loop.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_line_error

from cprfl_lib.errors import CprflError
from cprfl_repro import experiments, studies
from cprfl_repro.context import resolve

TAU = """\
name: tau_fine          # the table's name
recipe: tiny            # optional: else the notebook's recipe
reference: tau=0.5      # the row every other row is compared with
seeds: [0, 1]           # optional: else the notebook's seeds
variants:
  tau=0.25: {model.tau: 0.25}
  tau=0.5:  {model.tau: 0.5}
  tau=1:    {model: {tau: 1.0}}
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def smoke(tmp_path: Path, **overrides):
    return resolve("smoke", tmp_path / "out", tmp_path / "runs", overrides=overrides)


def test_a_study_file_is_read_and_bound_like_a_built_in_study(tmp_path, monkeypatch):
    path = write(tmp_path, TAU)
    name, study, where = experiments.load_study(str(path))
    assert name == "tau_fine" and study.recipe == "tiny" and study.seeds == (0, 1) and study.reference == "tau=0.5"
    assert study.variants["tau=1"] == {"model": {"tau": 1.0}}  # kept as written: values, never text to parse
    monkeypatch.chdir(tmp_path)  # a relative path is read from the current folder
    plan = experiments.ablation_studies(smoke(tmp_path, **{"optim.epochs": 1}), "cpu-voc", [7],
                                        ["study.yaml", "table2"])
    assert list(plan) == ["tau_fine", "table2"]
    tau, table2 = plan["tau_fine"], plan["table2"]
    assert tau.recipe == "tiny" and tau.seeds == (0, 1)  # its own recipe and seeds
    assert table2.recipe == "cpu-voc" and table2.seeds == (7,)  # the notebook's
    runs = list(tau.runs())
    assert [(v, s) for v, s, _ in runs] == [(v, s) for v in ("tau=0.25", "tau=0.5", "tau=1") for s in (0, 1)]
    assert [c["model"]["tau"] for _, s, c in runs if s == 0] == [0.25, 0.5, 1.0]
    assert all(c["optim"]["epochs"] == 1 and c["train"]["seed"] == s for _, s, c in runs)  # the context's overrides
    assert tau.compared_with == "tau=0.5" and tau.describe()["variants"]["tau=0.25"] == {"model.tau": 0.25}


def test_dotted_and_nested_overrides_are_the_same_run_and_a_missing_encoder_is_an_unavailable_row(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "encoder_status", lambda encoder, **kw: (encoder != "glove", "no GloVe file"))
    path = write(tmp_path, """\
reference: dotted
variants:
  dotted: {loss.name: asl, loss.params: {gamma_neg: 2}}
  nested: {loss: {name: asl, params: {gamma_neg: 2}}}
  empty:
  glove: {semantics.encoder: glove}
""")
    name, study, _ = experiments.load_study(str(path))
    assert name == "study" and study.recipe is None and study.seeds == ()  # the file's name; the notebook's rest
    study = experiments.ablation_studies(smoke(tmp_path), "tiny", [0], [str(path)])["study"]
    dotted, nested, empty = (study.config(v, 0) for v in ("dotted", "nested", "empty"))
    assert dotted == nested and dotted["loss"]["params"] == {"gamma_neg": 2}
    assert empty == studies.run_config("tiny", seed=0)
    assert study.variants["glove"] == studies.Unavailable("no GloVe file")
    assert [v for v, _, _ in study.runs()] == ["dotted", "nested", "empty"]


BAD = {
    "unknown key": ("reference: a\nvariants: {a: {}}\nvariant: {b: {}}\n", r"study\.yaml: unknown key 'variant'"),
    "unknown recipe key": ("reference: a\nvariants:\n  a: {}\n  b: {model.taux: 2}\n",
                           r"study\.yaml: variant 'b': unknown configuration key 'model\.taux'"),
    "unknown nested key": ("reference: a\nvariants:\n  a: {}\n  b: {model: {depth: 2, tau: 1, taux: 2}}\n",
                           r"study\.yaml: variant 'b': unknown configuration key 'model\.taux'"),
    "unknown key in a row that cannot run here": ("reference: a\nvariants:\n  a: {}\n  b: {semantics.encoder: glove, "
                                                  "semantics.paht: g.txt}\n",
                                                  r"study\.yaml: variant 'b': unknown configuration key 'semantics\.paht'"),
    "bad value": ("reference: a\nvariants:\n  a: {}\n  b: {model.tau: -1}\n",
                  r"study\.yaml: variant 'b': configuration key 'model\.tau' must be"),
    "reference not a variant": ("reference: tau=0.5\nvariants: {tau=1: {model.tau: 1.0}}\n",
                                r"study\.yaml: reference 'tau=0\.5' is not one of its variants \['tau=1'\]"),
    "no reference": ("variants: {a: {}}\n", r"study\.yaml: reference must be one variant's label"),
    "empty variants": ("reference: a\nvariants: {}\n", r"study\.yaml: variants must be a non-empty mapping"),
    "variants as a list": ("reference: a\nvariants: []\n", r"study\.yaml: variants must be a non-empty mapping"),
    "a variant as text": ("reference: a\nvariants: {a: model.tau=1}\n",
                          r"study\.yaml: variant 'a' must be a mapping of recipe overrides"),
    "seeds": ("reference: a\nseeds: [0, -1]\nvariants: {a: {}}\n", r"study\.yaml: seeds must be a list"),
    "a built-in study's name": ("name: tau\nreference: a\nvariants: {a: {}}\n",
                                r"study\.yaml: name 'tau' is a built-in study's"),
    "a name that is no file name": ("name: my study/1\nreference: a\nvariants: {a: {}}\n",
                                    r"study\.yaml: name must be letters"),
    "unknown recipe": ("recipe: quick-vcc\nreference: a\nvariants: {a: {}}\n",
                       r"study\.yaml: unknown recipe 'quick-vcc'"),
    "not YAML": ("reference: [a\n", r"study\.yaml: not valid YAML"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_study_file_is_refused_in_one_line_before_anything_runs(tmp_path, case):
    text, message = BAD[case]
    path = write(tmp_path, text)
    ctx = smoke(tmp_path)
    with pytest.raises(CprflError, match=message) as err:
        experiments.ablation_studies(ctx, "tiny", [0], ["table2", str(path)])
    assert "\n" not in str(err.value)
    assert not any(ctx.work_dir.iterdir())  # nothing trained, nothing written


def test_missing_and_repeated_study_files_are_refused(tmp_path):
    ctx = smoke(tmp_path)
    one_line_error(lambda: experiments.ablation_studies(ctx, "tiny", [0], ["nowhere/tau.yaml"]),
                   "study file nowhere/tau.yaml does not exist")
    path = write(tmp_path, TAU)
    one_line_error(lambda: experiments.ablation_studies(ctx, "tiny", [0], [str(path), str(path)]),
                   "a study named 'tau_fine' is already in the list")
