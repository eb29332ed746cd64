"""Measure the largest batch that trains: double until out-of-memory, then bisect.

The search is written against an injectable ``try_batch(bs) -> bool`` so its logic is tested on the
CPU against a fake allocator limit; :func:`cuda_try_batch` is the real probe for a GPU. Every OOM is
caught, the step's tensors are dropped and the CUDA cache emptied before the next try, so one failed
size never poisons the next measurement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from cxr_fast.errors import CxrError
from cxr_fast.runtime import fixed_shapes, free_memory, is_oom


@dataclass
class SearchResult:
    """``max_ok`` is the largest batch that ran (0: not even 1); ``first_fail`` the smallest that did not
    (None: never failed up to ``cap``, so ``max_ok`` is a lower bound, ``capped`` is True).
    ``cut_by_budget``: the time budget stopped the search before it closed, so the limit lies somewhere in
    ``[max_ok, first_fail)`` (``first_fail`` None: anywhere above ``max_ok``); ``try_seconds`` times each try."""

    max_ok: int
    first_fail: int | None
    capped: bool
    tries: list[tuple[int, bool]] = field(default_factory=list)
    cut_by_budget: bool = False
    try_seconds: list[float] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """The largest batch that runs is known exactly (the search closed, or was cut after it had)."""
        return self.first_fail is not None and self.first_fail - self.max_ok == 1

    def to_dict(self) -> dict:
        return {"max_ok": self.max_ok, "first_fail": self.first_fail, "capped": self.capped,
                "tries": [list(t) for t in self.tries], "cut_by_budget": self.cut_by_budget, "exact": self.exact,
                "try_seconds": [round(t, 3) for t in self.try_seconds]}


class _OutOfTime(Exception):
    """The next try would not finish within the search's time budget."""


def predict_try_s(bs: int, timed: list[tuple[int, float]]) -> float:
    """Seconds a try at batch ``bs`` should take, from the tries already timed (0.0 before the first).

    Conservative on purpose, because a try that has started cannot be stopped: the slowest rate seen,
    scaled linearly to ``bs`` (which scales the fixed model-building cost too), and never less than the
    quickest try seen (that fixed cost, paid even at a small batch).
    """
    if not timed:
        return 0.0
    return max(min(t for _, t in timed), max(t * bs / b for b, t in timed))


def find_max_batch(try_batch: Callable[[int], bool], start: int = 1, cap: int | None = None,
                   growth: float = 2.0, time_left: Callable[[], float] | None = None,
                   clock: Callable[[], float] = time.perf_counter) -> SearchResult:
    """Exact largest ``bs`` with ``try_batch(bs)`` True, assuming success is monotone in ``bs``.

    From ``start`` (a good guess, e.g. the prediction, saves tries) it grows the batch by ``growth``
    until a failure or ``cap``; if ``start`` fails it shrinks by ``growth`` until a success (or a batch
    of 1 fails: ``max_ok=0``). Then it bisects between the last success and the first failure. With a
    guess within 10%, ``growth=1.25`` needs a handful of tries instead of a dozen.

    ``time_left()`` (seconds; None: no budget) bounds the search by time, checked before every try: a try
    starts only when its predicted time (:func:`predict_try_s`) fits in what is left, else the search
    stops with what it knows and says so (``cut_by_budget``).
    """
    if start < 1:
        raise CxrError(f"batch search must start at 1 or more, got {start}")
    if cap is not None and cap < 1:
        raise CxrError(f"batch search cap must be 1 or more, got {cap}")
    if growth <= 1.0:
        raise CxrError(f"batch search growth must be above 1, got {growth}")
    if cap is not None:
        start = min(start, cap)
    tries: list[tuple[int, bool]] = []
    timed: list[tuple[int, float]] = []

    def attempt(bs: int) -> bool:
        if time_left is not None and predict_try_s(bs, timed) > time_left():
            raise _OutOfTime
        t = clock()
        ok = bool(try_batch(bs))
        timed.append((bs, clock() - t))
        tries.append((bs, ok))
        return ok

    try:
        lo, hi, capped = _search(attempt, start, cap, growth)
    except _OutOfTime:
        lo = max([b for b, ok in tries if ok], default=0)
        fails = [b for b, ok in tries if not ok]
        return SearchResult(max_ok=lo, first_fail=min(fails) if fails else None, capped=False, tries=tries,
                            cut_by_budget=True, try_seconds=[t for _, t in timed])
    return SearchResult(max_ok=lo, first_fail=hi, capped=capped, tries=tries, try_seconds=[t for _, t in timed])


