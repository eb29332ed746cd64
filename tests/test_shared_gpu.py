"""K runs sharing one GPU (issue 21's baseline): the Ray executor's fractional GPUs, the study flag, gpu-check's
shared-GPU section on a CPU (CPU only, a fake Ray)."""

from __future__ import annotations

import sys
import types

import pytest
import yaml

from cxr_fast.errors import CxrError
from cxr_fast.executors import Job, RayExecutor


class _Exceptions:
    class RayError(Exception):
        pass

    class RayTaskError(RayError):
        pass


def fake_ray(resources: dict[str, float]) -> types.ModuleType:
    """Enough of Ray for ``RayExecutor.run`` without shared folders: tasks run at once, their options kept."""
    ray = types.ModuleType("ray")
    ray.exceptions = _Exceptions
    ray.asked = []
    ray.is_initialized = lambda: True
    ray.cluster_resources = lambda: dict(resources)
    ray.put = lambda x: x
    ray.get = lambda ref: ref
    ray.wait = lambda refs, num_returns=1, timeout=None: (list(refs)[:num_returns], list(refs)[num_returns:])
    ray.cancel = lambda ref, force=False: None

    class Task:
        def __init__(self, fn):
            self.fn = fn

        def options(self, **options):
            ray.asked.append(options)
            return self

        def remote(self, *args):
            return _Done(self.fn(*args))

    ray.remote = lambda **kw: (lambda fn: Task(fn))
    return ray


class _Done(dict):
    """A finished task's result, hashable as Ray's object refs are."""

    __hash__ = object.__hash__


def _run(monkeypatch, resources: dict[str, float], runs_per_gpu: int) -> tuple[list, list[dict]]:
    ray = fake_ray(resources)
    monkeypatch.setitem(sys.modules, "ray", ray)
    done: list[dict] = []
    jobs = [Job(f"cell{i}", {"i": i}, f"cell {i}") for i in range(3)]
    RayExecutor(runs_per_gpu=runs_per_gpu).run(jobs, lambda config: {"auc": 0.5 + config["i"] / 10},
                                               lambda job, metrics: done.append(metrics))
    return ray.asked, done


def test_k_runs_per_gpu_ask_ray_for_a_kth_of_a_gpu_that_k_tasks_fit_and_say_so(monkeypatch, capsys):
    for k, share in ((1, 1), (2, 0.5), (3, 0.3333), (6, 0.1666), (64, 0.0156)):
        asked, done = _run(monkeypatch, {"GPU": 8.0, "CPU": 64.0}, k)
        assert asked == [{"num_gpus": share}]
        assert k * share <= 1 < (k + 1) * share  # K tasks fit one GPU, K + 1 do not
        line = capsys.readouterr().out.strip()
        assert "\n" not in line
        assert (f"{k} runs share each GPU (num_gpus={share:g} per task)" in line and "MPS" in line) if k > 1 \
            else line == "ray: one run per GPU"
        # What the driver knows of the sharing comes back with every job's metrics.
        assert [m["auc"] for m in done] == [0.5, 0.6, 0.7]
        assert all(m["gpu_share"]["runs_per_gpu"] == k and m["gpu_share"]["asked"] == {"num_gpus": share}
                   for m in done)


def test_a_cluster_without_gpus_asks_for_a_cpu_and_says_k_does_not_apply(monkeypatch, capsys):
    asked, done = _run(monkeypatch, {"CPU": 4.0}, 4)
    assert asked == [{"num_cpus": 1}]
    assert capsys.readouterr().out.strip() == ("ray: the cluster has no GPU, each run asks for one CPU; "
                                               "--runs-per-gpu 4 does not apply")
    assert done[0]["gpu_share"]["runs_per_gpu"] is None


@pytest.mark.parametrize("bad", [0, -1, 65, 2.5, True, "2"])
def test_runs_per_gpu_is_a_whole_number_from_1_to_64(bad):
    with pytest.raises(CxrError, match="--runs-per-gpu must be") as err:
        RayExecutor(runs_per_gpu=bad)
    assert "\n" not in str(err.value)


def test_study_refuses_runs_per_gpu_without_ray_before_any_work(tmp_path, capsys):
    from cxr_fast.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "train": {"init": "random"}, "grids": [
        {"name": "g", "labels": ["Mass"], "resolutions": [32], "epochs": 1}]}))
    out = tmp_path / "study"
    assert main(["study", str(config), "--out", str(out), "--runs-per-gpu", "4"]) != 0
    err = capsys.readouterr().err
    assert "--runs-per-gpu 4 needs --executor ray" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["study", str(config), "--out", str(out), "--executor", "ray", "--runs-per-gpu", "0"]) != 0
    err = capsys.readouterr().err
    assert "--runs-per-gpu must be" in err and err.count("\n") == 1 and not out.exists()


def test_gpu_check_shared_section_on_a_cpu_says_so_in_one_line():
    from cxr_fast.bench.shared_check import NOT_GPU, measure_shared, shared_lines, shared_section

    section = shared_section("cpu", [32])
    assert section == {"status": NOT_GPU}
    assert shared_lines(section) == ["shared GPU: skipped: not on a GPU"]
    with pytest.raises(CxrError, match=r"not on a GPU \(cpu\)") as err:
        measure_shared("cpu", [32])
    assert "\n" not in str(err.value)


def test_concurrent_timing_runs_every_step_in_its_own_thread_and_carries_errors():
    import threading

    from cxr_fast.bench.shared_check import time_concurrent, time_sequential

    calls: dict[int, set] = {}

    def step_for(i):
        def step(x, y):
            calls.setdefault(i, set()).add(threading.get_ident())
        return step

    steps = [step_for(i) for i in range(3)]
    data = [(None, None)] * 3
    entered = []
    assert time_concurrent(steps, data, rounds=4, warmup=1, device="cpu",
                           stream=lambda i: _Entered(entered, i)) >= 0
    assert sorted(entered) == [0, 1, 2] and len({t for ts in calls.values() for t in ts}) == 3
    assert time_sequential(steps, data, rounds=2, warmup=0, device="cpu") >= 0

    def broken(x, y):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        time_concurrent([steps[0], broken], data[:2], rounds=2, warmup=1, device="cpu")


class _Entered:
    def __init__(self, seen: list, i: int) -> None:
        self.seen, self.i = seen, i

    def __enter__(self):
        self.seen.append(self.i)

    def __exit__(self, *exc):
        return False
