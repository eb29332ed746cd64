"""Count the work of one training or evaluation step without running it: FLOPs, bytes moved, ops dispatched.

Why: a study's cost is (steps) x (cost of one step), and the cost of one step on any device follows from
three counts that need no device at all. Like ``cost.memory``, the step runs on the ``meta`` device
(shapes and dtypes only, nothing computed) inside a ``TorchDispatchMode`` that sees every aten op:

- **FLOPs** with ``torch.utils.flop_counter``'s formulas (its ``flop_registry``, the formulas
  ``FlopCounterMode`` applies). Unit: floating-point operations, a multiply-accumulate counting as 2
  (so ResNet34's published 3.6 G multiply-accumulates at 224 px are 7.3 GFLOP here).
- **Bytes** each kernel reads and writes: the sizes of its tensor inputs plus its outputs, i.e. DRAM
  traffic with no reuse between kernels (caches make the truth somewhat lower).
- **Host syncs**: every transfer that makes the host wait for the device (a device read such as
  ``.item()`` or ``nonzero``, a blocking upload), counted by ``cxr_fast.syncs`` in the same pass, so the
  planner prices whatever a step still does (``sync_s`` each) without a hand-kept list. The two it cannot
  run on ``meta`` are added by hand: fp16's GradScaler check and evaluation's one read of scores per batch.
- **Ops dispatched** (every aten op: the host pays dispatch for each, views included) and **kernels**
  (ops that do device work: not views, not bare allocations, not ops on CPU-only tensors such as the
  augmentation's random parameters). On CUDA one aten op can launch more than one kernel (a cuDNN
  backward, a foreach over many chunks), so kernels here are a lower bound on CUDA launches.

A step is split in what a CUDA graph could capture (``graphable``: the model's forward, loss,
backward and optimizer step, i.e. ``cxr_fast.step.TrainStep``) and what stays eager (``eager``: the
resident loader's indexing and augmentation, the training loop's bookkeeping, evaluation's
test-time views and the device-to-host copy of scores, which also synchronises).

Mixed precision on ``meta``: ``torch.autocast`` does not run there (see ``cost.memory``), so the
body is cast to float16 explicitly (the head stays float32, as ``Float32Head`` makes it under
autocast) and the casts autocast would add are counted by hand: each convolution weight to half in
the forward and its gradient back in the backward, and the input image. The optimizer always steps
float32 master weights; it is counted on a float32 model.

Counts are cached in memory and on disk (``<cache>/plan-counts.json``, keyed by torch's version and
``COUNT_VERSION``): a DenseNet121 step takes about a second to count.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cxr_fast.cost.diskcache import DiskCache
from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import ARCHS, PRECISIONS, RECIPES, check_choice, check_res, is_autocast

COUNT_VERSION = 3  # bump when what is counted changes: old cache entries are then ignored
CACHE_NAME = "plan-counts.json"
# Ops that allocate or alias but never run a kernel.
_NO_KERNEL = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                        "empty_permuted", "lift_fresh", "_local_scalar_dense", "set_"})


@dataclass(frozen=True)
class Work:
    """The work of one step: host ops, device kernels as (flops, bytes) -> how many, and host syncs."""

    ops: int = 0
    kernels: tuple[tuple[float, float, int], ...] = ()
    syncs: int = 0

    @property
    def n_kernels(self) -> int:
        return sum(n for _, _, n in self.kernels)

    @property
    def flops(self) -> float:
        return float(sum(f * n for f, _, n in self.kernels))

    @property
    def bytes(self) -> float:
        return float(sum(b * n for _, b, n in self.kernels))

    def __add__(self, other: "Work") -> "Work":
        merged: Counter = Counter()
        for f, b, n in (*self.kernels, *other.kernels):
            merged[(f, b)] += n
        return Work(self.ops + other.ops, _pack(merged), self.syncs + other.syncs)

    def times(self, k: int) -> "Work":
        """The same work ``k`` times over (k views of one evaluation batch)."""
        return Work(self.ops * k, tuple((f, b, n * k) for f, b, n in self.kernels), self.syncs * k)

    def summary(self) -> dict[str, float]:
        return {"ops": self.ops, "kernels": self.n_kernels, "flops": self.flops, "bytes": self.bytes,
                "syncs": self.syncs}

    def to_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "syncs": self.syncs, "kernels": [list(k) for k in self.kernels]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Work":
        return cls(int(d["ops"]), tuple((float(f), float(b), int(n)) for f, b, n in d["kernels"]), int(d["syncs"]))


def _pack(counter: Counter) -> tuple[tuple[float, float, int], ...]:
    return tuple(sorted((float(f), float(b), int(n)) for (f, b), n in counter.items() if n))


@dataclass(frozen=True)
class StepWork:
    """One step split by what a CUDA graph could capture: ``graphable`` + ``eager`` = the whole step."""

    graphable: Work
    eager: Work

    @property
    def total(self) -> Work:
        return self.graphable + self.eager

    def to_dict(self) -> dict[str, Any]:
        return {"graphable": self.graphable.to_dict(), "eager": self.eager.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepWork":
        return cls(Work.from_dict(d["graphable"]), Work.from_dict(d["eager"]))


class _Counter:
    """A dispatch mode that records every aten op: host op, device kernel (flops, bytes) or neither, and the
    host syncs among them (``cxr_fast.syncs``, which also stands in for reads ``meta`` cannot answer)."""

    def __init__(self, device_type: str = "meta") -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        from cxr_fast.syncs import SyncCounter, assume_all_nonzero

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = counter.syncs.dispatch(func, args, kwargs)
                counter.record(func, args, kwargs, out)
                return out

        self.device_type = device_type
        self.syncs = SyncCounter(device_type)  # its dispatch only: one mode, so nothing is counted twice
        self._nonzero = assume_all_nonzero()
        self.mode = Mode()
        self.ops = 0
        self.kernels: Counter = Counter()

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        import torch
        from torch.utils._pytree import tree_flatten
        from torch.utils.flop_counter import flop_registry

        if getattr(func, "namespace", "aten") != "aten":
            return  # profiler markers and the like: no aten op
        self.ops += 1
        name = func.overloadpacket.__name__
        if name in _NO_KERNEL or any(r.alias_info is not None and not r.alias_info.is_write
                                     for r in func._schema.returns):
            return  # allocation or view: host work only
        tensors = [t for t in tree_flatten((args, kwargs))[0] + tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not any(t.device.type == self.device_type for t in tensors):
            return  # CPU-side bookkeeping (random parameters): host work only
        formula = flop_registry.get(func.overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        nbytes = sum(t.numel() * t.element_size() for t in tensors if t.device.type == self.device_type)
        self.kernels[(flops, nbytes)] += 1

    def __enter__(self) -> "_Counter":
        self._nonzero.__enter__()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.mode.__exit__(*exc)
        finally:
            self._nonzero.__exit__(*exc)

    def work(self, syncs: int = 0) -> Work:
        """The counted work, with the syncs seen plus ``syncs`` added by hand."""
        return Work(self.ops, _pack(self.kernels), syncs + self.syncs.total)


def _dtype(precision: str):
    import torch

    check_choice(precision, PRECISIONS, "precision")
    return torch.float16 if is_autocast(precision) else torch.float32  # bf16 costs what fp16 costs


def _model(arch: str, recipe: str, precision: str):
    """A meta model as a step would run it: channels-last, body in the step's dtype, head float32."""
    import torch

    from cxr_fast.models import build_model

    with torch.device("meta"):
        model = build_model(arch, recipe)
    model = model.to(memory_format=torch.channels_last)
    if is_autocast(precision):
        model = model.half()
        model[2].float()  # Float32Head: autocast leaves the head in float32
    return model


