"""The layer contract of the code base: imports only run downwards, and no module imports itself back.

Read top to bottom, a layer may import any layer below it and its own siblings, never one above::

    cli -> commands -> study/report -> train/lr_find/bench -> feed -> prepare/loaders
        -> store/step/models/recipes/weights/augment/metrics -> data -> errors/io/config/vocabulary/...

Every import counts, including the ones inside functions (the code imports heavy libraries lazily), so
the check reads the source with ``ast`` rather than importing it. Modules are named as installed:
``loaders/`` is ``cxr_fast.loaders`` and ``bench/`` is ``cxr_fast.bench`` (pyproject's ``package-dir``).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"cxr_fast": REPO / "cxr_fast", "cxr_fast.loaders": REPO / "loaders", "cxr_fast.bench": REPO / "bench"}

# Highest first; a module belongs to the first layer with an entry that is it or a package above it.
LAYERS: list[tuple[str, ...]] = [
    ("cxr_fast.cli", "cxr_fast.__main__"),
    ("cxr_fast.commands",),
    ("cxr_fast.study", "cxr_fast.report", "cxr_fast.executors"),
    ("cxr_fast.train", "cxr_fast.lr_find", "cxr_fast.bench"),
    ("cxr_fast.feed",),
    ("cxr_fast.prepare", "cxr_fast.loaders"),
    ("cxr_fast.store", "cxr_fast.step", "cxr_fast.models", "cxr_fast.recipes", "cxr_fast.weights",
     "cxr_fast.augment", "cxr_fast.augment_cpu", "cxr_fast.metrics"),
    ("cxr_fast.data",),
    ("cxr_fast.errors", "cxr_fast.io", "cxr_fast.config", "cxr_fast.vocabulary", "cxr_fast.runtime",
     "cxr_fast.paths", "cxr_fast.parallel", "cxr_fast.paper_results", "cxr_fast.progress", "cxr_fast"),
]


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            if "results" in path.relative_to(folder).parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            out[name] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (``from a import b`` counts ``a.b`` when that
    is a module, else ``a``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _layer(module: str) -> int:
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if entry == "cxr_fast" and module != "cxr_fast":
                continue  # the bare package means its __init__ only
            if module == entry or module.startswith(entry + ".") or module.startswith(entry + "_"):
                return i
    raise AssertionError(f"{module} is in no layer; add it to LAYERS in tests/test_layers.py")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer():
    for module in _graph():
        _layer(module)


def test_no_import_runs_upwards():
    upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
              for m, deps in _graph().items() for d in sorted(deps)
              if _layer(d) < _layer(m) and not (m.startswith(d + ".") and d != "cxr_fast")]
    assert upward == [], "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own submodules is not a cycle of the code's design.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == [], cycles


def test_the_check_sees_lazy_imports(tmp_path):
    # An import inside a function is an import: the heavy ones are all lazy, so a check that skipped
    # them would pass a tangled tree.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cxr_fast.study import run_study\n    import cxr_fast.train\n")
    assert _imports(module, {"cxr_fast.study", "cxr_fast.train"}) == {"cxr_fast.study", "cxr_fast.train"}
