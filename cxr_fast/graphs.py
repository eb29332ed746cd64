"""CUDA graphs: the whole training step and the evaluation forward captured once, then replayed per batch.

Why: at the paper's batch of 8 every run is bound by kernel launches (``cxr-fast plan``: 3.9 h eager for the
paper's grid on an H100, 1.5 h with graphs). A replayed graph launches its few hundred kernels with one call.

Mechanism: ``torch.cuda.CUDAGraph`` over the whole step, PyTorch's "whole-network capture" (CUDA semantics
notes, "CUDA Graphs"): forward under autocast, the recipe's loss, backward and the optimizer step, in one graph.
Not ``torch.compile(mode="reduce-overhead")``: that graphs what Inductor compiled (the optimizer only if it is
compiled too), pays a compile per architecture and resolution in every run, and recompiles on a new shape,
where a manual capture costs three warm-up steps and replays exactly the eager kernels.

- Static inputs: the first batch's prepared images and labels are cloned into buffers the graph reads; each
  later batch is copied into them (one device-to-device copy each) before the replay. The loss stays on the
  device (a clone of the graph's output, so a caller may keep it).
- Warm-up and capture: three steps on a side stream (cuDNN's autotuning, the optimizer's lazy state), then the
  capture on that stream. Their effects are undone after the capture: the weights, BatchNorm statistics and
  optimizer state are put back in place and the RNG state restored, so the first replay is the run's first step.
  An optimizer state that did not exist yet is zeroed, which is its fresh value for Adam and, with dampening 0,
  for SGD's momentum (``0 * m + g == g``).
- Optimizers: SGD holds no host state and its fixed learning rate is captured as a constant (cxr-fast has no
  schedule); Adam's groups are ``capturable`` for the warm-up and capture (its step count on the device; fused
  Adam runs the same kernel either way, so the flag is put back and checkpoints keep the optimizer as built).
- BatchNorm running statistics update in place inside the graph; dropout draws from PyTorch's graph-safe RNG
  (a packed model's per-model generators are registered with the graph).
- Refused, in one line: fp16 (``GradScaler.step`` reads the overflow flag on the host, which a graph cannot
  hold; bf16, tf32 and fp32 need no scaler) and ``compile`` (two capture mechanisms on one model).
- Shapes: a batch whose shape or dtype differs from the captured one (the short last training batch, the short
  last validation batch) runs eager, counted: the images a run trains on never depend on this option.
- Where a graph cannot run (the CPU) the option does nothing, says so in one line and is recorded.

``GraphedStep`` stands in for a ``step.TrainStep`` (every other attribute is the step's); ``use_graphs`` decides.
The capture calls a backend (``CudaBackend``), so its code path also runs on a CPU under a stand-in.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from cxr_fast.errors import CxrError

OFF = "off"
OFF_CPU = "off: CUDA graphs need a CUDA device"
WARMUP_STEPS = 3  # PyTorch's whole-network example warms up three iterations on a side stream


def off_reason(asked: bool, device_type: str, precision: str, compiled: bool = False) -> str | None:
    """Why graphs are off for a run (``OFF``, ``OFF_CPU``), or None when they will be captured. A combination
    a graph cannot hold is refused in one line, on any device, so a config refused on a GPU is refused here too."""
    if not asked:
        return OFF
    if compiled:
        raise CxrError("graphs and compile together: choose one (graphs capture the eager step; compile has its own "
                       "CUDA graphs, mode reduce-overhead)")
    if precision == "fp16":
        raise CxrError("graphs with precision fp16: its GradScaler reads the overflow flag on the host every step, "
                       "which a CUDA graph cannot hold; use precision bf16, tf32 or fp32, or drop graphs")
    if device_type != "cuda":
        return OFF_CPU
    return None


def use_graphs(step: Any, asked: bool, compiled: bool = False, say: Callable[[str], None] | None = None) -> Any:
    """``step`` as the run will use it: wrapped in a ``GraphedStep`` where graphs are captured, else itself with
    ``step.graphs`` saying why not (``say`` is told in one line when graphs were asked for). Idempotent."""
    if isinstance(step, GraphedStep):
        return step
    why = off_reason(asked, step.device.type, step.precision, compiled) if asked else OFF
    if why is None:
        return GraphedStep(step)
    step.graphs = why
    if asked and say is not None:
        say(f"graphs: {why}; this run steps eager")
    return step


class CudaBackend:
    """What a capture needs from CUDA: a side stream to warm up on, the graph itself, the RNG state."""

    capturable = True  # Adam's groups are made capturable for the capture (its step count on the device)

    def __init__(self, device: torch.device, generators: Any = ()) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        # A packed model's per-model dropout generators (``cxr_fast.packed``): registered with each graph, so a
        # replay advances them as the default generator's offset advances, and saved and restored with it.
        self.generators = [g for g in generators if g.device.type == "cuda"]

    def warm(self, body: Callable[[], Any], times: int) -> None:
        """``body`` ``times`` times on the side stream, as PyTorch's capture examples do before capturing."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            for _ in range(times):
                body()
        current.wait_stream(self.stream)

    def capture(self, body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """(replay, static output): ``body`` captured on the warm-up stream (one stream for both, which is
        also what ROCm's cuBLAS-handle caching needs). Capturing runs no kernel."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: a loader's own threads (DALI, FFCV) may keep calling CUDA while this thread captures.
        for g in self.generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            out = body()
        return graph.replay, out

    def rng_state(self) -> list[torch.Tensor]:
        return [torch.cuda.get_rng_state(self.device), *(g.get_state() for g in self.generators)]

    def set_rng_state(self, state: list[torch.Tensor]) -> None:
        torch.cuda.set_rng_state(state[0], self.device)
        for g, s in zip(self.generators, state[1:]):
            g.set_state(s)


@contextmanager
def _capturable_quiet() -> Iterator[None]:
    """A capturable optimizer stepped outside a capture (the warm-up) warns that it may be slower: expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*capturable=True.*")
        yield


def shape_text(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape))