def _conv_weights(model) -> list:
    import torch

    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def _amp_casts(arch: str, recipe: str, res: int, batch: int, backward: bool = True) -> Work:
    """What autocast adds to a pass: every conv weight cast to half (forward) and, when training, its
    gradient cast back (backward), and the float32 image cast to half before the stem. Autocast caches
    the casts only inside one ``with autocast`` block, so every step and every evaluation view pays them."""
    model = _model(arch, recipe, "fp32")
    kernels: Counter = Counter()
    for w in _conv_weights(model):
        kernels[(0, w.numel() * 6)] += 2 if backward else 1  # 4 bytes read + 2 written (and back)
    kernels[(0, batch * res * res * 6)] += 1
    n = sum(kernels.values())
    return Work(n, _pack(kernels), 0)


def _grad_scaler(arch: str, recipe: str) -> Work:
    """fp16's GradScaler: scale the loss, unscale and check every gradient, update the scale, and one
    ``.item()`` on the inf flag (a host sync)."""
    model = _model(arch, recipe, "fp32")
    grad_bytes = sum(p.numel() * 4 for p in model.parameters())
    return Work(6, _pack(Counter({(0, 2 * grad_bytes): 1, (0, 8): 3})), 1)


@functools.lru_cache(maxsize=64)
def optimizer_work(arch: str, recipe: str = "fastai07", optimizer: str = "sgd", foreach: bool = True) -> Work:
    """One optimizer step plus ``zero_grad`` on float32 master weights (state already created)."""
    import torch

    from cxr_fast.step import make_optimizer

    model = _model(arch, recipe, "fp32")
    opt = make_optimizer(model, optimizer)
    for group in opt.param_groups:
        group["foreach"] = foreach
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt.step()  # creates the state (momentum, Adam moments)
    with _Counter() as c:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return c.work()


