"""A study's ``pack:``: compatible cells train as packed jobs, and each cell still gets one run folder and one row.

The packed step itself is held to K separate runs in ``test_packed``; here: which cells pack, that a packed study
writes what an unpacked one writes, that a job partly finished trains only what is missing, that a kill -9 during
a packed job loses nothing and duplicates nothing, that a resumed packed job trains as an uninterrupted one, and
that Ray runs packed jobs.
"""

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
from cxr_fast.executors import RayExecutor
from cxr_fast.io import read_jsonl, write_text
from cxr_fast.schema.run import RunConfig
from cxr_fast.study import RESULTS, apply_overrides, checked_cells, parse_study, run_cells
from cxr_fast.study.packing import pack_jobs, packed_bytes
from cxr_fast.train.packed_run import run_packed

sys.path.insert(0, str(Path(__file__).parent))
from test_study import TINY_TRAIN  # noqa: E402 - the tiny grid's settings, shared with the unpacked tests

RUN_FILES = ("config.yaml", "log.jsonl", "checkpoint.pt", "predictions.npz", "metrics.json")


def seeded_config(data: Path, seeds=(0, 1), pack="auto", **train) -> dict:
    """One label at two resolutions, each cell replicated over ``seeds``: the seeds of a resolution pack."""
    return {"name": "packed", "pack": pack, "seeds": list(seeds), "train": {**TINY_TRAIN, "data": str(data), **train},
            "grids": [{"name": "table2", "labels": ["Infiltration"], "resolutions": [32, 48], "archs": ["resnet34"],
                       "epochs": 1}]}


def grid_config(pack="auto", **train) -> dict:
    return {"name": "g", "pack": pack, "seeds": [0, 1],
            "train": {"init": "random", "data": "/nonexistent", "device": "cpu", **train},
            "grids": [{"name": "table2", "labels": ["Nodule", "Mass", "Effusion"], "resolutions": [32, 64],
                       "epochs": 1}]}


def no_limit(cell):
    return None


def test_pack_is_a_study_setting_auto_or_a_number_and_a_flag_overrides_it():
    assert parse_study(grid_config()).pack == "auto"
    assert parse_study({k: v for k, v in grid_config().items() if k != "pack"}).pack == 1  # as before packing
    assert apply_overrides(parse_study(grid_config()), pack="3").pack == 3
    assert parse_study(grid_config(pack=2)).to_dict()["pack"] == 2
    for bad in (0, "two", 1.5, True):
        with pytest.raises(CxrError, match="pack must be auto or a whole number") as err:
            parse_study(grid_config(pack=bad))
        assert "\n" not in str(err.value)


def test_only_cells_that_agree_in_all_but_their_own_label_seed_and_init_pack():
    cells = checked_cells(parse_study(grid_config()))  # 3 labels x 2 seeds x 2 resolutions
    sizes = {c.cell_id: 80 for c in cells}
    jobs, notes = pack_jobs(cells, "auto", sizes, no_limit)
    assert sorted(len(j) for j in jobs) == [6, 6] and not notes
    for job in jobs:
        assert len({c.res for c in job}) == 1 and {c.label for c in job} == {"Nodule", "Mass", "Effusion"}
    assert [len(j) for j in pack_jobs(cells, 4, sizes, no_limit)[0]] == [3, 3, 3, 3]  # the fewest, even
    assert [len(j) for j in pack_jobs(cells, 1, sizes, no_limit)[0]] == [1] * 12
    # Fewer training images (one label's subsample lost an image): a packed step takes batches of one size.
    sizes[cells[0].cell_id] = 79
    assert sorted(len(j) for j in pack_jobs(cells, "auto", sizes, no_limit)[0]) == [1, 5, 6]
    # A setting that is not per model (here the learning rate of one grid) keeps its cells apart.
    cfg = parse_study(grid_config())
    cfg.grids.append(type(cfg.grids[0])("other", ["Nodule"], [32], ["resnet34"], 1, {"lr": 1e-3}))
    cells = checked_cells(cfg)
    jobs, _ = pack_jobs(cells, "auto", {c.cell_id: 80 for c in cells}, no_limit)
    assert any(len(j) == 2 and {c.config.lr for c in j} == {1e-3} for j in jobs)


