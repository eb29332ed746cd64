"""Check the layer contract (``.importlinter``) with import-linter, on the tree as it is installed.

Why assemble a copy: pyproject maps ``loaders/`` to ``cxr_fast.loaders`` and ``bench/`` to ``cxr_fast.bench``
(``package-dir``). An editable install serves them through an import hook, and grimp (import-linter's graph
builder) walks the package folder on disk, so on the checkout it would see neither and pass a tree whose
loaders import upwards. A copy laid out as the wheel lays it out is what import-linter can read whole.

import-linter sees every ``import`` statement, lazy (inside a function) and relative ones included; it does not
see a module named in a string for ``importlib`` (the CLI's command table, the loader registry), so
``string_imports`` reads those and ``tests/test_layers.py`` holds them to the same layer order.

    python tests/layer_contract.py        # what .ci/run runs: import-linter's report, exit 1 if broken
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".importlinter"
ROOT = "cxr_fast"


def package_dirs(repo: Path = REPO) -> dict[str, str]:
    """pyproject's ``package-dir`` mapping (package -> folder), read from the file so the copy follows it."""
    text = (repo / "pyproject.toml").read_text(encoding="utf-8")
    line = re.search(r"^package-dir\s*=\s*\{(.*)\}\s*$", text, flags=re.M)
    if line is None:
        raise AssertionError("pyproject.toml has no [tool.setuptools] package-dir line")
    return dict(re.findall(r'"([\w.]+)"\s*=\s*"([\w./-]+)"', line.group(1)))


def assemble(dest: Path, repo: Path = REPO) -> Path:
    """Copy the source into ``dest`` as installed: ``dest/cxr_fast/loaders`` is ``loaders/``, and so on."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in sorted(package_dirs(repo).items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*package.split("."))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(repo / folder, target, ignore=ignore)
    return dest


def lint(tree: Path, config: Path = CONFIG) -> subprocess.CompletedProcess:
    """import-linter's ``lint-imports`` over an assembled tree (its own process, so the tree is what it imports)."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1], " \
           "no_cache=True))"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", code, str(config)], cwd=tree, env=env, capture_output=True,
                          text=True)


def layers(config: Path = CONFIG) -> list[list[str]]:
    """The layers of the contract, highest first, each a list of ``cxr_fast.<name>`` siblings."""
    parser = configparser.ConfigParser()
    parser.read(config, encoding="utf-8")
    section = next(s for s in parser.sections() if parser[s].get("type") == "layers")
    rows = [row.strip() for row in parser[section]["layers"].splitlines() if row.strip()]
    return [[f"{ROOT}.{name.strip()}" for name in re.split(r"[|:]", row)] for row in rows]


def layer_of(module: str, order: list[list[str]]) -> int | None:
    for i, siblings in enumerate(order):
        if any(module == s or module.startswith(s + ".") for s in siblings):
            return i
    return None


def modules(tree: Path) -> dict[str, Path]:
    """Every module of the assembled tree by its dotted name."""
    out: dict[str, Path] = {}
    for path in (tree / ROOT).rglob("*.py"):
        parts = list(path.relative_to(tree).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def string_imports(tree: Path) -> list[tuple[str, str]]:
    """(module, target): project modules named by a string literal, or by the constant start of an f-string
    (``f"cxr_fast.loaders.{name}"`` names the package ``cxr_fast.loaders``), that import-linter cannot see."""
    known = modules(tree)
    found: list[tuple[str, str]] = []
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                text = str(node.values[0].value).rstrip(".")
            if text and text in known and text != name:
                found.append((name, text))
    return found


def upward_string_imports(tree: Path, config: Path = CONFIG) -> list[str]:
    """String imports that run upwards, or across independent siblings, by the contract's layer order."""
    order = layers(config)
    bad = []
    for module, target in string_imports(tree):
        a, b = layer_of(module, order), layer_of(target, order)
        if a is None or b is None:
            continue  # the root package, or a module the exhaustive contract itself reports
        same_top = module.split(".")[:2] == target.split(".")[:2]
        if b < a or (b == a and not same_top):
            bad.append(f"{module} names {target} in a string (layer {a} -> layer {b})")
    return bad


def main() -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cxr-fast-layers-") as tmp:
        tree = assemble(Path(tmp))
        result = lint(tree)
        print(result.stdout, result.stderr, sep="", end="")
        strings = upward_string_imports(tree)
        for line in strings:
            print(f"string import upwards: {line}")
        return 1 if result.returncode != 0 or strings else 0


if __name__ == "__main__":
    sys.exit(main())
