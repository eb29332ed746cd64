"""``cxr-fast plan --pack``: which runs pack together, how many fit, and what a packed step costs (CPU only)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from cxr_fast.cost import devices
from cxr_fast.cost.plan import (
    PACK_KEY,
    PlanCell,
    pack_groups,
    packed_memory_bytes,
    plan_study,
    step_works,
)
from cxr_fast.errors import CxrError
from cxr_fast.units import GIB
from cxr_fast.vocabulary import parse_pack

REPO = Path(__file__).resolve().parents[1]
LABELS = ("Emphysema", "Cardiomegaly", "Hernia", "Atelectasis", "Edema", "Effusion", "Mass", "Nodule")


def _cell(label: str = "Nodule", res: int = 32, epochs: int = 1, arch: str = "resnet34", **settings) -> PlanCell:
    return PlanCell(f"{label}/{arch}-e{epochs}/r{res}", label, arch, res, epochs,
                    {"subsample_size": 400, "batch_size": 8, "tta": 4, "precision": "bf16", **settings})


def test_pack_is_auto_or_a_whole_number_of_models_and_nothing_else():
    assert parse_pack("auto") == "auto" and parse_pack("1") == 1 and parse_pack("8") == 8
    for bad in ("0", "-2", "2.5", "", "two", "all"):
        with pytest.raises(CxrError, match="--pack must be auto or a whole number") as err:
            parse_pack(bad)
        assert repr(bad) in str(err.value) and "\n" not in str(err.value)


def test_only_compatible_cells_are_grouped():
    base = {"arch": "resnet34", "res": 32, "recipe": "fastai07", "epochs": 3, "batch_size": 8, "precision": "bf16",
            "optimizer": "sgd", "augment": True, "tta": 4, "steps_per_epoch": 40, "eval_batches": 10}
    other = {"arch": "densenet121", "res": 64, "recipe": "modern", "epochs": 10, "batch_size": 16,
             "precision": "fp32", "optimizer": "adam", "augment": False, "tta": 0, "steps_per_epoch": 41,
             "eval_batches": 11}
    assert set(other) == set(PACK_KEY)
    rows = [dict(base, cell_id="a"), dict(base, cell_id="b")] + [dict(base, cell_id=k, **{k: v}) for k, v in other.items()]
    rows.append(dict(base, cell_id="c"))
    assert pack_groups(rows) == [[0, 1, len(rows) - 1]] + [[i] for i in range(2, len(rows) - 1)]
    # A planned grid: the labels of one resolution and schedule pack; another resolution or schedule does not.
    doc = plan_study([_cell("Mass"), _cell("Nodule"), _cell("Mass", tta=2), _cell("Hernia"),
                      _cell("Edema", epochs=2), _cell("Edema", subsample_size=800)], devices.resolve("h100"))
    assert pack_groups(doc["cells"]) == [[0, 1, 3], [2], [4], [5]]


def test_pack_1_is_the_unpacked_grid_with_graphs():
    doc = plan_study([_cell(label) for label in LABELS[:3]] + [_cell("Mass", epochs=2)], devices.resolve("h100"),
                     pack=1)
    totals = doc["pack"]["totals"]
    assert totals["packed_graphs"]["jobs"] == 4 and [g["k"] for g in doc["pack"]["groups"]] == [1, 1]
    for gpus in ("1", "8"):
        assert totals["packed_graphs"]["wall_s"][gpus] == pytest.approx(totals["graphs"]["wall_s"][gpus])
    assert totals["graphs"]["wall_s"]["1"] == pytest.approx(doc["totals"]["graphs"]["wall_s"])
    assert totals["eager"]["wall_s"]["1"] == pytest.approx(doc["totals"]["eager"]["wall_s"])


def test_packing_a_launch_bound_grid_beats_graphs_but_never_the_roofline_of_its_work():
    dev = devices.resolve("h100")
    cells = [_cell(label) for label in LABELS]
    doc = plan_study(cells, dev, pack="auto")
    assert all(c["graphs"]["bound"] == "launches" for c in doc["cells"])
    p = doc["pack"]
    assert [g["k"] for g in p["groups"]] == [8] and p["totals"]["packed_graphs"]["jobs"] == 1
    one = {mode: t["wall_s"]["1"] for mode, t in p["totals"].items()}
    assert one["packed_graphs"] < 0.8 * one["graphs"] < one["eager"]

    # No kernel runs faster than its FLOPs at the compute rate or its bytes at the bandwidth, for all 8 runs.
    def pure(step) -> float:
        rate, bw = dev.compute_rate(doc["cells"][0]["precision"]), dev.sustained_bandwidth
        return sum(n * max(f / rate, b / bw) for f, b, n in step.total.kernels)

    roofline = 0.0
    for cell, row in zip(cells, doc["cells"]):
        _, train, plain, final = step_works(cell, dev)
        roofline += row["epochs"] * row["steps_per_epoch"] * pure(train) \
            + row["eval_batches"] * (row["epochs"] * pure(plain) + pure(final))
    packed_train_eval = sum(j["train_s"] + j["eval_s"] for j in p["jobs"])
    assert roofline < packed_train_eval <= one["packed_graphs"]
    # More GPUs never take longer, and never finish faster than 1/8 of the total.
    for t in p["totals"].values():
        assert t["wall_s"]["1"] / 8 * (1 - 1e-9) <= t["wall_s"]["8"] <= t["wall_s"]["1"]  # 8 equal runs: = 1/8


def test_auto_packs_the_most_models_that_fit_and_a_forced_k_that_does_not_is_one_line():
    h100 = devices.resolve("h100")
    row = plan_study([_cell()], h100)["cells"][0]
    three = packed_memory_bytes(row, 3, h100)
    assert three - packed_memory_bytes(row, 2, h100) == packed_memory_bytes(row, 2, h100) - packed_memory_bytes(row, 1, h100)
    # A card with room for three of these runs and a half.
    small = dataclasses.replace(h100, memory_gib=(three + (three - packed_memory_bytes(row, 2, h100)) / 2) / GIB)
    cells = [_cell(label) for label in LABELS[:5]]
    doc = plan_study(cells, small, pack="auto")
    (group,) = doc["pack"]["groups"]
    assert group["k"] == 3 and group["jobs"] == [3, 2] and group["memory_gib"] <= group["capacity_gib"]
    assert sorted(len(j["cells"]) for j in doc["pack"]["jobs"]) == [2, 3]
    assert plan_study(cells, small, pack=2)["pack"]["groups"][0]["jobs"] == [2, 2, 1]
    for forced, k in ((4, 4), (9, 5)):  # at most the group's cells
        with pytest.raises(CxrError, match=rf"--pack {forced}: {k} resnet34 models at 32 px.* at most 3 fit") as err:
            plan_study(cells, small, pack=forced)
        assert "\n" not in str(err.value)


def test_cli_plan_prints_the_pack_table_and_refuses_a_bad_pack(tmp_path, capsys):
    from cxr_fast.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "train": {"init": "random", "precision": "bf16"}, "grids": [
        {"name": "g", "labels": ["Mass", "Nodule", "Hernia"], "resolutions": [32], "epochs": 1}]}))
    assert main(["plan", str(config), "--device", "h100", "--pack", "two"]) == 2
    err = capsys.readouterr().err
    assert "--pack must be auto or a whole number of models of at least 1, got 'two'" in err and err.count("\n") == 1
    out = tmp_path / "plan.json"
    assert main(["plan", str(config), "--device", "h100", "--pack", "auto", "--no-cells", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| packed + CUDA graphs | 1 |" in text and "| total | jobs | 1 GPU | 8 GPUs |" in text
    assert "| resnet34 | 32 | fastai07 | 1 | 8 | bf16 | 3 | 3 | 3 |" in text
    doc = json.loads(out.read_text())
    assert doc["pack"]["pack"] == "auto" and [g["k"] for g in doc["pack"]["groups"]] == [3]
    assert set(doc["pack"]["totals"]) == {"eager", "graphs", "packed_graphs"}


# The baseline packing is priced against: K runs, each its own process, sharing one GPU (CUDA MPS).

def test_mps_sharing_is_free_for_launch_bound_kernels_and_worth_nothing_for_compute_bound_ones():
    from cxr_fast.cost.estimate import work_time
    from cxr_fast.cost.plan import shared_work
    from cxr_fast.cost.work import Work

    dev = devices.resolve("h100")
    rate = dev.compute_rate("bf16")
    tiny = Work(ops=120, kernels=((1e4, 1e4, 100),), syncs=1)  # each kernel far below a launch
    big = Work(ops=120, kernels=((1e11, 1e6, 100),), syncs=1)  # each kernel milliseconds of compute
    for graphs in (False, True):
        for k in (2, 4, 8):
            one = work_time(tiny, dev, rate, graphs).seconds
            assert work_time(shared_work(tiny, k), dev, rate, graphs).seconds == pytest.approx(one)
            one = work_time(big, dev, rate, graphs)
            assert one.bound == "compute"
            shared = work_time(shared_work(big, k), dev, rate, graphs).seconds
            assert k * one.seconds * 0.99 <= shared <= k * one.seconds
    assert shared_work(big, 1) is big


def test_shared_runs_gain_on_a_launch_bound_grid_and_time_slicing_gains_nothing():
    from cxr_fast.cost.plan import shared_job

    dev = devices.resolve("h100")
    cells = [_cell(label) for label in LABELS]
    doc = plan_study(cells, dev, pack="auto")
    assert all(c["eager"]["bound"] == "launches" for c in doc["cells"])
    p = doc["pack"]
    one = {mode: t["wall_s"]["1"] for mode, t in p["totals"].items()}
    shared = {mode: t["wall_s"]["1"] for mode, t in p["shared"]["totals"].items()}
    assert [g["k_shared"] for g in p["groups"]] == [8] and p["shared"]["totals"]["shared_mps"]["jobs"] == 1
    assert shared["shared_mps"] < 0.5 * one["eager"] and shared["shared_mps_graphs"] < 0.5 * one["graphs"]
    assert shared["shared_mps_graphs"] < shared["shared_mps"]
    # Without MPS the runs take turns: their training and evaluation are the runs' own, summed.
    sliced = shared_job(cells[0], doc["cells"], dev, graphs=False, mps=False)
    assert sliced["train_s"] + sliced["eval_s"] == pytest.approx(
        sum(c["eager"]["train_s"] + c["eager"]["eval_s"] for c in doc["cells"]))


def test_pack_1_shares_nothing():
    doc = plan_study([_cell(label) for label in LABELS[:3]], devices.resolve("h100"), pack=1)
    p = doc["pack"]
    for mode, alone in (("shared_mps", "eager"), ("shared_mps_graphs", "graphs")):
        for gpus in ("1", "8"):
            assert p["shared"]["totals"][mode]["wall_s"][gpus] == pytest.approx(p["totals"][alone]["wall_s"][gpus])


def test_shared_runs_each_need_their_own_context_so_fewer_may_share_than_pack():
    from cxr_fast.cost.memory import CUDA_CONTEXT_BYTES
    from cxr_fast.cost.plan import shared_job, shared_memory_bytes

    h100 = devices.resolve("h100")
    row = plan_study([_cell()], h100)["cells"][0]
    assert shared_memory_bytes(row, 3, h100) == packed_memory_bytes(row, 3, h100) + 2 * CUDA_CONTEXT_BYTES
    # A card where three packed models fit but three processes do not.
    small = dataclasses.replace(h100, memory_gib=(packed_memory_bytes(row, 3, h100) + CUDA_CONTEXT_BYTES) / GIB)
    cells = [_cell(label) for label in LABELS[:3]]
    doc = plan_study(cells, small, pack=3)
    (group,) = doc["pack"]["groups"]
    assert group["k"] == 3 and group["k_shared"] == 2 and group["shared_memory_gib"] <= small.memory_gib
    assert sorted(j["k"] for j in doc["pack"]["shared"]["jobs"]["shared_mps"]) == [1, 2]
    with pytest.raises(CxrError, match=r"3 resnet34 runs at 32 px.* sharing one h100 need .* at most 2 fit") as err:
        shared_job(cells[0], doc["cells"], small, graphs=True)
    assert "\n" not in str(err.value)


def test_cli_plan_prints_the_shared_baseline_beside_packing(tmp_path, capsys):
    from cxr_fast.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "train": {"init": "random", "precision": "bf16"}, "grids": [
        {"name": "g", "labels": ["Mass", "Nodule", "Hernia"], "resolutions": [32], "epochs": 1}]}))
    assert main(["plan", str(config), "--device", "h100", "--pack", "auto", "--no-cells"]) == 0
    text = capsys.readouterr().out
    assert "| shared (MPS), K per GPU | 1 |" in text and "| shared (MPS) + CUDA graphs | 1 |" in text
    assert "| resnet34 | 32 | fastai07 | 1 | 8 | bf16 | 3 | 3 | 3 |" in text and "Without MPS they time-slice" in text