def test_auto_packs_what_fits_and_a_number_that_does_not_fit_is_refused():
    cells = [c for c in checked_cells(parse_study(grid_config())) if c.res == 64]
    sizes = {c.cell_id: 80 for c in cells}
    room = lambda cell: packed_bytes(cell, 2)  # noqa: E731 - a device with room for two models
    assert [len(j) for j in pack_jobs(cells, "auto", sizes, room)[0]] == [2, 2, 2]
    with pytest.raises(CxrError, match=r"pack 3: 3 resnet34 models at 64 px.*at most 2 fit") as err:
        pack_jobs(cells, 3, sizes, room)
    assert "\n" not in str(err.value)


def test_compiled_runs_are_not_packed_and_the_study_says_so():
    cells = checked_cells(parse_study(grid_config(compile=True)))
    jobs, notes = pack_jobs(cells, "auto", {c.cell_id: 80 for c in cells}, no_limit)
    assert all(len(j) == 1 for j in jobs) and len(notes) == 2 and "compile" in notes[0]


def _rows(study: Path) -> list[dict]:
    return read_jsonl(study / RESULTS)


def test_a_packed_study_writes_what_an_unpacked_one_writes(tiny_phantom, tmp_path, one_thread):
    packed = run_cells(parse_study(seeded_config(tiny_phantom)), tmp_path / "packed", progress=False)
    alone = run_cells(parse_study(seeded_config(tiny_phantom, pack=1)), tmp_path / "alone", progress=False)
    assert packed.ran == alone.ran == 4
    rows, plain = _rows(tmp_path / "packed"), _rows(tmp_path / "alone")
    assert sorted(r["cell_id"] for r in rows) == sorted(r["cell_id"] for r in plain)
    assert len({r["cell_id"] for r in rows}) == 4
    by_id = {r["cell_id"]: r for r in plain}
    for row in rows:
        assert set(row) == set(by_id[row["cell_id"]]), "a packed cell's row has the fields of an unpacked one"
        assert row["pack"]["k"] == 2 and len(set(row["pack"]["runs"])) == 2 and by_id[row["cell_id"]]["pack"] == {"k": 1}
        assert row["run_dir"].endswith(row["pack"]["position"]), "each member names its own run folder"
        assert row["n_pos"] == by_id[row["cell_id"]]["n_pos"] and row["seed"] == by_id[row["cell_id"]]["seed"]
        run = tmp_path / "packed" / row["run_dir"]
        assert all((run / name).is_file() for name in RUN_FILES)
        assert json.loads((run / "metrics.json").read_text())["auc"] == pytest.approx(row["auc"])
    for study in ("packed", "alone"):  # the same validation images for every resolution of a label and seed
        for seed in (0, 1):
            ids = []
            for row in _rows(tmp_path / study):
                if row["seed"] == seed:
                    with np.load(tmp_path / study / row["run_dir"] / "predictions.npz") as z:
                        ids.append(sorted(z["image_ids"].astype(str).tolist()))
            assert len(ids) == 2 and ids[0] == ids[1]


def test_a_packed_job_partly_finished_trains_only_the_missing_runs(tiny_phantom, tmp_path, one_thread):
    study = tmp_path / "study"
    cfg = parse_study(seeded_config(tiny_phantom, seeds=(0, 1, 2)))
    run_cells(cfg, study, progress=False)
    rows = _rows(study)
    r32 = sorted((r for r in rows if r["res"] == 32), key=lambda r: r["seed"])
    # As if killed after the job wrote seed 0's record but before the rows: no rows at 32 px, seed 1's and 2's
    # folders gone. The rerun packs the three cells again, reuses seed 0's finished run, trains the other two.
    kept = [r for r in rows if r["res"] != 32]
    write_text(study / RESULTS, "".join(json.dumps(r) + "\n" for r in kept))
    finished = study / r32[0]["run_dir"] / "metrics.json"
    before = finished.stat().st_mtime_ns
    for r in r32[1:]:
        for f in (study / r["run_dir"]).iterdir():
            f.unlink()
        (study / r["run_dir"]).rmdir()
    again = run_cells(cfg, study, progress=False)
    assert again.already_done == 3 and again.ran == 3
    assert finished.stat().st_mtime_ns == before, "the finished run was reused, not trained again"
    new = {r["cell_id"]: r for r in _rows(study)}
    assert len(new) == 6 == len(_rows(study))
    for r in r32[1:]:
        assert new[r["cell_id"]]["pack"]["k"] == 2, "the two missing runs trained packed"
    assert new[r32[0]["cell_id"]]["auc"] == r32[0]["auc"]


