"""CUDA graphs (``graphs``): a run setting everywhere, nothing on a CPU (said and recorded), refusals in one line,
and the capture code path, played on the CPU by a stand-in for ``torch.cuda``'s part, trains exactly what eager does.

What needs a GPU (a real capture and replay) is in the tests marked ``needs a CUDA GPU`` at the end, skipped here.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cxr_fast.errors import CxrError
from cxr_fast.graphs import OFF, OFF_CPU, GraphedStep, off_reason, use_graphs
from cxr_fast.models import Normalize
from cxr_fast.schema.run import SPEED_ONLY, RunConfig
from cxr_fast.step import TrainStep, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class StandInGraphs:
    """``graphs.CudaBackend`` played on the CPU: a replay runs the captured body again into the static output.

    A real capture runs no kernel; this one runs the body once, which the put-back after it undoes as it undoes
    the warm-up, so a wrong or missing put-back shows as a different model.
    """

    capturable = False  # a CPU optimizer cannot be capturable

    def __init__(self) -> None:
        self.captures = 0

    def warm(self, body, times: int) -> None:
        for _ in range(times):
            body()

    def capture(self, body):
        out = body()
        self.captures += 1
        return (lambda: out.copy_(body())), out

    def rng_state(self):
        return torch.get_rng_state()

    def set_rng_state(self, state) -> None:
        torch.set_rng_state(state)


def _net(recipe: str = "fastai07") -> nn.Module:
    """A small one-channel CNN with what a graph must keep right: BatchNorm statistics and dropout."""
    head = [nn.Dropout(0.5), nn.Linear(8, 2), nn.LogSoftmax(dim=1)] if recipe == "fastai07" else [nn.Linear(8, 1)]
    return nn.Sequential(Normalize(), nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), *head)


def _step(optimizer: str, recipe: str = "fastai07", seed: int = 0) -> TrainStep:
    torch.manual_seed(seed)
    model = _net(recipe)
    return TrainStep(model, make_optimizer(model, optimizer, lr=0.05), pos_weight=3.0, precision="fp32",
                     device="cpu", recipe=recipe)


def _batches(sizes: list[int], res: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(n, 1, res, res, generator=gen), (torch.arange(n) % 2).float()) for n in sizes]


def _train_and_score(step, batches, val) -> tuple[list[float], list[torch.Tensor]]:
    """Two epochs of training batches, each followed by a scoring pass in eval mode, as ``train.loop`` runs them."""
    torch.manual_seed(7)  # dropout's stream, the same for both runs
    losses, scores = [], []
    for _ in range(2):
        for images, labels in batches:
            losses.append(float(step(images, labels)))
        step.model.eval()
        scores.extend(step.predict(images) for images, _ in val)
        step.model.train()
    return losses, scores


def _same_state(a: TrainStep, b: TrainStep) -> None:
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name  # weights, BatchNorm running statistics, num_batches_tracked
    for (p, s), t in zip(a.optimizer.state.items(), b.optimizer.state.values()):
        for k in s:
            assert torch.equal(s[k], t[k]), k  # momentum buffers, Adam's moments and step count


# ------------------------------------------------------------------------------------------ the setting

def test_graphs_is_one_speed_only_setting_with_its_flags(tmp_path):
    from cxr_fast.cli import build_parser
    from cxr_fast.study import parse_study
    from cxr_fast.study.results import METRIC_KEYS

    assert RunConfig().graphs is False and "graphs" in SPEED_ONLY  # off by default; a cell's result ignores it
    assert build_parser().parse_args(["train", "--graphs"]).graphs is True
    assert build_parser().parse_args(["study", "s.yaml", "--no-graphs"]).graphs is False
    study = parse_study({"name": "g", "train": {"graphs": True}, "grids": [{"name": "a", "labels": ["Mass"],
                                                                           "resolutions": [32]}]})
    assert study.train["graphs"] is True
    with pytest.raises(CxrError, match="graphs"):
        RunConfig(graphs="yes")
    assert "graphs" in METRIC_KEYS  # a study's row says what its run used


# ------------------------------------------------------------------------------------------ the decision

def test_off_unless_asked_off_on_a_cpu_and_refused_where_a_graph_cannot_hold_the_step():
    assert off_reason(False, "cuda", "bf16") == OFF
    assert off_reason(True, "cpu", "fp32") == OFF_CPU == "off: CUDA graphs need a CUDA device"
    assert off_reason(True, "cuda", "bf16") is None and off_reason(True, "cuda", "tf32") is None
    for device in ("cuda", "cpu"):  # refused on the CPU too: a config refused on a GPU fails here first
        with pytest.raises(CxrError, match="fp16") as fp16:
            off_reason(True, device, "fp16")
        with pytest.raises(CxrError, match="compile") as compiled:
            off_reason(True, device, "bf16", compiled=True)
        assert "\n" not in str(fp16.value) and "\n" not in str(compiled.value)


def test_on_a_cpu_the_step_is_left_as_it_is_and_says_so_in_one_line():
    said: list[str] = []
    step = _step("sgd")
    assert use_graphs(step, asked=True, say=said.append) is step
    assert step.graphs == OFF_CPU and said == [f"graphs: {OFF_CPU}; this run steps eager"]
    quiet = _step("sgd")
    assert use_graphs(quiet, asked=False, say=said.append) is quiet and quiet.graphs == OFF and len(said) == 1


def test_a_grad_scaler_is_refused_by_the_graphed_step_itself():
    step = SimpleNamespace(scaler=object(), device=torch.device("cpu"))
    with pytest.raises(CxrError, match="GradScaler"):
        GraphedStep(step, backend=StandInGraphs())


# ------------------------------------------------------------------------------------------ the capture path

@pytest.mark.parametrize("optimizer, recipe", [("sgd", "fastai07"), ("adam", "fastai07"), ("sgd", "modern")])
def test_the_capture_path_trains_exactly_what_eager_trains(optimizer, recipe):
    # A short last batch in each epoch (eager) and a short last validation batch: every weight, BatchNorm
    # statistic, optimizer state, loss and score equal, so the warm-up (three steps and the capture) left no trace.
    batches, val = _batches([8, 8, 8, 5]), _batches([8, 3])
    eager = _step(optimizer, recipe)
    backend = StandInGraphs()
    graphed = GraphedStep(_step(optimizer, recipe), backend=backend)
    losses_e, scores_e = _train_and_score(eager, batches, val)
    losses_g, scores_g = _train_and_score(graphed, batches, val)
    assert losses_g == losses_e
    assert all(torch.equal(a, b) for a, b in zip(scores_e, scores_g))
    _same_state(eager, graphed.step)
    assert backend.captures == 2  # one training step, one evaluation forward, for the whole run
    train, evaluation = graphed.train_graph, graphed.eval_graph
    assert (train.replayed, train.eager, train.eager_shapes) == (6, 2, {"5x1x16x16"})
    assert (evaluation.replayed, evaluation.eager, evaluation.eager_shapes) == (2, 2, {"3x1x16x16"})
    assert graphed.graphs.startswith("captured: training step (forward, backward, ")
    assert "16 replayed 6, eager 2 (5x1x16x16)" in graphed.graphs


def test_adam_is_capturable_for_the_capture_only():
    # Fused Adam runs the same kernel either way: the flag is put back, so a checkpoint resumes on any device.
    class Capturable(StandInGraphs):
        capturable = True
        seen: list[bool] = []

        def capture(self, body):
            self.seen.append(graphed.optimizer.param_groups[0]["capturable"])
            return super().capture(body)

    batches, val = _batches([8, 8, 5]), _batches([8])
    eager, graphed = _step("adam"), GraphedStep(_step("adam"), backend=Capturable())
    losses_g, scores_g = _train_and_score(graphed, batches, val)
    losses_e, scores_e = _train_and_score(eager, batches, val)
    assert losses_g == losses_e and all(torch.equal(a, b) for a, b in zip(scores_g, scores_e))
    assert Capturable.seen == [True, False]  # the training step's capture; the evaluation forward's has no step
    assert graphed.optimizer.param_groups[0]["capturable"] is False
    _same_state(eager, graphed.step)


def test_without_the_put_back_the_warm_up_would_show(monkeypatch):
    # The equality above is no accident of a test too weak to see the warm-up's three extra steps.
    monkeypatch.setattr("cxr_fast.graphs._put_back", lambda step, backend, saved: None)
    batches, val = _batches([8, 8]), _batches([8])
    eager, graphed = _step("sgd"), GraphedStep(_step("sgd"), backend=StandInGraphs())
    _train_and_score(eager, batches, val)
    _train_and_score(graphed, batches, val)
    assert not torch.equal(eager.model[1].weight, graphed.model[1].weight)


class FakeStep:
    """Just what ``GraphedStep`` calls, counting the eager updates and forwards by input shape."""

    def __init__(self) -> None:
        self.model = nn.Identity()
        self.optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        self.device, self.precision, self.scaler = torch.device("cpu"), "fp32", None
        self.updates: list[tuple[int, ...]] = []

    def prepare(self, images):
        return images

    def prepare_labels(self, labels):
        return labels.float().view(-1)

    def update(self, images, labels):
        self.updates.append(tuple(images.shape))
        return images.sum()

    def scores(self, images):
        return images.flatten(1).sum(1)


def test_one_graph_per_mode_and_every_other_shape_runs_eager():
    step, backend = FakeStep(), StandInGraphs()
    graphed = GraphedStep(step, backend=backend, warmup=2)
    full, short = torch.ones(8, 1, 4, 4), torch.ones(5, 1, 4, 4)
    labels8, labels5 = torch.ones(8), torch.ones(5)
    for images, labels in [(full, labels8), (full, labels8), (short, labels5), (full, labels8)]:
        assert float(graphed(images, labels)) == float(images.sum())
    assert graphed(full.double(), labels8).dtype == torch.float64  # another dtype: eager too
    train = graphed.train_graph
    assert (backend.captures, train.replayed, train.eager) == (1, 3, 2)
    assert train.eager_shapes == {"5x1x4x4", "8x1x4x4"}
    step.model.eval()  # evaluation: its own graph, captured in eval mode at its first batch
    assert torch.equal(graphed.predict(full), step.scores(full)) and torch.equal(graphed.predict(short),
                                                                                 step.scores(short))
    assert (backend.captures, graphed.eval_graph.replayed, graphed.eval_graph.eager) == (2, 1, 1)
    out = graphed(full, labels8)  # a training step in eval mode is not the captured one
    assert train.eager == 3 and float(out) == float(full.sum())


def test_the_replayed_output_is_the_callers_to_keep():
    # Five TTA views are scored before they are stacked: each must keep its own scores after the next replay.
    step = FakeStep()
    step.model.eval()
    graphed = GraphedStep(step, backend=StandInGraphs())
    a, b = graphed.predict(torch.ones(2, 1, 2, 2)), graphed.predict(torch.zeros(2, 1, 2, 2))
    assert a.tolist() == [4.0, 4.0] and b.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------ a run on the CPU

def _tiny_model(arch: str = "resnet34", recipe: str = "fastai07", weights=None,
                head_bn_init: str = "ones") -> nn.Module:
    return _net(recipe)


def test_on_a_cpu_a_graphs_run_is_the_eager_run_and_records_why(tiny_phantom, tmp_path, monkeypatch, capsys):
    from cxr_fast.train import run_training

    monkeypatch.setattr("cxr_fast.models.build_model", _tiny_model)
    base = dict(label="No Finding", res=32, epochs=2, batch_size=8, lr=1e-2, loader="resident", data=str(tiny_phantom),
                init="random", tta=1, workers=1, device="cpu")
    plain = run_training(RunConfig(**base, out=str(tmp_path / "plain")), progress=False)
    graphed = run_training(RunConfig(**base, graphs=True, out=str(tmp_path / "graphs")), progress=True)
    assert "graphs: off: CUDA graphs need a CUDA device; this run steps eager" in capsys.readouterr().out
    assert plain["graphs"] == "off" and graphed["graphs"] == OFF_CPU
    assert json.loads((tmp_path / "graphs" / "metrics.json").read_text())["graphs"] == OFF_CPU
    assert "graphs: true" in (tmp_path / "graphs" / "config.yaml").read_text()
    a, b = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"] for name in ("plain", "graphs"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same parameters and buffers after the same steps
    np.testing.assert_array_equal(np.load(tmp_path / "plain" / "predictions.npz")["scores"],
                                  np.load(tmp_path / "graphs" / "predictions.npz")["scores"])


# ------------------------------------------------------------------------------------------ gpu-check's section

def test_gpu_checks_graphs_section_is_skipped_on_a_cpu_and_its_code_runs_under_the_stand_in():
    from cxr_fast.bench.graphs_check import SKIPPED_CPU, graphs_lines, graphs_section, measure_graphs

    assert graphs_section("cpu", [32]) == {"status": SKIPPED_CPU} == {"status": "skipped: no GPU"}
    assert graphs_lines({"status": SKIPPED_CPU}) == ["CUDA graphs: skipped: no GPU"]
    doc = measure_graphs("cpu", [32, 600], left=iter([100.0, 0.0]).__next__, batch=2, steps=1, warmup=1,
                         backend=StandInGraphs())
    ok, cut = doc["rows"]
    assert ok["status"] == "ok" and ok["eager_ms"] > 0 and ok["graphed_ms"] > 0 and ok["max_param_diff"] == 0.0
    assert ok["graphs"].startswith("captured: training step") and "unavailable" in ok["predicted"]  # no CUDA card
    assert cut["status"].startswith("skipped (time budget")
    lines = graphs_lines(doc)
    assert lines[1].startswith("res") and lines[2].lstrip().startswith("32") and "skipped" in lines[3]


# ------------------------------------------------------------------------------------------ needs a CUDA GPU

@needs_gpu
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_cuda_graph_trains_what_eager_trains(optimizer):
    def cuda_step():
        torch.manual_seed(0)
        model = _net("modern")  # no dropout: graph and eager draw their RNG offsets differently
        return TrainStep(model, make_optimizer(model, optimizer, lr=0.05), pos_weight=3.0, precision="fp32",
                         device="cuda", recipe="modern")

    batches = [(x.cuda(), y.cuda()) for x, y in _batches([8, 8, 8, 5])]
    eager, graphed = cuda_step(), use_graphs(cuda_step(), asked=True)
    assert isinstance(graphed, GraphedStep)
    for _ in range(2):
        for images, labels in batches:
            torch.testing.assert_close(graphed(images, labels), eager(images, labels), rtol=1e-4, atol=1e-5)
    for x, y in zip(eager.model.state_dict().values(), graphed.step.model.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
    assert graphed.train_graph.replayed == 6 and graphed.train_graph.eager == 2


@needs_gpu
def test_a_cuda_run_records_what_it_captured(tiny_phantom, tmp_path, monkeypatch):
    from cxr_fast.train import run_training

    monkeypatch.setattr("cxr_fast.models.build_model", _tiny_model)
    m = run_training(RunConfig(label="No Finding", res=32, epochs=1, batch_size=8, loader="resident", tta=1,
                               data=str(tiny_phantom), init="random", workers=1, device="cuda", precision="bf16",
                               graphs=True, out=str(tmp_path / "run")), progress=False)
    assert m["graphs"].startswith("captured: training step") and "evaluation forward" in m["graphs"]
