"""Memory prediction (meta device, no GPU) and the batch-size search against a fake allocator limit."""

from __future__ import annotations

import math

import pytest
import torch

from cxr_fast.cost import memory
from cxr_fast.bench.batch_search import find_max_batch, guarded, is_oom
from cxr_fast.errors import CxrError


# ---------------------------------------------------------------- prediction


@pytest.mark.parametrize("arch", ["resnet34", "densenet121"])
def test_memory_grows_with_resolution(arch):
    sizes = [memory.profile(arch, r, "fp32").saved_bytes_per_sample for r in (32, 64, 128)]
    assert sizes[0] < sizes[1] < sizes[2]
    # Activations scale with pixels: doubling the side is close to 4x (the stem dominates).
    assert 3.0 < sizes[2] / sizes[1] < 4.5
    preds = [memory.predicted_bytes(arch, r, 8, "fp32") for r in (32, 64, 128)]
    assert preds[0] < preds[1] < preds[2]


def test_memory_grows_with_batch_size():
    p = [memory.predicted_bytes("resnet34", 64, bs, "amp") for bs in (1, 2, 8, 32)]
    assert p[0] < p[1] < p[2] < p[3]
    prof = memory.profile("resnet34", 64, "amp")
    # Linear in the batch: equal steps cost equal bytes (up to the ceil rounding).
    assert abs((prof.allocator_bytes(20) - prof.allocator_bytes(10)) - (prof.allocator_bytes(30) - prof.allocator_bytes(20))) <= 1


@pytest.mark.parametrize("arch", ["resnet34", "densenet121"])
def test_amp_shrinks_memory(arch):
    fp32 = memory.profile(arch, 128, "fp32")
    amp = memory.profile(arch, 128, "amp")
    assert amp.saved_bytes_per_sample < fp32.saved_bytes_per_sample
    # Half-precision activations: about half, not exactly (max-pool keeps int64 indices).
    assert 0.4 < amp.saved_bytes_per_sample / fp32.saved_bytes_per_sample < 0.6
    assert memory.predicted_bytes(arch, 128, 16, "amp") < memory.predicted_bytes(arch, 128, 16, "fp32")
    assert memory.max_batch_size(arch, 128, 11, "amp") > memory.max_batch_size(arch, 128, 11, "fp32")


def test_counting_matches_a_hand_computed_model():
    """Saved-tensor counting on one conv+ReLU: conv saves its input, ReLU its output (shared by nobody)."""
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU())
    params = {p.untyped_storage()._cdata for p in model.to("meta").parameters()}
    total, largest = memory._saved_bytes(model, 2, 16, torch.float32, torch.contiguous_format, None, params)
    assert total == 2 * 1 * 16 * 16 * 4 + 2 * 4 * 16 * 16 * 4
    assert largest == 2 * 4 * 16 * 16 * 4


def test_model_state_and_optimizer_accounting():
    sgd = memory.profile("resnet34", 64, "fp32", optimizer="sgd")
    adam = memory.profile("resnet34", 64, "fp32", optimizer="adam")
    assert sgd.n_params > 20_000_000
    assert sgd.param_bytes == sgd.grad_bytes == sgd.optimizer_bytes == 4 * sgd.n_params
    assert adam.optimizer_bytes == 2 * sgd.optimizer_bytes
    assert adam.saved_bytes_per_sample == sgd.saved_bytes_per_sample
    assert memory.max_batch_size("resnet34", 64, 11, "fp32", optimizer="adam") < memory.max_batch_size(
        "resnet34", 64, 11, "fp32", optimizer="sgd")
    amp = memory.profile("resnet34", 64, "amp")
    assert amp.amp_weight_bytes in (0, 2 * amp.n_params)  # explicit copies, or counted by autocast itself


def test_max_batch_size_is_consistent_with_prediction():
    prof = memory.profile("resnet34", 224, "amp")
    gpu = 11 * memory.GIB
    bs = prof.max_batch_size(gpu)
    assert bs > 0
    assert prof.predicted_bytes(bs) <= gpu < prof.predicted_bytes(bs + 1)
    assert memory.max_batch_size("resnet34", 224, 11, "amp") == bs
    # A card smaller than the model state fits nothing.
    assert prof.max_batch_size(memory.CUDA_CONTEXT_BYTES + 1000) == 0
    # More memory, larger batch; higher resolution, smaller batch.
    assert memory.max_batch_size("resnet34", 224, 24, "amp") > bs
    assert memory.max_batch_size("resnet34", 448, 11, "amp") < bs


