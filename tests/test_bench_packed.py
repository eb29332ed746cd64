"""Packed training, measured: ``cxr-fast bench``'s packed section (rows per K and resolution, off on a CPU by default
and saying how to turn it on, failures and budget cuts as rows) and ``gpu-check``'s (``bench.packed_check``: its code
path on the CPU, kernels 'not on a GPU', graphs under a stand-in, the plan's prediction and launch factor beside).

Measurements run a tiny packable model in place of ResNet34/DenseNet121, so each test takes seconds.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from torch import nn

from cxr_fast.bench import packed_check, pipeline
from cxr_fast.bench.config import BenchConfig, Effort, load_bench_config
from cxr_fast.bench.pipeline import BenchRun, failed_sections, packed_off_reason, packed_training_section
from cxr_fast.bench.results_io import ROW_FIELDS, machine_info, rows_to_csv
from cxr_fast.bench.tables import print_packed
from cxr_fast.errors import CxrError
from cxr_fast.units import GIB

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(arch: str = "resnet34", recipe: str = "fastai07", weights=None, **_kw) -> nn.Module:
    """A packable stand-in for ``build_model``: the input norm, a conv body with BatchNorm, fastai07's head."""
    from cxr_fast.models import ConcatPool, Float32Head, Normalize

    head = nn.Sequential(ConcatPool(), nn.Dropout(0.5), nn.Linear(8, 2), nn.LogSoftmax(dim=1))
    body = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    return nn.Sequential(Normalize(), body, Float32Head(head))


@pytest.fixture()
def tiny_models(monkeypatch):
    monkeypatch.setattr("cxr_fast.models.build_model", _tiny)
    monkeypatch.setattr("cxr_fast.packed.model.build_model", _tiny)
    # The plan's counts are cached on disk by architecture name: never count the stand-in under a real name.
    monkeypatch.setattr(packed_check, "packed_predicted", lambda *a, **k: {"unavailable": "not predicted in this test"})


def _effort(**packed) -> Effort:
    return Effort(archs=None, batch_size=2, warmup=0, iters=1, measure_limit=False, limit_cap=0,
                  **{"packed_batch": 2, "packed_warmup": 0, "packed_iters": 1, **packed})


def _run(effort: Effort, card_bytes: int | None = None) -> BenchRun:
    cfg = BenchConfig(device="cpu", cpu=effort, gpu=effort)
    return BenchRun(cfg, effort, torch.device("cpu"), "fp32", "amp", machine_info("cpu"), card_bytes, 11 * GIB)


def _printed(rows: list[dict]) -> str:
    out = io.StringIO()
    doc = {"rows": rows, "settings": {"resolved": {"precision": "fp32"}}}
    print_packed(doc, Console(file=out, width=200))
    return out.getvalue()


def _fake_throughput(spend=lambda k: None, fail: dict | None = None):
    """``bench.packed.throughput`` with made-up numbers (packed twice as fast); ``fail``: K -> exception."""
    def throughput(arch, res, k, batch, recipe, optimizer, device, precision, channels_last, warmup, iters):
        spend(k)
        if fail and k in fail:
            raise fail[k]
        images = k * batch * iters
        return {"packed_ips": images / 1.0, "sequential_ips": images / 2.0, "speedup": 2.0, "iters": iters,
                "images": images, "packed_s": 1.0, "sequential_s": 2.0, "precision": precision}
    return throughput


# ------------------------------------------------------------------------------------------ the bench's section

def test_the_cpu_default_is_off_the_gpu_measures_k_1_to_8_and_the_yaml_says_the_same(tmp_path):
    cfg = load_bench_config()
    assert cfg.cpu.packed_ks == [] and cfg.gpu.packed_ks == [1, 2, 4, 8] and cfg.gpu.packed_batch == 8
    on = tmp_path / "on.yaml"
    on.write_text("cpu:\n  packed_ks: [1, 2]\n")
    turned = load_bench_config(str(on))
    assert turned.cpu.packed_ks == [1, 2] and turned.cpu.packed_batch == cfg.cpu.packed_batch  # the rest kept
    reason = packed_off_reason(on_gpu=False)
    assert reason.startswith("off on the CPU (cpu.packed_ks: []) by default") and "not launch-bound" in reason
    assert "--config" in reason and "cpu: {packed_ks: [1, 2]}" in reason  # how to turn it on, in the words above