def _search(attempt: Callable[[int], bool], start: int, cap: int | None, growth: float) -> tuple[int, int | None, bool]:
    """Grow (or shrink) from ``start``, then bisect: (largest success, smallest failure, capped)."""

    def grow(bs: int) -> int:
        nxt = max(bs + 1, int(bs * growth))
        return nxt if cap is None else min(nxt, cap)

    lo, hi = 0, None  # invariant: lo succeeded (0 = trivially), hi failed
    bs = start
    if attempt(bs):
        lo = bs
        while hi is None:
            if cap is not None and lo >= cap:
                return lo, None, True
            bs = grow(lo)
            if attempt(bs):
                lo = bs
            else:
                hi = bs
    else:
        hi = bs
        while hi > 1:
            bs = max(1, min(hi - 1, int(hi / growth)))
            if attempt(bs):
                lo = bs
                break
            hi = bs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi, False


def guarded(run: Callable[[int], None], cleanup: Callable[[], None]) -> Callable[[int], bool]:
    """Turn ``run(bs)`` (raises on OOM) into ``try_batch(bs) -> bool``; ``cleanup`` runs after every try.

    Any error that is not an OOM propagates: a shape bug must not pass for a memory limit.
    """

    def try_batch(bs: int) -> bool:
        ok = False
        try:
            run(bs)
            ok = True
        except Exception as exc:  # noqa: BLE001 - filtered by is_oom just below
            if not is_oom(exc):
                cleanup()
                raise
        # Cleanup runs after the except block is left, when the exception, its traceback and the
        # failed step's tensors those frames hold are already released.
        cleanup()
        return ok

    return try_batch


def cuda_try_batch(arch: str, res: int, precision: str = "auto", channels_last: bool = True,
                   optimizer: str = "sgd", device: str = "cuda", steps: int = 2,
                   peaks: dict[int, int] | None = None) -> Callable[[int], bool]:
    """A real probe: a fresh model and optimizer, ``steps`` training steps at batch ``bs`` on ``device``.

    Two steps by default, because the optimizer state is only allocated in the first ``step()``.
    ``peaks`` (optional) collects ``max_memory_allocated`` per successful batch size (CUDA only).
    Any device works (the CPU runs it in tests), but only a GPU has an allocator limit to find.
    """
    import torch

    from cxr_fast.models import build_model
    from cxr_fast.step import TrainStep, make_optimizer

    dev = torch.device(device)

    def run(bs: int) -> None:
        trainer = None
        fixed_shapes(dev, False)  # every try a new shape: cuDNN's autotuning would cost time and workspace
        try:
            model = build_model(arch)
            trainer = TrainStep(model, make_optimizer(model, optimizer), pos_weight=1.0, precision=precision,
                                device=dev, channels_last=channels_last)
            del model
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            images = torch.rand(bs, 1, res, res, device=dev)
            labels = (torch.rand(bs, device=dev) > 0.5).float()
            for _ in range(steps):
                trainer(images, labels)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                if peaks is not None:
                    peaks[bs] = int(torch.cuda.max_memory_allocated(dev))
        finally:
            # Drop every reference the step holds (grads, optimizer state) before cleanup.
            if trainer is not None:
                trainer.optimizer.zero_grad(set_to_none=True)
                trainer.optimizer.state.clear()
            trainer = None

    return guarded(run, lambda: free_memory(dev))


def measure_max_batch(arch: str, res: int, precision: str = "auto", channels_last: bool = True,
                      optimizer: str = "sgd", device: str = "cuda", start: int = 8, cap: int | None = 1024,
                      memory_fraction: float | None = None, growth: float = 2.0,
                      time_left: Callable[[], float] | None = None) -> dict:
    """Measured max batch on the GPU, optionally under ``torch.cuda.set_per_process_memory_fraction``.

    A fraction emulates a smaller card (say 11 GiB on an 80 GiB H100) and keeps the search fast; the
    allocator cap in bytes is returned so the prediction can be compared on the same budget.
    ``time_left`` bounds the search by time (see :func:`find_max_batch`).
    """
    import torch

    if not torch.cuda.is_available():
        raise CxrError("measuring the batch-size limit needs a CUDA GPU; use `cxr-fast memory` to predict it")
    dev = torch.device(device)
    total = torch.cuda.get_device_properties(dev).total_memory
    if memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(memory_fraction, dev)
    try:
        peaks: dict[int, int] = {}
        probe = cuda_try_batch(arch, res, precision, channels_last, optimizer, device, peaks=peaks)
        result = find_max_batch(probe, start=start, cap=cap, growth=growth, time_left=time_left)
    finally:
        if memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, dev)
        free_memory(dev)
    out = result.to_dict()
    out.update(
        arch=arch, res=res, precision=precision, channels_last=channels_last, optimizer=optimizer,
        total_memory_bytes=int(total),
        memory_fraction=memory_fraction,
        allocator_cap_bytes=int(total * memory_fraction) if memory_fraction is not None else None,
        peak_allocated_at_max=peaks.get(result.max_ok),
        peaks={str(k): v for k, v in sorted(peaks.items())},
    )
    return out
