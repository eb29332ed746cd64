"""A study on a two-node Ray cluster on this machine (two raylets, ``ray.cluster_utils.Cluster``).

A run whose node is removed mid-run goes on, on the node that remains, from its last checkpoint, with one
line saying so; an error of the run itself stays fatal; a node that does not see the study's folders as the
driver does (here: a node with its own cache directory, so its phantom is another folder) is refused in one
line before any run starts. One cluster serves the module; each test adds and removes its own worker node.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from cxr_fast import executors
from cxr_fast.cli import main
from cxr_fast.data.source import data_root
from cxr_fast.errors import CxrError
from cxr_fast.executors import RayExecutor
from cxr_fast.io import read_jsonl
from cxr_fast.study import RESULTS, parse_study, run_cells

SPEC = "phantom:n=64,size=256,seed=0"  # as tiny_phantom, but found by each node in its own cache folder
TRAIN = {"data": SPEC, "batch_size": 8, "subsample_size": 64, "val_fraction": 0.4, "max_batches": 1, "tta": 1,
         "loader": "resident", "workers": 0, "init": "random", "seed": 0}
STUDY = {"name": "two-nodes", "train": TRAIN,
         "grids": [{"name": "table2", "labels": ["Infiltration"], "resolutions": [32, 48], "archs": ["resnet34"],
                    "epochs": 2}]}
HOLD_S = 600  # how long a run on the worker node waits after its first checkpoint: until the test removes the node


def _node(cache: Path, tag: str) -> dict[str, Any]:
    """One small raylet whose workers find the phantom in ``cache`` and know which node they are on."""
    return {"num_cpus": 1, "object_store_memory": 80 * 2**20,
            "env_vars": {"CXR_FAST_CACHE": str(cache), "CXR_TEST_NODE": tag, "OMP_NUM_THREADS": "1"}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head node sharing the driver's cache folder (conftest's); each test adds its own worker node."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cache = tmp_path_factory.getbasetemp() / "cxr-fast-cache"
    with pytest.MonkeyPatch.context() as mp:  # the phantom first: no process forks while Ray runs in this one
        mp.setenv("CXR_FAST_CACHE", str(cache))
        data_root(SPEC, quiet=True)  # in the shared cache, as `cxr-fast study` makes it on the driver
    with _own_sigterm():
        head = Cluster(initialize_head=True, head_node_args={**_node(cache, "head"), "include_dashboard": False})
    head.cache = cache
    yield head
    head.shutdown()


@contextlib.contextmanager
def _own_sigterm() -> Iterator[None]:
    """Keep this process's SIGTERM handler: a Ray node started here sets one that tears the node down, and a
    forked pool worker (prepare) that inherits it and is stopped with SIGTERM would take the cluster with it."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _add_worker(cluster: Any, cache: Path) -> Any:
    with _own_sigterm():
        node = cluster.add_node(**_node(cache, "worker"))
    cluster.wait_for_nodes()
    return node


def _held_on_the_worker(marks: Path) -> Callable[[Any], dict]:
    """A run function: the study's training (``train_cell`` resumes too), marking each epoch with its node; on
    the worker node it holds after its first checkpoint. A closure, so Ray ships it by value."""

    def run(cfg: Any) -> dict:
        import os
        import time

        from cxr_fast.train import run_training

        node = os.environ.get("CXR_TEST_NODE", "driver")

        def on_epoch(row: dict) -> None:
            (marks / f"r{cfg.res}-epoch{row['epoch']}-{node}").touch()
            if node == "worker":
                time.sleep(HOLD_S)

        return run_training(cfg, progress=False, resume=True, on_epoch=on_epoch)

    return run