@pytest.mark.parametrize("setting, message", [
    ("packed_ks: [0]", "cpu.packed_ks: each K must be a whole number from 1 to 64, got 0"),
    ("packed_ks: [2, 2]", "cpu.packed_ks: each K once, got [2, 2]"),
    ("packed_ks: [two]", "got 'two'"),
    ("packed_iters: 0", "cpu.packed_iters must be 1 or more, got 0"),
    ("packed_seconds: 0", "cpu.packed_seconds must be positive, got 0"),
])
def test_bad_packed_settings_are_refused_in_one_line(tmp_path, setting, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"cpu:\n  {setting}\n")
    with pytest.raises(CxrError, match=".*") as caught:
        load_bench_config(str(bad))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_off_the_section_is_one_skipped_row_per_resolution_and_one_printed_line():
    run = _run(_effort(packed_ks=[]))
    for res in (32, 600):
        packed_training_section(run, res, ["resnet34"])
    assert [(r["res"], r["kind"], r["arch"], r["status"]) for r in run.rows] == [
        (32, "train_packed", "", "skipped"), (600, "train_packed", "", "skipped")]
    assert all(r["reason"] == packed_off_reason(False) for r in run.rows)
    assert failed_sections({"rows": run.rows}) == []  # off is not a failure
    printed = _printed(run.rows)
    assert printed.count("Packed training: off on the CPU") == 1 and "Packed training, images/s" not in printed


def test_on_each_architecture_resolution_and_k_gives_a_packed_and_a_sequential_row(tiny_models):
    run = _run(_effort(packed_ks=[2, 1], packed_seconds=600.0))
    for res in (16, 32):
        packed_training_section(run, res, ["resnet34", "densenet121"])
    keys = [(r["arch"], r["res"], r["packed_k"], r["backend"]) for r in run.rows]
    assert keys == [(a, res, k, b) for res in (16, 32) for a in ("resnet34", "densenet121") for k in (1, 2)
                    for b in ("packed", "sequential")]
    for packed, seq in zip(run.rows[::2], run.rows[1::2]):
        assert packed["status"] == seq["status"] == "ok" and packed["kind"] == "train_packed"
        assert list(packed) == list(ROW_FIELDS) and packed["batch_size"] == 2
        assert packed["n_images"] == seq["n_images"] == packed["packed_k"] * 2  # all K models' images, one step
        assert packed["step_ms"] == pytest.approx(1000 * packed["n_images"] / packed["images_per_s"], abs=0.01)
        assert packed["ratio_to"] == "sequential" and seq["ratio"] is None
        assert packed["ratio"] == pytest.approx(packed["images_per_s"] / seq["images_per_s"], abs=0.002)
    assert "packed_k" in rows_to_csv(run.rows).splitlines()[0].split(",")
    printed = _printed(run.rows)
    assert "Packed training, images/s" in printed and printed.count("resnet34") == 4


def test_a_failed_k_is_a_row_with_its_reason_and_the_other_ks_still_run(monkeypatch):
    fail = {2: RuntimeError("grouped convolution exploded\nsecond line"),
            4: torch.OutOfMemoryError("CUDA out of memory")}
    monkeypatch.setattr("cxr_fast.bench.packed.throughput", _fake_throughput(fail=fail))
    run = _run(_effort(packed_ks=[1, 2, 4, 8], packed_seconds=600.0))
    packed_training_section(run, 64, ["resnet34"])
    by_k = {(r["packed_k"], r["backend"]): r for r in run.rows}
    assert by_k[2, "packed"]["status"] == "error"
    assert by_k[2, "packed"]["reason"] == "RuntimeError: grouped convolution exploded"  # its first line
    assert by_k[4, "packed"]["status"] == "oom" and (2, "sequential") not in by_k
    assert by_k[1, "packed"]["status"] == by_k[8, "packed"]["status"] == "ok"
    failed = failed_sections({"rows": run.rows})
    assert failed == ["64px resnet34 train_packed K=2 (packed): RuntimeError: grouped convolution exploded",
                      "64px resnet34 train_packed K=4 (packed): OutOfMemoryError: CUDA out of memory"]
    assert "error: RuntimeError: grouped convolution exploded" in _printed(run.rows)


