"""One place per concept: each is defined once, and everything else reads it from there.

The run's settings (``schema.run.RunConfig``), the vocabulary (optimizers, precisions, splits, architectures,
recipes, inits, loaders), the store formats (``stores.<format>.FORMAT``), byte units (``units``), the lock
(``locks.exclusive``), the precision rule (``vocabulary.resolve_precision``) and the ``loader: auto`` rule
(``cost.fit.choose_loader``). The checks read the source, so a second copy fails here the day it is written.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
from collections import defaultdict
from pathlib import Path

import pytest

from cxr_fast import vocabulary as V
from cxr_fast.schema.run import DATASET_FIELDS, GRID_FIELDS, RunConfig

REPO = Path(__file__).resolve().parents[1]
SOURCE = [p for folder in ("cxr_fast", "loaders", "bench") for p in (REPO / folder).rglob("*.py")
          if "__pycache__" not in p.parts]


@functools.lru_cache(maxsize=1)
def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8")) for p in SOURCE}


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


# ------------------------------------------------------------------------------------------ names

# Names several modules define on purpose: the protocols their packages are made of.
PROTOCOLS = {
    "configure": "cxr_fast/commands/", "run": "cxr_fast/commands/",  # a command: its flags, its call
    "available": "loaders/", "build": "loaders/",  # a loader backend
    "path": "cxr_fast/stores/",  # a store format's files
    "main": None,  # a script's entry (cli, the loader bench)
}


def test_no_two_modules_define_one_public_name():
    # Two `load_study`, two `machine_info`, two `resolve_precision` each did a different thing: a public
    # name means one thing, so it is defined in one module (protocol names excepted, each in its package).
    where: dict[str, list[str]] = defaultdict(list)
    for path, tree in _trees().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].append(_rel(path))
    twice = {name: files for name, files in where.items() if len(files) > 1
             and not (name in PROTOCOLS and (PROTOCOLS[name] is None
                                             or all(f.startswith(PROTOCOLS[name]) for f in files)))}
    assert twice == {}


# ------------------------------------------------------------------------------------------ vocabulary

GROUPS = {"optimizers": V.OPTIMIZERS, "precisions": V.PRECISIONS, "splits": V.SPLITS, "architectures": V.ARCHS,
          "recipes": V.RECIPES, "inits": V.INITS, "loaders": V.LOADERS}


def test_vocabulary_lists_are_spelled_only_in_the_vocabulary():
    # A tuple, list or set of two or more of one group's names anywhere else is a second copy (the optimizers
    # were in 7 places, the splits in 4). Mappings keyed by the names (per-name data) are checked below.
    copies = []
    for path, tree in _trees().items():
        if path.name == "vocabulary.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                for group, names in GROUPS.items():
                    if len(words & set(names)) >= 2:
                        copies.append(f"{_rel(path)}:{node.lineno} spells the {group} {sorted(words & set(names))}")
    assert copies == []


def test_mappings_keyed_by_the_vocabulary_cover_it():
    from cxr_fast.augment import augment_config
    from cxr_fast.cost import memory

    assert set(memory.OPTIMIZER_STATE) == set(V.OPTIMIZERS)
    assert set(V.PRECISIONS) <= set(memory.PRECISION_BYTES)
    assert all(augment_config(recipe) is not None for recipe in V.RECIPES)
    assert set(V.SPLIT_NAMES) == set(V.SPLITS)


def test_the_schema_and_the_loader_registry_take_their_choices_from_the_vocabulary():
    from cxr_fast.data.sampling import subsample  # noqa: F401  (imports SPLITS, defines none)
    from cxr_fast.loaders import BACKENDS
    from cxr_fast.schema.fields import choices

    f = RunConfig.model_fields
    assert choices(f["optimizer"]) == V.OPTIMIZERS and choices(f["split"]) == V.SPLITS
    assert choices(f["precision"]) == (V.AUTO, *V.PRECISIONS) and choices(f["loader"]) == (V.AUTO, *V.LOADERS)
    assert choices(f["arch"]) == V.ARCHS and choices(f["recipe"]) == V.RECIPES and choices(f["init"]) == V.INITS
    assert tuple(BACKENDS) == V.LOADERS


# ------------------------------------------------------------------------------------------ the run fields

def _parser(command: str) -> argparse.ArgumentParser:
    from cxr_fast.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


# A command's own option whose name is also a run setting's, meaning something else there.
OWN_OPTIONS = {
    ("study", "out"): "the study folder", ("lr-find", "out"): "the range test's output folder",
    ("plan", "device"): "the device profile to time on", ("prepare", "out"): "the store folder",
    ("prepare", "data"): "the data folder, positional", ("prepare", "res"): "a list of resolutions",
    ("prepare", "workers"): "decoding processes", ("bench", "res"): "a list of resolutions",
    ("bench", "batch_size"): "the bench's own batch rule", ("bench", "out"): "the results folder",
    ("verify", "data"): "the folder to check", ("verify", "store"): "a store to check",
    ("verify", "workers"): "checking processes", ("evaluate", "data"): "the other dataset, not the run's",
    ("evaluate", "device"): "default: the run's own",
}


@pytest.mark.parametrize("command, expected", [
    ("train", set(RunConfig.names())),
    ("study", (set(RunConfig.names()) - set(GRID_FIELDS)) | {"epochs"}),
    ("lr-find", None),
    ("plan", {"precision", "batch_size", "epochs"}),
    ("prepare", {"label", "subsample_size", "seed", "split", "val_fraction", *DATASET_FIELDS}),
    ("bench", {"label", "precision", "channels_last", "optimizer", "device", "data", *DATASET_FIELDS}),
    ("verify", set(DATASET_FIELDS)),
    ("evaluate", set(DATASET_FIELDS)),
])
def test_every_run_flag_is_the_schema_declaration(command, expected):
    # `train --help`, a study's overrides, lr-find, plan, prepare and bench: each flag that sets a run field has
    # the field's help, choices and type, because it was made from the field (schema.flags), never typed again.
    from cxr_fast.schema.fields import choices

    actions = [a for a in _parser(command)._actions if a.dest in RunConfig.model_fields]
    made = {a.dest: a for a in actions if getattr(a, "run_setting", None) == a.dest}
    typed = {a.dest for a in actions if a.dest not in made}
    assert typed <= {dest for (cmd, dest) in OWN_OPTIONS if cmd == command}
    if expected is not None:
        assert set(made) == expected
    for name, action in made.items():
        info = RunConfig.model_fields[name]
        assert action.help.startswith(info.description) or command == "bench", name
        assert action.choices == choices(info), name
        if isinstance(info.default, bool):
            assert isinstance(action, argparse.BooleanOptionalAction), name


def test_a_study_block_and_config_yaml_use_the_same_declaration(tmp_path):
    from cxr_fast.study import parse_study

    # A study's train block knows exactly the run fields the grids do not set...
    with pytest.raises(Exception, match=re.escape("known: " + ", ".join(sorted(set(RunConfig.names()) -
                                                                              set(GRID_FIELDS))))):
        parse_study({"train": {"nope": 1}, "grids": [{"name": "a", "labels": ["Mass"], "resolutions": [32]}]})
    # ... and what a run records is every field, in declaration order.
    assert list(RunConfig().record()) == list(RunConfig.names())


def test_no_module_but_the_schema_declares_the_run_fields():
    # A class or a function's keyword list that repeats many run fields is a mirror of the schema. The bench's
    # settings are another object (lists of resolutions and archs, its own batch rule); the six it shares with a
    # run take the schema's defaults and are checked by it (bench.config.RUN_SETTINGS).
    from cxr_fast.bench import config as bench

    assert {n: getattr(bench.BenchConfig(), n) for n in bench.RUN_SETTINGS} == \
        {n: getattr(RunConfig(), n) for n in bench.RUN_SETTINGS}
    with pytest.raises(Exception, match="bench: unknown optimizer 'lion'"):
        bench.load_bench_config(optimizer="lion")
    # `dataset` is also what the loaders and the bench call an opened dataset (an object, not the --dataset name).
    fields = set(RunConfig.names()) - {"dataset"}
    mirrors = []
    for path, tree in _trees().items():
        if path.as_posix().endswith(("cxr_fast/schema/run.py", "bench/config.py")):
            continue
        for node in ast.walk(tree):
            names: set[str] = set()
            if isinstance(node, ast.ClassDef):
                names = {t.target.id for t in node.body if isinstance(t, ast.AnnAssign) and isinstance(t.target,
                                                                                                       ast.Name)}
            elif isinstance(node, ast.FunctionDef):
                names = {a.arg for a in node.args.args + node.args.kwonlyargs}
            if len(names & fields) >= 8:
                mirrors.append(f"{_rel(path)}:{node.lineno} {node.name} repeats {sorted(names & fields)}")
    assert mirrors == []


# ------------------------------------------------------------------------------------------ the rest

def _assignments(name: str) -> list[str]:
    out = []
    for path, tree in _trees().items():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                out.append(_rel(path))
    return out


def test_byte_units_are_defined_once():
    assert _assignments("GIB") == ["cxr_fast/units.py"] and _assignments("MIB") == ["cxr_fast/units.py"]
    spelled = [f"{_rel(p)}:{n.lineno}" for p, t in _trees().items() if p.name != "units.py" for n in ast.walk(t)
               if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) and isinstance(n.left, ast.Constant)
               and (n.left.value, getattr(n.right, "value", None)) in ((2, 30), (1024, 3), (2, 20), (1024, 2))]
    assert spelled == []


def test_one_lock_helper():
    users = [_rel(p) for p in SOURCE if "flock" in p.read_text(encoding="utf-8")]
    assert users == ["cxr_fast/locks.py"]


def test_one_precision_rule():
    defined = [_rel(p) for p, t in _trees().items() for n in t.body
               if isinstance(n, ast.FunctionDef) and "precision" in n.name and n.name.startswith("resolve")]
    assert defined == ["cxr_fast/vocabulary.py"]
    from cxr_fast.cost import devices

    # The planner's card and a live device answer `auto` by the same rule.
    assert devices.resolve("1080ti").auto_precision() == V.resolve_precision("auto", True, False)
    assert devices.resolve("h100").auto_precision() == V.resolve_precision("auto", True, True) == "bf16"


def test_store_formats_are_named_by_their_modules():
    from cxr_fast.cost import fit
    from cxr_fast.loaders import backend, store_format
    from cxr_fast.stores import cache, ffcv, jpeg
    from cxr_fast.stores.manifest import FORMATS

    assert FORMATS == (jpeg.FORMAT, cache.FORMAT, ffcv.FORMAT)
    assert _assignments("FORMAT") == ["cxr_fast/stores/cache.py", "cxr_fast/stores/ffcv.py",
                                      "cxr_fast/stores/jpeg.py"] or sorted(_assignments("FORMAT")) == [
        "cxr_fast/stores/cache.py", "cxr_fast/stores/ffcv.py", "cxr_fast/stores/jpeg.py"]
    # A backend's STORE_FORMAT is imported from its format module (pil reads images, None), never a string.
    for path, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "STORE_FORMAT" for t in node.targets):
                assert isinstance(node.value, ast.Constant) and node.value.value is None, _rel(path)
    assert {name: backend(name).STORE_FORMAT for name in V.LOADERS} == {
        "resident": cache.FORMAT, "dali": jpeg.FORMAT, "cache": cache.FORMAT, "ffcv": ffcv.FORMAT, "pil": None}
    # `auto` chooses between two backends that read one store, so a study prepares one format for it.
    assert store_format(fit.RESIDENT) == store_format(fit.FALLBACK) == store_format(V.AUTO)


def test_a_run_and_the_planner_choose_the_loader_by_one_rule(monkeypatch):
    import types

    import cxr_fast.cost.fit as fit
    import cxr_fast.cost.memcache as memcache
    from cxr_fast.cost import devices
    from cxr_fast.cost.plan import PlanCell, plan_cell
    from cxr_fast.train.parts import loader_for

    asked = []
    real = fit.choose_loader
    monkeypatch.setattr(fit, "choose_loader", lambda *a, **k: asked.append(a[0]) or real(*a, **k))
    planned = plan_cell(PlanCell("Nodule/resnet34-e1/r64", "Nodule", "resnet34", 64, 1, {"subsample_size": 100}),
                        devices.resolve("h100"))
    monkeypatch.setattr(memcache, "memory_profile", lambda *a, **k: types.SimpleNamespace(predicted_bytes=lambda b: 0))
    monkeypatch.setattr("torch.cuda.get_device_properties", lambda d: types.SimpleNamespace(total_memory=141 << 30))
    run = loader_for(RunConfig(res=64), types.SimpleNamespace(type="cuda"), "bf16", 100)
    assert asked == ["auto", "auto"] and planned["loader"] == run[0] == "resident"
    # Nothing below decides `auto` a second way: the loader factory takes named backends only.
    from cxr_fast.errors import CxrError
    from cxr_fast.feed import pick_backend

    with pytest.raises(CxrError, match="unknown loader 'auto'"):
        pick_backend("auto")
