"""Which loader backend ``loader: auto`` means: the one rule, for a run (``train``) and for a plan (``plan``).

Why a rule about memory: the ``resident`` backend (the fastest) keeps the whole uint8 split on the device,
so on an accelerator it is chosen only where the split fits beside the predicted training step; otherwise
``cache`` (the same pixels, memory-mapped on the host), instead of an out-of-memory error halfway into a
study. Elsewhere ``auto`` is the fastest backend that can run (``vocabulary.LOADERS`` is fastest first).
A run records the choice and this reason; the planner states the same.
"""

from __future__ import annotations

from typing import Callable

from cxr_fast.errors import CxrError
from cxr_fast.units import GIB
from cxr_fast.vocabulary import AUTO, LOADERS

RESIDENT = "resident"  # the fastest, and the one that holds the whole split on the device
FALLBACK = "cache"  # the same pixels, memory-mapped on the host


def choose_loader(requested: str, on_accelerator: bool, usable: Callable[[str], bool], split_bytes: int,
                  step_bytes: Callable[[], int], capacity_bytes: Callable[[], int]) -> tuple[str, str]:
    """(backend, why): a named backend as asked (why is empty); ``auto`` as the module docstring says.

    ``usable(name)``: whether a backend can run where the run will (the planner assumes every one can);
    ``step_bytes()`` and ``capacity_bytes()`` are asked only when the memory rule applies.
    """
    if requested != AUTO:
        return requested, ""
    first = next((name for name in LOADERS if usable(name)), None)
    if first is None:
        raise CxrError("no loader backend is available")
    if first != RESIDENT or not on_accelerator:
        return first, ""
    step, capacity = step_bytes(), capacity_bytes()
    sizes = (f"split {split_bytes / GIB:.2f} GiB + step {step / GIB:.2f} GiB predicted, "
             f"card {capacity / GIB:.1f} GiB")
    if split_bytes + step <= capacity:
        return RESIDENT, f"auto: resident fits ({sizes})"
    return FALLBACK, f"auto: cache, because the resident split does not fit beside the model ({sizes})"