def test_a_k_starts_only_while_its_predicted_time_fits_the_resolutions_packed_seconds(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr("cxr_fast.bench.packed.throughput",
                        _fake_throughput(spend=lambda k: now.__setitem__(0, now[0] + 4.0 * k)))
    run = _run(_effort(packed_ks=[1, 2, 4], packed_seconds=10.0))
    packed_training_section(run, 32, ["resnet34", "densenet121"])
    status = {(r["arch"], r["packed_k"]): r["status"] for r in run.rows if r["backend"] == "packed"}
    # resnet34 K=1 takes 4 s; K=2 would take about 8 of the 6 left. densenet121's first K starts (6 s left, 2 after).
    assert status == {("resnet34", 1): "ok", ("resnet34", 2): "skipped", ("resnet34", 4): "skipped",
                      ("densenet121", 1): "ok", ("densenet121", 2): "skipped", ("densenet121", 4): "skipped"}
    cut = next(r for r in run.rows if r["arch"] == "resnet34" and r["packed_k"] == 2)
    assert cut["reason"] == "time budget: about 8 s needed, 6 s of packed_seconds (10 s per resolution) left"
    assert now[0] == 8.0 and failed_sections({"rows": run.rows}) == []


def test_on_a_card_a_k_whose_predicted_memory_does_not_fit_is_skipped_before_it_runs(monkeypatch):
    ran: list[int] = []
    monkeypatch.setattr("cxr_fast.bench.packed.throughput", _fake_throughput(spend=ran.append))
    run = _run(_effort(packed_ks=[1, 8], packed_seconds=600.0), card_bytes=2 * GIB)
    packed_training_section(run, 32, ["resnet34"])
    too_big = next(r for r in run.rows if r["packed_k"] == 8)
    assert ran == [1] and too_big["status"] == "skipped"
    assert too_big["reason"].startswith("predicted memory: K=8 packed and sequential need about")
    assert too_big["reason"].endswith("the card has 2.0 GiB")


# ------------------------------------------------------------------------------------------ gpu-check's section


class StandInGraphs:
    """``graphs.CudaBackend`` played on the CPU (as in test_graphs): a replay runs the captured body again."""

    capturable = False

    def warm(self, body, times: int) -> None:
        for _ in range(times):
            body()

    def capture(self, body):
        out = body()
        return (lambda: out.copy_(body())), out

    def rng_state(self):
        return torch.get_rng_state()

    def set_rng_state(self, state) -> None:
        torch.set_rng_state(state)


def test_gpu_checks_packed_section_runs_on_the_cpu_kernels_not_on_a_gpu_and_graphs_said_off(tiny_models):
    from cxr_fast.graphs import OFF_CPU

    doc = packed_check.packed_check_section("cpu", [32, 16], archs=["resnet34", "densenet121"], ks=(1, 2),
                                            steps=1, warmup=1)
    assert [(r["res"], r["arch"], r["k"]) for r in doc["rows"]] == [
        (res, a, k) for res in (16, 32) for a in ("resnet34", "densenet121") for k in (1, 2)]
    for r in doc["rows"]:
        assert r["status"] == "ok" and r["eager_ms"] > 0 and r["losses_finite"] and r["precision"] == "fp32"
        assert r["kernels"] == packed_check.NOT_ON_GPU == "not on a GPU" and "kernel_ratio" not in r
        assert r["graphed_ms"] is None and r["graphs"] == OFF_CPU
    assert doc["launch_factor"] == 2.0 and doc["batch"] == 8 and doc["recipe"] == "fastai07"
    lines = packed_check.packed_lines(doc)
    assert lines[0].startswith("\nPacked training, fastai07 fp32 batch 8") and lines[1].startswith("res")
    assert lines[2].split()[:3] == ["16", "resnet34", "1"] and lines[2].split()[4] == "-"  # no graphed ms
    assert "kernels: not on a GPU" in lines and f"graphs: {OFF_CPU}" in lines
    assert "plan: not predicted in this test" in lines


def test_under_the_stand_in_the_packed_step_is_captured_and_replayed(tiny_models):
    doc = packed_check.packed_check_section("cpu", [16], archs=["resnet34"], ks=(2,), steps=2, warmup=1,
                                            backend=StandInGraphs())
    (row,) = doc["rows"]
    assert row["status"] == "ok" and row["graphed_ms"] > 0 and row["capture_s"] >= 0
    assert row["graphs"].startswith("captured: training step") and "replayed 3" in row["graphs"]


def test_gpu_check_packed_ks_start_only_when_their_time_fits_and_a_failure_is_a_row(tiny_models, monkeypatch):
    real = packed_check.measure_packed_step

    def measure(device, arch, res, k, *rest):
        if k == 2:
            raise RuntimeError("no kernel image\nfor this card")
        return real(device, arch, res, k, *rest)

    monkeypatch.setattr(packed_check, "measure_packed_step", measure)
    left = iter([100.0, 100.0, 0.0])
    doc = packed_check.packed_check_section("cpu", [16], archs=["resnet34"], ks=(1, 2, 4), steps=1, warmup=1,
                                            left=lambda: next(left))
    ok, failed, cut = doc["rows"]
    assert ok["status"] == "ok" and failed == {**failed, "status": "error", "error": "RuntimeError: no kernel image"}
    assert cut["status"].startswith("skipped (time budget: about") and cut["status"].endswith("0 s left)")
    lines = packed_check.packed_lines(doc)
    assert any(line.endswith("error: RuntimeError: no kernel image") for line in lines)
    assert any("skipped (time budget" in line for line in lines)


def test_measured_kernels_give_the_launch_factor_printed_beside_the_plans(monkeypatch):
    kernels = {1: 400, 2: 440, 8: 560}  # what a profiler on a GPU would count
    monkeypatch.setattr(packed_check, "measure_packed_step", lambda device, arch, res, k, *rest: {
        "precision": "bf16", "eager_ms": 10.0 + k, "kernels": kernels[k], "losses_finite": True,
        "graphed_ms": 2.0 * k, "graphs": "captured: ..."})
    monkeypatch.setattr(packed_check, "packed_predicted", lambda arch, res, k, *a: {
        "profile": "h200", "rate_source": "measured", "kernels": 409 * (1 if k == 1 else 2),
        "eager_ms": 4.0 * min(k, 2), "graphs_ms": 0.7 * k})
    doc = packed_check.packed_check_section("cpu", [64], archs=["resnet34"], ks=(1, 2, 8))
    assert [r.get("kernel_ratio") for r in doc["rows"]] == pytest.approx([1.0, 1.1, 1.4])
    lines = packed_check.packed_lines(doc)
    k8 = lines[4].split()
    assert k8[:4] == ["64", "resnet34", "8", "18.00"] and k8[4:7] == ["16.00", "4.89x", "560"]
    assert k8[7:] == ["1.40", "8.00", "5.60", "818"]  # measured factor, then the plan's ms and kernels
    assert "The plan's launch factor: 2 x one model's kernels" in lines[5]
    assert lines[5].endswith("measured kernels(K)/kernels(1): resnet34 64 px K=8: 1.40)")


def test_count_device_ops_counts_what_the_profiler_records():
    x = torch.ones(4)
    one, three = (packed_check.count_device_ops(fn, "cpu") for fn in (lambda: x + 1, lambda: (x + 1) * 2 - 3))
    assert 1 <= one < three


def test_the_plans_packed_step_is_k_models_work_at_the_launch_factor():
    from cxr_fast.cost.plan import PACKED_LAUNCH_FACTOR

    one, two, eight = (packed_check.packed_predicted("resnet34", 32, k, 8, "bf16", "h100") for k in (1, 2, 8))
    assert one["profile"] == "h100" and one["kernels"] > 100
    assert two["kernels"] == eight["kernels"] == PACKED_LAUNCH_FACTOR * one["kernels"]
    assert one["eager_ms"] < two["eager_ms"] < eight["eager_ms"] and eight["graphs_ms"] < eight["eager_ms"]
    assert "no CUDA GPU here" in packed_check.packed_predicted("resnet34", 32, 1, 8, "bf16", "cuda").get(
        "unavailable", "no CUDA GPU here")  # on a machine without one, said in one line


def test_gpu_check_prints_the_packed_lines_in_its_summary(capsys):
    from cxr_fast.bench.gpu_check import print_summary

    print_summary({"machine": {"device_name": "CPU"}, "date": "today", "packed": {"status": "error"}})
    assert "Packed training: error" in capsys.readouterr().out
    assert packed_check.packed_resolutions([32, 64, 128, 224, 600]) == [64, 224, 600]
    assert packed_check.packed_resolutions([32, 128]) == [32]
