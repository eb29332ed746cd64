"""The GPU check's own logic, on the CPU (issue 22: 4-6 and the sync-debug recording).

No GPU here: fake exceptions stand in for a card near its cap, a fake clock for time, fake probes and a fake
bench for the work, and DALI's CPU pipeline for its decoder.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import warnings
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cxr_fast.bench import batch_search, gpu_check
from cxr_fast.bench.batch_search import find_max_batch, is_oom

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """Seconds that pass only when a fake piece of work says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


# ------------------------------------------------------------------------------ 6: the OOM classifier

CUDNN9_DEVICE = "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"


@pytest.mark.parametrize("exc", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError(CUDNN9_DEVICE),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    torch.AcceleratorError("CUDA error: out of memory\nCompile with `TORCH_USE_CUDA_DSA` to enable DSA."),
], ids=["torch-oom", "cudnn9-device", "cudnn-alloc", "cublas-alloc", "accelerator-error"])
def test_oom_classifier_reads_library_allocation_failures_as_oom(exc):
    assert is_oom(exc)


def test_oom_classifier_follows_the_cause_and_rejects_other_errors():
    try:
        try:
            raise RuntimeError(CUDNN9_DEVICE)
        except RuntimeError as inner:
            raise RuntimeError("the training step failed") from inner
    except RuntimeError as outer:
        assert is_oom(outer)
    for other in (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"), RuntimeError("expected scalar type Half"),
                  ValueError("out of memory"), KeyError("x")):
        assert not is_oom(other), other


def test_every_oom_catch_uses_the_one_classifier():
    from cxr_fast import runtime

    assert batch_search.is_oom is runtime.is_oom
    text = "\n".join(p.read_text(encoding="utf-8") for d in ("cxr_fast", "loaders", "bench")
                     for p in (REPO / d).rglob("*.py"))
    assert "def is_oom" in (REPO / "cxr_fast" / "runtime.py").read_text(encoding="utf-8")
    assert text.count("def is_oom") == 1
    assert '"out of memory" in' not in text  # no second, narrower test of the message


def _bench_run(say):
    return SimpleNamespace(device=torch.device("cpu"), say=say)


def test_bench_row_halves_the_batch_on_a_cudnn_allocation_failure():
    from cxr_fast.bench.pipeline import _try_run

    said: list[str] = []

    def step(batch: int) -> str:
        if batch > 32:
            raise RuntimeError(CUDNN9_DEVICE)
        return "ran"

    result, batch, exc = _try_run(_bench_run(said.append), "600px densenet121", step, 64)
    assert (result, batch, exc) == ("ran", 32, None)  # the memory limit, not an error row
    assert "out of memory at batch 64" in said[0]


def test_bench_frees_memory_after_the_failed_step_is_released(monkeypatch):
    from cxr_fast.bench import pipeline

    class Activations:
        pass

    alive: list[weakref.ref] = []
    seen: list[tuple[object, bool]] = []

    def step(batch: int) -> None:
        held = Activations()  # what the failed step's frame holds until its traceback goes
        alive.append(weakref.ref(held))
        raise torch.OutOfMemoryError(f"CUDA out of memory at {batch}")

    def free_memory(device) -> None:
        seen.append((sys.exc_info()[0], alive[-1]() is None))

    monkeypatch.setattr(pipeline, "free_memory", free_memory)
    result, batch, exc = pipeline._try_run(_bench_run(lambda m: None), "x", step, 8, retries=1)
    assert seen == [(None, True), (None, True)]  # outside the except block, the step's tensors already gone
    assert result is None and batch == 4 and is_oom(exc)
    assert exc.__traceback__ is None  # the row keeps the message, not the failed step's frames


# ------------------------------------------------------------------------------ 5: a hard time budget


def _timed_probe(clock: FakeClock, limit: int, s_per_image: float, fixed_s: float = 0.0):
    def try_batch(bs: int) -> bool:
        clock.spend(fixed_s + s_per_image * bs)
        return bs <= limit

    return try_batch


def test_batch_search_starts_no_try_that_would_overrun_its_budget():
    clock = FakeClock()
    budget = 5.0
    result = find_max_batch(_timed_probe(clock, limit=1000, s_per_image=0.01), start=100, growth=2.0,
                            time_left=lambda: budget - clock(), clock=clock)
    # 100 (1 s) and 200 (2 s) run; 400 would take 4 s with 2 s left: not started.
    assert [b for b, _ in result.tries] == [100, 200]
    assert result.cut_by_budget and not result.exact
    assert result.max_ok == 200 and result.first_fail is None and not result.capped
    assert clock() <= budget
    assert result.to_dict()["cut_by_budget"] is True