def test_a_killed_packed_job_resumes_with_every_cell_once(tiny_phantom, tmp_path):
    """A real SIGKILL of a study process inside a packed job (after the first epoch's checkpoints), then a rerun."""
    study = tmp_path / "study"
    config = seeded_config(tiny_phantom)
    config["grids"][0]["epochs"] = 3
    config["grids"][0]["resolutions"] = [48]
    config["train"]["max_batches"] = 2
    path = tmp_path / "study.json"
    path.write_text(json.dumps(config))
    script = textwrap.dedent(f"""
        import json, torch
        torch.set_num_threads(1)
        from cxr_fast.study import parse_study, run_cells
        run_cells(parse_study(json.load(open({str(path)!r}))), {str(study)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list((study / "runs").rglob("checkpoint.pt")):
            assert proc.poll() is None, "the study process ended before its first checkpoint"
            time.sleep(0.1)
        assert list((study / "runs").rglob("checkpoint.pt")), "no checkpoint within 240 s"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (study / RESULTS).exists() or _rows(study) == []  # the job had not finished
    summary = run_cells(parse_study(config), study, progress=False)
    rows = _rows(study)
    assert summary.ran == 2 and len(rows) == 2 == len({r["cell_id"] for r in rows})
    resumed = [json.loads((study / r["run_dir"] / "metrics.json").read_text())["resumed_from_epoch"] for r in rows]
    assert max(resumed) >= 1, "the rerun continued from the killed job's checkpoints"
    for r in rows:
        log = read_jsonl(study / r["run_dir"] / "log.jsonl")
        assert [line["epoch"] for line in log] == [1, 2, 3]  # each epoch once, none lost, none doubled


def test_a_resumed_packed_job_trains_exactly_as_an_uninterrupted_one(tiny_phantom, tmp_path, one_thread):
    """Checkpoints unpack each model, its optimizer state and its dropout stream; packing them again continues
    the same computation bit for bit (fastai07: dropout in the head; SGD momentum)."""
    base = dict(TINY_TRAIN, data=str(tiny_phantom), label="Infiltration", res=32, recipe="fastai07", device="cpu",
                max_batches=2)

    def cfgs(folder: str, epochs: int) -> list[RunConfig]:
        return [RunConfig(**{**base, "seed": s, "epochs": epochs, "out": str(tmp_path / folder / f"s{s}")})
                for s in (0, 1)]

    straight = run_packed(cfgs("straight", 2))
    run_packed(cfgs("resumed", 1))
    resumed = run_packed(cfgs("resumed", 2))
    for a, b in zip(straight, resumed):
        assert b["resumed_from_epoch"] == 1 and a["pack"]["k"] == 2
        with np.load(Path(a["out"]) / "predictions.npz") as x, np.load(Path(b["out"]) / "predictions.npz") as y:
            assert np.array_equal(x["scores"], y["scores"]) and np.array_equal(x["scores_plain"], y["scores_plain"])
    assert straight[0]["auc"] == resumed[0]["auc"]


def test_packed_runs_must_differ_only_per_model(tmp_path):
    a = RunConfig(label="Nodule", res=32, init="random", out=str(tmp_path / "a"))
    with pytest.raises(CxrError, match=r"differ in res \(32 vs 48\)"):
        run_packed([a, a.replace(label="Mass", res=48, out=str(tmp_path / "b"))])
    with pytest.raises(CxrError, match="its own --out"):
        run_packed([a, a.replace(label="Mass")])


def test_ray_runs_packed_jobs(tiny_phantom, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    cfg = parse_study(seeded_config(tiny_phantom))
    summary = run_cells(cfg, tmp_path / "ray", executor=RayExecutor(num_cpus=2), progress=False)
    rows = _rows(tmp_path / "ray")
    assert summary.ran == 4 and len({r["cell_id"] for r in rows}) == 4 == len(rows)
    assert all(r["pack"]["k"] == 2 for r in rows)
