"""The study runner: grid expansion, the results store, kill-and-resume, and the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cxr_fast.errors import CxrError
from cxr_fast.executors import LocalExecutor, RayExecutor
from cxr_fast.io import read_jsonl
from cxr_fast.study import (
    RESULTS, ResultsStore, apply_overrides, dry_run, expand, load_study_config, parse_study, run_cells, study_lock,
)

REPO = Path(__file__).resolve().parents[1]

# The tiny grid: real training, one label with enough positives in the 64-image phantom, two resolutions.
TINY_TRAIN = {"batch_size": 8, "subsample_size": 64, "val_fraction": 0.4, "max_batches": 1, "tta": 1,
              "loader": "resident", "workers": 0, "init": "random", "seed": 0}


def tiny_config(data: Path, **train) -> dict:
    return {"name": "tiny", "train": {**TINY_TRAIN, "data": str(data), **train},
            "grids": [{"name": "table2", "labels": ["Infiltration"], "resolutions": [32, 48],
                       "archs": ["resnet34"], "epochs": 1}]}


def fake_config(n_labels: int = 2) -> dict:
    labels = ["Nodule", "Mass", "Effusion"][:n_labels]
    return {"name": "fake", "train": {"lr": 5e-4, "data": "/nonexistent", "init": "random"},
            "grids": [{"name": "table2", "labels": labels, "resolutions": [32, 64], "epochs": 1}]}


class FakeRun:
    """Stands in for training: counts calls, can raise on the n-th call, writes predictions like train does."""

    def __init__(self, interrupt_on: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.interrupt_on = interrupt_on

    def __call__(self, cfg) -> dict:
        self.calls.append((cfg.label, cfg.res))
        if self.interrupt_on is not None and len(self.calls) == self.interrupt_on:
            raise KeyboardInterrupt
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(cfg.res)
        y = np.array([0, 1] * 10, dtype=np.float32)
        np.savez(out / "predictions.npz", image_ids=np.array([f"{i}.png" for i in range(20)]), labels=y,
                 scores=(y + rng.normal(0, 1, 20)).astype(np.float32))
        return {"label": cfg.label, "res": cfg.res, "arch": cfg.arch, "auc": 0.5 + cfg.res / 1000, "auc_sd": 0.01,
                "accuracy": 0.5, "n_pos": 10, "n_neg": 10, "wall_s": 0.1, "train_images_per_s": 1.0}


def cell_ids(study: Path) -> list[str]:
    return [r["cell_id"] for r in read_jsonl(study / RESULTS)]


# ---------------------------------------------------------------------------------------------- config


def test_paper_config_is_the_papers_grid():
    cfg = load_study_config(REPO / "configs" / "paper.yaml")
    cells = expand(cfg)
    t2 = [c for c in cells if "table2" in c.grids]
    t3 = [c for c in cells if "table3" in c.grids]
    hernia = [c for c in cells if "hernia2000" in c.grids]
    assert len(t2) == 8 * 9 and len(t3) == 2 * 9 * 2 and len(hernia) == 1 and len(cells) == 109
    # The 2,000-image Hernia run has its own cell: it never replaces Table 2's Hernia at 256 px.
    assert hernia[0].cell_id == "Hernia/resnet34-e3-subsample_size=2000/r256"
    assert hernia[0].settings["subsample_size"] == 2000 and (hernia[0].res, hernia[0].epochs) == (256, 3)
    assert {(c.settings["recipe"], c.settings["init"]) for c in cells} == {("fastai07", "imagenet")}
    assert {c.res for c in cells} == {32, 64, 128, 224, 256, 320, 448, 512, 600}
    assert {c.epochs for c in t2} == {3} and {c.epochs for c in t3} == {10}
    assert {c.arch for c in t3} == {"resnet34", "densenet121"} and {c.label for c in t3} == {"Mass", "Nodule"}
    assert len({c.cell_id for c in cells}) == len(cells)
    s = cells[0].settings
    assert (s["batch_size"], s["lr"], s["subsample_size"], s["val_fraction"], s["split"]) == (8, 5e-4, 20000, 0.2, "image")
    quick = expand(load_study_config(REPO / "configs" / "quick.yaml"))
    assert 2 <= len(quick) <= 12 and max(c.res for c in quick) <= 224
    assert {(c.settings["recipe"], c.settings["init"]) for c in quick} == {("fastai07", "random")}  # said openly
    patients = expand(load_study_config(REPO / "configs" / "paper-patients.yaml"))
    assert len(patients) == 72 and {c.settings["split"] for c in patients} == {"patient"}


def test_config_errors_name_the_problem():
    with pytest.raises(CxrError, match="unknown setting.*learning_rate"):
        parse_study({"train": {"learning_rate": 1}, "grids": [{"name": "a", "labels": ["Mass"], "resolutions": [32]}]})
    with pytest.raises(CxrError, match="set by the grids"):
        parse_study({"train": {"res": 32}, "grids": [{"name": "a", "labels": ["Mass"], "resolutions": [32]}]})
    with pytest.raises(CxrError, match="grids\\[0\\].*resolutions"):
        parse_study({"grids": [{"name": "a", "labels": ["Mass"]}]})
    with pytest.raises(CxrError, match="Tumour|label"):
        parse_study({"grids": [{"name": "a", "labels": ["Tumour"], "resolutions": [32]}]})
    with pytest.raises(CxrError, match="--only nope"):
        expand(parse_study(fake_config()), only=["nope"])


def test_overrides_beat_the_config_and_change_the_fingerprint():
    cfg = parse_study({**fake_config(), "grids": [{**fake_config()["grids"][0], "train": {"lr": 1e-3}}]})
    before = expand(cfg)[0]
    assert before.settings["lr"] == 1e-3  # the grid's own override beats the shared block
    after = expand(apply_overrides(cfg, epochs=2, lr=0.01, batch_size=None))[0]
    assert after.settings["lr"] == 0.01 and after.epochs == 2 and after.settings.get("batch_size") is None
    assert after.fingerprint != before.fingerprint and after.cell_id != before.cell_id
    # Speed-only settings keep the fingerprint, so a study can be finished on another machine.
    assert expand(apply_overrides(cfg, device="cuda", loader="dali"))[0].fingerprint == before.fingerprint


# ---------------------------------------------------------------------------------------------- store and resume


def test_interrupted_study_resumes_with_every_cell_exactly_once(tmp_path):
    cfg = parse_study(fake_config())
    first = FakeRun(interrupt_on=2)
    with pytest.raises(KeyboardInterrupt):
        run_cells(cfg, tmp_path, run_fn=first, progress=False)
    assert cell_ids(tmp_path) == ["Nodule/resnet34-e1/r32"]
    statuses = dry_run(cfg, tmp_path, inputs=False).status  # fake runs: the data folder is never read
    assert statuses["Nodule/resnet34-e1/r32"] == "done" and statuses["Mass/resnet34-e1/r64"] == "todo"

    second = FakeRun()
    summary = run_cells(cfg, tmp_path, run_fn=second, progress=False)
    assert second.calls == [("Nodule", 64), ("Mass", 32), ("Mass", 64)]  # the interrupted cell is redone, once
    assert summary.already_done == 1 and summary.ran == 3
    ids = cell_ids(tmp_path)
    assert sorted(ids) == sorted(c.cell_id for c in expand(cfg)) and len(ids) == len(set(ids)) == 4

    third = FakeRun()
    assert run_cells(cfg, tmp_path, run_fn=third, progress=False).ran == 0 and third.calls == []
    assert len(cell_ids(tmp_path)) == 4
    saved = load_study_config(tmp_path / "study.yaml")
    assert [c.cell_id for c in expand(saved)] == [c.cell_id for c in expand(cfg)]


def test_torn_last_row_is_cut_and_redone(tmp_path):
    cfg = parse_study(fake_config(n_labels=1))
    run_cells(cfg, tmp_path, run_fn=FakeRun(), progress=False)
    store = tmp_path / RESULTS
    rows = store.read_text().splitlines(keepends=True)
    store.write_text(rows[0] + rows[1][: len(rows[1]) // 2])  # a kill in the middle of appending row 2
    again = FakeRun()
    run_cells(cfg, tmp_path, run_fn=again, progress=False)
    assert again.calls == [("Nodule", 64)]
    parsed = [json.loads(line) for line in store.read_text().splitlines()]  # every line is whole JSON
    assert [r["cell_id"] for r in parsed] == ["Nodule/resnet34-e1/r32", "Nodule/resnet34-e1/r64"]


def test_killed_process_resumes_without_loss_or_duplicates(tmp_path):
    """A real SIGKILL of a study process while a run is in flight, then a rerun."""
    study = tmp_path / "study"
    script = textwrap.dedent(f"""
        import time, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_study import FakeRun, fake_config
        from cxr_fast.study import parse_study, run_cells

        class Slow(FakeRun):
            def __call__(self, cfg):
                if len(self.calls) == 1:  # the second cell never finishes
                    self.calls.append(None)
                    time.sleep(120)
                return super().__call__(cfg)

        run_cells(parse_study(fake_config()), {str(study)!r}, run_fn=Slow(), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (study / RESULTS).exists():
            assert proc.poll() is None, "the study process died on its own"
            time.sleep(0.2)
        time.sleep(0.5)
        assert cell_ids(study) == ["Nodule/resnet34-e1/r32"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rerun = FakeRun()
    run_cells(parse_study(fake_config()), study, run_fn=rerun, progress=False)  # the lock died with the process
    assert rerun.calls == [("Nodule", 64), ("Mass", 32), ("Mass", 64)]
    ids = cell_ids(study)
    assert len(ids) == len(set(ids)) == 4


def test_changed_settings_in_the_same_folder_are_refused(tmp_path):
    cfg = parse_study(fake_config(n_labels=1))
    run_cells(cfg, tmp_path, run_fn=FakeRun(), progress=False)
    with pytest.raises(CxrError, match="other settings"):
        run_cells(apply_overrides(cfg, lr=0.1), tmp_path, run_fn=FakeRun(), progress=False)


def test_one_driver_per_study_folder(tmp_path):
    cfg = parse_study(fake_config(n_labels=1))
    with study_lock(tmp_path):
        with pytest.raises(CxrError, match="in use"):
            run_cells(cfg, tmp_path, run_fn=FakeRun(), progress=False)
    assert ResultsStore(tmp_path / RESULTS).rows() == []


def test_run_errors_stop_the_study_and_keep_finished_rows(tmp_path):
    class Failing(FakeRun):
        def __call__(self, cfg):
            if cfg.res == 64:
                raise CxrError("boom")
            return super().__call__(cfg)

    with pytest.raises(CxrError, match="boom"):
        run_cells(parse_study(fake_config(n_labels=1)), tmp_path, executor=LocalExecutor(), run_fn=Failing(),
                  progress=False)
    assert cell_ids(tmp_path) == ["Nodule/resnet34-e1/r32"]


# ---------------------------------------------------------------------------------------------- real training


def check_tiny_study(study: Path, summary) -> None:
    rows = read_jsonl(study / RESULTS)
    assert sorted(r["cell_id"] for r in rows) == ["Infiltration/resnet34-e1/r32", "Infiltration/resnet34-e1/r48"]
    ids = []
    for r in rows:
        assert 0.0 <= r["auc"] <= 1.0 and r["auc_sd"] >= 0 and r["n_pos"] > 0 and r["n_neg"] > 0
        run = study / r["run_dir"]
        assert (run / "metrics.json").is_file() and (run / "config.yaml").is_file()
        with np.load(run / "predictions.npz") as z:
            ids.append(sorted(z["image_ids"].astype(str).tolist()))
        assert json.loads((run / "metrics.json").read_text())["auc"] == pytest.approx(r["auc"])
    assert ids[0] == ids[1]  # both resolutions were scored on the same validation images
    stores = list((study / "stores").iterdir())  # one store per label, decoded once for both resolutions
    assert len(stores) == 1
    manifest = json.loads((stores[0] / "manifest.json").read_text())
    assert sorted(manifest["formats"]["cache"]) == [32, 48]
    assert summary.cells == 2 and len(summary.rows) == 2


def test_tiny_grid_on_the_phantom_runs_real_training(tiny_phantom, tmp_path, one_thread):
    cfg = parse_study(tiny_config(tiny_phantom))
    summary = run_cells(cfg, tmp_path / "study", progress=False)
    check_tiny_study(tmp_path / "study", summary)
    again = run_cells(cfg, tmp_path / "study", progress=False)  # finished: nothing retrains, nothing duplicates
    assert again.ran == 0 and len(read_jsonl(tmp_path / "study" / RESULTS)) == 2
    # The report of this real study holds the store's numbers.
    import csv

    from cxr_fast.report.build import make_report

    make_report(tmp_path / "study")
    with open(tmp_path / "study" / "report" / "table2.csv", newline="") as fh:
        table = {int(r["res"]): r for r in csv.DictReader(fh)}
    for row in read_jsonl(tmp_path / "study" / RESULTS):
        assert float(table[row["res"]]["auc"]) == pytest.approx(row["auc"], abs=1e-12)
        assert float(table[row["res"]]["auc_sd"]) == pytest.approx(row["auc_sd"], abs=1e-12)
    assert (tmp_path / "study" / "report" / "figure2.png").is_file()


def test_ray_executor_runs_the_tiny_grid_on_a_local_ray(tiny_phantom, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    # Without --ray-address the study starts a Ray of its own: it never joins a cluster named elsewhere.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    cfg = parse_study(tiny_config(tiny_phantom))
    summary = run_cells(cfg, tmp_path / "ray", executor=RayExecutor(num_cpus=2), progress=False)
    check_tiny_study(tmp_path / "ray", summary)
    # A user error inside a task reaches the driver as a one-line CxrError naming the cell.
    bad = parse_study(tiny_config(tiny_phantom, val_fraction=0.02))
    with pytest.raises(CxrError, match="Infiltration/resnet34-e1/r32|Infiltration/resnet34-e1/r48"):
        run_cells(bad, tmp_path / "bad", executor=RayExecutor(num_cpus=2), progress=False)


def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CxrError, match=r"pip install cxr-fast\[ray\]"):
        RayExecutor().run([object()], lambda c: {}, lambda j, m: None)  # type: ignore[list-item]


def test_cli_dry_run_lists_cells(tmp_path, capsys):
    from cxr_fast.cli import main

    assert main(["study", str(REPO / "configs" / "paper.yaml"), "--out", str(tmp_path), "--dry-run",
                 "--only", "table3"]) == 0
    out = capsys.readouterr().out
    assert "36 cells" in out and "Mass/densenet121-e10/r600" in out and "Emphysema" not in out
    assert not (tmp_path / RESULTS).exists()


def test_weights_file_sha256_is_in_every_record_and_in_the_fingerprint(tiny_phantom, tmp_path, one_thread):
    import hashlib

    import torch
    from torchvision import models as tv

    torch.manual_seed(0)
    weights = tmp_path / "r34.pth"
    torch.save(tv.resnet34(weights=None).state_dict(), weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    grid = {"name": "table2", "labels": ["Infiltration"], "resolutions": [32], "archs": ["resnet34"], "epochs": 1}
    cfg = parse_study({"name": "w", "train": {**TINY_TRAIN, "data": str(tiny_phantom), "init": "imagenet",
                                             "weights": str(weights)}, "grids": [grid]})
    run_cells(cfg, tmp_path / "study", progress=False)
    [row] = read_jsonl(tmp_path / "study" / RESULTS)
    run = tmp_path / "study" / row["run_dir"]
    metrics = json.loads((run / "metrics.json").read_text())
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert row["init"] == metrics["init"] == config["init"] == "imagenet"
    assert row["weights_sha256"] == metrics["weights_sha256"] == config["weights_sha256"] == sha
    # Other weights are other settings: the finished cell refuses them.
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in torch.load(weights).items()}, weights)
    with pytest.raises(CxrError, match="other settings"):
        run_cells(cfg, tmp_path / "study", progress=False)