def _remove_after_first_checkpoint(cluster: Any, node: Any, marks: Path, timeout_s: float = 150.0) -> None:
    """Remove the worker node once a run there has checkpointed its first epoch (at the latest after
    ``timeout_s``, so no held run outlives the test; the assertions then fail, nothing hangs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(marks.glob("*-epoch1-worker")):
        time.sleep(0.2)
    cluster.remove_node(node)


def test_a_run_whose_node_is_lost_resumes_on_the_node_that_remains(cluster, tmp_path):
    worker = _add_worker(cluster, cluster.cache)
    marks = tmp_path / "marks"
    marks.mkdir()
    remover = threading.Thread(target=_remove_after_first_checkpoint, args=(cluster, worker, marks), daemon=True)
    remover.start()
    study = tmp_path / "study"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        summary = run_cells(parse_study(STUDY), study, executor=RayExecutor(cluster.address), progress=False,
                            run_fn=_held_on_the_worker(marks), prepare=True)
    remover.join(timeout=5)
    said = [str(w.message) for w in seen if "lost" in str(w.message)]
    assert len(said) == 1, said
    assert "NodeDiedError" in said[0] and "running it again on the nodes that remain" in said[0], said[0]
    # Every cell once, the lost one included; nothing cancelled, nothing doubled.
    rows = read_jsonl(study / RESULTS)
    assert summary.ran == 2 and sorted(r["res"] for r in rows) == [32, 48]
    lost = [m.name.split("-")[0] for m in marks.glob("*-epoch1-worker")]
    assert len(lost) == 1, sorted(m.name for m in marks.iterdir())
    res = lost[0]
    # The lost run went on from its epoch-1 checkpoint on the head node: epoch 2 there, epoch 1 never again.
    assert (marks / f"{res}-epoch2-head").exists() and not (marks / f"{res}-epoch1-head").exists()
    resumed = {r["res"]: json.loads((study / r["run_dir"] / "metrics.json").read_text())["resumed_from_epoch"]
               for r in rows}
    assert resumed == {int(res[1:]): 1, ({32, 48} - {int(res[1:])}).pop(): 0}
    assert not (study / executors.CHECK_FILE).exists()  # the storage check's token goes with the study


def test_a_node_without_the_studys_folders_is_refused_before_any_run(cluster, tmp_path, capsys):
    worker = _add_worker(cluster, tmp_path / "worker-cache")  # its own directory: the driver's phantom is not there
    config = tmp_path / "two-nodes.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    study = tmp_path / "study"
    try:
        code = main(["study", str(config), "--out", str(study), "--executor", "ray", "--ray-address", cluster.address,
                     "--quiet"])
    finally:
        cluster.remove_node(worker)
    err = [line for line in capsys.readouterr().err.splitlines() if "cxr-fast study:" in line]
    assert code == 2 and len(err) == 1, err
    assert "error: Ray node" in err[0] and SPEC in err[0] and "is missing there" in err[0], err[0]
    assert str(tmp_path / "worker-cache") in err[0] and "no run started" in err[0], err[0]
    assert not (study / "runs").exists()
    assert not (study / RESULTS).exists() or not read_jsonl(study / RESULTS)


def test_an_error_of_the_run_itself_stays_fatal_on_the_cluster(cluster, tmp_path):
    worker = _add_worker(cluster, cluster.cache)
    calls = tmp_path / "calls"
    calls.mkdir()

    def refuse(cfg: Any) -> dict:
        (calls / f"r{cfg.res}").touch()
        raise CxrError("this run's own settings are wrong")

    try:
        with warnings.catch_warnings(record=True) as seen, pytest.raises(CxrError, match="own settings are wrong"):
            warnings.simplefilter("always")
            run_cells(parse_study(STUDY), tmp_path / "study", executor=RayExecutor(cluster.address),
                      progress=False, run_fn=refuse)
    finally:
        cluster.remove_node(worker)
    assert not [w for w in seen if "lost" in str(w.message)]
    assert len(list(calls.iterdir())) <= 2  # each run at most once: an application error is never retried


def test_a_task_on_a_node_that_cannot_read_the_study_folder_refuses_to_run(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / executors.CHECK_FILE).write_text("the driver's token")
    shared = executors.SharedFolders(study, (str(tmp_path / "data"),))
    assert executors.node_view(shared, "the driver's token")["study"]
    assert not executors.node_view(shared, "another driver's token")["study"]
    assert executors.node_view(shared, "x")["folders"][str(tmp_path / "data")][1] == "missing"
    with pytest.raises(CxrError, match="does not share the study folder"):  # a node that joined after the check
        executors._call(lambda cfg: {}, None, {}, study, "another driver's token")