def test_batch_search_cut_while_bisecting_keeps_the_range():
    clock = FakeClock()
    result = find_max_batch(_timed_probe(clock, limit=150, s_per_image=0.01, fixed_s=0.5), start=100,
                            growth=2.0, time_left=lambda: 6.0 - clock(), clock=clock)
    assert result.cut_by_budget and clock() <= 6.0
    assert result.max_ok >= 100 and result.first_fail is not None and result.max_ok < result.first_fail <= 200
    assert result.first_fail - 1 >= 150 >= result.max_ok  # the true limit lies in the range it reports


def test_batch_search_without_a_budget_is_unchanged():
    clock = FakeClock()
    result = find_max_batch(_timed_probe(clock, limit=150, s_per_image=0.01), start=100, growth=2.0, clock=clock)
    assert (result.max_ok, result.first_fail, result.cut_by_budget, result.exact) == (150, 151, False, True)


def test_a_try_is_predicted_from_the_slowest_rate_seen():
    assert batch_search.predict_try_s(64, []) == 0.0
    assert batch_search.predict_try_s(200, [(100, 1.0), (150, 1.2)]) == pytest.approx(2.0)
    assert batch_search.predict_try_s(10, [(100, 1.0)]) == pytest.approx(1.0)  # a try costs at least the fixed part


def test_limit_searches_share_their_time_and_stay_inside_it(monkeypatch):
    clock = FakeClock()
    section = 120.0
    calls: list[dict] = []

    def fake_measure(arch, res, precision, channels_last, optimizer, device, start, cap, memory_fraction, growth,
                     time_left):
        # A try fills the memory it is given: its time grows with the budget (1 s per 11 GiB).
        per_try = 1.0 * (memory_fraction or 1.0) * 141 / 11
        calls.append({"arch": arch, "res": res, "whole": memory_fraction is None, "left": time_left()})
        r = find_max_batch(lambda bs: clock.spend(per_try) or bs <= start + 3, start=start, cap=cap, growth=growth,
                           time_left=time_left, clock=clock)
        return {**r.to_dict(), "peaks": {}}

    monkeypatch.setattr(batch_search, "measure_max_batch", fake_measure)
    rows = gpu_check.measure_limits(torch.device("cpu"), 141 * 2**30, ["resnet34", "densenet121"], [128, 600],
                                    left=lambda: section - clock(), clock=clock)
    assert clock() <= section  # the whole-card searches could not run past the section
    whole = [c["left"] for c in calls if c["whole"]]
    emulated = [c["left"] for c in calls if not c["whole"]]
    assert whole and emulated and min(whole) > max(emulated)  # the heavy searches get the larger share
    cut = [r for r in rows if r.get("cut_by_budget")]
    assert cut, "a 13 s try cannot fit many times: some search must be cut"
    assert all(r["error"] is None and r["within_10pct"] is None for r in cut if r["measured_upper"] != r["measured"])


def test_bench_resolutions_start_only_when_their_predicted_time_fits(monkeypatch):
    from cxr_fast.bench import pipeline

    clock = FakeClock()
    budget = 100.0
    ran: list[int] = []

    def fake_run_bench(cfg, say):
        res = cfg.res[0]
        clock.spend(4.0 + 30.0 * (res / 600) ** 2)  # start-up plus steps at a capped batch
        ran.append(res)
        return {"rows": [], "loaders": [], "settings": {"res": [res]}}

    cut: list[str] = []
    monkeypatch.setattr(pipeline, "run_bench", fake_run_bench)
    gpu_check.run_bench_all({}, [32, 64, 128, 224, 256, 320, 448, 512, 600], lambda: budget - clock(), 10.0,
                            lambda doc: None, mark_cut=cut.append, clock=clock)
    assert clock() <= budget  # nothing started that could not end in time
    assert ran == sorted(ran) and ran[:4] == [32, 64, 128, 224] and 600 not in ran
    assert cut and all("skipped" in c for c in cut) and any("600px" in c for c in cut)


def test_each_step_records_its_time_its_limit_and_whether_it_was_cut(tmp_path):
    clock = FakeClock()
    doc: dict = {"steps": {}}
    check = gpu_check.Check(tmp_path, 100.0, doc, clock=clock)

    def section() -> str:
        for piece in range(10):
            if check.section_left() < 5:
                check.mark_cut(f"piece {piece}")
                continue
            clock.spend(5)
        return "done"

    assert check.step("work", section, limit_s=22.0) == "done"
    step = doc["steps"]["work"]
    assert step["status"] == "ok" and step["seconds"] == 20.0 and step["limit_s"] == 22.0
    assert step["cut_by_budget"] is True and step["cut"][0] == "piece 4"
    assert check.step("next", lambda: check.section_left()) == pytest.approx(80.0)  # a new step: the budget's end
    assert doc["steps"]["next"]["cut_by_budget"] is False
    assert (tmp_path / "gpu-check.json").is_file()


