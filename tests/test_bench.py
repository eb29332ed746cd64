"""``cxr-fast bench`` and ``cxr-fast memory`` end to end on tiny settings (CPU, 32 px, a tiny phantom)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cxr_fast.cost import memory
from cxr_fast.bench.results_io import KINDS, MACHINE_FIELDS, ROW_FIELDS, make_row
from cxr_fast.cli import main
from cxr_fast.bench.config import BenchConfig, Effort, load_bench_config
from cxr_fast.bench.pipeline import run_bench

REPO = Path(__file__).resolve().parents[1]


def tiny_effort() -> Effort:
    return Effort(archs=None, batch_size=2, warmup=0, iters=1, train_seconds=0.0, loader_warmup=0,
                  loader_batch_size=4, loader_batches=1, loader_seconds=0.0, n_images=12,
                  measure_limit=False, limit_cap=0)


@pytest.fixture(scope="module")
def bench_doc(tiny_phantom, tmp_path_factory) -> dict:
    cfg = BenchConfig(res=[32], archs=["resnet34"], loaders=["resident"], device="cpu", data=str(tiny_phantom),
                      cpu=tiny_effort(), gpu=tiny_effort())
    messages: list[str] = []
    doc = run_bench(cfg, say=messages.append)
    doc["_messages"] = messages
    return doc


def test_bench_document_has_documented_fields(bench_doc):
    assert bench_doc["schema"] == "cxr-fast-bench/1"
    for key in ("machine", "settings", "memory_assumptions", "rows", "loaders", "wall_s"):
        assert key in bench_doc
    for key in MACHINE_FIELDS:
        assert bench_doc["machine"][key] not in (None, "")
    rows = bench_doc["rows"]
    assert {r["kind"] for r in rows} == set(KINDS)
    for row in rows:
        assert list(row) == list(ROW_FIELDS)
        assert row["res"] == 32
        assert row["hostname"] == bench_doc["machine"]["hostname"]
    # One row per (arch, res, kind) for training and limits, one per backend for loaders.
    keys = [(r["arch"], r["res"], r["kind"], r["backend"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert bench_doc["_messages"], "progress messages were reported"


def test_bench_loader_rows(bench_doc):
    loaders = {r["backend"]: r for r in bench_doc["rows"] if r["kind"] == "loader"}
    assert set(loaders) == {"pil", "resident"}  # pil always measured: it is the baseline
    assert loaders["pil"]["status"] == "ok" and loaders["pil"]["ratio"] == pytest.approx(1.0)
    res = loaders["resident"]
    assert res["status"] == "ok" and res["images_per_s"] > 0
    assert res["ratio"] == pytest.approx(res["images_per_s"] / loaders["pil"]["images_per_s"], rel=0.02)


def test_bench_training_and_limit_rows(bench_doc):
    by_kind = {r["kind"]: r for r in bench_doc["rows"] if r["arch"] == "resnet34"}
    synth, fed, limit = by_kind["train_synthetic"], by_kind["train_loader"], by_kind["batch_limit"]
    assert synth["status"] == "ok" and synth["images_per_s"] > 0 and synth["batch_size"] == 2
    assert synth["n_images"] >= 2
    assert synth["step_ms"] == pytest.approx(1000 * synth["seconds"] / (synth["n_images"] / 2), rel=0.01)
    assert synth["param_count"] == memory.profile("resnet34", 32, "amp").n_params > 20_000_000
    assert fed["status"] == "ok" and fed["images_per_s"] > 0
    best = max((r for r in bench_doc["rows"] if r["kind"] == "loader" and r["status"] == "ok"),
               key=lambda r: r["images_per_s"])
    assert fed["backend"] == best["backend"]
    assert fed["ratio"] == pytest.approx(fed["images_per_s"] / synth["images_per_s"], rel=0.01)
    # The prediction is the memory model's, for the paper's 11 GB card with AMP (precision auto).
    assert limit["max_batch_predicted"] == memory.max_batch_size("resnet34", 32, 11, "amp")
    assert limit["max_batch_measured"] is None  # no GPU here
    assert limit["predicted_mem_per_sample_mb"] > 0


def test_results_files_round_trip(bench_doc, tmp_path):
    from cxr_fast.bench.results_io import write_results

    paths = write_results(tmp_path / "out", bench_doc, json_path=tmp_path / "extra.json")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["rows"] == bench_doc["rows"]
    assert json.loads((tmp_path / "extra.json").read_text())["schema"] == "cxr-fast-bench/1"
    with open(paths["csv"], newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == list(ROW_FIELDS)
        table = list(reader)
    assert len(table) == len(bench_doc["rows"])
    assert {r["kind"] for r in table} == set(KINDS)


def test_make_row_rejects_unknown_fields():
    with pytest.raises(ValueError):
        make_row({}, kind="loader", speed=3)
    with pytest.raises(ValueError):
        make_row({}, kind="inference")


def test_unavailable_backend_is_reported_as_skipped(tiny_phantom, monkeypatch):
    import cxr_fast.bench.loaders as bl

    real = bl.availability

    def fake():
        out = dict(real())
        out["ffcv"] = (False, "FFCV is not importable (test)")
        return out

    monkeypatch.setattr(bl, "availability", fake)
    cfg = BenchConfig(res=[32], archs=["resnet34"], loaders=["ffcv"], device="cpu", data=str(tiny_phantom),
                      cpu=tiny_effort())
    doc = run_bench(cfg)
    ffcv = next(r for r in doc["rows"] if r["kind"] == "loader" and r["backend"] == "ffcv")
    assert ffcv["status"] == "skipped" and "not importable" in ffcv["reason"] and ffcv["images_per_s"] is None
    fed = next(r for r in doc["rows"] if r["kind"] == "train_loader")
    assert fed["backend"] == "pil"  # the only one that ran


def test_config_file_matches_builtin_defaults():
    assert load_bench_config(str(REPO / "configs" / "bench.yaml")) == load_bench_config()


def test_config_errors_are_one_line(tmp_path, capsys):
    assert main(["bench", "--res", "abc"]) == 2
    assert "a resolution is a whole number of pixels, got 'abc'" in capsys.readouterr().err
    assert main(["bench", "--arch", "vgg16", "--res", "32"]) == 2
    assert "unknown architecture" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("cpu:\n  warmups: 3\n")
    assert main(["bench", "--config", str(bad)]) == 2
    assert "warmups" in capsys.readouterr().err


def test_bench_cli_writes_json_and_csv(tiny_phantom, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "cpu:\n  batch_size: 2\n  warmup: 0\n  iters: 1\n  train_seconds: 0\n  loader_batch_size: 4\n"
        "  loader_batches: 1\n  loader_seconds: 0\n  n_images: 12\n")
    out = tmp_path / "results"
    rc = main(["bench", "--config", str(cfg), "--res", "32", "--arch", "resnet34", "--loaders", "cache",
               "--data", str(tiny_phantom), "--device", "cpu", "--out", str(out), "--json", str(tmp_path / "b.json"),
               "--quiet"])
    assert rc == 0
    doc = json.loads((out / "bench.json").read_text())
    assert (out / "bench.csv").is_file() and (tmp_path / "b.json").is_file()
    assert doc["settings"]["res"] == [32] and doc["settings"]["resolved"]["archs"] == ["resnet34"]
    assert {r["backend"] for r in doc["rows"] if r["kind"] == "loader"} == {"pil", "cache"}
    # The CPU default alternates synthetic and loader-fed steps; both rows come out of it.
    assert doc["settings"]["resolved"]["effort"]["paired"] is True
    kinds = {r["kind"]: r for r in doc["rows"] if r["arch"] == "resnet34"}
    assert kinds["train_synthetic"]["status"] == kinds["train_loader"]["status"] == "ok"
    assert kinds["train_loader"]["n_images"] == kinds["train_synthetic"]["n_images"] >= 2
    assert kinds["train_loader"]["ratio"] == pytest.approx(
        kinds["train_loader"]["images_per_s"] / kinds["train_synthetic"]["images_per_s"], rel=0.01)


def test_memory_cli_answers_the_papers_case(tmp_path, capsys):
    out, png = tmp_path / "mem.json", tmp_path / "mem.png"
    rc = main(["memory", "--arch", "resnet34", "--res", "64,600", "--gpu-gb", "11,24", "--precision", "both",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "600 px on an 11 GB card" in text
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 1 * 2 * 2 * 2  # arch x precision x res x gpu
    case = [r for r in doc["rows"] if r["res"] == 600 and r["gpu_gb"] == 11 and r["precision"] == "fp32"][0]
    assert case["max_batch_size"] == memory.max_batch_size("resnet34", 600, 11, "fp32")
    assert len(doc["paper_case"]) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_cli_rejects_bad_values(capsys):
    with pytest.raises(SystemExit):
        main(["memory", "--arch", "vgg"])
    assert main(["memory", "--arch", "resnet34", "--res", "64", "--gpu-gb", "0"]) == 2


def test_cpu_threads_drop_to_one_on_a_busy_machine(monkeypatch):
    import os

    import torch

    from cxr_fast.bench.pipeline import cpu_threads as _cpu_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.9, 3.0, 2.0))
    assert _cpu_threads(None)[0] == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.1, 0.1))
    assert _cpu_threads(None)[0] == torch.get_num_threads()
    assert _cpu_threads(3) == (3, "asked for")


def test_threads_flag_is_validated(capsys):
    assert main(["bench", "--res", "32", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_gpu_check_without_a_gpu_is_one_line_exit_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run for real")
    assert main(["gpu-check", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU here" in err


def test_gpu_check_limit_searches_leave_the_device_profile_its_time():
    from cxr_fast.bench.gpu_check import time_reserves

    for skip_bench in (False, True):
        for n_res in (1, 9):
            after_limits, profile_needs = time_reserves(skip_bench, False, n_res)
            assert after_limits > profile_needs > 0  # a search that stops on time leaves the profile room
    assert time_reserves(False, True, 9) == (225.0, 225.0)  # no profile: only the bench is kept
    assert time_reserves(True, True, 9) == (0.0, 0.0)

