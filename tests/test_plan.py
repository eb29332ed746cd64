"""``cxr-fast plan``: counted work against hand counts and published counts, the estimate's arithmetic,
the plan's scaling, the paper's 1080 Ti memory case, device profiles and planned-vs-actual (CPU only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from cxr_fast.cost import devices
from cxr_fast.cost.devices import DeviceProfile
from cxr_fast.cost.estimate import fit_rate, interpolate, step_time, work_time
from cxr_fast.cost.plan import (
    PlanCell,
    makespan,
    plan_cell,
    plan_study,
    split_sizes,
    steps_per_epoch,
)
from cxr_fast.cost.work import StepWork, Work, _Counter, forward_flops, train_work
from torch import nn

from cxr_fast.errors import CxrError

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Counting


class TinyNet(nn.Module):
    """conv 1->4, 3x3, pad 1, no bias, on 8x8; flatten; linear 256->2 with bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_flops_of_a_small_conv_net_match_a_hand_count():
    # Conv: 4 x 8 x 8 outputs, each 1 x 3 x 3 multiply-accumulates = 2,304 MACs; linear 256 x 2 = 512 MACs.
    # FLOPs count a MAC as 2: forward = 2 x 2,816 = 5,632.
    with torch.device("meta"):
        net = TinyNet()
    assert forward_flops(net, res=8) == 2 * (4 * 8 * 8 * 9 + 256 * 2)
    x = torch.empty(1, 1, 8, 8, device="meta")  # the input needs no gradient
    with _Counter() as c:
        net(x).sum().backward()
    # Backward: conv weight gradient only (2,304 MACs), linear input and weight gradients (512 each).
    assert c.work().flops == 2 * (2304 + 512) + 2 * (2304 + 512 + 512)
    # Bytes of the forward conv kernel: input 64 + weight 36 + output 256 floats.
    with _Counter() as c:
        net.conv(x)
    assert c.work().kernels == ((2 * 2304, 4 * (64 + 36 + 256), 1),)


def test_resnet34_forward_at_224_px_is_its_published_count():
    # torchvision's ResNet34 (3 channels, 1000 classes) is published at 3.66 G multiply-accumulates
    # (torchvision's weights table calls them "GFLOPS"); our counts are FLOPs, 2 per MAC.
    from torchvision.models import resnet34

    with torch.device("meta"):
        net = resnet34()
    macs = forward_flops(net, res=224, channels=3) / 2
    assert abs(macs - 3.66e9) / 3.66e9 < 0.05
    # The study's ResNet34 (one gray channel, fastai 0.7's head) is the same network within 5%.
    from cxr_fast.models import build_model

    with torch.device("meta"):
        ours = build_model("resnet34")
    assert abs(forward_flops(ours, res=224) / 2 - 3.66e9) / 3.66e9 < 0.05


def test_step_count_agrees_with_flop_counter_mode_and_is_three_forwards():
    from torch.utils.flop_counter import FlopCounterMode

    from cxr_fast.models import build_model

    step = train_work("resnet34", 64, 4, "fp32", foreach=True)
    with torch.device("meta"):
        model = build_model("resnet34")
    forward = forward_flops(model, res=64, batch=4)
    # forward + backward (input and weight gradients) = 3 forwards, bar the stem's input gradient.
    assert 2.9 * forward < step.graphable.flops < 3.0 * forward
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.empty(4, 1, 64, 64, device="meta")).sum().backward()
    assert step.graphable.flops == pytest.approx(counter.get_total_flops(), rel=1e-6)


def test_dispatched_ops_are_what_eager_pytorch_launches():
    # The measurement (CPU dispatch mode, SGD foreach): 522 ops for ResNet34, 2,804 for DenseNet121;
    # this step also counts the fastai head, the weighted loss and zero_grad, so a little more.
    r34 = train_work("resnet34", 32, 8, "fp32", foreach=True).graphable
    d121 = train_work("densenet121", 32, 8, "fp32", foreach=True).graphable
    assert 500 < r34.ops < 650 and 2700 < d121.ops < 3000
    assert r34.n_kernels < r34.ops  # views and allocations launch nothing
    loop = train_work("resnet34", 32, 8, "fp32", foreach=False).graphable
    assert loop.ops > r34.ops + 200  # the CPU default steps each of ~110 parameters on its own


