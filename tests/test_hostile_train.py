"""Issue 19 ("Hardening, round two"), the training classes: what ``train`` and ``lr-find`` must never do.

4. Unreadable images: ``train`` finished every epoch and then failed with "validation loader returned
   labels out of order" (the loader had left them out), and ``--resume`` repeated it. The run now decides
   which images are usable before training, says how many it dropped and why, records it, and a resume
   refuses images that changed since its checkpoint.
13. ``train --loader cache --store NEWDIR`` built a store of the training part only, then refused
   validation, and the half store stayed. A run now prepares its store for all its images at once.
19. ``lr-find`` suggested the first rate of its sweep from a curve that never fell. A fall within the
   smoothed loss's own noise now suggests nothing (exit 1), and a suggestion at the sweep's edge says so.

Every test drives the CLI or the public API on tiny data in ``tmp_path`` and fails on the code before the fix.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxr_fast.cli import main
from cxr_fast.data.reader import DataWarning
from cxr_fast.errors import CxrError
from cxr_fast.schema.run import RunConfig
from cxr_fast.train import run_training
from imagesets import make_dataset
from test_train import _tiny_model  # build_model's stand-in: one small net for every run

pytestmark = pytest.mark.usefixtures("one_thread")

# With seed 0 and label Effusion, 00000003_000.png falls in validation and 00000004_000.png in training.
BROKEN = ("00000003_000.png", "00000004_000.png")




@pytest.fixture
def tiny_net(monkeypatch):
    monkeypatch.setattr("cxr_fast.models.build_model", _tiny_model)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken_data(tmp_path: Path) -> Path:
    """24 images at 96 px, two of them cut in half: one in validation, one in training."""
    root, _, _ = make_dataset(tmp_path / "data", n=24, size=96)
    for name in BROKEN:
        _truncate(root / "images" / name)
    return root


def _cfg(data: Path, out: Path, **kw) -> RunConfig:
    base = dict(label="Effusion", res=32, epochs=2, batch_size=8, lr=1e-2, loader="resident", data=str(data),
                out=str(out), init="random", tta=0, workers=1, device="cpu")
    base.update(kw)
    return RunConfig(**base)


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--label", "Effusion", "--res", "32", "--epochs", "1", "--data", str(data), "--out", str(out),
            "--init", "random", "--device", "cpu", "--tta", "0", "--workers", "1", "--quiet", *extra]


# --- 4: unreadable images are decided before training -------------------------------------------------------

@pytest.mark.parametrize("loader", ["resident", "pil"])
def test_unreadable_images_are_dropped_before_training_with_one_line(broken_data, tmp_path, tiny_net, capsys,
                                                                      loader):
    out = tmp_path / "run"
    code = main(_train_args(broken_data, out, "--loader", loader))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    said = [line for line in captured.err.splitlines() if "unusable" in line]
    assert len(said) == 1 and "2 of 24 images unusable" in said[0] and "(1 training, 1 validation)" in said[0]
    assert BROKEN[0] in said[0] and "truncat" in said[0].lower()  # names one, and says why
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dropped_images"] == 2 and sorted(metrics["dropped"]) == list(BROKEN)
    scored = np.load(out / "predictions.npz")["image_ids"]
    assert BROKEN[0] not in scored and len(scored) == metrics["n_pos"] + metrics["n_neg"]
    assert BROKEN[1] not in scored and metrics["n_train"] + len(scored) == 22


class Killed(Exception):
    pass


def _kill_after_first(row: dict) -> None:
    if row["epoch"] == 1:
        raise Killed


def test_a_resumed_run_with_unreadable_images_finishes_as_a_straight_one(broken_data, tmp_path, tiny_net):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the line itself is tested above; here what a resume does
        with pytest.raises(Killed):
            run_training(_cfg(broken_data, out), progress=False, on_epoch=_kill_after_first)
        resumed = run_training(_cfg(broken_data, out), progress=False, resume=True)
        straight = run_training(_cfg(broken_data, tmp_path / "straight"), progress=False)
    assert resumed["dropped_images"] == straight["dropped_images"] == 2
    assert resumed["auc"] == pytest.approx(straight["auc"], abs=1e-6)


def test_a_resume_refuses_images_that_changed_since_its_checkpoint(broken_data, tmp_path, tiny_net):
    out = tmp_path / "run"
    with pytest.warns(DataWarning), pytest.raises(Killed):
        run_training(_cfg(broken_data, out, loader="pil"), progress=False, on_epoch=_kill_after_first)
    # The training image is repaired: the first epoch was trained without it, the rest would not be.
    make_dataset(tmp_path / "fresh", n=24, size=96)
    (broken_data / "images" / BROKEN[1]).write_bytes((tmp_path / "fresh" / "images" / BROKEN[1]).read_bytes())
    with pytest.warns(DataWarning, match="1 of 24 images unusable"), \
            pytest.raises(CxrError, match=r"unusable image.*changed.*--overwrite"):
        run_training(_cfg(broken_data, out, loader="pil"), progress=False, resume=True)
    assert not (out / "metrics.json").exists()


# --- 13: a run's store holds all its images, or none is left -----------------------------------------------

def test_train_with_a_new_store_builds_it_for_training_and_validation(tmp_path, tiny_net, capsys):
    data, ids, _ = make_dataset(tmp_path / "data", n=24, size=96)
    store = tmp_path / "store"
    code = main(_train_args(data, tmp_path / "run", "--loader", "cache", "--store", str(store)))
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((store / "manifest.json").read_text())
    assert sorted(manifest["image_ids"]) == sorted(ids)  # the whole subsample, both parts
    assert manifest["label"] == "Effusion" and sum(manifest["is_val"]) == 5  # recorded how it was drawn
    # lr-find into a new store makes the same whole store, which train then uses as it is.
    store2 = tmp_path / "store2"
    main(["lr-find", "--label", "Effusion", "--res", "32", "--data", str(data), "--loader", "cache", "--store",
          str(store2), "--device", "cpu", "--num-iter", "4", "--out", str(tmp_path / "lr"), "--quiet", "--init",
          "random", "--workers", "1"])
    assert sorted(json.loads((store2 / "manifest.json").read_text())["image_ids"]) == sorted(ids)
    capsys.readouterr()
    assert main(_train_args(data, tmp_path / "run2", "--loader", "cache", "--store", str(store2))) == 0, \
        capsys.readouterr().err


def test_a_store_that_fails_to_build_is_not_left_half_made(tmp_path, tiny_net, capsys, monkeypatch):
    import cxr_fast.stores.prepare as P

    data, _, _ = make_dataset(tmp_path / "data", n=24, size=96)
    real = P.decode_all

    def fail_after_decoding(*args, **kwargs):
        real(*args, **kwargs)
        raise CxrError("disk trouble")

    monkeypatch.setattr(P, "decode_all", fail_after_decoding)
    store = tmp_path / "store"
    assert main(_train_args(data, tmp_path / "run", "--loader", "cache", "--store", str(store))) != 0
    assert "disk trouble" in capsys.readouterr().err
    assert not store.exists() and not (tmp_path / "run").exists()


# --- 19: lr-find suggests only what its curve supports ----------------------------------------------------

class _CurveStep:
    """A stand-in training step whose loss is ``curve(lr)`` plus seeded noise: lr_range_test's real smoothing
    and suggestion run on a curve whose truth is known."""

    def __init__(self, curve, noise: float, seed: int = 0) -> None:
        self.model = nn.Linear(1, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
        self.curve, self.noise = curve, noise
        self.rng = np.random.default_rng(seed)

    def __call__(self, images, labels) -> float:
        lr = self.optimizer.param_groups[0]["lr"]
        return self.curve(lr) + self.noise * float(self.rng.standard_normal())


def _sweep(curve, noise: float, seed: int = 0, **kw) -> dict:
    from cxr_fast.lr_find import lr_range_test

    batches = [(torch.zeros(1), torch.zeros(1))]
    return lr_range_test(_CurveStep(curve, noise, seed), batches, **{"start_lr": 1e-7, "end_lr": 10.0,
                                                                      "num_iter": 100, **kw})


@pytest.mark.parametrize("seed", range(5))
def test_a_flat_noisy_curve_suggests_nothing(seed):
    r = _sweep(lambda lr: 0.7, noise=0.3, seed=seed)
    assert r["suggested_lr"] is None and "noise" in r["no_suggestion"]


def test_a_curve_that_falls_beyond_its_noise_gets_a_suggestion_and_its_edges_are_said():
    # Falls from 1.0 to 0.2 around 1e-3, rises after 1e-1: a suggestion in the middle, at no edge.
    def valley(lr: float) -> float:
        x = math.log10(lr)
        return 0.2 + 0.8 / (1 + math.exp(2 * (x + 3))) + max(0.0, x + 1) ** 2

    r = _sweep(valley, noise=0.3)
    assert r["suggested_lr"] is not None and 1e-4 < r["suggested_lr"] < 1e-1 and r["edge"] is None
    # Still falling when the sweep ends: the suggestion is at the high edge.
    r = _sweep(lambda lr: 1.0 - 0.1 * (math.log10(lr) + 7), noise=0.1, end_lr=1e-3)
    assert r["suggested_lr"] is not None and r["edge"].startswith("high")
    # Lowest within a decade of the first rate: a tenth of it is below the sweep, at the low edge.
    r = _sweep(lambda lr: 0.2 + 4 * max(0.0, -2.8 - math.log10(lr)) + 50 * max(0.0, math.log10(lr) + 2.6) ** 2,
               noise=0.05, start_lr=1e-3, end_lr=1e-1, num_iter=40)
    assert r["suggested_lr"] == pytest.approx(1e-3) and r["edge"].startswith("low")


def test_lr_find_cli_says_the_curve_gives_no_suggestion(tiny_phantom, tmp_path, tiny_net, capsys):
    out = tmp_path / "lr"
    code = main(["lr-find", "--label", "No Finding", "--res", "32", "--data", str(tiny_phantom), "--loader",
                 "resident", "--device", "cpu", "--num-iter", "12", "--out", str(out), "--quiet", "--init",
                 "random", "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 1 and "no learning rate suggested" in captured.err and "suggested lr" not in captured.out
    assert len(captured.err.strip().splitlines()) == 1
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["suggested_lr"] is None and saved["loss_drop"] <= saved["loss_noise"]
    assert (out / "lr_find.png").is_file()


class _RunsCode:
    """A pickled object that would run code when unpickled: what a hostile checkpoint holds."""

    def __reduce__(self):
        return (Path.touch, (Path(_RunsCode.marker),))


def test_a_checkpoint_is_read_without_unpickling_so_a_hostile_one_runs_nothing(tmp_path):
    """A run folder copied from elsewhere is read as tensors and plain values only (``weights_only``): a
    checkpoint holding any other object is one line, and the object's code never runs."""
    from cxr_fast.train.folder import load_checkpoint
    from cxr_fast.train.loop import rng_state, set_rng_state

    marker = tmp_path / "ran"
    _RunsCode.marker = str(marker)
    hostile = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "model": {}, "evil": _RunsCode()}, hostile)
    with pytest.raises(CxrError, match="only unpickling would make, which is never done"):
        load_checkpoint(hostile)
    assert not marker.exists()
    # The run's own state, random generators included, loads that way and restores them exactly.
    np.random.seed(7)
    saved = tmp_path / "own.pt"
    torch.save({"epoch": 1, "model": {}, "optimizer": {}, "rng": rng_state(), "wall_s": 1.0, "train_time_s": 1.0,
                "train_images": 4}, saved)
    expected = np.random.rand(3)
    np.random.seed(8)
    set_rng_state(load_checkpoint(saved)["rng"])
    assert np.array_equal(np.random.rand(3), expected)
