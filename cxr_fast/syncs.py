"""Count the transfers that make the host wait for the device, without a device.

Why: a training step that reads a device value on the host (``.item()``, ``bool``/``float`` of a tensor,
``nonzero``, ``.cpu()``, ``.tolist()``, a boolean-mask index) or copies host memory to the device without
``non_blocking`` from pinned memory waits for the GPU's queue to drain, so the host never runs ahead and a
launch-bound step (batch 8) loses its overlap; CUDA graphs cannot capture such a step at all. These are
visible at the aten level, so a ``TorchDispatchMode`` counts them on the ``meta`` device standing in for
CUDA (as ``cost.work`` counts the step's work there) and on a real GPU alike.

Two kinds are counted:

- ``to_host``: a device-to-host read (``_local_scalar_dense``, ``nonzero``, a boolean-mask index, a copy
  from the device to the CPU that is not ``non_blocking``);
- ``to_device``: a blocking host-to-device copy (``.to(device)`` or ``copy_`` without ``non_blocking``, a
  CPU tensor of one or more dimensions handed to an op on the device, which torch copies over
  synchronously, and, where pinning is possible, a ``non_blocking`` copy from unpinned memory).

On ``meta`` a read cannot return data: it returns a stand-in (1 for a scalar, "all nonzero", zeros on the
host), so the code under count runs every branch the way a batch that needs it would.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

KINDS: tuple[str, ...] = ("to_host", "to_device")
_SCALAR_READS = frozenset({"_local_scalar_dense", "item"})
_DATA_DEPENDENT = frozenset({"nonzero", "nonzero_static", "masked_select", "unique", "_unique2", "unique_dim",
                             "unique_consecutive", "repeat_interleave"})
_INDEX = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
_COPIES = frozenset({"_to_copy", "copy_", "copy"})


def _tensors(obj: Any) -> list:
    """The tensors among an aten op's arguments: aten takes a tensor, or a list of them (``Tensor?[]``)."""
    import torch

    items = obj.values() if isinstance(obj, dict) else obj
    out: list = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple, dict)):
            out.extend(_tensors(item))
    return out


def _pinning_possible() -> bool:
    """Pinned host memory needs an accelerator; without one, ``non_blocking`` is the only promise to check."""
    import torch

    return bool(torch.cuda.is_available())


def classify(func: Any, args: tuple, kwargs: dict, device_type: str) -> str | None:
    """The kind of host wait aten op ``func`` causes on ``device_type`` (one of ``KINDS``), or None."""
    import torch

    name = func.overloadpacket.__name__
    tensors = _tensors((args, kwargs))
    on_device = [t for t in tensors if t.device.type == device_type]
    if not on_device:
        if name == "_to_copy" and torch.device(kwargs.get("device") or "cpu").type == device_type:
            return _upload_kind(args[0], kwargs.get("non_blocking", False))
        return None
    if name in _SCALAR_READS or name in _DATA_DEPENDENT:
        return "to_host"
    if name in _INDEX and any(t.dtype in (torch.bool, torch.uint8) for t in _tensors(args[1:2])):
        return "to_host"  # a boolean mask becomes indices through nonzero
    if name == "_to_copy":
        target = torch.device(kwargs.get("device") or args[0].device)
        if target.type == "cpu":
            return None if kwargs.get("non_blocking", False) else "to_host"
        return None
    if name in ("copy_", "copy"):
        dst, src = args[0], args[1]
        non_blocking = bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking", False))
        if src.device.type == "cpu" and dst.device.type == device_type:
            return _upload_kind(src, non_blocking)
        if dst.device.type == "cpu" and src.device.type == device_type:
            return None if non_blocking else "to_host"
        return None
    if any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
        return "to_device"  # a host tensor torch uploads inside the op, synchronously
    return None


def _upload_kind(src: Any, non_blocking: bool) -> str | None:
    if not non_blocking:
        return "to_device"
    if _pinning_possible() and not src.is_pinned():
        return "to_device"
    return None


def _stand_in(func: Any, args: tuple, kwargs: dict, device_type: str) -> Any:
    """What a read from ``meta`` returns instead of data it does not have (None: run ``func`` itself)."""
    import torch

    if device_type != "meta":
        return None
    name = func.overloadpacket.__name__
    if name in _SCALAR_READS and args[0].device.type == "meta":
        return True if args[0].dtype == torch.bool else 1
    if name == "_to_copy" and torch.device(kwargs.get("device") or args[0].device).type == "cpu" \
            and args[0].device.type == "meta":
        src = args[0]
        return torch.ones(src.shape, dtype=kwargs.get("dtype") or src.dtype)
    if name in ("copy_", "copy") and args[0].device.type == "cpu" and args[1].device.type == "meta":
        return args[0]
    return None


def assume_all_nonzero() -> Any:
    """torch's switch that lets ``nonzero`` (and mask indexing) run on ``meta``, as if every element were set."""
    from torch.fx.experimental import _config

    return _config.patch(meta_nonzero_assume_all_nonzero=True)


class SyncCounter:
    """Counts host waits by kind while active (``with SyncCounter() as c: ...; c.total``).

    ``device_type``: the device that stands for the GPU (``meta`` off a GPU, ``cuda`` on one).
    ``where`` keeps the aten op names behind each count, so a failing check says what synchronised.
    """

    def __init__(self, device_type: str = "meta") -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return counter.dispatch(func, args, kwargs or {})

        self.device_type = device_type
        self.counts: Counter = Counter()
        self.where: Counter = Counter()
        self._mode = Mode()
        self._patch: Any = None

    def dispatch(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run (or stand in for) one aten op, counting the wait it causes."""
        if getattr(func, "namespace", "aten") == "aten":
            kind = classify(func, args, kwargs, self.device_type)
            if kind is not None:
                self.counts[kind] += 1
                self.where[f"{kind}:{func.overloadpacket.__name__}"] += 1
            fake = _stand_in(func, args, kwargs, self.device_type)
            if fake is not None:
                return fake
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts[k] for k in KINDS)

    def reset(self) -> None:
        self.counts.clear()
        self.where.clear()

    def __enter__(self) -> SyncCounter:
        self._patch = assume_all_nonzero()
        self._patch.__enter__()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._mode.__exit__(*exc)
        finally:
            self._patch.__exit__(*exc)
