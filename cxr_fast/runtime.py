"""Small device and loop helpers every layer shares: one copy each, so they behave alike everywhere.

- ``sync(device)``: wait for the GPU before reading a clock (a no-op on the CPU).
- ``to_device``, ``host_buffer``, ``LatestValue``: host-device copies that never make the host wait.
- ``fixed_shapes(device)``: the one place ``cudnn.benchmark`` is set (training and bench on, batch search off).
- ``free_memory(device)``: drop Python garbage and the CUDA allocator's cached blocks after a failed step.
- ``is_oom(exc)``: the one out-of-memory classifier every OOM catch uses (torch's type, CUDA's text, and the
  cuDNN/cuBLAS allocation failures a card near its cap raises instead).
- ``cycle(loader)``: endless batches, one shuffled epoch after another, for sweeps and benchmarks.
- ``keep_torch_threads()``: undo what FFCV does to torch's thread count behind the caller's back.
- ``check_device_supported(device)``: one line, before any work, for a card this torch has no kernels for.
- ``set_fp32_math(tf32)``: TF32 on or off for fp32 matmuls and convolutions, set for every run and recorded.
"""

from __future__ import annotations

import contextlib
import gc
import re
from typing import Any, Iterator

from cxr_fast.errors import CxrError


def sync(device: Any) -> None:
    """``torch.cuda.synchronize`` on a CUDA device, nothing elsewhere."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(x: Any, device: Any) -> Any:
    """Host tensor ``x`` on ``device`` without making the host wait: on CUDA pinned (unless it already is), then
    copied with ``non_blocking``. A plain ``.to(device)`` of pageable memory waits for the GPU's queue to drain,
    so the host never runs ahead (``cxr_fast.syncs`` counts such copies). torch's pinned-memory cache keeps
    the pinned block until the copy is done, so the caller may drop ``x`` at once."""
    import torch

    device = torch.device(device)
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def host_buffer(shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """An empty host tensor to fill and then send to ``device``: pinned when that is a GPU, so it is written
    once and copied once (no gather into pageable memory followed by a second copy into pinned memory)."""
    import torch

    return torch.empty(shape, dtype=dtype, pin_memory=torch.device(device).type == "cuda")


def fixed_shapes(device: Any, fixed: bool = True) -> None:
    """Tell cuDNN whether the shapes to come stay the same (``cudnn.benchmark``). Training and the benchmark
    run one shape per run, so cuDNN may time its algorithms once and keep the fastest; a batch search changes
    the shape every try, where that timing and its workspace would distort what fits, so it says ``False``.
    The one place the switch is set; a no-op off CUDA."""
    import torch

    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = bool(fixed)


class LatestValue:
    """The newest value of a device scalar that has already reached the host, read without a sync.

    ``post(t)`` starts a ``non_blocking`` copy into pinned memory and records an event; ``read()`` returns
    the newest posted value whose copy is complete (NaN before the first), so a progress bar shows a loss
    at most a few steps old instead of draining the GPU's queue every tenth batch. On the CPU it reads at once.
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.value = float("nan")
        self._pending: list[tuple[Any, Any]] = []

    def post(self, t: Any) -> None:
        import torch

        if self.device.type == "cpu":
            self.value = float(t)
        elif self.device.type == "cuda":
            host = torch.empty((), dtype=t.dtype, pin_memory=True)
            host.copy_(t.detach(), non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._pending.append((host, event))

    def read(self) -> float:
        while self._pending and self._pending[0][1].query():
            self.value = float(self._pending.pop(0)[0])
        return self.value


def free_memory(device: Any = None) -> None:
    """Release what a failed or finished step left: Python references, then the allocator's cache."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# What an allocation failure says when it does not arrive as torch.OutOfMemoryError: CUDA's own text ("CUDA
# error: out of memory", also inside torch.AcceleratorError), and the status names of the CUDA libraries, which
# fail on their own workspace near the cap (cuDNN 9: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED, its
# deprecated alias CUDNN_STATUS_ALLOC_FAILED; CUBLAS_STATUS_ALLOC_FAILED; CUFFT_ALLOC_FAILED; ...).
_OOM_TEXT = re.compile(r"out of memory|\bCU[A-Z]+_(?:STATUS_)?\w*ALLOC(?:ATION)?_FAILED\b", re.IGNORECASE)


def is_oom(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an error it was raised from) is an out-of-memory failure on any device.

    One classifier for every OOM catch: a batch search or a bench row that met cuDNN's or cuBLAS's
    allocation failure instead of torch's OutOfMemoryError must read it as the memory limit, not an error.
    Only allocation failures match, so a shape or dtype bug is never taken for a limit.
    """
    import torch

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and _OOM_TEXT.search(str(exc))):
            return True
        exc = exc.__cause__
    return False


