"""Where a study's runs execute: one after another in this process, or as Ray tasks on a local or remote cluster.

An executor only runs jobs and reports each finished one through ``on_done``; the study driver owns the
results store, so rows are written by one process whichever executor runs the training.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from cxr_fast.errors import CxrError, one_line
from cxr_fast.io import write_text

RunFn = Callable[..., dict]


@dataclass
class Job:
    key: str  # the cell id
    config: Any  # the cell's RunConfig
    description: str
    inputs: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the run function besides it
    fn: Callable[..., dict] | None = None  # this job's own run function (a packed job's), else the executor's


OnDone = Callable[[Job, dict], None]
OnStart = Callable[[Job], None]


@dataclass(frozen=True)
class SharedFolders:
    """The folders every node must see as the driver does before a run may start there.

    ``study`` is written by the runs: the driver writes a random token into it, and each node must read that
    token back. ``read`` are the folders the runs only read (data, stores outside the study folder), named as
    the runs name them; ``locate`` finds such a name on a node (a path, or a phantom spec that names a folder
    in that node's cache), and the folder found there must have the driver's identity (``folder_identity``).
    """

    study: Path
    read: tuple[str, ...] = ()
    locate: Callable[[str], Path] = Path


class LocalExecutor:
    """Runs jobs in order in this process; an error stops the study (finished rows are already stored)."""

    name = "local"

    def run(self, jobs: Sequence[Job], fn: RunFn, on_done: OnDone, on_start: OnStart | None = None,
            shared: SharedFolders | None = None) -> None:
        """``shared`` is for executors that run elsewhere; here every folder is this machine's."""
        for job in jobs:
            if on_start is not None:
                on_start(job)
            on_done(job, (job.fn or fn)(job.config, **job.inputs))


CHECK_FILE = ".cxr-fast-node-check"  # the driver's token in the study folder, while a Ray study runs
CHECK_TIMEOUT_S = 120.0  # how long every node has to answer the storage check
IDENTITY_STATS = 64  # files of a folder whose size and mtime join its identity (names: all of them)
# A task that failed with one of these lost its worker or node: a system failure, retried; any other is fatal.
LOST = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError", "OutOfMemoryError")


def folder_identity(path: Path) -> str:
    """What a folder holds, cheaply: every entry's name and kind, and the size and mtime of its first files.

    The same storage gives the same identity on every node (shared filesystems keep mtimes); a missing
    folder, an empty local mount or another copy gives another one.
    """
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha1()
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    stated = 0
    for entry in entries:
        digest.update(entry.name.encode("utf-8", "surrogateescape") + b"\0")
        if entry.is_file(follow_symlinks=True) and stated < IDENTITY_STATS:
            st = entry.stat(follow_symlinks=True)
            digest.update(f"{st.st_size}:{st.st_mtime_ns}\0".encode())
            stated += 1
        else:
            digest.update(b"d\0" if entry.is_dir(follow_symlinks=True) else b"o\0")
    return f"{len(entries)} entries, {digest.hexdigest()[:12]}"


def _study_seen(study: Path, token: str) -> bool:
    """Whether this node reads the driver's token from the study folder and may write there."""
    try:
        return (study / CHECK_FILE).read_text() == token and os.access(study, os.W_OK)
    except OSError:
        return False


def node_view(shared: SharedFolders, token: str) -> dict[str, Any]:
    """What one node sees of the shared folders: run there by the storage check, and here for comparison."""
    folders = {}
    for name in shared.read:
        path = Path(shared.locate(name))
        folders[name] = (str(path), folder_identity(path))
    return {"host": socket.gethostname(), "study": _study_seen(shared.study, token), "folders": folders}


def _call(fn: RunFn, config: Any, inputs: dict[str, Any], study: Path | None = None, token: str = "") -> dict:
    """The body of a Ray task: run one job and return its metrics to the driver.

    A node that joined after the storage check is checked here, before the run writes anything: a run on a
    node without the study folder would leave its predictions where the driver never finds them.
    """
    if study is not None and not _study_seen(study, token):
        raise CxrError(f"Ray node {socket.gethostname()} does not share the study folder {study} with the driver; "
                       "every node must see the study, data and store folders at the same paths")
    return fn(config, **inputs)


class RayExecutor:
    """Each job is a Ray task asking for one GPU when the cluster has GPUs, else one CPU (a packed job, K runs in
    one step, is one task on one GPU).

    Without ``address`` a local Ray is started for the study (``num_cpus`` CPUs, no dashboard) and shut
    down after; with ``address`` (``ray://host:10001`` or ``auto``) the study joins a running cluster, whose
    nodes must see the study, data and store folders at the same paths (a shared filesystem): that is checked
    on every node before any run starts. A run whose worker or node is lost (a preempted node) is run again
    on the nodes that remain, up to ``retries`` times, and resumes from its last checkpoint; one line says so.
    An error of the run itself stops the study.

    ``runs_per_gpu`` K > 1 asks for 1/K of a GPU per task (Ray's fractional GPUs), so K runs share each GPU: the
    baseline packed training is priced against (``cost.plan.shared_job``). Ray only counts; the K processes
    time-slice the GPU unless the user started CUDA MPS on each node (``nvidia-cuda-mps-control -d``; cxr-fast
    never starts it), and nothing caps each one's memory. One line says which applies (``sharing``, also given to
    ``on_done`` in each job's metrics as ``gpu_share``); on a cluster without GPUs each task asks for one CPU and
    the line says K does not apply.
    """

    name = "ray"
    MAX_RUNS_PER_GPU = 64  # Ray counts GPU shares in 1/10000ths: 1/K, floored, must still let K tasks fit

    def __init__(self, address: str | None = None, num_cpus: int = 2, retries: int = 3,
                 runs_per_gpu: int = 1) -> None:
        from cxr_fast.vocabulary import check_number

        self.address = address
        self.num_cpus = num_cpus
        self.retries = retries
        self.runs_per_gpu = check_number(runs_per_gpu, "--runs-per-gpu", integer=True, ge=1,
                                         le=self.MAX_RUNS_PER_GPU)
        self.sharing: dict[str, Any] = {}  # what the cluster gave each task, set when a study starts

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise CxrError("the Ray executor needs Ray: pip install cxr-fast[ray]") from None
        return ray

    def run(self, jobs: Sequence[Job], fn: RunFn, on_done: OnDone, on_start: OnStart | None = None,
            shared: SharedFolders | None = None) -> None:
        ray = self._ray()
        if not jobs:
            return
        started_here = not ray.is_initialized()
        if started_here:
            try:
                if self.address:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
                else:  # "local": a Ray of the study's own, never a cluster found through RAY_ADDRESS or /tmp/ray
                    ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=True)
            except ConnectionError as exc:
                raise CxrError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
        token = secrets.token_hex(16)
        try:
            if shared is not None:
                write_text(shared.study / CHECK_FILE, token)
            options = self._options(ray)
            if shared is not None:
                self._check_nodes(ray, shared, token, options)
            self._run(ray, jobs, fn, on_done, on_start, options, shared, token)
        finally:
            if shared is not None:
                (shared.study / CHECK_FILE).unlink(missing_ok=True)
            if started_here:
                ray.shutdown()

    def _options(self, ray: Any) -> dict[str, Any]:
        """Each task's resources: 1/K of a GPU when the cluster has GPUs (floored to Ray's 1/10000 unit, so K
        fit one GPU), else one CPU; said in one line and kept in ``sharing``."""
        gpus = float(ray.cluster_resources().get("GPU", 0))
        k = self.runs_per_gpu
        if gpus >= 1:
            share = 1 if k == 1 else math.floor(10_000 / k) / 10_000
            options: dict[str, Any] = {"num_gpus": share}
            line = ("ray: one run per GPU" if k == 1 else
                    f"ray: {k} runs share each GPU (num_gpus={share:g} per task); without CUDA MPS on the node "
                    "they time-slice it, with MPS their kernels overlap (cxr-fast does not start MPS: "
                    "nvidia-cuda-mps-control -d)")
        else:
            options = {"num_cpus": 1}
            line = "ray: the cluster has no GPU, each run asks for one CPU" + (
                f"; --runs-per-gpu {k} does not apply" if k > 1 else "")
        self.sharing = {"runs_per_gpu": k if gpus >= 1 else None, "asked": options, "line": line}
        print(line, flush=True)
        return options

    def _check_nodes(self, ray: Any, shared: SharedFolders, token: str, options: dict[str, Any]) -> None:
        """Refuse, in one line and before any run, when a node that could run one sees other folders than here."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        need = "GPU" if "num_gpus" in options else "CPU"
        nodes = [n for n in ray.nodes() if n.get("Alive") and float(n.get("Resources", {}).get(need, 0)) >= 1]
        probe = ray.remote(num_cpus=0, max_retries=0)(node_view)
        refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(shared, token): n for n in nodes}
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=CHECK_TIMEOUT_S)
        if late:
            names = ", ".join(_node_name(refs[r]) for r in late)
            raise CxrError(f"Ray node(s) {names} did not answer the storage check within {CHECK_TIMEOUT_S:.0f} s; "
                           "no run started")
        here = node_view(shared, token)
        for ref in ready:
            try:
                seen = ray.get(ref)
            except ray.exceptions.RayError as exc:
                if type(exc).__name__ in LOST:
                    continue  # the node left: it runs nothing
                raise CxrError(f"the storage check failed on Ray node {_node_name(refs[ref])}: {one_line(exc)}") \
                    from None
            problem = _difference(here, seen, shared)
            if problem:
                raise CxrError(f"Ray node {_node_name(refs[ref])} on host {seen['host']} {problem}; every node must see "
                               "the study, data and store folders at the same paths on shared storage, so no run started")

    def _run(self, ray: Any, jobs: Sequence[Job], fn: RunFn, on_done: OnDone, on_start: OnStart | None,
             options: dict[str, Any], shared: SharedFolders | None, token: str) -> None:
        # Ray's own retries are off: a lost run is resubmitted here, so the driver can say so and bound it.
        task = ray.remote(max_retries=0)(_call).options(**options)
        refs = {id(f): ray.put(f) for f in {id(j.fn or fn): j.fn or fn for j in jobs}.values()}

        def submit(job: Job) -> Any:
            return task.remote(refs[id(job.fn or fn)], job.config, job.inputs, study, token)

        study = shared.study if shared is not None else None
        pending = {}
        lost: dict[str, int] = {}
        for job in jobs:
            pending[submit(job)] = job
            if on_start is not None:
                on_start(job)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        metrics = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the run itself failed: fatal
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, CxrError):
                            raise CxrError(f"{job.key}: {cause}", cause.exit_code) from None
                        raise
                    except ray.exceptions.RayError as exc:
                        if type(exc).__name__ not in LOST:
                            raise CxrError(f"{job.key}: Ray could not run it: {one_line(exc)}", exit_code=1) from None
                        lost[job.key] = lost.get(job.key, 0) + 1
                        self._retry_or_stop(job, exc, lost[job.key])
                        pending[submit(job)] = job
                        continue
                    on_done(job, {**metrics, "gpu_share": self.sharing} if isinstance(metrics, dict) else metrics)
        finally:
            for ref in pending:  # an error or Ctrl-C: stop what has not finished; the rerun resumes it
                ray.cancel(ref, force=True)

    def _retry_or_stop(self, job: Job, exc: BaseException, times: int) -> None:
        """Say in one line that a run was lost and runs again; past ``retries`` losses the study stops (the rerun
        resumes it)."""
        what = type(exc).__name__
        if times > self.retries:
            raise CxrError(f"{job.key}: its Ray worker or node was lost {times} times (last: {what}); run the study "
                           "again to resume it from its last checkpoint", exit_code=1)
        warnings.warn(f"{job.key}: its Ray worker or node was lost ({what}); running it again on the nodes that "
                      f"remain, resuming from its last checkpoint (retry {times} of {self.retries})", stacklevel=2)


def _node_name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({str(node.get('NodeID', '?'))[:8]})"


def _difference(here: dict[str, Any], seen: dict[str, Any], shared: SharedFolders) -> str:
    """How a node's view of the shared folders differs from the driver's, in words; empty when it does not."""
    if not seen["study"]:
        return (f"does not share the study folder {shared.study} with the driver (it cannot read back the check file "
                "written there, or cannot write there)")
    for name, (path, identity) in here["folders"].items():
        there_path, there = seen["folders"][name]
        if (there_path, there) != (path, identity):
            shown = name if name == path else f"{name} ({path} here)"
            state = "is missing there" if there == "missing" else f"holds other files ({there}; here {identity})"
            return f"finds {shown} at {there_path}, which {state}"
    return ""
