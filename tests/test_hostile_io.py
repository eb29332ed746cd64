"""Issue 19 ("Hardening, round two"), the I/O classes: what a full disk, a huge archive member, a server that
never finishes, a kill and a hostile links file must never do.

5. A full disk: ``prepare`` died of SIGBUS (the memory-mapped cache), a checkpoint raised torch's
   ``RuntimeError`` past the one-line handler. Now one line naming the file and the space it needs, before
   anything is mapped, with the finished work kept.
7. An archive member is read whole into memory: a 1 GiB one named like an image took 3.2 GB per worker. Now its
   size is capped from its header, and a bigger one is refused by name, unread.
8. ``fetch`` retried forever against a server that never completes a response and ignores Range. Now an attempt
   counts as progress only when it gets further toward the whole file than any before.
9. (part) ``fetch --timeout nan`` gave a traceback.
15. A plain ``kill`` of ``prepare`` left its pool workers alive, printing BrokenPipeError tracebacks; Ctrl-C
    printed the workers' KeyboardInterrupt tracebacks beside the clean line.
16. A links file could name fetch's own record, and a ``.csv`` served as an HTML page was "whole and checked".

Every test drives the CLI or the public API on tiny data in ``tmp_path``; no real full disk is needed (the free
space and the writer are patched), and each fails on the code before the fix.
"""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxr_fast
import cxr_fast.data.archives as A
from cxr_fast.cli import main
from imagesets import make_dataset
from tarballs import pack
from test_train import _tiny_model  # build_model's stand-in: one small net for every run

pytestmark = pytest.mark.usefixtures("one_thread")
TREE = Path(cxr_fast.__file__).resolve().parents[1]  # the tree under test, for subprocesses too


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- 5. a full disk