def test_mixed_precision_moves_fewer_bytes_but_adds_the_casts():
    fp32 = train_work("resnet34", 224, 8, "fp32").graphable
    bf16 = train_work("resnet34", 224, 8, "bf16").graphable
    assert bf16.flops == fp32.flops
    assert 0.5 * fp32.bytes < bf16.bytes < 0.8 * fp32.bytes
    # 36 conv weights cast and their gradients cast back, the image cast, and the float32 head's input
    # cast with its gradient: what autocast adds to a step.
    assert bf16.ops == fp32.ops + 2 * 36 + 1 + 2


# --------------------------------------------------------------------------------------------------
# The estimate


def _gpu(**kw) -> DeviceProfile:
    base = dict(name="fake", title="fake gpu", kind="gpu", source="modelled", memory_gib=16,
                peak_flops={"fp32": 2e12, "fp16": 2e12}, bandwidth=1e12, compute_share=0.5, bandwidth_share=1.0,
                launch_s=5e-6, graph_kernel_s=1e-6, graph_launch_s=10e-6, sync_s=20e-6)
    return DeviceProfile(**{**base, **kw})


def test_each_kernel_takes_the_larger_of_compute_memory_and_its_launch():
    dev = _gpu()
    big = Work(ops=1, kernels=((1e9, 1e6, 1),))  # 1 ms of compute at 1e12, 1 us of memory
    t = work_time(big, dev, rate=1e12)
    assert t.seconds == pytest.approx(1e-3) and t.bound == "compute"
    tiny = Work(ops=3, kernels=((10.0, 1e3, 2),))  # two kernels far shorter than a launch, one view
    t = work_time(tiny, dev, rate=1e12)
    assert t.seconds == pytest.approx(3 * 5e-6) and t.bound == "launches"
    streaming = Work(ops=1, kernels=((0.0, 1e8, 1),))  # 100 us at 1 TB/s
    assert work_time(streaming, dev, rate=1e12).bound == "bandwidth"
    graph = work_time(tiny, dev, rate=1e12, graph=True)  # replayed: 1 us per kernel plus one launch
    assert graph.seconds == pytest.approx(2e-6 + 10e-6)
    cpu = _gpu(kind="cpu")  # synchronous: the launches add to the compute
    assert work_time(big, cpu, rate=1e12).seconds == pytest.approx(1e-3 + 5e-6)


def test_cuda_graphs_leave_the_loader_eager():
    dev = _gpu()
    step = StepWork(graphable=Work(100, ((0.0, 10.0, 100),)), eager=Work(40, ((0.0, 10.0, 10),)))
    assert step_time(step, dev, 1e12).seconds == pytest.approx(140 * 5e-6)
    assert step_time(step, dev, 1e12, graphs=True).seconds == pytest.approx(10e-6 + 100 * 1e-6 + 40 * 5e-6)


def test_a_fitted_rate_reproduces_the_timed_step():
    dev = _gpu(kind="cpu", launch_s=2e-6, bandwidth=1e10)
    work = Work(ops=50, kernels=((1e9, 1e7, 10), (0.0, 1e6, 40)))
    for rate in (1e10, 3e11):
        seconds = work_time(work, dev, rate).seconds
        assert fit_rate(work, dev, seconds) == pytest.approx(rate, rel=1e-6)
    assert interpolate([(1.0, 10.0), (100.0, 1000.0)], 10.0) == pytest.approx(100.0)
    assert interpolate([(1.0, 10.0), (100.0, 1000.0)], 1e6) == pytest.approx(1000.0)  # flat beyond the ends


def test_makespan_schedules_whole_runs_longest_first():
    assert makespan([1, 1, 1, 1, 4], 2, longest_first=True) == 4
    assert makespan([1, 1, 1, 1, 4], 2, longest_first=False) == 6  # config order: the long run comes last
    assert makespan([5, 4, 3, 3, 3], 2) == 10
    assert makespan([3, 3], 8) == 3
    with pytest.raises(CxrError, match="--gpus must be at least 1, got 0"):
        makespan([1], 0)


