"""Issue 22, finding 2: the right precision on every card, and a one-line refusal of a card this torch
cannot run. No GPU here: the CUDA queries are mocked, so each test says what a card reports and checks
what the run decides.

- ``auto`` is decided from the run's device's compute capability (8.0+: bf16; below: fp16 with a
  GradScaler), never from ``torch.cuda.is_bf16_supported()``, which counts emulation (a T4 says yes)
  and asks about the current device, not the run's.
- A card whose kernels this build of torch lacks (a GTX 1080 Ti, 6.1, under the CUDA 13 default install)
  gets one line naming the card, its capability, the build and what it needs, before any work.
- fp32 is true fp32 (TF32 off through torch's ``fp32_precision`` switches); tf32 is its own precision,
  refused where there are no TF32 tensor cores; every run records its precision and its TF32 mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cxr_fast.cli import main
from cxr_fast.errors import CxrError
from cxr_fast.schema.run import RunConfig
from cxr_fast.step import TrainStep, device_precision, make_optimizer, resolve_device
from cxr_fast.train import run_training

REPO = Path(__file__).resolve().parents[1]
CUDA13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14+cu130's list
CUDA126_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _keep_fp32_switches():
    """The TF32 switches are process-wide: put them back as they were after each test."""
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv


def _cards(monkeypatch, capabilities: dict[int, tuple[int, int]], names: dict[int, str] | None = None,
           archs: list[str] | None = None, cuda_version: str = "13.0") -> None:
    """Pretend this machine has CUDA devices with these capabilities (by index); the current device is 0.
    ``is_bf16_supported`` says yes, as it does on a T4 with emulation counted: the rule must not ask it."""
    names = names or {}

    def index(device=None) -> int:
        if device is None:
            return 0
        d = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        return d.index or 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[index(device)])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names.get(index(device), "NVIDIA Card"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs if archs is not None else CUDA13_ARCHS))
    monkeypatch.setattr(torch.version, "cuda", cuda_version)


# --- auto: from the run's device's compute capability ------------------------------------------------------

def test_auto_is_fp16_on_capability_7_5_and_bf16_on_8_0(monkeypatch):
    _cards(monkeypatch, {0: (7, 5), 1: (8, 0)}, {0: "Tesla T4", 1: "NVIDIA A100-SXM4-40GB"})
    assert device_precision("auto", "cuda:0") == "fp16"  # a T4: fp16 with a GradScaler, not emulated bf16
    assert device_precision("auto", "cuda:1") == "bf16"
    with pytest.raises(CxrError, match="bf16 on Tesla T4, which has no bf16"):
        device_precision("bf16", "cuda:0")


def test_auto_asks_about_the_runs_device_not_the_current_one(monkeypatch):
    # Current device 0 is an A100; the run is on a T4 at index 1 (a mixed host).
    _cards(monkeypatch, {0: (8, 0), 1: (7, 5)}, archs=CUDA13_ARCHS)
    assert torch.cuda.get_device_capability() == (8, 0)
    assert device_precision("auto", "cuda:1") == "fp16"
    assert device_precision("auto", "cuda:0") == "bf16"


# --- a card this build has no kernels for ----------------------------------------------------------------

def test_a_6_1_card_under_a_cuda_13_build_is_refused_in_one_line(monkeypatch):
    _cards(monkeypatch, {0: (6, 1)}, {0: "NVIDIA GeForce GTX 1080 Ti"})
    with pytest.raises(CxrError, match="GTX 1080 Ti"):
        resolve_device("auto")  # what a run's default device picks
    with pytest.raises(CxrError) as info:
        resolve_device("cuda")
    msg = str(info.value)
    assert "\n" not in msg
    for part in ("GTX 1080 Ti", "compute capability 6.1", "CUDA 13.0", "sm_75", "cu126", "nvidia-dali-cuda120"):
        assert part in msg, (part, msg)


def test_gpu_check_refuses_the_card_before_any_work(monkeypatch, tmp_path, capsys):
    _cards(monkeypatch, {0: (7, 0)}, {0: "Tesla V100-SXM2-16GB"})
    out = tmp_path / "gpu"
    code = main(["gpu-check", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "Tesla V100" in err and "7.0" in err and "cu126" in err, err
    assert not out.exists() or not any(out.rglob("*"))  # nothing made: no phantom, no results folder


@pytest.mark.parametrize("capability, archs", [
    ((6, 1), CUDA126_ARCHS),           # a 1080 Ti on the build the README names
    ((7, 0), CUDA126_ARCHS),           # a V100 on it
    ((8, 9), CUDA13_ARCHS),            # an L4: sm_86 cubins run on 8.9 (same major, lower minor)
    ((12, 1), CUDA13_ARCHS),           # sm_120 runs on 12.1
    ((10, 3), ["sm_90", "compute_90"]),  # PTX: the driver compiles it for any later card
    ((9, 0), ["sm_90a"]),              # the arch-specific sm_90a runs on 9.0 ...
])
def test_cards_the_build_can_run_pass(monkeypatch, capability, archs):
    _cards(monkeypatch, {0: capability}, archs=archs)
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("capability, archs", [
    ((9, 0), ["sm_80", "sm_86"]),   # a cubin never runs on a later major
    ((10, 0), ["sm_90a", "compute_90a"]),  # ... and no later card runs sm_90a or its PTX
    ((8, 0), ["sm_86"]),            # nor on a lower minor
])
def test_cards_the_build_cannot_run_are_refused(monkeypatch, capability, archs):
    _cards(monkeypatch, {0: capability}, archs=archs)
    with pytest.raises(CxrError, match=f"compute capability {capability[0]}.{capability[1]}"):
        resolve_device("cuda")


# --- fp32 is true fp32; tf32 is asked for -----------------------------------------------------------------

def _step(precision: str, device: str = "cpu") -> TrainStep:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    return TrainStep(model, make_optimizer(model), 1.0, precision, device, channels_last=False, recipe="modern")


def test_fp32_turns_tf32_off_through_the_fp32_precision_switches():
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's own default for convolutions
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # as a run before may have left it
    step = _step("fp32")
    assert step.tf32 == "off"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"


def test_tf32_is_refused_without_tf32_tensor_cores_and_set_with_them(monkeypatch):
    with pytest.raises(CxrError, match="precision tf32 on the CPU, which has no TF32"):
        _step("tf32")
    _cards(monkeypatch, {0: (7, 0), 1: (8, 6)}, {0: "Tesla V100", 1: "NVIDIA GeForce RTX 3090"},
           archs=CUDA126_ARCHS)
    with pytest.raises(CxrError, match="precision tf32 on Tesla V100"):
        device_precision("tf32", "cuda:0")
    assert device_precision("tf32", "cuda:1") == "tf32"
    from cxr_fast.runtime import set_fp32_math

    assert set_fp32_math(True) == "on"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32",
                                                                                                    "tf32")
    assert set_fp32_math(False) == "off"


def test_every_run_records_its_precision_and_tf32_mode(tiny_phantom, tmp_path, monkeypatch):
    from test_train import _tiny_model

    monkeypatch.setattr("cxr_fast.models.build_model", _tiny_model)
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    cfg = RunConfig(label="No Finding", res=32, epochs=1, batch_size=8, lr=1e-2, loader="resident",
                    data=str(tiny_phantom), out=str(tmp_path / "run"), init="random", tta=0, workers=1,
                    device="cpu", precision="fp32")
    metrics = run_training(cfg, progress=False)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["precision"], metrics["tf32"]) == (on_disk["precision"], on_disk["tf32"]) == ("fp32", "off")
    from cxr_fast.study.results import METRIC_KEYS

    assert {"precision", "tf32"} <= set(METRIC_KEYS)  # and so every study row


# --- the config, the planner ------------------------------------------------------------------------------

def test_paper_config_states_true_fp32_and_why():
    text = (REPO / "configs" / "paper.yaml").read_text()
    assert yaml.safe_load(text)["train"]["precision"] == "fp32"
    line = next(i for i, t in enumerate(text.splitlines()) if t.strip().startswith("precision:"))
    comment = " ".join(t.split("#", 1)[1] for t in text.splitlines()[line:line + 3] if "#" in t)
    assert "TF32 off" in comment and "fastai 0.7" in comment and "names its card" in comment


def test_planner_prices_fp32_as_fp32_and_old_cards_state_their_software():
    from cxr_fast.cost import devices
    from cxr_fast.cost.memory import normalize_precision

    a100 = devices.resolve("a100-80")
    assert a100.compute_rate("fp32") < a100.compute_rate("tf32")  # true fp32 is the CUDA-core rate
    assert normalize_precision("tf32") == "fp32"  # fp32 tensors: the memory of fp32
    for name in ("1080ti", "v100"):
        software = devices.resolve(name).assumptions.get("software", "")
        assert "cu126" in software and "nvidia-dali-cuda120" in software, (name, software)
    assert "software" not in devices.resolve("h100").assumptions


def test_the_bench_records_its_precision_and_tf32_mode(tiny_phantom, monkeypatch):
    from cxr_fast.bench.config import BenchConfig
    from cxr_fast.bench.pipeline import memory_precision, run_bench
    from test_bench import tiny_effort
    from test_train import _tiny_model

    monkeypatch.setattr("cxr_fast.models.build_model", _tiny_model)

    torch.backends.cudnn.conv.fp32_precision = "tf32"
    cfg = BenchConfig(res=[32], archs=["resnet34"], loaders=["resident"], device="cpu", data=str(tiny_phantom),
                      precision="fp32", cpu=tiny_effort(), gpu=tiny_effort())
    resolved = run_bench(cfg)["settings"]["resolved"]
    assert (resolved["precision"], resolved["tf32"]) == ("fp32", "off")
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert [memory_precision(p) for p in ("auto", "bf16", "fp16", "tf32", "fp32")] == ["amp"] * 3 + ["fp32"] * 2
