"""`make reproduce`: every profile's parameters exist in the notebooks, and results are swapped in whole."""

from pathlib import Path

import pytest
from conftest import one_line_error

from cprfl_repro.context import PROFILES
from cprfl_repro.reproduce import _swap_in, execute, notebooks, profile_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_settings_are_the_notebooks(profile):
    """Every profile names existing notebooks and gives each one the settings smoke.yaml gives it, no other (a
    profile's typo is refused by name)."""
    stems = {nb.stem for nb in notebooks(ROOT)}
    params, smoke = profile_parameters(profile), profile_parameters("smoke")
    assert set(params) - {"overrides", "notebooks"} == stems
    assert set(params.get("notebooks", stems)) <= stems  # a profile's notebooks (own: 01, 02, 04, 06) exist
    for stem in stems:
        assert set(params[stem]) == set(smoke[stem]), (profile, stem)


def test_the_six_notebooks_declare_only_what_a_user_changes():
    """In order; a notebook's papermill parameters (what check_parameters lets make reproduce pass) are what a user
    changes, and the notebook reads its settings from the profile."""
    import nbformat
    import papermill

    user = {"profile", "name", "overrides", "data_root", "list_dir", "output_dir", "work_dir"}
    found = notebooks(ROOT)
    assert [nb.stem[:2] for nb in found] == ["01", "02", "03", "04", "05", "06"]
    for nb in found:
        assert set(papermill.inspect_notebook(str(nb))) == user | ({"studies"} if nb.stem == "05_ablations" else set())
        code = "\n".join(c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")
        assert f'ctx.notebook("{nb.stem}")' in code and "overrides, name)" in code


def test_execute_runs_a_notebook_with_its_parameters_and_refuses_one_it_does_not_declare(tmp_path):
    import nbformat

    cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("open('x.txt', 'w').write(str(x))")]
    notebook = tmp_path / "nb.ipynb"
    kernel = {"kernelspec": {"name": "cprfl", "display_name": "cprfl", "language": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=kernel), notebook)
    assert execute(notebook, tmp_path / "executed" / "nb.ipynb", {"x": 2}) > 0  # through the cprfl kernel
    assert (tmp_path / "x.txt").read_text() == "2" and (tmp_path / "executed" / "nb.ipynb").is_file()
    one_line_error(lambda: execute(notebook, tmp_path / "no.ipynb", {"y": 2}), "nb.ipynb: unknown parameter(s) 'y'")


def test_unknown_profile_is_rejected():
    one_line_error(lambda: profile_parameters("fast"), "'fast'")


def test_swap_in_replaces_the_whole_folder(tmp_path):
    final, staging = tmp_path / "results" / "quick", tmp_path / "results" / ".staging"
    (final / "tables").mkdir(parents=True)
    (final / "tables" / "stale.csv").write_text("old")
    (staging / "tables").mkdir(parents=True)
    (staging / "tables" / "table1.csv").write_text("new")
    _swap_in(staging, final, keep_old=False)
    assert sorted(p.name for p in (final / "tables").iterdir()) == ["table1.csv"]
    assert not staging.exists() and [p.name for p in final.parent.iterdir()] == ["quick"]


def test_quick_extra_extends_quick_and_finds_its_runs():
    from cprfl_repro.context import RUNS_OF

    quick, extra = profile_parameters("quick"), profile_parameters("quick-extra")
    assert "base" not in extra and set(extra) == set(quick)
    assert set(extra["05_ablations"]["studies"]) > set(quick["05_ablations"]["studies"])
    assert {k: v for k, v in extra["05_ablations"].items() if k != "studies"} == \
        {k: v for k, v in quick["05_ablations"].items() if k != "studies"}
    assert RUNS_OF["quick-extra"] == "quick"
