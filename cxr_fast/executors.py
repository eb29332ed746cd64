"""Where a study's runs execute: one after another in this process, or as Ray tasks on a local or remote cluster.

An executor only runs jobs and reports each finished one through ``on_done``; the study driver owns the
results store, so rows are written by one process whichever executor runs the training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from cxr_fast.errors import CxrError

RunFn = Callable[..., dict]


@dataclass
class Job:
    key: str  # the cell id
    config: Any  # the cell's RunConfig
    description: str
    inputs: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the run function besides it


OnDone = Callable[[Job, dict], None]
OnStart = Callable[[Job], None]


class LocalExecutor:
    """Runs jobs in order in this process; an error stops the study (finished rows are already stored)."""

    name = "local"

    def run(self, jobs: Sequence[Job], fn: RunFn, on_done: OnDone, on_start: OnStart | None = None) -> None:
        for job in jobs:
            if on_start is not None:
                on_start(job)
            on_done(job, fn(job.config, **job.inputs))


def _call(fn: RunFn, config: Any, inputs: dict[str, Any]) -> dict:
    """The body of a Ray task: run one job and return its metrics to the driver."""
    return fn(config, **inputs)


class RayExecutor:
    """Each job is a Ray task asking for one GPU when the cluster has GPUs, else one CPU.

    Without ``address`` a local Ray is started for the study (``num_cpus`` CPUs, no dashboard) and shut
    down after; with ``address`` (``ray://host:10001`` or ``auto``) the study joins a running cluster, whose
    nodes must see the data and study folders at the same paths (a shared filesystem).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int = 2) -> None:
        self.address = address
        self.num_cpus = num_cpus

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise CxrError("the Ray executor needs Ray: pip install cxr-fast[ray]") from None
        return ray

    def run(self, jobs: Sequence[Job], fn: RunFn, on_done: OnDone, on_start: OnStart | None = None) -> None:
        ray = self._ray()
        if not jobs:
            return
        started_here = not ray.is_initialized()
        if started_here:
            try:
                if self.address:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
                else:
                    ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=True)
            except ConnectionError as exc:
                raise CxrError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
        try:
            self._run(ray, jobs, fn, on_done, on_start)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray: Any, jobs: Sequence[Job], fn: RunFn, on_done: OnDone, on_start: OnStart | None) -> None:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        options = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
        # No retries: a failed run is reported and redone by the next `cxr-fast study`, which resumes it.
        task = ray.remote(max_retries=0)(_call).options(**options)
        fn_ref = ray.put(fn)
        pending = {}
        for job in jobs:
            pending[task.remote(fn_ref, job.config, job.inputs)] = job
            if on_start is not None:
                on_start(job)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        metrics = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, CxrError):
                            raise CxrError(f"{job.key}: {cause}", cause.exit_code) from None
                        raise
                    on_done(job, metrics)
        finally:
            for ref in pending:  # an error or Ctrl-C: stop what has not finished; the rerun resumes it
                ray.cancel(ref, force=True)
