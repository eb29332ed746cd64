"""Issue 19, classes 9-12: what a careless user types into flags, YAML and profiles must be refused in one line,
before anything is written.

9. Numbers without range or finiteness checks (``memory --gpu-gb nan|inf|1e30``, ``synth --seed -1``,
   ``phantom:seed=-1``, ``--seed 2**32``, ``lr: .inf``, a device profile with ``launch_s: -1`` or a string
   bandwidth): one check for every number the user gives (``vocabulary.check_number``, the schema's bounds).
10. A YAML alias bomb: every user YAML is read by one loader that counts what its aliases expand to, and refuses
    a bomb or a recursive alias before building it (``config.parse_yaml``).
11. ``study --dry-run`` approved what the run refused (a missing data folder, ``device: tpu``, a seed of 2**32,
    an infinite learning rate): both call ``study.decide``, which checks the cells' inputs before any write.
12. The study folder: a ``name:`` that leaves ``studies/``, an ``--out`` that is someone else's folder or the
    folder of the user's own ``study.yaml``, are refused as ``train`` and ``prepare`` refuse theirs.

Every test drives the CLI or the public API on tiny inputs in ``tmp_path`` and fails on the code before the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from cxr_fast.cli import main
from cxr_fast.errors import CxrError


class Hung(Exception):
    """Raised by ``_within``; no command handler catches it (``TimeoutError`` is an ``OSError``, which they do)."""


@contextlib.contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Fail instead of hanging (``memory --gpu-gb 1e30`` counted a batch size down from ~1e20)."""
    def stop(*_):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def _study(path: Path, name: str = "s", grid: dict | None = None, **train) -> Path:
    """A one-cell study file (random init, the built-in phantom unless ``data`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "name": name, "train": {"init": "random", "device": "cpu", **train},
        "grids": [{"name": "g", "labels": ["Nodule"], "resolutions": [32], "epochs": 1, **(grid or {})}]}))
    return path


# ==================================================================================================
# Class 9: one check for every number the user gives
# ==================================================================================================

@pytest.mark.parametrize("value, words", [
    ("nan", "must be a finite number, got nan"),
    ("inf", "must be a finite number, got inf"),
    ("1e30", "must be in (0, 1024], got 1e+30"),
])
def test_memory_refuses_a_card_size_that_is_not_a_real_size(capsys, value, words):
    with _within(20):
        assert main(["memory", "--gpu-gb", value, "--arch", "resnet34", "--res", "32"]) == 2
    _one_line_error(capsys, f"--gpu-gb {words}")


def test_the_memory_model_itself_refuses_a_card_size_that_would_hang_it():
    from cxr_fast.cost.memory import max_batch_size

    for gb in (float("nan"), float("inf"), 1e30, 0):
        with _within(20), pytest.raises(CxrError, match="GPU memory"):
            max_batch_size("resnet34", 32, gb)


def test_synth_refuses_a_negative_seed_before_writing(tmp_path, capsys):
    out = tmp_path / "phantom"
    assert main(["synth", str(out), "--seed", "-1", "--n", "2", "--size", "32", "--workers", "1", "--quiet"]) == 2
    _one_line_error(capsys, "--seed must be in [0, 4294967295], got -1")
    assert not out.exists()


def test_table1_refuses_a_seed_numpy_cannot_take(capsys):
    assert main(["table1", "--seed", "-1"]) == 2
    _one_line_error(capsys, "--seed must be in [0, 4294967295], got -1")


@pytest.mark.parametrize("spec, words", [
    ("phantom:seed=-1", "phantom:seed=-1: seed must be in [0, 4294967295], got -1"),
    ("phantom:n=4,seed=4294967296", "seed must be in [0, 4294967295], got 4294967296"),
    ("phantom:fraction=nan,enrich=Nodule", "enrich_fraction must be a finite number, got nan"),
])
def test_a_phantom_spec_with_an_impossible_number_is_refused_when_read(spec, words):
    from cxr_fast.data.source import parse_phantom_spec

    with pytest.raises(CxrError) as err:
        parse_phantom_spec(spec)
    assert words in str(err.value)


@pytest.mark.parametrize("flags, words", [
    (["--seed", "4294967296"], "seed must be in [0, 4294967295], got 4294967296"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
])
def test_train_refuses_an_impossible_seed_or_rate_before_any_work(tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    assert main(["train", "--init", "random", "--res", "32", "--device", "cpu", "--out", str(out), *flags]) == 2
    _one_line_error(capsys, words)
    assert not out.exists()


def test_the_largest_seed_is_accepted_and_usable_by_the_augmenting_loader(tmp_path):
    import numpy as np
    from cxr_fast.loaders.pil import PilDataset
    from PIL import Image

    from cxr_fast.augment import AugmentConfig
    from cxr_fast.schema.run import RunConfig

    top = 2**32 - 1
    assert RunConfig.parse({"seed": top}, "t").seed == top
    png = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(png)
    data = PilDataset([str(png)], np.zeros(1), 32, True, AugmentConfig())
    data.seed, data.epoch = top, 3
    assert data[0][0].shape == (1, 32, 32)  # its per-item seed overflowed torch's int64 at this seed


def _profile(tmp_path: Path, **changes) -> Path:
    from cxr_fast.cost import devices

    data = {**devices.modelled(devices.CARDS["h100"]).to_dict(), **changes}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("changes, words", [
    ({"launch_s": -1}, "launch_s must be 0 or more, got -1"),
    ({"bandwidth": "fast"}, "bandwidth must be a number, got 'fast'"),
    ({"memory_gib": float("inf")}, "memory_gib must be a finite number"),
    ({"compute_share": 1.5}, "compute_share must be in (0, 1], got 1.5"),
    ({"peak_flops": {"fp32": -1.0}}, "peak_flops[fp32] must be positive, got -1.0"),
])
def test_a_device_profile_with_an_impossible_rate_is_refused_naming_the_file(tmp_path, changes, words):
    from cxr_fast.cost import devices

    path = _profile(tmp_path, **changes)
    with pytest.raises(CxrError) as err:
        devices.load_profile(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)


def test_plan_with_a_negative_launch_time_is_one_line_not_a_negative_total(tmp_path, capsys):
    config = _study(tmp_path / "s.yaml")
    path = _profile(tmp_path, launch_s=-1)
    assert main(["plan", str(config), "--device", str(path), "--no-cells"]) == 2
    _one_line_error(capsys, "launch_s must be 0 or more")


# ==================================================================================================
# Class 10: YAML aliases are refused by the one reader of user YAML
# ==================================================================================================

# A "billion laughs" cut to a million: ten values, each next line ten of the one before, 10 ** 6 strings once
# expanded (three lines more and the study name's str() was a MemoryError). Composed, it is 60 nodes.
BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                 + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)])


def test_a_yaml_alias_bomb_in_a_study_name_is_refused_before_use(tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text("name:\n" + "\n".join("  " + line for line in BOMB.splitlines())
                      + "\ngrids: [{name: g, labels: [Nodule], resolutions: [32]}]\n")
    out = tmp_path / "out"
    assert main(["study", str(config), "--out", str(out), "--dry-run"]) == 2
    _one_line_error(capsys, str(config), "aliases expand it to", "over the 100,000 a settings file may hold")
    assert not out.exists()


def test_every_user_yaml_reader_refuses_an_alias_bomb_and_a_recursive_alias(tmp_path):
    from cxr_fast.bench.config import load_bench_config

    from cxr_fast.report.data import read_study
    from cxr_fast.schema.run import load_run_config

    for text, why in ((BOMB, "aliases expand it"), ("data: &d [phantom, *d]\n", "recursive alias on line 1")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        for read in (load_run_config, load_bench_config):
            with pytest.raises(CxrError, match=why):
                read(bad)
        study = tmp_path / "study"
        study.mkdir(exist_ok=True)
        (study / "results.jsonl").write_text("")
        (study / "study.yaml").write_text(text)
        with pytest.raises(CxrError, match=why):
            read_study(study)


def test_a_yaml_that_pyyaml_itself_wrote_with_aliases_reads(tmp_path):
    """yaml.safe_dump writes an anchor and alias for a list used twice: such a file is an ordinary config."""
    from cxr_fast.study import load_study_config

    shared = ["Nodule"]
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"name": "s", "grids": [{"name": "a", "labels": shared, "resolutions": [32]},
                                                             {"name": "b", "labels": shared, "resolutions": [64]}]}))
    assert "*id001" in config.read_text()
    assert [g.labels for g in load_study_config(config).grids] == [["Nodule"], ["Nodule"]]


def test_a_study_name_that_is_not_text_is_refused(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"name": ["a", "b"], "grids": [{"name": "g", "labels": ["Nodule"],
                                                                      "resolutions": [32]}]}))
    assert main(["study", str(config), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    _one_line_error(capsys, "name must be text, got a list")


# ==================================================================================================
# Class 11: the dry run and the run are one check, made before anything is written
# ==================================================================================================

@pytest.mark.parametrize("train, words", [
    ({"data": "/nonexistent/nih"}, "data folder not found: /nonexistent/nih"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"seed": 2**32}, "seed must be in [0, 4294967295], got 4294967296"),
    ({"lr": float("inf")}, "lr must be a finite number, got inf"),
    ({"data": "phantom:seed=-1"}, "seed must be in [0, 4294967295], got -1"),
])
def test_the_dry_run_refuses_exactly_what_the_run_refuses_and_neither_writes(tmp_path, capsys, train, words):
    config = _study(tmp_path / "s.yaml", **train)
    out = tmp_path / "out"
    for extra in (["--dry-run"], ["--quiet"]):
        assert main(["study", str(config), "--out", str(out), *extra]) == 2, extra
        _one_line_error(capsys, words)
        assert not out.exists(), extra  # no study.yaml, no stores


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_dry_run_on_a_machine_without_the_gpu_says_so(tmp_path, capsys):
    config = _study(tmp_path / "s.yaml", device="cuda")
    out = tmp_path / "out"
    assert main(["study", str(config), "--out", str(out), "--dry-run"]) == 2
    _one_line_error(capsys, "no CUDA GPU is available here")
    assert main(["study", str(config), "--out", str(out), "--dry-run", "--executor", "ray"]) == 0  # workers' GPUs
    capsys.readouterr()


# ==================================================================================================
# Class 12: the study folder is guarded
# ==================================================================================================

@pytest.mark.parametrize("name", ["../escaped", "/ABSOLUTE", "a/b"])
def test_a_study_name_that_leaves_studies_is_refused(tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    name = name.replace("/ABSOLUTE", str(tmp_path / "absolute"))
    config = _study(tmp_path / "cfg" / "s.yaml", name=name)
    for extra in (["--dry-run"], ["--quiet"]):
        assert main(["study", str(config), *extra]) == 2, extra
        _one_line_error(capsys, "is not a plain folder name", "give --out")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "absolute").exists()
    assert not (work / "studies").exists()


def test_out_the_folder_of_the_users_own_config_is_refused_and_the_config_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _study(Path("my") / "study.yaml")
    before = config.read_bytes()
    for extra in (["--dry-run"], ["--quiet"]):
        assert main(["study", "my/study.yaml", "--out", "my", *extra]) == 2, extra
        _one_line_error(capsys, "would overwrite your config my/study.yaml")
    assert config.read_bytes() == before and sorted(p.name for p in Path("my").iterdir()) == ["study.yaml"]


def test_out_a_folder_that_is_not_a_study_is_refused(tmp_path, capsys):
    config = _study(tmp_path / "s.yaml")
    out = tmp_path / "papers"
    out.mkdir()
    (out / "draft.tex").write_text("mine")
    for extra in (["--dry-run"], ["--quiet"]):
        assert main(["study", str(config), "--out", str(out), *extra]) == 2, extra
        _one_line_error(capsys, "is not empty and not a cxr-fast study folder (it holds draft.tex)")
    assert sorted(p.name for p in out.iterdir()) == ["draft.tex"]


def test_a_study_folder_is_still_resumed_and_an_empty_one_used(tmp_path, capsys):
    from cxr_fast.study import load_study_config, run_cells

    config = _study(tmp_path / "s.yaml")
    out = tmp_path / "out"
    out.mkdir()  # empty: fine

    def fake(cfg):
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        return {"auc": 0.6, "auc_sd": 0.01, "n_pos": 5, "n_neg": 5, "init": "random"}

    run_cells(load_study_config(config), out, run_fn=fake, progress=False)
    assert main(["study", str(config), "--out", str(out), "--dry-run"]) == 0  # a study folder: its own
    assert "1 done" in capsys.readouterr().out


# ==================================================================================================
# Class 9, the rest: every numeric flag of every command declares its bounds, and the CLI checks them first
# ==================================================================================================

def _commands():
    from cxr_fast.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_numeric_flag_is_a_run_setting_or_declares_its_bounds():
    """A flag typed int or float is either a run setting (RunConfig checks it) or a ``number_flag``."""
    loose = [f"{name} {a.option_strings[0]}" for name, parser in _commands().items() for a in parser._actions
             if a.type in (int, float) and not hasattr(a, "run_setting") and not hasattr(a, "number_bounds")]
    assert loose == []


@pytest.mark.parametrize("argv, flag", [
    (["lr-find", "--end-lr", "inf"], "--end-lr"),
    (["lr-find", "--start-lr", "nan"], "--start-lr"),
    (["lr-find", "--num-iter", "1"], "--num-iter"),
    (["plan", "S.yaml", "--calibrate-seconds", "nan"], "--calibrate-seconds"),
    (["plan", "S.yaml", "--gpus", "0"], "--gpus"),
    (["prepare", "--out", "st", "--label", "Effusion", "--quality", "0"], "--quality"),
    (["prepare", "--out", "st", "--label", "Effusion", "--workers", "0"], "--workers"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--predict-gpu-gb", "inf"], "--predict-gpu-gb"),
    (["synth", "OUT", "--contrast", "nan"], "--contrast"),
    (["synth", "OUT", "--size", "16"], "--size"),
    (["table1", "--seed", "-1"], "--seed"),
    (["gpu-check", "--budget-s", "nan"], "--budget-s"),
    (["verify", "--workers", "-1"], "--workers"),
    (["synth", "OUT", "--workers", "0"], "--workers"),
    (["table1", "--size", "0"], "--size"),
    (["study", "S.yaml", "--ray-cpus", "0"], "--ray-cpus"),
])
def test_an_impossible_number_flag_is_one_line_before_any_work(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line_error(capsys, flag)
    assert list(tmp_path.iterdir()) == [], "refused before anything was written"