def _free_space(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """Every disk reports ``free`` bytes free: what ``prepare`` would meet on a nearly full disk."""
    real = shutil.disk_usage

    def usage(path):
        total, used, _ = real(path)
        return type(real(path))(total, used, free)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def test_prepare_into_a_full_disk_is_one_line_before_mapping_and_keeps_the_store(tmp_path: Path, monkeypatch,
                                                                                capsys):
    data, _, _ = make_dataset(tmp_path / "data", n=12, size=96)
    store = tmp_path / "store"
    args = ["prepare", str(data), "--label", "effusion", "--out", str(store), "--format", "cache", "--workers", "1",
            "--quiet"]
    assert main(args + ["--res", "32"]) == 0
    before = (store / "cache" / "32.npy").read_bytes()
    capsys.readouterr()

    _free_space(monkeypatch, 20_000)  # room for the manifest, not for 12 rows of 64 x 64 (49 kB)
    assert main(args + ["--res", "32,64"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(store / "cache" / "64.npy.partial") in line and "needs" in line and "free" in line, line
    assert not (store / "cache" / "64.npy.partial").exists(), "nothing is mapped on a disk without room for it"
    assert (store / "cache" / "32.npy").read_bytes() == before, "the finished resolution is kept"

    monkeypatch.undo()
    assert main(args + ["--res", "32,64"]) == 0  # space freed: the rerun finishes
    assert np.load(store / "cache" / "64.npy").shape == (12, 64, 64)




def test_a_checkpoint_into_a_full_disk_is_one_line_and_keeps_the_last_one(tiny_phantom: Path, tmp_path: Path,
                                                                          monkeypatch, capsys):
    monkeypatch.setattr("cxr_fast.models.build_model", _tiny_model)
    real_save = torch.save
    saves: list[int] = []

    def save_into_a_full_disk(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 1:
            return real_save(obj, f, *a, **k)
        (f.write if hasattr(f, "write") else Path(f).write_bytes)(b"PK\x03\x04 half a zip")
        try:  # what torch.save does when its writer meets a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", save_into_a_full_disk)
    out = tmp_path / "run"
    args = ["train", "--label", "No Finding", "--res", "32", "--epochs", "2", "--batch-size", "8", "--data",
            str(tiny_phantom), "--out", str(out), "--loader", "resident", "--tta", "0", "--init", "random",
            "--device", "cpu", "--workers", "1", "--quiet"]
    assert main(args) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(out / "checkpoint.pt") in line and "disk space" in line and "needs" in line, line
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1, "the last checkpoint is intact"
    assert not list(out.glob(".checkpoint.pt.*")), "no half-written temporary file is left"


def test_torch_saving_to_a_path_on_a_full_disk_is_one_error_naming_it(tmp_path: Path, monkeypatch):
    # Given a path, torch.save's writer says only "unexpected pos": the disk left without room tells the rest.
    from cxr_fast.errors import CxrError
    from cxr_fast.io import atomic_path

    target = tmp_path / "model.pt"
    target.write_bytes(b"the previous model")
    _free_space(monkeypatch, 0)
    with pytest.raises(CxrError, match="model.pt: not enough disk space"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"PK\x03\x04")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert target.read_bytes() == b"the previous model" and list(tmp_path.iterdir()) == [target]


# ----------------------------------------------------------------------------- 7. archive members


def test_an_archive_member_over_the_size_cap_is_refused_by_name_and_never_read(tmp_path: Path, monkeypatch):
    src, ids, _ = make_dataset(tmp_path / "src", n=4, size=96)
    noise = np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)  # ~160 kB as PNG
    Image.fromarray(noise, mode="L").save(src / "images" / ids[0])
    big = (src / "images" / ids[0]).stat().st_size
    cap = max((src / "images" / n).stat().st_size for n in ids[1:]) + 1
    assert big > cap
    monkeypatch.setattr(A, "MAX_MEMBER_BYTES", cap, raising=False)
    archive = pack(src, tmp_path / "arch", parts=1)[0]

    report = tmp_path / "report.json"
    assert main(["verify", str(tmp_path / "arch"), "--json", str(report), "--quiet", "--workers", "1"]) == 1
    doc = json.loads(report.read_text())
    refused = {r["image"]: r["reason"] for r in doc["refused"]}
    assert set(refused) == {ids[0]} and "over the" in refused[ids[0]] and "MiB" in refused[ids[0]], refused
    assert doc["n_ok"] == 3, "the other images are read and checked as usual"

    # Even asked for it by name (an archive changed after its listing), the reader never reads it whole.
    read = dict(A.read_members(archive, {f"images/{n}" for n in ids}))
    assert set(read) == {f"images/{n}" for n in ids[1:]}


# ----------------------------------------------------------------------------- 8, 9, 16: fetch


class _Server:
    """One file (``name`` -> body) on 127.0.0.1. ``short``: announce 1000 bytes more than the body and close
    (ignoring Range), as a broken server does; ``content_type``: the Content-Type header sent, if any.
    After 50 requests it answers 404, so a client that never gives up fails instead of hanging the test."""

    def __init__(self, files: dict[str, bytes], short: bool = False, content_type: str | None = None) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append(name)
                if name not in files or len(server.requests) > 50:
                    self.send_error(404)
                    return
                body = files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (1000 if short else 0)))
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def serve():
    servers: list[_Server] = []

    def start(files: dict[str, bytes], **kw) -> _Server:
        servers.append(_Server(files, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _links(tmp_path: Path, url: str, names: list[str]) -> Path:
    path = tmp_path / "links.json"
    path.write_text(json.dumps({"base": url, "files": [{"name": n, "url": n} for n in names]}))
    return path


def test_fetch_gives_up_on_a_server_that_never_completes_a_response(tmp_path: Path, serve, capsys):
    server = serve({"Data_Entry_2017_v2020.csv": b"Image Index,Finding Labels\n" * 200}, short=True)
    links = _links(tmp_path, server.url, ["Data_Entry_2017_v2020.csv"])
    code = main(["fetch", "nih", str(tmp_path / "nih"), "--links", str(links), "--retries", "2", "--backoff", "0",
                 "--timeout", "10", "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code != 0 and "gave up after 2 retries without progress" in line, line
    assert len(server.requests) == 3, f"{len(server.requests)} requests for --retries 2"
    assert not (tmp_path / "nih" / "Data_Entry_2017_v2020.csv").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "1e30"])
def test_fetch_timeout_must_be_finite_and_positive(value: str, tmp_path: Path, capsys):
    code = main(["fetch", "nih", str(tmp_path / "nih"), f"--timeout={value}", "--quiet", "--mirror",
                 "http://127.0.0.1:9/nih"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "--timeout" in line, line
    assert not (tmp_path / "nih").exists(), "refused before anything was made"


@pytest.mark.parametrize("names, named", [
    (["fetch.json"], "fetch.json"),
    (["Fetch.JSON"], "Fetch.JSON"),
    (["images_001.tar.gz", "images_001.tar.gz.part"], "images_001.tar.gz.part"),
    (["notes.bad"], "notes.bad"),
    (["a.csv", "A.csv"], "A.csv"),
])
def test_a_links_file_cannot_name_fetchs_own_files(names: list[str], named: str, tmp_path: Path, serve, capsys):
    server = serve({n: b"x" for n in names})
    data = tmp_path / "nih"
    code = main(["fetch", "nih", str(data), "--links", str(_links(tmp_path, server.url, names)), "--quiet",
                 "--backoff", "0"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and named in line and ("reserved" in line or "twice" in line), line
    assert server.requests == [] and not data.exists(), "refused before any download"


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", None])
def test_a_csv_served_as_an_html_page_is_refused_not_checked(content_type: str | None, tmp_path: Path, serve,
                                                             capsys):
    page = b"\n<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Box</body></html>\n"
    server = serve({"Data_Entry_2017_v2020.csv": page}, content_type=content_type)
    data = tmp_path / "nih"
    code = main(["fetch", "nih", str(data), "--links", str(_links(tmp_path, server.url, ["Data_Entry_2017_v2020.csv"])),
                 "--quiet", "--backoff", "0"])
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert code == 1 and "Data_Entry_2017_v2020.csv refused" in line and "HTML" in line.upper(), line
    assert "whole and checked" not in captured.out
    assert not (data / "Data_Entry_2017_v2020.csv").exists()
    assert "Data_Entry_2017_v2020.csv" not in json.loads((data / "fetch.json").read_text())["files"] \
        if (data / "fetch.json").exists() else True


# ----------------------------------------------------------------------------- 15. signals

# prepare in a child process, each image slowed to 0.4 s, so the signal lands while the pool is at work.
_SLOW_PREPARE = """
import signal, sys, time
# Ctrl-C as a terminal's foreground job gets it, even when the tests run as a background job (which inherits SIGINT
# ignored, so Python would install no handler)
signal.signal(signal.SIGINT, signal.default_int_handler)
import cxr_fast.stores.decode as D
_real = D._work
def slow(job):
    time.sleep(2.0)  # long beside the 1.5 s before the signal, even for a store of few images
    return _real(job)
D._work = slow
from cxr_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pids: list[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_stops_prepare_its_workers_and_says_one_line(sig: int, code: int, word: str, tmp_path: Path):
    # A child process (stopped about 2 s in): SIGTERM to the parent alone, as a plain `kill` does; SIGINT to prepare's
    # whole process group, as a shell's Ctrl-C does, after the workers alone (whose tracebacks a race between
    # them and their parent's cleanup used to show or hide).
    data, _, _ = make_dataset(tmp_path / "data", n=24, size=128)
    store = tmp_path / "store"
    args = ["prepare", str(data), "--label", "effusion", "--out", str(store), "--res", "32", "--format", "cache",
            "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(TREE)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            workers = _children(proc.pid)
            time.sleep(0.1)
        time.sleep(1.0)  # the workers are decoding
        if sig == signal.SIGINT:
            for pid in workers:  # a worker may hear Ctrl-C before its parent stops it: it must ignore it
                os.kill(pid, sig)
            time.sleep(0.5)
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        time.sleep(0.5)
        left = _alive(workers)
        assert proc.returncode == code, (proc.returncode, err)
        assert "Traceback" not in err and "Error" not in err, err
        assert word in _one_line(err) and "rerun to resume" in err
        assert left == [], "no worker outlives prepare"
    finally:
        for pid in _alive(workers + [proc.pid]):  # only what this test started
            os.kill(pid, signal.SIGKILL)
    assert main(args[:-3] + ["--workers", "1", "--quiet"]) == 0  # the kept work is resumed and finished
    assert np.load(store / "cache" / "32.npy").shape[1:] == (32, 32)