def _loader_batch(res: int, batch: int, recipe: str, augment: bool) -> Work:
    """The resident loader's work per batch on the device: gather, to float, augment, channels-last
    (``cxr_fast.loaders.common.finish`` on the GPU path)."""
    import torch

    from cxr_fast.augment import augment as run_augment
    from cxr_fast.augment import epoch_generator, to_float
    from cxr_fast.recipes import augmentation

    images = torch.empty(batch, 1, res, res, dtype=torch.uint8, device="meta")
    rows = torch.empty(batch, dtype=torch.long, device="meta")
    targets = torch.empty(batch, device="meta")
    with _Counter() as c:
        if augment:
            x = run_augment(images, epoch_generator(0, 0), augmentation(recipe), rows=rows)
        else:
            x = to_float(images.index_select(0, rows))
        x.contiguous(memory_format=torch.channels_last)
        targets[rows]
    return c.work()


def _check(arch: str, res: int, batch: int, precision: str, recipe: str) -> None:
    check_choice(arch, ARCHS, "architecture")
    check_choice(recipe, RECIPES, "recipe")
    check_choice(precision, PRECISIONS, "precision")
    check_res(res, f"{arch} work count")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CxrError(f"batch size must be a whole number of at least 1, got {batch!r}")


def _train_step(arch: str, res: int, batch: int, precision: str, recipe: str, optimizer: str,
                foreach: bool, augment: bool, scaler: bool) -> StepWork:
    import torch

    from cxr_fast.recipes import loss_function

    _check(arch, res, batch, precision, recipe)
    model = _model(arch, recipe, precision)
    model.train()
    loss_fn = loss_function(recipe, 1.0, torch.device("meta"))
    dtype = _dtype(precision)
    images = torch.empty(batch, 1, res, res, device="meta", dtype=dtype).contiguous(memory_format=torch.channels_last)
    labels = torch.empty(batch, device="meta")
    with _Counter() as c:  # TrainStep.__call__ without the optimizer
        y = labels.float().view(-1)
        loss = loss_fn(model(images), y)
        loss.backward()
        loss = loss.detach()
    graphable = c.work() + optimizer_work(arch, recipe, optimizer, foreach)
    if is_autocast(precision):
        graphable = graphable + _amp_casts(arch, recipe, res, batch)
    if scaler:
        graphable = graphable + _grad_scaler(arch, recipe)
    spread = torch.zeros((), device="meta")
    loss_sum = torch.zeros((), device="meta")
    x = torch.empty(batch, 1, res, res, device="meta")
    with _Counter() as c:  # cxr_fast.train._train_epochs' bookkeeping per batch
        spread = torch.maximum(spread, (x.amax() - x.amin()).float())
        loss_sum += loss * batch
    eager = _loader_batch(res, batch, recipe, augment) + c.work()
    return StepWork(graphable, eager)