def test_default_budget_fits_one_ten_minute_command():
    assert gpu_check.GpuCheckOptions().budget_s + 2 * gpu_check.BENCH_S_PER_RES * gpu_check.RES_MARGIN <= 600 - 45
    script = (REPO / "docker" / "gpu-check.sh").read_text(encoding="utf-8")
    assert "--budget-s 420" not in script  # one default, the command's own


# ------------------------------------------------------------------------------ 4: DALI offline


def _listed_wheels() -> dict[str, str]:
    text = (REPO / "docker" / "dali-wheels.txt").read_text(encoding="utf-8")
    lines = [ln.split("#")[0].strip() for ln in text.splitlines()]
    return dict(ln.split("==") for ln in lines if ln)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_wheel_list_holds_everything_dali_imports():
    listed = {_norm(n) for n in _listed_wheels()}
    for need in ("nvidia-dali-cuda130", "nvidia-nvimgcodec-cu13", "nvidia-libnvcomp-cu13", "nvidia-nvjpeg",
                 "astunparse", "gast", "six", "optree"):
        assert need in listed, need
    try:
        requires = importlib.metadata.requires("nvidia-dali-cuda130") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("DALI is not installed here: its metadata cannot be compared")
    provided = {"numpy"}  # cxr-fast's own dependency, on every PyTorch image
    for req in requires:
        if "extra ==" in req:
            continue
        name = _norm(re.split(r"[ <>=!~;\[(]", req, maxsplit=1)[0])
        assert name in listed or name in provided, f"DALI requires {name}; docker/dali-wheels.txt lacks it"
    for script in ("gpu-check.sh", "fetch-wheels.sh"):
        assert "dali-wheels.txt" in (REPO / "docker" / script).read_text(encoding="utf-8")


def test_dali_import_error_is_recorded_in_one_line(monkeypatch, tmp_path):
    from cxr_fast.loaders import dali

    monkeypatch.setattr(dali, "available", lambda: (False, "NVIDIA DALI is not importable: No module named "
                                                           "'gast'\n  raised at nvidia/dali/__init__.py"))
    out = gpu_check.dali_check(torch.device("cpu"), tmp_path)
    assert out["importable"] is False and out["decoder"] is None
    assert "No module named 'gast'" in out["error"] and "\n" not in out["error"]


def test_mixed_without_libnvjpeg_is_reported_as_a_cpu_decode():
    maps = ("7f00-7f10 r-xp 0 00:00 1 /site/nvidia/nvimgcodec/extensions/libjpeg_turbo_ext.so.0.9.0\n"
            "7f10-7f20 r-xp 0 00:00 1 /site/nvidia/dali/libdali.so\n7f20-7f30 rw-p 0 00:00 0 [heap]\n")
    libs = gpu_check.loaded_libraries(maps)
    assert libs == {"libjpeg_turbo_ext.so.0.9.0", "libdali.so"}
    assert gpu_check.jpeg_decoder_ran(True, libs) == "cpu (then copied to GPU)"
    assert gpu_check.jpeg_decoder_ran(True, libs | {"libnvjpeg.so.13"}) == "mixed (nvJPEG)"
    assert gpu_check.jpeg_decoder_ran(False, libs | {"libnvjpeg.so.13"}) == "cpu"


def test_dali_probe_decodes_on_the_cpu_here(tmp_path):
    from cxr_fast.loaders import dali

    if not dali.available()[0]:
        pytest.skip("DALI is not importable here")
    out = gpu_check.dali_check(torch.device("cpu"), tmp_path)
    assert out["importable"] and out["error"] is None
    assert out["requested"] == "cpu" and out["output_on_gpu"] is False and out["decoder"] == "cpu"


# ------------------------------------------------------------------------------ sync-debug recording


def test_sync_debug_section_records_each_sync_and_restores_the_mode():
    modes: list[str] = []
    calls = {"n": 0}

    def step(images, labels) -> None:
        calls["n"] += 1
        if calls["n"] % 2:
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)

    batches = iter([(None, None)] * 10)
    out = gpu_check.sync_debug_section(step, batches, steps=4, set_mode=modes.append)
    assert modes == ["warn", "default"]
    assert out["steps"] == 4 and out["syncs"] == 2 and out["syncs_per_step"] == 0.5
    (where,) = out["where"]
    assert where.startswith("test_gpu_check.py:") and "synchronizing" in where

    def failing(images, labels) -> None:
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError):
        gpu_check.sync_debug_section(failing, iter([(None, None)]), steps=1, set_mode=modes.append)
    assert modes[-1] == "default"  # never left on after a failure