def test_channels_last_flag_recorded_and_sizes_equal():
    cl = memory.profile("resnet34", 64, "amp", channels_last=True)
    nchw = memory.profile("resnet34", 64, "amp", channels_last=False)
    assert cl.channels_last and not nchw.channels_last
    assert cl.saved_bytes_per_sample == nchw.saved_bytes_per_sample


def test_bad_inputs_are_user_errors():
    with pytest.raises(CxrError):
        memory.profile("resnet34", 64, "int8")
    with pytest.raises(CxrError):
        memory.profile("resnet34", 64, "amp", optimizer="lion")
    with pytest.raises(CxrError):
        memory.max_batch_size("resnet34", 64, 0)
    with pytest.raises(CxrError):
        memory.profile("vgg16", 64, "amp")


# ---------------------------------------------------------------- measured search (fake allocator)


class FakeAllocator:
    """A device with ``limit`` bytes: a step needs ``static + bs * per_sample``; over the limit it raises
    the same OOM error type CUDA does, after having allocated part of it (as a real step would)."""

    def __init__(self, limit: float, per_sample: int = 1000, static: int = 0) -> None:
        self.limit, self.per_sample, self.static = limit, per_sample, static
        self.in_use = 0
        self.cleanups = 0
        self.ooms = 0

    def run(self, bs: int) -> None:
        assert self.in_use == 0, "previous try was not cleaned up"
        need = self.static + bs * self.per_sample
        if need > self.limit:
            self.in_use = min(need, self.limit)  # partially allocated when it failed
            self.ooms += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {need} bytes")
        self.in_use = need  # the step's tensors, freed by cleanup

    def cleanup(self) -> None:
        self.in_use = 0
        self.cleanups += 1