def test_split_and_steps_follow_the_trainer():
    assert split_sizes(20_000, 0.2) == (16_000, 4_000)
    assert steps_per_epoch(16_000, 8) == 2_000
    assert steps_per_epoch(17, 8) == 2  # a last batch of one image is dropped
    assert steps_per_epoch(18, 8) == 3
    assert steps_per_epoch(16_000, 8, max_batches=5) == 5


# --------------------------------------------------------------------------------------------------
# The plan


def _cell(res: int = 224, epochs: int = 3, size: int = 2_000, arch: str = "resnet34", **settings) -> PlanCell:
    return PlanCell(f"Nodule/{arch}-e{epochs}/r{res}", "Nodule", arch, res, epochs,
                    {"subsample_size": size, "batch_size": 8, "tta": 4, **settings})


def test_the_plan_scales_with_epochs_images_and_resolution():
    dev = devices.resolve("1080ti")
    base = plan_cell(_cell(), dev)["eager"]
    twice_epochs = plan_cell(_cell(epochs=6), dev)["eager"]
    twice_images = plan_cell(_cell(size=4_000), dev)["eager"]
    assert twice_epochs["train_s"] == pytest.approx(2 * base["train_s"])
    # evaluation: the plain view every epoch, plus the final 1 + 4 views once
    one, two = (plan_cell(_cell(epochs=e), dev)["eager"]["eval_s"] for e in (1, 2))
    per_epoch = two - one
    assert base["eval_s"] - two == pytest.approx(per_epoch)
    assert twice_epochs["eval_s"] - base["eval_s"] == pytest.approx(3 * per_epoch)
    assert 4 * per_epoch < one - per_epoch < 6 * per_epoch  # the final five views cost about five plain ones
    assert twice_images["train_s"] == pytest.approx(2 * base["train_s"])
    assert twice_images["eval_s"] == pytest.approx(2 * base["eval_s"])
    # Twice the side is 4x the pixels: a compute-bound card takes about 4x as long per step...
    big = plan_cell(_cell(res=448), dev)
    assert big["work_per_step"]["flops"] == pytest.approx(4 * plan_cell(_cell(), dev)["work_per_step"]["flops"],
                                                          rel=0.02)
    assert 3.5 < big["eager"]["train_s"] / base["train_s"] < 4.2
    assert big["eager"]["bound"] == "compute"
    # ...while a launch-bound one barely notices: on an H100 at 32 and 64 px the launches are the cost.
    h100 = devices.resolve("h100")
    small, double = plan_cell(_cell(res=32), h100), plan_cell(_cell(res=64), h100)
    assert small["eager"]["bound"] == "launches"
    assert double["eager"]["train_s"] / small["eager"]["train_s"] < 1.1
    assert small["graphs"]["train_s"] < small["eager"]["train_s"] / 2  # what CUDA graphs buy there


def test_the_1080ti_fits_densenet121_at_600_px_batch_8_in_fp32_but_not_16():
    from cxr_fast.cost.plan import fit_statements

    dev = devices.resolve("1080ti")
    cell = plan_cell(_cell(res=600, arch="densenet121", precision="fp32"), dev)
    assert cell["memory"]["max_batch_fp32"] == 10  # what `cxr-fast memory` predicts (README)
    assert cell["memory"]["fits"]
    lines = fit_statements([cell], dev)
    assert lines == ["densenet121 at 600 px in fp32 on 1080ti (11 GiB): batch 8 fits and batch 16 does not "
                     "(largest 10, model alone)"]
    # The resident split of a 20,000-image subsample at 600 px (6.7 GiB) does not fit beside it: auto
    # picks the cache there, as a run would; a config that insists on resident is told.
    full = plan_cell(_cell(res=600, arch="densenet121", size=20_000, precision="fp32"), dev)
    assert not full["memory"]["resident_fits"]
    assert full["loader"] == "cache" and "does not fit beside the model" in full["loader_why"]
    assert "loader_note" not in full
    asked = plan_cell(_cell(res=600, arch="densenet121", size=20_000, precision="fp32", loader="resident"), dev)
    assert asked["loader"] == "resident" and "set loader: auto or cache" in asked["loader_note"]
    assert plan_cell(_cell(res=600, arch="resnet34", size=20_000, precision="fp32"), dev)["loader"] == "resident"
    assert plan_cell(_cell(res=600, arch="densenet121", size=20_000, precision="fp32"),
                     devices.resolve("h100"))["loader"] == "resident"


