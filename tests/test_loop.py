"""The researcher's loop (issue 18): the profile is a notebook's one source of settings, a named variant never writes
the reference's results, a change is shown beside the reference, and the README's "Change one setting and rerun"
examples run as written (the make commands through the Makefile, the notebook through a Jupyter kernel).

The slow tests use the smoke profile and one study (Table 2: 6 runs of a few seconds); the quick profile takes
12 minutes cold and cannot run here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import one_line_error

from cprfl_repro import context, experiments, studies
from cprfl_repro.context import read_settings
from cprfl_repro.reproduce import main, reproduce, split_list, split_overrides, variant_changes

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]"  # a difference with its 95 % interval


def readme_block(after: str, lang: str = "bash") -> str:
    """The first ```lang block after the paragraph that starts with ``after`` in the README's loop section."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Change one setting and rerun")
    section = text[start:text.index("\n## ", start + 10)]
    return re.search(rf"```{lang}\n(.*?)```", section[section.index(after):], re.S).group(1)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _env(results_root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CPRFL_RESULTS_DIR", "PROFILE", "NAME", "ONLY",
                                                             "SETTINGS", "STUDIES", "OVERRIDES")}
    return {**env, "CPRFL_RESULTS_ROOT": str(results_root)}


# ---------------------------------------------------------------- settings, overrides, names (fast)


def test_overrides_text_splits_only_where_a_key_starts():
    assert split_overrides("model.tau=1.0 loss.params={gamma_neg: 2, clip: 0.05} model.backbone_weights=/a b/ü.pth") \
        == ["model.tau=1.0", "loss.params={gamma_neg: 2, clip: 0.05}", "model.backbone_weights=/a b/ü.pth"]
    assert split_overrides("") == [] and split_list("04,05") == ["04", "05"] and split_list("04 05") == ["04", "05"]


def test_weight_files_are_inputs_and_every_other_override_a_change():
    """The paper profiles' weight files (like DATA_ROOT) are located by a plain reproduction; anything else needs NAME."""
    changes, inputs = variant_changes(["model.backbone_weights=/w/r.pth", "semantics.weights=/w/c.bin"], None, None,
                                      None)
    assert changes == {} and inputs == {"model.backbone_weights": "/w/r.pth", "semantics.weights": "/w/c.bin"}
    changes, inputs = variant_changes(["model.backbone_weights=/w/r.pth", "optim.lr=0.1"], None, ["table2"], ["05"])
    assert changes == {"overrides": {"optim.lr": 0.1}, "studies": ["table2"], "only": ["05"]}
    one_line_error(lambda: reproduce("smoke", overrides=["optim.lr=0.1"]),
                   "differs from the smoke profile (overrides) needs a name")


def test_a_settings_file_changes_entries(tmp_path):
    good = tmp_path / "my settings ü.yaml"
    good.write_text("optim: {lr: 0.002}\nloss:\n  params: {gamma_neg: 2}\nmodel.tau: 1.0\n")
    assert read_settings(good) == {"optim.lr": 0.002, "loss.params.gamma_neg": 2, "model.tau": 1.0}


def test_a_notebook_takes_its_settings_from_the_profile(tmp_path, monkeypatch):
    monkeypatch.delenv("CPRFL_RESULTS_DIR", raising=False)
    monkeypatch.setenv("CPRFL_RESULTS_ROOT", str(tmp_path / "results"))
    ctx = context.resolve("quick", work_dir=tmp_path / "runs")
    quick = context.profile_parameters("quick")
    assert ctx.notebook("05_ablations") == quick["05_ablations"]
    assert ctx.notebook("05_ablations")["recipe"] == "cpu-voc" and ctx.notebook("04_training")["seeds"] == [0, 1, 2]
    # a hand run without a name writes results/<profile>-lab/, never results/<profile>/
    assert ctx.output_dir == tmp_path / "results" / "quick-lab"
    assert not (tmp_path / "results" / "quick").exists()
    named = context.resolve("quick", work_dir=tmp_path / "runs", name="γ-test",
                            overrides={"loss": {"params": {"gamma_neg": 2}}})
    assert named.output_dir == tmp_path / "results" / "quick-γ-test" and named.changes == {"loss.params.gamma_neg": 2}
    assert named.reference().overrides == ctx.overrides and named.reference().changes == {}
    one_line_error(lambda: ctx.notebook("07_x"), "no notebook '07_x'")


def test_a_profile_with_an_unknown_setting_is_refused(monkeypatch):
    real = context._profile_file
    monkeypatch.setattr(context, "_profile_file",
                        lambda p: {"04_training": {"sedes": [0]}} if p == "quick" else real(p))
    one_line_error(lambda: context.profile_parameters("quick"), "quick.yaml: 04_training has no setting 'sedes'")


@pytest.mark.parametrize("args, needles", [
    (["--name", "x", "--settings", "{bad}"], ["bad.yaml: unknown configuration key 'optim.lerning_rate'"]),
    (["--name", "extra", "--only", "05"], ["NAME 'extra'", "'quick-extra' is a built-in profile"]),
    (["--name", "paper", "--only", "05"], ["'paper' is a built-in profile"]),
    (["--name", "x", "--only", "07"], ["ONLY: no notebook '07'"]),
    (["--only", "05"], ["needs a name"]),
    (["--name", "x", "--studies", "tabel2"], ["tabel2"]),
    (["--name", "x", "--overrides", "model.taux=1"], ["'model.taux'"]),
    (["--name", "x", "--studies", "{study}"], ["model.taux"]),
], ids=["settings-key", "name-is-quick-extra", "name-is-a-profile", "no-notebook", "no-name", "study", "override",
        "study-file-key"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, needles, tmp_path, monkeypatch, capsys):
    bad, study = tmp_path / "bad.yaml", tmp_path / "my study.yaml"
    bad.write_text("optim:\n  lerning_rate: 0.002\n")
    study.write_text("name: mine\nreference: a\nvariants:\n  a: {}\n  b: {model.taux: 1.0}\n")
    monkeypatch.setenv("CPRFL_RESULTS_ROOT", str(tmp_path / "results"))
    profile = "quick" if "extra" in args else "smoke"
    assert main(["--profile", profile, *[a.replace("{bad}", str(bad)).replace("{study}", str(study)) for a in args]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    assert not (tmp_path / "results").exists()


def test_make_passes_values_and_paths_intact(tmp_path):
    """Spaces, braces and non-ASCII characters reach the command as written (PY replaced by a script that prints its
    arguments: nothing runs)."""
    echo = tmp_path / "echo.py"
    echo.write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    where = tmp_path / "a dir ü"
    cmd = ["make", "--no-print-directory", "-s", "reproduce", f"PY={sys.executable} {echo}", "PROFILE=smoke",
           "NAME=x", "ONLY=05", f"DATA_ROOT={where}/images", f"LIST_DIR={where}/lists",
           f"SETTINGS={where}/my settings.yaml", "STUDIES=table2,tau",
           "OVERRIDES=model.tau=1.0 loss.params={gamma_neg: 2, clip: 0.05}"]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path / "results"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout.strip().splitlines()[-1])
    given = dict(zip(argv[2::2], argv[3::2]))
    assert given["--data-root"] == f"{where}/images" and given["--list-dir"] == f"{where}/lists"
    assert given["--settings"] == f"{where}/my settings.yaml" and given["--name"] == "x" and given["--only"] == "05"
    assert given["--overrides"] == "model.tau=1.0 loss.params={gamma_neg: 2, clip: 0.05}"
    assert given["--studies"] == "table2,tau"


# ---------------------------------------------------------------- the README's examples, run as written (slow)


def _reference_runs_of_table2() -> None:
    """The smoke profile's own Table 2 runs in the run store (what the variants are compared with)."""
    ctx = context.resolve("smoke", output_dir=context.cache_dir("test-loop", "out"))
    settings = ctx.notebook("05_ablations")
    plan = experiments.ablation_studies(ctx, settings["recipe"], settings["seeds"], ["table2"])
    studies.run_studies(plan, ctx.work_dir, progress=False)


def _run_block(block: str, results_root: Path) -> subprocess.CompletedProcess:
    """The README's bash block as written, in the checkout; the files it writes there (``cat > f``) removed after."""
    made = re.findall(r"cat > (\S+) <<", block)
    try:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=_env(results_root),
                              capture_output=True, text=True, timeout=900)
    finally:
        for name in made:
            (ROOT / name).unlink(missing_ok=True)


def _hand_run(notebook: Path, lines: str, results_root: Path, monkeypatch) -> str:
    """The notebook with the README's lines set in its parameters cell, run through the cprfl Jupyter kernel."""
    import nbclient
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    source = cell.source.splitlines()
    for line in lines.strip().splitlines():
        var = line.split("=", 1)[0].strip()
        index = next(i for i, s in enumerate(source) if s.startswith(f"{var} ="))
        source[index] = line
    cell.source = "\n".join(source)
    monkeypatch.delenv("CPRFL_RESULTS_DIR", raising=False)
    monkeypatch.setenv("CPRFL_RESULTS_ROOT", str(results_root))
    nbclient.NotebookClient(nb, kernel_name="cprfl", timeout=900,
                            resources={"metadata": {"path": str(notebook.parent)}}).execute()
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_one_setting_for_every_run_and_the_same_by_hand(tmp_path, monkeypatch):
    """`make reproduce PROFILE=smoke NAME=lr ONLY=05 ... SETTINGS=lr.yaml` as the README writes it leaves every other
    results folder byte-identical and writes Table 2 beside the profile's runs with intervals; notebook 05 run by
    hand through a Jupyter kernel with the README's lines gives the same tables and trains nothing."""
    results = tmp_path / "results"
    results.mkdir()
    for folder in ("quick", "smoke"):  # a reference profile's results (quick's copied as smoke's too)
        subprocess.run(["cp", "-a", str(ROOT / "results" / "quick"), str(results / folder)], check=True)
    before = _tree(results)
    _reference_runs_of_table2()
    done = _run_block(readme_block("**One setting for every run.**"), results)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    variant = results / "smoke-lr"
    assert {k: v for k, v in _tree(results).items() if not k.startswith("smoke-lr/")} == before
    manifest = json.loads((variant / "manifest.json").read_text())
    assert manifest["base_profile"] == "smoke" and manifest["name"] == "lr"
    assert manifest["changes"]["overrides"] == {"optim.lr": 0.002} and manifest["changes"]["only"] == ["05"]
    assert manifest["changes"]["studies"] == ["table2"] and set(manifest["notebooks"]) == {"05_ablations"}
    table = pd.read_csv(variant / "tables" / "table2_vs_smoke.csv")
    assert len(table) == 6 and (table["seeds"] == 1).all()
    assert table["Δ mAP [95 % CI]"].str.fullmatch(INTERVAL).all(), table
    assert table["smoke mAP"].notna().all() and (table["smoke mAP"] != table["mAP"]).any()

    out = _hand_run(ROOT / "notebooks" / "05_ablations.ipynb", readme_block("**A notebook by hand", "python"),
                    results, monkeypatch)
    assert "6 distinct runs, 6 finished earlier, 0 to train" in out, out[-2000:]
    by_hand = results / "smoke-lr-by-hand" / "tables"
    for name in ("table2_losses.csv", "table2_vs_smoke.csv"):
        assert (by_hand / name).read_text() == (variant / "tables" / name).read_text(), name
    assert {k: v for k, v in _tree(results).items() if not k.startswith("smoke-lr")} == before


@pytest.mark.slow
def test_a_new_study_from_a_yaml_file(tmp_path):
    """The README's study file through make: notebook 05 gives it the table, figure and 95 % intervals the built-in
    studies beyond the paper get, and writes nothing else (no built-in study, no other results folder)."""
    results = tmp_path / "results"
    done = _run_block(readme_block("**A new study from a YAML file.**"), results)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = results / "smoke-gamma"
    assert list(results.iterdir()) == [out]
    text = (out / "tables" / "extra_gamma_neg.md").read_text()
    assert "γ− = 2" in text and "γ− = 1" in text and re.search(INTERVAL, text)
    table = pd.read_csv(out / "tables" / "extra_gamma_neg.csv", comment="#")
    assert list(table["variant"]) == ["γ− = 4", "γ− = 2", "γ− = 1"]
    delta = table["row − γ− = 4: Δ mAP [95 % CI]"]
    assert pd.isna(delta[0]) or delta[0] == ""  # the reference row itself
    assert delta[1:].str.fullmatch(INTERVAL).all(), delta
    assert (out / "figures" / "extra_gamma_neg.png").is_file()
    assert list(json.loads((out / "metrics" / "05_ablations.json").read_text())["studies"]) == ["gamma_neg"]
    assert not [p for p in out.rglob("*") if p.is_file() and "table2" in p.name]  # only what was asked for
