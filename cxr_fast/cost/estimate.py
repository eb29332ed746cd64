"""Time of one counted step on one device profile: a roofline per kernel, plus the host's launches.

Why per kernel: a step mixes compute-bound convolutions with bandwidth-bound batch norms and
elementwise ops; taking the larger of total compute time and total memory time would hide the
batch norms. So for each kernel ``k`` with ``f`` FLOPs and ``b`` bytes (``cost.work``):

    device_k = max(f / compute_rate, b / bandwidth)        compute_rate = share x dense peak

and the step, by where the host and the device wait for each other:

- **CPU** (synchronous: the thread that dispatches also computes): ``ops x launch_s + sum(device_k)``;
- **GPU eager** (asynchronous launches): ``sum(max(launch_s, device_k))`` over kernels, plus
  ``launch_s`` for each op that launches nothing (views, CPU-side bookkeeping), plus ``sync_s``
  per host sync. A kernel shorter than its launch leaves the GPU idle: the launch is the bound.
- **CUDA graph** (the graphable part replayed): ``graph_launch_s + sum(max(graph_kernel_s, device_k))``;
  what stays eager (the loader, evaluation's test-time views) is timed as above.

Each kernel's time is booked to what bounded it (compute, bandwidth or launches); a cell's bound is
the largest of the three. A measured profile replaces ``compute_rate`` by the rate that reproduces
its timed steps (``fit_rate``), interpolated between them in log FLOPs per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cxr_fast.cost.devices import DeviceProfile
from cxr_fast.cost.work import StepWork, Work
from cxr_fast.errors import CxrError

BOUNDS = ("compute", "bandwidth", "launches")


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step and how they split by what bounded each kernel."""

    compute: float = 0.0
    bandwidth: float = 0.0
    launches: float = 0.0

    @property
    def seconds(self) -> float:
        return self.compute + self.bandwidth + self.launches

    @property
    def bound(self) -> str:
        parts = {"compute": self.compute, "bandwidth": self.bandwidth, "launches": self.launches}
        return max(parts, key=parts.get)  # type: ignore[arg-type]

    def __add__(self, other: "StepTime") -> "StepTime":
        return StepTime(self.compute + other.compute, self.bandwidth + other.bandwidth,
                        self.launches + other.launches)

    def scaled(self, k: float) -> "StepTime":
        return StepTime(self.compute * k, self.bandwidth * k, self.launches * k)

    def to_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "compute_s": self.compute, "bandwidth_s": self.bandwidth,
                "launches_s": self.launches, "bound": self.bound}


def work_time(work: Work, dev: DeviceProfile, rate: float, graph: bool = False) -> StepTime:
    """Seconds of ``work`` on ``dev`` with compute-bound kernels at ``rate`` FLOP/s."""
    if not rate > 0:
        raise CxrError(f"{dev.name}: compute rate must be positive, got {rate}")
    bw = dev.sustained_bandwidth
    compute = bandwidth = launches = 0.0
    if dev.kind == "cpu":
        for f, b, n in work.kernels:
            tc, tm = f / rate, b / bw
            if tc >= tm:
                compute += n * tc
            else:
                bandwidth += n * tm
        return StepTime(compute, bandwidth, work.ops * dev.launch_s)
    floor = dev.graph_kernel_s if graph else dev.launch_s
    for f, b, n in work.kernels:
        tc, tm = f / rate, b / bw
        t = max(floor, tc, tm)
        if t == floor:
            launches += n * t
        elif tc >= tm:
            compute += n * t
        else:
            bandwidth += n * t
    if graph:
        launches += dev.graph_launch_s
    else:
        launches += (work.ops - work.n_kernels) * dev.launch_s + work.syncs * dev.sync_s
    return StepTime(compute, bandwidth, launches)


def step_time(step: StepWork, dev: DeviceProfile, rate: float, graphs: bool = False) -> StepTime:
    """One whole step: the graphable part (a CUDA graph when ``graphs`` on a GPU) plus the eager part."""
    use_graph = graphs and dev.kind == "gpu"
    return work_time(step.graphable, dev, rate, graph=use_graph) + work_time(step.eager, dev, rate)


def fit_rate(work: Work, dev: DeviceProfile, seconds: float) -> float:
    """The compute rate that makes ``work_time(work)`` equal ``seconds`` (bisection in log space).

    When launches and bandwidth alone already take longer than measured, the profile's overheads are
    too pessimistic for this step; the rate is then the step's FLOPs over the measured time, its
    upper bound, and the point will be predicted somewhat slow.
    """
    if not seconds > 0:
        raise CxrError(f"a timed step must take a positive time, got {seconds}")
    flops = work.flops
    if flops <= 0:
        raise CxrError("cannot fit a compute rate to a step with no FLOPs")
    lo, hi = math.log(1e3), math.log(1e19)
    if work_time(work, dev, math.exp(hi)).seconds >= seconds:
        return flops / seconds
    for _ in range(200):
        mid = (lo + hi) / 2
        if work_time(work, dev, math.exp(mid)).seconds > seconds:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def rate_for(dev: DeviceProfile, precision: str, arch: str, mode: str, flops: float) -> tuple[float, str]:
    """(FLOP/s for compute-bound kernels, where it came from) for a step of ``flops`` FLOPs.

    Modelled: share x datasheet peak. Measured: the fitted rates of the timed steps of the same
    architecture, precision and mode (train/eval), interpolated in log FLOPs and held flat beyond
    the ends; another architecture's points only when this one was not timed (said in the source).
    """
    if dev.source != "measured" or not dev.points:
        return dev.compute_rate(precision), "modelled"
    pts = [p for p in dev.points if p["precision"] == precision and p["mode"] == mode]
    same = [p for p in pts if p["arch"] == arch]
    if same:
        source, use = "measured", same
    elif pts:
        source, use = f"measured ({pts[0]['arch']} points)", pts
    else:
        any_pts = [p for p in dev.points if p["mode"] == mode] or dev.points
        if not any_pts:
            raise CxrError(f"{dev.name}: the profile has no timed steps")
        source, use = f"measured ({any_pts[0]['precision']} {any_pts[0]['mode']} points)", any_pts
    return interpolate([(p["flops"], p["rate"]) for p in use], flops), source


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear in (log x, log y) through ``points``, flat beyond the ends."""
    pts = sorted((math.log(px), math.log(py)) for px, py in points if px > 0 and py > 0)
    if not pts:
        raise CxrError("no points to interpolate")
    lx = math.log(max(x, 1e-30))
    if lx <= pts[0][0]:
        return math.exp(pts[0][1])
    if lx >= pts[-1][0]:
        return math.exp(pts[-1][1])
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= lx <= x1:
            w = 0.0 if x1 == x0 else (lx - x0) / (x1 - x0)
            return math.exp(y0 + w * (y1 - y0))
    return math.exp(pts[-1][1])


def step_summary(t: StepTime) -> dict[str, Any]:
    """Milliseconds, for tables."""
    return {"ms": t.seconds * 1e3, "compute_ms": t.compute * 1e3, "bandwidth_ms": t.bandwidth * 1e3,
            "launches_ms": t.launches * 1e3, "bound": t.bound}