def test_auto_keeps_the_resident_split_only_where_it_fits_beside_the_step(monkeypatch):
    import types

    import cxr_fast.cost.memcache as memcache
    from cxr_fast.cost.fit import choose_loader as rule
    from cxr_fast.schema.run import RunConfig
    from cxr_fast.train.parts import loader_for
    from cxr_fast.units import GIB

    def auto_for_memory(split: int, step: int, card: int) -> tuple[str, str]:  # the rule, on a GPU
        return rule("auto", True, lambda name: True, split, lambda: step, lambda: card)

    assert auto_for_memory(6 * GIB, 5 * GIB, 11 * GIB)[0] == "resident"
    name, why = auto_for_memory(7 * GIB, 5 * GIB, 11 * GIB)
    assert name == "cache" and "split 7.00 GiB + step 5.00 GiB predicted, card 11.0 GiB" in why
    # A run on a GPU asks the same question with the card's size and the predicted step.
    cuda = types.SimpleNamespace(type="cuda")
    monkeypatch.setattr("torch.cuda.get_device_properties", lambda d: types.SimpleNamespace(total_memory=11 * GIB))
    monkeypatch.setattr(memcache, "memory_profile",
                        lambda *a, **k: types.SimpleNamespace(predicted_bytes=lambda b: 5 * GIB))
    cfg = RunConfig(label="Nodule", res=600, arch="densenet121")
    assert loader_for(cfg, cuda, "fp32", 20_000)[0] == "cache"  # 6.7 GiB of split
    assert loader_for(cfg, cuda, "fp32", 2_000)[0] == "resident"  # 0.7 GiB
    assert loader_for(RunConfig(label="Nodule", res=600, loader="cache"), cuda, "fp32",
                      20_000) == ("cache", "")  # a named loader is used as named
    assert loader_for(cfg, types.SimpleNamespace(type="cpu"), "fp32", 20_000) == ("resident", "")


def test_precision_auto_follows_the_card_and_bf16_is_refused_where_missing():
    assert plan_cell(_cell(res=32), devices.resolve("1080ti"))["precision"] == "fp16"
    assert plan_cell(_cell(res=32), devices.resolve("a100-80"))["precision"] == "bf16"
    with pytest.raises(CxrError, match="bf16 on v100, which has no bf16"):
        plan_cell(_cell(res=32, precision="bf16"), devices.resolve("v100"))


def test_plan_study_totals_and_makespan():
    dev = devices.resolve("h100")
    cells = [_cell(res=r, epochs=e) for r in (32, 64) for e in (1, 2)]
    doc = plan_study(cells, dev, gpus=2, name="t")
    walls = [c["eager"]["wall_s"] for c in doc["cells"]]
    assert doc["totals"]["eager"]["wall_s"] == pytest.approx(sum(walls))
    assert doc["totals"]["eager"]["makespan_s"] >= max(walls)
    assert doc["totals"]["eager"]["makespan_s"] >= sum(walls) / 2
    assert doc["totals"]["graphs"]["wall_s"] < doc["totals"]["eager"]["wall_s"]
    assert json.loads(json.dumps(doc))["schema"] == "cxr-fast-plan/1"


# --------------------------------------------------------------------------------------------------
# Device profiles


def test_every_card_cites_its_datasheet_and_resolves_by_name():
    assert set(devices.CARDS) == {"1080ti", "t4", "v100", "a100-40", "a100-80", "l4", "l40s", "3090", "4090",
                                  "h100", "h200"}
    for card in devices.CARDS.values():
        assert card.source and card.fp32 > 0 and card.fp16 > 0 and card.bandwidth > 0 and card.memory_gib > 0
    assert devices.card("GTX 1080 Ti").name == "1080ti"
    assert devices.card("RTX-4090").name == "4090"
    assert devices.card_for_device_name("NVIDIA H100 80GB HBM3").name == "h100"
    assert devices.card_for_device_name("NVIDIA A100-SXM4-40GB").name == "a100-40"
    h100 = devices.resolve("h100")
    assert h100.source == "modelled" and h100.peak_flops["bf16"] == pytest.approx(989.5e12)
    assert "not datasheet numbers" in h100.assumptions["source"]