def cycle(loader: Any) -> Iterator[Any]:
    """Batches forever, advancing the loader's epoch (and so its shuffle) each time it runs out."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise CxrError("the loader yielded no batches; the dataset or batch size leaves none")
        epoch += 1


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """FFCV 1.0.2 calls ``torch.set_num_threads(1)`` when imported (and its own count when loading):
    without this, merely asking whether FFCV is available would make the whole process single-threaded."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------------- which cards, which math

# What an older card needs when this torch has no kernels for it: CUDA 13 builds (the default install, with
# nvidia-dali-cuda130) start at compute capability 7.5, and PyTorch's CUDA 12.8+ builds dropped Maxwell,
# Pascal and Volta; its CUDA 12.6 wheels still carry sm_50 to sm_90. README, "Older GPUs", says the same.
OLD_CARD_BUILD = ("a CUDA 12.6 build of torch (pip install torch torchvision --index-url "
                  "https://download.pytorch.org/whl/cu126) and nvidia-dali-cuda120 in place of nvidia-dali-cuda130")


def _runs_on(entry: str, capability: tuple[int, int]) -> bool:
    """Whether one ``torch.cuda.get_arch_list()`` entry runs on a device of ``capability``: a cubin ``sm_XY``
    on the same major at minor Y or later (``sm_XYa`` on exactly X.Y), a PTX ``compute_XY`` (JIT-compiled
    by the driver) on X.Y or any later card."""
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", entry)
    if m is None:
        return False
    kind, major, minor, suffix = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if kind == "compute":
        return (major, minor) <= capability and suffix != "a"
    if suffix == "a":
        return (major, minor) == capability
    return major == capability[0] and minor <= capability[1]


def check_device_supported(device: Any) -> None:
    """Refuse, in one line before any work, a CUDA device this torch build has no kernels for. Without it a
    GTX 1080 Ti (6.1) or a V100 (7.0) under the default CUDA 13 install fails at its first kernel with
    'no kernel image is available', after the data and the model are built."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return
    archs = list(torch.cuda.get_arch_list())
    capability = tuple(torch.cuda.get_device_capability(device))
    if not archs or any(_runs_on(a, capability) for a in archs):  # type: ignore[arg-type]
        return
    major, minor = capability
    needs = OLD_CARD_BUILD if capability < (7, 5) else f"a torch build whose arch list covers sm_{major}{minor}"
    raise CxrError(f"{torch.cuda.get_device_name(device)} ({device}, compute capability {major}.{minor}) has no "
                   f"kernels in this torch {torch.__version__} (CUDA {torch.version.cuda}, built for "
                   f"{' '.join(archs)}); it needs {needs}")


def set_fp32_math(tf32: bool) -> str:
    """Set, for this process, whether fp32 matmuls and convolutions may run as TF32 on tensor cores, through
    torch's ``fp32_precision`` switches, and return the mode torch now reports (``on``, ``off``, or both
    switches spelled out if they differ). Set for every run, never inherited: torch's defaults differ
    between matmuls (IEEE) and cuDNN convolutions (TF32), and the run before may have changed either."""
    import torch

    mode = "tf32" if tf32 else "ieee"
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision = mode
        conv.fp32_precision = mode
        now = (matmul.fp32_precision, conv.fp32_precision)
    else:  # torch before 2.9 (pyproject asks for 2.11, so only an odd install gets here)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        now = tuple("tf32" if on else "ieee" for on in (torch.backends.cuda.matmul.allow_tf32,
                                                         torch.backends.cudnn.allow_tf32))
    if now == ("tf32", "tf32"):
        return "on"
    if now == ("ieee", "ieee"):
        return "off"
    return f"matmul {now[0]}, conv {now[1]}"
