"""Packaging contracts: the two dependency lists agree, the console script and the Jupyter kernel
are installed into the environment that runs the tests, and CI runs the README's test command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement  # a dependency of pytest itself
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "cprfl"
COMMANDS = ("recipes", "data", "embed", "train", "evaluate", "predict")


def _normalise(requirement: str) -> tuple[str, str]:
    """(canonical name, specifier) so that spelling and spacing differences do not count."""
    req = Requirement(requirement)
    return canonicalize_name(req.name), str(SpecifierSet(str(req.specifier)))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _conda() -> tuple[list[str], list[str]]:
    """(conda-level entries, pip-section entries) of environment.yml."""
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = [item for d in deps if isinstance(d, dict) for item in d.get("pip", [])]
    return conda, pip


def _makefile() -> str:
    return (ROOT / "Makefile").read_text()


def _all_dependencies() -> list[str]:
    project = _pyproject()
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def test_environment_yml_lists_the_pyproject_dependencies():
    ours = {_normalise(r) for r in _all_dependencies()}
    conda, pip = _conda()
    theirs = {_normalise(r) for r in pip}
    assert len(theirs) == len(pip), "environment.yml lists a pip requirement twice"
    assert theirs == ours, (f"only in environment.yml: {sorted(theirs - ours)}; "
                            f"only in pyproject.toml: {sorted(ours - theirs)}")
    # Anything conda installs besides python and pip would be a dependency pyproject.toml lacks.
    extra = {re.split(r"[=<>!~ ]", c, maxsplit=1)[0] for c in conda} - {"python", "pip"}
    assert not extra, f"environment.yml installs {sorted(extra)} outside the pip section"


def test_torch_and_torchvision_are_pinned_exactly_in_both():
    for where, reqs in (("pyproject.toml", _pyproject()["dependencies"]), ("environment.yml", _conda()[1])):
        specs = dict(_normalise(r) for r in reqs)
        assert specs.get("torch") == "==2.14.1", f"{where}: torch is {specs.get('torch')!r}"
        assert specs.get("torchvision") == "==0.29.1", f"{where}: torchvision is {specs.get('torchvision')!r}"


def test_conda_python_agrees_with_requires_python():
    conda, _ = _conda()
    pythons = [c for c in conda if re.split(r"[=<>!~ ]", c, maxsplit=1)[0] == "python"]
    assert pythons == ["python=3.11"], f"environment.yml python entry: {pythons}"
    requires = _pyproject()["requires-python"]
    spec = SpecifierSet(requires)
    # conda's python=3.11 means any 3.11.x: requires-python must take all of them and nothing else.
    assert all(v in spec for v in ("3.11.0", "3.11.7", "3.11.15")), requires
    assert not any(v in spec for v in ("3.10.14", "3.12.0", "3.13.1")), requires
    assert f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}" in spec


def test_console_script_help_lists_every_command():
    script = Path(sys.executable).parent / "cprfl"
    assert script.is_file(), f"console script {script} missing: run `make env` (pip install -e .)"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT.parent)
    assert done.returncode == 0, done.stderr
    listed = set(re.findall(r"^ {2,}(\w+) ", done.stdout, re.M))
    assert set(COMMANDS) <= listed, f"missing from `cprfl --help`: {sorted(set(COMMANDS) - listed)}"


def test_cprfl_kernel_runs_this_environments_python(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # the lookup would create ~/.ipython
    manager = KernelSpecManager()
    specs = manager.find_kernel_specs()
    assert KERNEL in specs, f"kernel {KERNEL!r} not registered (found {sorted(specs)}); run `make env`"
    argv = manager.get_kernel_spec(KERNEL).argv
    python = Path(argv[0])
    assert python.is_absolute(), f"kernel {KERNEL!r} runs {argv[0]!r}, not an absolute path"
    assert python.parent.resolve() == Path(sys.executable).parent.resolve(), (
        f"kernel {KERNEL!r} ({specs[KERNEL]}) runs {python}, not this environment's {sys.executable}")
    assert argv[1:].count("ipykernel_launcher") == 1 and "{connection_file}" in argv
    # The kernel's interpreter must import the installed package from outside the repository.
    done = subprocess.run([str(python), "-c", "import cprfl_lib, ipykernel; print(cprfl_lib.__file__)"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(ROOT / "cprfl_lib")


def test_makefile_and_notebooks_use_the_cprfl_kernel():
    text = _makefile()
    variables = dict(re.findall(r"^(\w+)\s*:?=\s*(\S+)\s*$", text, re.M))
    assert variables.get("KERNEL") == KERNEL
    names = re.findall(r"--nbval-kernel-name[ =](\S+)", text)
    assert names, "the Makefile does not pass --nbval-kernel-name"
    resolved = {re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), n) for n in names}
    assert resolved == {KERNEL}, f"--nbval-kernel-name resolves to {resolved}"
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        spec = json.loads(nb.read_text()).get("metadata", {}).get("kernelspec", {})
        assert spec.get("name") == KERNEL, f"{nb.name}: stored kernelspec {spec.get('name')!r}, expected {KERNEL!r}"


def test_ci_runs_make_test():
    ci = ROOT / ".ci" / "run"
    assert ci.is_file() and ci.stat().st_mode & 0o111, f"{ci} missing or not executable"
    commands = [line.strip() for line in ci.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert "make test" in commands, f"{ci} does not run `make test`: {commands}"
    assert re.search(r"^test:", _makefile(), re.M), "the Makefile has no `test:` target"


def test_readme_gives_the_two_commands():
    text = (ROOT / "README.md").read_text()
    for command in ("make test", "make reproduce"):
        assert command in text, f"README.md does not mention `{command}`"


REPRODUCTION_ONLY = ("papermill", "nbformat", "jupyter", "jupyterlab", "nbval", "pandas", "matplotlib", "seaborn",
                     "ipykernel", "pytest")


def test_the_core_declares_none_of_the_reproduction_packages():
    core = {_normalise(r)[0] for r in _pyproject()["dependencies"]}
    assert not core & set(REPRODUCTION_ONLY), sorted(core & set(REPRODUCTION_ONLY))
    assert {"papermill", "pandas", "matplotlib", "nbval"} <= {_normalise(r)[0] for r in
                                                             _pyproject()["optional-dependencies"]["repro"]}
    make = _makefile()
    assert '-e ".[repro,dev]"' in make, "make does not install the extras"


def test_importing_the_library_imports_no_reproduction_package():
    """`import cprfl_lib` and its model, losses, metrics, data, semantics and training modules, in a fresh
    interpreter: none of papermill, nbformat, jupyter, nbval, pandas or matplotlib gets imported."""
    modules = ["cprfl_lib", "cprfl_lib.model", "cprfl_lib.losses", "cprfl_lib.metrics", "cprfl_lib.backbones",
               "cprfl_lib.data.benchmarks", "cprfl_lib.data.datasets", "cprfl_lib.data.decoded",
               "cprfl_lib.data.synthetic", "cprfl_lib.semantics", "cprfl_lib.train.engine", "cprfl_lib.train.factory",
               "cprfl_lib.inference", "cprfl_lib.model_analysis", "cprfl_lib.zero_shot", "cprfl_lib.cli"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({REPRODUCTION_ONLY!r}))\nprint(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"the library imports {done.stdout.strip()}"