def test_unknown_devices_and_missing_profiles_are_one_line_errors(tmp_path):
    with pytest.raises(CxrError, match="unknown device 'tpu9'"):
        devices.resolve("tpu9")
    with pytest.raises(CxrError, match="--calibrate"):
        devices.resolve("cpu")  # the test cache holds no calibration
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(CxrError, match="not a cxr-fast device profile"):
        devices.resolve(str(bad))


def test_a_measured_card_replaces_the_modelled_one():
    measured = devices.modelled(devices.CARDS["t4"])
    measured.source, measured.name, measured.launch_s = "measured", "cuda NVIDIA Tesla T4", 9e-6
    devices.save_profile(measured)
    try:
        got = devices.resolve("t4")
        assert got.source == "measured" and got.launch_s == 9e-6
    finally:
        (devices.profiles_dir() / f"{devices.slug(measured.name)}.json").unlink()


def test_calibration_times_real_steps_and_reproduces_them(tmp_path, one_thread):
    from cxr_fast.bench.calibrate import calibrate
    from cxr_fast.cost.estimate import rate_for
    from cxr_fast.cost.work import eval_work

    prof = calibrate([("resnet34", 32)], batch=2, device="cpu", min_seconds=0.0)
    assert prof.kind == "cpu" and prof.source == "measured" and prof.launch_s > 0 and prof.bandwidth > 0
    train = next(p for p in prof.points if p["mode"] == "train")
    work = train_work("resnet34", 32, 2, "fp32", foreach=False).graphable
    rate, source = rate_for(prof, "fp32", "resnet34", "train", work.flops)
    assert source == "measured"
    assert work_time(work, prof, rate).seconds == pytest.approx(train["seconds"], rel=0.02)
    path = devices.save_profile(prof, tmp_path / "cpu.json")
    again = devices.resolve(str(path))
    assert again.points == prof.points
    assert eval_work("resnet34", 32, 2, views=5).graphable.flops == pytest.approx(
        5 * eval_work("resnet34", 32, 2, views=1).graphable.flops)


# --------------------------------------------------------------------------------------------------
# Commands and the report's table


