"""docs/ARCHITECTURE.md names the modules as they are: every module it names exists, every module is named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("cprfl_lib", "cprfl_repro", "tools")


def _named() -> set[str]:
    return set(re.findall(r"(?<![\w/.])((?:[a-z_]+/)*[a-z_]+\.py)\b", DOC.read_text()))


def _exists(name: str) -> bool:
    return any((base / name).is_file() for base in (ROOT, *(ROOT / p for p in PACKAGES)))


def test_every_module_the_page_names_exists():
    missing = sorted(n for n in _named() if not _exists(n))
    assert not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"


def test_every_module_is_on_the_page():
    named = _named()
    unnamed = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT / package).as_posix()
            if path.name == "__init__.py" and rel != "semantics/__init__.py" or path.name == "__main__.py":
                continue
            if rel not in named and f"{package}/{rel}" not in named:
                unnamed.append(f"{package}/{rel}")
    assert not unnamed, f"modules missing from docs/ARCHITECTURE.md: {unnamed}"


def test_every_path_the_readme_names_exists():
    """A path in backticks that starts at a top-level folder of the checkout (globs and {a,b} sets expanded)."""
    text = (ROOT / "README.md").read_text()
    tops = ("cprfl_lib/", "cprfl_repro/", "tools/", "docs/", "notebooks/", "tests/", "scripts/", ".ci/")
    missing = []
    for path in re.findall(r"`([^`\s]+)`", text):
        path = path.split(" ")[0]
        if not path.startswith(tops) or "<" in path:
            continue
        sets = re.match(r"(.*)\{([^}]*)\}(.*)", path)
        for candidate in ([sets[1] + alt + sets[3] for alt in sets[2].split(",")] if sets else [path]):
            if not any(ROOT.glob(candidate.rstrip("/"))):
                missing.append(candidate)
    assert not missing, f"README.md names paths that do not exist: {missing}"