def _eval_batch(arch: str, res: int, batch: int, precision: str, recipe: str, views: int) -> StepWork:
    """One validation batch scored on ``views`` views (1: the plain one; 1 + tta at the end)."""
    import torch

    from cxr_fast.augment import tta_views
    from cxr_fast.models import positive_logit
    from cxr_fast.recipes import augmentation

    _check(arch, res, batch, precision, recipe)
    model = _model(arch, recipe, precision)
    model.eval()
    dtype = _dtype(precision)
    images = torch.empty(batch, 1, res, res, device="meta", dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), _Counter() as c:  # TrainStep.predict on one view
        positive_logit(model(images))
    graphable = c.work()
    if is_autocast(precision):
        graphable = graphable + _amp_casts(arch, recipe, res, batch, backward=False)
    graphable = graphable.times(views)
    val = torch.empty(batch, 1, res, res, dtype=torch.uint8, device="meta")
    with torch.no_grad(), _Counter() as c:  # the loader's plain batch, the TTA views, stacking the scores
        plain = _loader_batch_plain(val)
        if views > 1:
            tta_views(plain, views - 1, 0, augmentation(recipe))
        torch.stack([torch.empty(batch, device="meta")] * views)
    # .cpu() of the stacked scores: one device-to-host copy, and the host waits for it.
    eager = c.work(syncs=1) + Work(1, ((0.0, float(4 * batch * views), 1),), 0)
    return StepWork(graphable, eager)


def _loader_batch_plain(val):
    import torch

    from cxr_fast.augment import to_float

    return to_float(val).contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------------
# Cache


_COUNTS = DiskCache(CACHE_NAME, COUNT_VERSION)


def _cached(key: str, make) -> StepWork:
    """The count under ``key``: from memory, from the disk cache, else counted now and saved."""
    hit = _COUNTS.get(key)
    if hit is not None:
        return StepWork.from_dict(hit)
    work = make()
    _COUNTS.put(key, work.to_dict())
    return work


def train_work(arch: str, res: int, batch: int, precision: str = "fp32", recipe: str = "fastai07",
               optimizer: str = "sgd", foreach: bool = True, augment: bool = True, scaler: bool = False) -> StepWork:
    """One training step of ``TrainStep`` fed by the resident loader (``foreach``: SGD/Adam's foreach
    path, the default on CUDA; the CPU default is the per-parameter loop)."""
    key = f"train|{arch}|{recipe}|{res}|{batch}|{precision}|{optimizer}|foreach={foreach}|aug={augment}|scaler={scaler}"
    return _cached(key, lambda: _train_step(arch, int(res), int(batch), precision, recipe, optimizer, foreach,
                                            augment, scaler))


def eval_work(arch: str, res: int, batch: int, precision: str = "fp32", recipe: str = "fastai07",
              views: int = 1) -> StepWork:
    """One validation batch through ``cxr_fast.train.predict`` with ``views`` views (plain + TTA)."""
    if views < 1:
        raise CxrError(f"views must be at least 1 (the plain view), got {views}")
    key = f"eval|{arch}|{recipe}|{res}|{batch}|{precision}|views={views}"
    return _cached(key, lambda: _eval_batch(arch, int(res), int(batch), precision, recipe, int(views)))


def forward_flops(model, res: int, batch: int = 1, channels: int = 1) -> float:
    """FLOPs (2 per multiply-accumulate) of one forward pass of ``model`` on ``meta``, via FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.empty(batch, channels, res, res, device="meta")
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()  # a batch of one cannot be batch-normalised in training mode
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


@functools.lru_cache(maxsize=16)
def parameter_bytes(arch: str, recipe: str = "fastai07") -> int:
    """float32 bytes of the model's parameters (checkpoints, optimizer state)."""
    return sum(p.numel() * 4 for p in _model(arch, recipe, "fp32").parameters())


def clear_cache() -> None:
    """Forget the in-memory counts (tests point the disk cache elsewhere and start over)."""
    _COUNTS.clear()
    optimizer_work.cache_clear()
    parameter_bytes.cache_clear()