def test_cli_plan_prints_totals_and_writes_json(tmp_path, capsys):
    from cxr_fast.cli import main

    out = tmp_path / "plan.json"
    assert main(["plan", str(REPO / "configs" / "quick.yaml"), "--device", "h100", "--gpus", "2",
                 "--json", str(out), "--no-cells"]) == 0
    text = capsys.readouterr().out
    assert "total, eager PyTorch" in text and "with CUDA graphs" in text and "on 2 GPUs" in text
    doc = json.loads(out.read_text())
    assert len(doc["cells"]) == 6 and doc["device"]["name"] == "h100"
    assert main(["plan", str(REPO / "configs" / "quick.yaml"), "--device", "tpu9"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'tpu9'" in err and err.count("\n") == 1


def test_plan_refuses_every_cell_a_study_would_refuse(tmp_path, capsys):
    from cxr_fast.cli import main

    quick = str(REPO / "configs" / "quick.yaml")
    assert main(["plan", quick, "--device", "h100", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "epochs must be at least 1, got 0" in err and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "train": {"init": "random", "batch_size": "eight"},
                                   "grids": [{"name": "g", "labels": ["Nodule"], "resolutions": [32], "epochs": 1}]}))
    assert main(["plan", str(bad), "--device", "h100"]) == 2
    assert "batch_size must be int, got 'eight'" in capsys.readouterr().err
    assert main(["study", str(bad), "--out", str(tmp_path / "s"), "--dry-run"]) == 2
    assert "batch_size must be int, got 'eight'" in capsys.readouterr().err


def test_study_announce_never_stops_a_study(tmp_path):
    from cxr_fast.cost.plan import announce

    line = announce([_cell(res=32)], tmp_path / "s", device="cpu")  # no calibration in the test cache
    assert line.startswith("plan: no estimate (") and "--calibrate" in line
    assert not (tmp_path / "s").exists()
    line = announce([_cell(res=32)], tmp_path / "s", device="h100")
    assert line.startswith("plan: 1 runs, about") and (tmp_path / "s" / "plan.json").is_file()


def test_planned_vs_actual_reads_rows_and_falls_back_to_metrics(tmp_path):
    from cxr_fast.cost.plan import PLAN_FILE
    from cxr_fast.cost.plan_report import planned_vs_actual

    from cxr_fast.io import write_json

    study = tmp_path / "study"
    assert planned_vs_actual(study) is None  # no plan: nothing to show
    cells = [{"cell_id": cid, "setup_s": 1.0,
              "eager": {"wall_s": 100.0, "train_s": 80.0, "eval_s": 15.0, "bound": "compute"}}
             for cid in ("Nodule/resnet34-e2/r32", "Mass/resnet34-e2/r32", "Mass/resnet34-e2/r64")]
    write_json(study / PLAN_FILE, {"cells": cells, "device": {"name": "cpu x", "source": "measured"}})
    rows = [{"cell_id": "Nodule/resnet34-e2/r32", "wall_s": 110.0, "train_s": 90.0, "eval_s": 15.0, "setup_s": 2.0},
            {"cell_id": "Mass/resnet34-e2/r32", "wall_s": 90.0, "run_dir": "runs/Mass/resnet34-e2/r32"}]
    (study / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(study / "runs/Mass/resnet34-e2/r32/metrics.json", {"train_s": 70.0, "eval_s": 14.0, "setup_s": 3.0})
    got = planned_vs_actual(study)
    assert [r["cell_id"] for r in got["rows"]] == ["Nodule/resnet34-e2/r32", "Mass/resnet34-e2/r32"]  # r64 not run
    assert got["rows"][0]["ratio"] == pytest.approx(1.1)
    assert got["rows"][1]["actual_train_s"] == 70.0  # from metrics.json
    assert got["total"]["planned_wall_s"] == 200.0 and got["total"]["actual_wall_s"] == 200.0
    assert got["total"]["error"] == 0.0
    assert "| Nodule/resnet34-e2/r32 | compute | 100 | 110 | 1.10 |" in got["markdown"]
    assert math.isclose(sum(r["planned_wall_s"] for r in got["rows"]), 200.0)


def test_gpu_check_writes_the_profile_but_a_smoke_run_keeps_the_cache(tmp_path, one_thread):
    from cxr_fast.bench.gpu_check import measure_profile

    got = measure_profile(torch.device("cpu"), tmp_path, ["resnet34"], [128], smoke=True)
    assert Path(got["file"]).is_file() and got["cache"] is None
    assert devices.load_profile(got["file"]).points
    assert not (devices.profiles_dir() / f"{devices.slug(devices.cpu_profile_name())}.json").exists()


def test_a_study_dry_run_prints_the_plan_line_and_writes_nothing(tmp_path, capsys):
    import yaml

    from cxr_fast.cli import main

    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"name": "s", "train": {"init": "random", "device": "cpu"},
                                      "grids": [{"name": "g", "labels": ["Nodule"], "resolutions": [32], "epochs": 1}]}))
    out = tmp_path / "out"
    assert main(["study", str(config), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "1 to run" in text and "plan: no estimate (" in text  # no calibration in the test cache: said, not fatal
    assert not out.exists()


def test_the_planners_disk_cache_survives_a_restart_and_drops_other_versions(tmp_path, monkeypatch):
    from cxr_fast.cost.diskcache import DiskCache

    monkeypatch.setenv("CXR_FAST_CACHE", str(tmp_path))
    DiskCache("c.json", version=1).put("a", {"n": 1})
    assert DiskCache("c.json", version=1).get("a") == {"n": 1}  # read back from the file
    newer = DiskCache("c.json", version=2)
    assert newer.get("a") is None
    newer.put("b", 2)
    assert list(json.loads((tmp_path / "c.json").read_text())) == [f"v2|torch {torch.__version__}|b"]
    (tmp_path / "c.json").write_text("{torn")
    assert DiskCache("c.json", version=2).get("b") is None  # a damaged file reads as empty
