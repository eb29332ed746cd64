"""The layer contract (``.importlinter``, DESIGN.md "Layers") holds, and would fail if anything ran upwards.

import-linter checks it on the tree as installed (``tests/layer_contract.py`` assembles it), so the mapped
``cxr_fast.loaders`` and ``cxr_fast.bench`` are checked too; every planted violation below, lazy and relative
imports included, must break it. Module names in strings (``importlib``) are held to the same order here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import layer_contract as contract  # noqa: E402

REPO = contract.REPO


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return contract.assemble(tmp_path / "installed")


def _plant(tree: Path, module: str, code: str) -> Path:
    path = tree.joinpath(*module.split(".")).with_suffix(".py")
    if not path.exists():
        path = tree.joinpath(*module.split("."), "__init__.py")
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + code + "\n", encoding="utf-8")
    return path


def test_the_contract_holds_on_the_tree_as_installed(tree):
    result = contract.lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout
    assert contract.upward_string_imports(tree) == []


def test_import_linter_sees_the_mapped_packages(tree):
    # Every module under loaders/ and bench/ is in the graph import-linter analyses: it counts all files.
    mapped = [p for folder in ("cxr_fast", "loaders", "bench") for p in (REPO / folder).rglob("*.py")
              if "__pycache__" not in p.parts]
    result = contract.lint(tree)
    assert f"Analyzed {len(mapped)} files" in result.stdout


@pytest.mark.parametrize("module, code, broken", [
    # A lazy import inside a function, from the data layer up to training.
    ("cxr_fast.data.sets.nih", "def _late():\n    from cxr_fast.train import run_training\n    return run_training",
     "cxr_fast.data is not allowed to import cxr_fast.train"),
    # A relative import, from the stores up to the study.
    ("cxr_fast.stores.manifest", "def _late():\n    from ..study import grid\n    return grid",
     "cxr_fast.stores is not allowed to import cxr_fast.study"),
    # In a package mapped from another folder (loaders/ is cxr_fast.loaders): up to the study runner.
    ("cxr_fast.loaders.resident", "def _late():\n    import cxr_fast.study.runner\n",
     "cxr_fast.loaders is not allowed to import cxr_fast.study"),
    # bench/ up to the commands.
    ("cxr_fast.bench.throughput", "from cxr_fast.commands import train as _train  # noqa\n",
     "cxr_fast.bench is not allowed to import cxr_fast.commands"),
    # The cost room below training must not reach back up to it (the old cycle).
    ("cxr_fast.cost.plan", "def _late():\n    from cxr_fast.train.parts import loader_for\n",
     "cxr_fast.cost is not allowed to import cxr_fast.train"),
    # Independent siblings of one layer do not import each other.
    ("cxr_fast.report.data", "def _late():\n    from cxr_fast.study import SPEED_ONLY\n",
     "cxr_fast.report is not allowed to import cxr_fast.study"),
])
def test_a_planted_upward_import_breaks_the_contract(tree, module, code, broken):
    _plant(tree, module, code)
    result = contract.lint(tree)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout[-2000:]


def test_a_cycle_between_siblings_of_one_package_breaks_it(tree):
    # stores.prepare imports stores.files; files importing prepare back is a cycle inside one layer.
    _plant(tree, "cxr_fast.stores.files", "def _late():\n    from cxr_fast.stores import prepare\n")
    result = contract.lint(tree)
    assert result.returncode != 0 and "no cycles between sibling modules or packages, at any depth BROKEN" \
        in result.stdout


def test_a_module_outside_every_layer_breaks_it(tree):
    # Membership is written out: a new module is in no layer until .importlinter names it.
    (tree / "cxr_fast" / "newcomer.py").write_text('"""A module nobody placed."""\n', encoding="utf-8")
    result = contract.lint(tree)
    assert result.returncode != 0 and "cxr_fast.newcomer" in result.stdout


def test_a_module_named_in_a_string_is_held_to_the_same_order(tree):
    assert ("cxr_fast.cli", "cxr_fast.commands.train") in contract.string_imports(tree)  # the command table
    _plant(tree, "cxr_fast.data.sets.nih", 'def _late():\n    import importlib\n    return importlib.import_module('
                                      '"cxr_fast.study.runner")\n')
    found = contract.upward_string_imports(tree)
    assert len(found) == 1 and found[0].startswith("cxr_fast.data.sets.nih names cxr_fast.study.runner in a string")


def test_every_package_on_disk_is_installed():
    # A package missing from pyproject's list works from a checkout and vanishes from a wheel.
    import re

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    listed = set(re.findall(r'"(cxr_fast[\w.]*)"', re.search(r"^packages = \[(.*?)\]", text, re.M | re.S).group(1)))
    on_disk = set()
    for package, folder in contract.package_dirs().items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            on_disk.add(".".join([package, *rel]))
    assert listed == on_disk