def exact_limit(alloc: FakeAllocator) -> int:
    return max(int((alloc.limit - alloc.static) // alloc.per_sample), 0)


@pytest.mark.parametrize("limit_bs", [1, 2, 3, 7, 8, 9, 13, 100, 127, 128, 129, 1000, 1023])
@pytest.mark.parametrize("start", [1, 8, 64])
@pytest.mark.parametrize("growth", [2.0, 1.25])
def test_search_finds_exact_limit(limit_bs, start, growth):
    alloc = FakeAllocator(limit=limit_bs * 1000 + 500, per_sample=1000)
    assert exact_limit(alloc) == limit_bs
    result = find_max_batch(guarded(alloc.run, alloc.cleanup), start=start, growth=growth)
    assert result.max_ok == limit_bs
    assert result.first_fail == limit_bs + 1
    assert not result.capped
    assert alloc.cleanups == len(result.tries)  # cleaned after every try, success or OOM
    assert alloc.in_use == 0
    assert alloc.ooms == sum(1 for _, ok in result.tries if not ok) >= 1
    # Logarithmic, not linear: geometric growth (or shrink) + bisection.
    steps = math.ceil(math.log(max(limit_bs, start) + 1) / math.log(growth)) + 1
    assert len(result.tries) <= steps + limit_bs.bit_length() + 2
    # Every try is a distinct batch size: no wasted repeats.
    assert len({bs for bs, _ in result.tries}) == len(result.tries)


def test_good_guess_needs_few_tries():
    alloc = FakeAllocator(limit=500 * 1000 + 1, per_sample=1000)
    result = find_max_batch(guarded(alloc.run, alloc.cleanup), start=470, growth=1.1)
    assert result.max_ok == 500
    assert len(result.tries) <= 8


def test_search_limit_below_one():
    alloc = FakeAllocator(limit=900, per_sample=1000)  # not even one image fits
    result = find_max_batch(guarded(alloc.run, alloc.cleanup), start=8)
    assert result.max_ok == 0
    assert result.first_fail == 1
    assert alloc.in_use == 0


def test_search_with_static_cost_and_odd_limit():
    alloc = FakeAllocator(limit=123_457, per_sample=977, static=50_000)
    result = find_max_batch(guarded(alloc.run, alloc.cleanup), start=4)
    assert result.max_ok == exact_limit(alloc) == 75


def test_search_cap_reports_lower_bound():
    alloc = FakeAllocator(limit=10**9, per_sample=1000)
    result = find_max_batch(guarded(alloc.run, alloc.cleanup), start=3, cap=50)
    assert result.capped and result.first_fail is None
    assert result.max_ok == 50
    assert max(bs for bs, _ in result.tries) == 50


def test_non_oom_errors_propagate():
    def broken(bs: int) -> None:
        raise ValueError("shape mismatch")

    calls = []
    with pytest.raises(ValueError):
        find_max_batch(guarded(broken, lambda: calls.append(1)))
    assert calls == [1]  # cleanup still ran


def test_is_oom_recognises_message_form():
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("expected scalar type Half"))


def test_bad_search_arguments():
    with pytest.raises(CxrError):
        find_max_batch(lambda bs: True, start=0)
    with pytest.raises(CxrError):
        find_max_batch(lambda bs: True, cap=0)
    with pytest.raises(CxrError):
        find_max_batch(lambda bs: True, growth=1.0)


def test_real_probe_runs_training_steps_on_cpu():
    """The GPU probe's code path (fresh model, two steps, cleanup) on the CPU, where nothing runs out."""
    from cxr_fast.bench.batch_search import cuda_try_batch

    probe = cuda_try_batch("resnet34", 32, precision="fp32", device="cpu", steps=2)
    result = find_max_batch(probe, start=2, cap=4)
    assert result.max_ok == 4 and result.capped
    assert result.tries == [(2, True), (4, True)]


def test_gpu_check_compares_prediction_with_measurement(monkeypatch):
    """gpu_check's limit step against a stand-in measurement, so the comparison logic is checked here."""
    import cxr_fast.bench.batch_search as bs
    from cxr_fast.bench import gpu_check

    total = 80 * memory.GIB
    calls = []

    def fake_measure(arch, res, precision, channels_last, optimizer, device, start, cap, memory_fraction, growth,
                     time_left=None):
        calls.append((arch, res, memory_fraction, start))
        measured = int(start * 0.95)  # the "card" fits 5% less than predicted
        return {"max_ok": measured, "first_fail": measured + 1, "capped": False, "cut_by_budget": False,
                "exact": True, "tries": [[start, False], [measured, True]], "try_seconds": [1.0, 1.0],
                "peaks": {str(measured // 2): 10**9, str(measured): 2 * 10**9}}

    monkeypatch.setattr(bs, "measure_max_batch", fake_measure)
    rows = gpu_check.measure_limits(torch.device("cpu"), total, ["resnet34"], [224], lambda: 1e9)
    assert [(r["res"], r["emulated_gb"]) for r in rows] == [(224, 11.0), (600, None)]
    emulated, card = rows
    budget = int(11 * memory.GIB / total * total)
    prof = memory.profile("resnet34", 224, "amp")
    assert emulated["predicted"] == prof.max_batch_for_allocator(budget)
    assert calls[0][2] == pytest.approx(11 / 80)
    assert card["predicted"] == memory.profile("resnet34", 600, "amp").max_batch_size(total) and calls[1][2] is None
    for r in rows:
        assert r["error"] == pytest.approx((r["predicted"] - r["measured"]) / r["measured"], abs=1e-4)
        assert r["within_10pct"] is True
        assert r["measured_bytes_per_sample"] == round(10**9 / (r["measured"] - r["measured"] // 2))


_PEAK_SCRIPT = r"""
import gc, sys, torch
from cxr_fast.bench.throughput import build_trainer
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
arch, res, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
tr = build_trainer(arch, "cpu", "fp32", channels_last=True)
x = torch.rand(bs, 1, res, res).contiguous(memory_format=torch.channels_last)
y = (torch.rand(bs) > 0.5).float()
tr(x, y)
gc.collect()
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark (Linux >= 4.0)
tr(x, y)
print(status("VmHWM") - base)
"""


def _cpu_step_peak(arch: str, res: int, bs: int) -> int:
    import os
    import subprocess
    import sys

    # Every tensor over 64 KiB gets its own mmap, returned on free: RSS then follows live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, arch, str(res), str(bs)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_saved_bytes_match_a_real_training_step_on_cpu():
    """The meta-device count against reality: peak memory of a real fp32 step grows by the predicted
    saved bytes per extra image (CPU, so the slope is measured without a GPU)."""
    lo, hi = _cpu_step_peak("resnet34", 224, 2), _cpu_step_peak("resnet34", 224, 6)
    measured_per_image = (hi - lo) / 4
    predicted = memory.profile("resnet34", 224, "fp32").saved_bytes_per_sample
    assert measured_per_image == pytest.approx(predicted, rel=0.10)