@dataclass
class Captured:
    """One captured graph: its static inputs, its replay and static output, and what it has done."""

    key: tuple
    inputs: tuple[torch.Tensor, ...]
    replay: Callable[[], None]
    output: torch.Tensor
    seconds: float  # warm-up and capture, host time (a capture synchronises the device first)
    replayed: int = 0
    eager: int = 0
    eager_shapes: set[str] = field(default_factory=set)

    def run(self, *tensors: torch.Tensor) -> torch.Tensor:
        for static, t in zip(self.inputs, tensors):
            static.copy_(t, non_blocking=True)
        self.replay()
        self.replayed += 1
        return self.output.clone()  # the next replay overwrites the static output

    def describe(self, what: str) -> str:
        shape = shape_text(self.inputs[0])
        eager = f"eager {self.eager}" + (f" ({', '.join(sorted(self.eager_shapes))})" if self.eager_shapes else "")
        return f"{what} {shape} replayed {self.replayed}, {eager}, captured in {self.seconds:.1f} s"


def key_of(tensors: tuple[torch.Tensor, ...], training: bool) -> tuple:
    """What a graph is valid for: each input's shape and dtype, and the model's mode."""
    return (training, *((tuple(t.shape), t.dtype) for t in tensors))


def _check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Only optimizers whose fresh state is zeros (see the module's note) may have their warm-up undone by zeroing."""
    ok = isinstance(optimizer, torch.optim.Adam) or (
        isinstance(optimizer, torch.optim.SGD) and all(g.get("dampening", 0) == 0 for g in optimizer.param_groups))
    if not ok:
        raise CxrError(f"graphs: optimizer {type(optimizer).__name__} is not one whose warm-up cxr_fast.graphs can "
                       "undo (SGD without dampening, Adam)")


def _snapshot(step: Any, backend: Any) -> dict[str, Any]:
    """Everything a warm-up step changes: weights and buffers, optimizer state, the RNG."""
    optimizer = step.optimizer
    return {"model": {k: v.detach().clone() for k, v in step.model.state_dict().items()},
            "optimizer": {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                          for p, s in optimizer.state.items()},
            "rng": backend.rng_state()}


def _put_back(step: Any, backend: Any, saved: dict[str, Any]) -> None:
    """The snapshot copied back in place (a graph holds the tensors' addresses, so none is replaced); optimizer
    state the warm-up created is zeroed, its fresh value."""
    step.model.load_state_dict(saved["model"])  # copies into the existing tensors
    for p, state in step.optimizer.state.items():
        before = saved["optimizer"].get(p)
        for k, v in state.items():
            if torch.is_tensor(v) and before is not None:
                v.copy_(before[k])
            elif torch.is_tensor(v):
                v.zero_()
            else:
                state[k] = before[k] if before is not None else type(v)(0)
    backend.set_rng_state(saved["rng"])


class GraphedStep:
    """A ``TrainStep`` whose training step and evaluation forward replay CUDA graphs, captured at first use.

    A batch of another shape (or dtype, or model mode) than the captured one runs eager through the step itself;
    the counts and shapes are in ``graphs``, the run's record.
    """

    def __init__(self, step: Any, backend: Any = None, warmup: int = WARMUP_STEPS) -> None:
        if getattr(step, "scaler", None) is not None:
            raise CxrError("graphs with a GradScaler (precision fp16): a CUDA graph cannot hold its host-side check")
        self.step = step
        generators = getattr(step.model, "generators", ())  # a packed model's, one per model
        self.backend = backend if backend is not None else CudaBackend(step.device, generators)
        self.warmup = warmup
        self.train_graph: Captured | None = None
        self.eval_graph: Captured | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "step":  # not set yet (during unpickling or a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.step, name)

    @property
    def graphs(self) -> str:
        """The run's record: what was captured, how often it replayed, what ran eager and why."""
        step = self.step
        parts = []
        if self.train_graph is not None:
            what = f"training step (forward, backward, {type(step.optimizer).__name__} step; {step.precision})"
            parts.append(self.train_graph.describe(what))
        if self.eval_graph is not None:
            parts.append(self.eval_graph.describe("evaluation forward"))
        return "captured: " + "; ".join(parts) if parts else "on: nothing captured yet"

    # ------------------------------------------------------------------------------------------ training

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        step = self.step
        inputs = (step.prepare(images), step.prepare_labels(labels))
        key = key_of(inputs, step.model.training)
        if self.train_graph is None and step.model.training:
            self.train_graph = self._capture_train(inputs, key)
        graph = self.train_graph
        if graph is not None and key == graph.key:
            return graph.run(*inputs)
        if graph is not None:
            graph.eager += 1
            graph.eager_shapes.add(shape_text(inputs[0]))
        return self._eager_update(*inputs)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.step.optimizer.param_groups for p in g["params"]]

    def _eager_update(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One step outside the graph. The graph's static gradients are set aside first (a backward would add
        to them) and put back after, so their memory stays the graph's."""
        params = self._params()
        held = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            return self.step.update(images, labels)
        finally:
            for p, g in zip(params, held):
                p.grad = g

    def _capture_train(self, inputs: tuple[torch.Tensor, ...], key: tuple) -> Captured:
        step, backend = self.step, self.backend
        optimizer = step.optimizer
        _check_optimizer(optimizer)
        adam = backend.capturable and isinstance(optimizer, torch.optim.Adam)
        if adam:
            for p, state in optimizer.state.items():  # a step count left on the host by a non-fused Adam
                if torch.is_tensor(state.get("step")) and state["step"].device != p.device:
                    state["step"] = state["step"].to(p.device)
        static = tuple(t.clone(memory_format=torch.preserve_format) for t in inputs)

        def body() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)  # a replay writes the gradients, never adds to them
            return step.update(*static)

        started = time.perf_counter()
        saved = _snapshot(step, backend)
        flags = [g.get("capturable", False) for g in optimizer.param_groups] if adam else []
        try:
            for group in optimizer.param_groups if adam else ():
                group["capturable"] = True
            with _capturable_quiet():
                backend.warm(body, self.warmup)
                replay, loss = backend.capture(body)
        finally:
            # Only the capture needs Adam capturable (fused Adam runs the same kernel either way), so a checkpoint
            # keeps the optimizer as make_optimizer built it, and resumes anywhere.
            for group, flag in zip(optimizer.param_groups, flags):
                group["capturable"] = flag
        _put_back(step, backend, saved)
        return Captured(key, static, replay, loss, time.perf_counter() - started)

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``TrainStep.predict``, replayed from a graph of the evaluation forward (captured in eval mode)."""
        step = self.step
        inputs = (step.prepare(images),)
        key = key_of(inputs, step.model.training)
        if self.eval_graph is None and not step.model.training:
            self.eval_graph = self._capture_eval(inputs, key)
        graph = self.eval_graph
        if graph is not None and key == graph.key:
            return graph.run(*inputs)
        if graph is not None:
            graph.eager += 1
            graph.eager_shapes.add(shape_text(inputs[0]))
        return step.scores(*inputs)

    def _capture_eval(self, inputs: tuple[torch.Tensor, ...], key: tuple) -> Captured:
        """An eval-mode forward changes no state (BatchNorm reads its statistics, dropout is off): nothing to undo."""
        static = tuple(t.clone(memory_format=torch.preserve_format) for t in inputs)
        started = time.perf_counter()
        self.backend.warm(lambda: self.step.scores(*static), self.warmup)
        replay, out = self.backend.capture(lambda: self.step.scores(*static))
        return Captured(key, static, replay, out, time.perf_counter() - started)
