"""``cxr-fast fetch`` (issue 14) against local HTTP servers on the loopback address: never the network.

One server serves archives packed from a small image set as a mirror would; variants drop the connection
midway, ignore range requests, throttle (for a kill -9 mid-download) or serve one wrong byte. Every
test drives the CLI or the module's API and checks the bytes that land on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cxr_fast.cli import main
from cxr_fast.data.download import Policy, download
from cxr_fast.data.fetch import RECORD, make_plan, parse_parts, read_links
from cxr_fast.errors import CxrError
from imagesets import make_dataset
from tarballs import pack

REPO = Path(__file__).resolve().parents[1]


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with HTTP range requests, and logs every request.

    ``drop_after``: the first answer for each file stops after that many bytes and closes the connection.
    ``flip``: every ``.gz`` file is served with its middle byte changed. ``ignore_range``:
    answer 200 with the whole file to a range request. ``rate``: bytes per second, for a slow download.
    """

    def __init__(self, files: dict[str, bytes], drop_after: int | None = None, flip: bool = False,
                 ignore_range: bool = False, rate: int | None = None) -> None:
        self.files, self.drop_after, self.flip = files, drop_after, flip
        self.ignore_range, self.rate = ignore_range, rate
        self.requests: list[tuple[str, str | None]] = []
        self.answered: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                if server.flip and name.endswith(".gz"):
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1:]
                start, ranged = 0, self.headers.get("Range")
                if ranged and not server.ignore_range:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                first = server.answered.get(name, 0) == 0
                server.answered[name] = server.answered.get(name, 0) + 1
                body = data[start:]
                if first and server.drop_after is not None:
                    self.wfile.write(body[:server.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                step = 4096
                for i in range(0, len(body), step):
                    try:
                        self.wfile.write(body[i:i + step])
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    if server.rate:
                        time.sleep(step / server.rate)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Three archives packed from a small image set, and its metadata, as a mirror would hold them."""
    base = tmp_path_factory.mktemp("mirror")
    src, _, _ = make_dataset(base / "src", n=6, size=160)
    pack(src, base / "mirror", parts=3)
    return {p.name: p.read_bytes() for p in sorted((base / "mirror").iterdir())}


@pytest.fixture()
def serve():
    servers: list[Server] = []

    def start(files: dict[str, bytes], **kw) -> Server:
        servers.append(Server(files, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _links(tmp_path: Path, server: Server, files: dict[str, bytes], **extra: dict) -> Path:
    entries = []
    for name in files:
        entry = {"name": name, "url": name}
        if name.startswith("images_"):
            entry["part"] = int(name[7:10])
        entry.update(extra.get(name, {}))
        entries.append(entry)
    path = tmp_path / "links.json"
    path.write_text(json.dumps({"base": server.url, "files": entries}))
    return path


def _fetch(data: Path, *args: str) -> int:
    return main(["fetch", "nih", str(data), "--quiet", "--backoff", "0", "--timeout", "10", *args])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dry_run_lists_the_twelve_nih_archives_and_the_metadata(tmp_path: Path, capsys):
    data = tmp_path / "nih"
    assert main(["fetch", "nih", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for i in range(1, 13):
        assert f"images_{i:03d}.tar.gz  https://nihcc.box.com/shared/static/" in out
    assert "Data_Entry_2017_v2020.csv.gz" in out and "bundled" in out
    assert not data.exists(), "a dry run writes nothing"


def test_the_bundled_links_are_nihs_twelve(tmp_path: Path):
    links = read_links()
    assert [f["name"] for f in links["files"]] == [f"images_{i:03d}.tar.gz" for i in range(1, 13)]
    assert len({f["url"] for f in links["files"]}) == 12
    plan = make_plan(mirror="http://mirror.example/nih", parts=[2, 3])
    assert [i.url for i in plan.items] == ["http://mirror.example/nih/images_002.tar.gz",
                                           "http://mirror.example/nih/images_003.tar.gz"]
    assert plan.copy_metadata
    assert parse_parts("1-3,12") == [1, 2, 3, 12]
    with pytest.raises(CxrError, match="no archive 13"):
        make_plan(parts=[13])


def test_fetch_records_checks_and_gives_a_data_folder(payload, serve, tmp_path: Path, capsys):
    server = serve(payload)
    data = tmp_path / "nih"
    assert _fetch(data, "--links", str(_links(tmp_path, server, payload))) == 0
    record = json.loads((data / RECORD).read_text())
    for name, body in payload.items():
        assert (data / name).read_bytes() == body
        assert record["files"][name]["size"] == len(body)
        assert record["files"][name]["sha256"] == hashlib.sha256(body).hexdigest()
    assert not list(data.glob("*.part")) and not (data / "Data_Entry_2017_v2020.csv.gz").exists(), \
        "the links gave the metadata, so the bundled copy is not added"
    assert main(["verify", str(data), "--quiet", "--workers", "1"]) == 0  # the archives, read in place

    # A rerun checks what is here and downloads nothing.
    asked = len(server.requests)
    assert _fetch(data, "--links", str(_links(tmp_path, server, payload))) == 0
    assert len(server.requests) == asked


def test_parts_and_the_bundled_metadata(payload, serve, tmp_path: Path):
    archives = {k: v for k, v in payload.items() if k.endswith(".tar.gz")}
    server = serve(archives)
    data = tmp_path / "nih"
    assert _fetch(data, "--links", str(_links(tmp_path, server, archives)), "--parts", "2") == 0
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith(".")) == \
        ["Data_Entry_2017_v2020.csv.gz", RECORD, "images_002.tar.gz"]
    from cxr_fast.paths import BUNDLED_METADATA

    assert (data / "Data_Entry_2017_v2020.csv.gz").read_bytes() == BUNDLED_METADATA.read_bytes()


def test_a_dropped_connection_resumes_with_a_range_request(payload, serve, tmp_path: Path):
    server = serve(payload, drop_after=3000)
    data = tmp_path / "nih"
    assert _fetch(data, "--links", str(_links(tmp_path, server, payload))) == 0
    for name, body in payload.items():
        assert (data / name).read_bytes() == body
        if len(body) > 3000:  # the metadata is smaller: it came whole
            assert (name, "bytes=3000-") in server.requests, f"{name} was resumed, not started again"
    assert sum(len(b) > 3000 for b in payload.values()) == 3


def test_a_server_that_ignores_ranges_is_read_again_from_the_start(payload, serve, tmp_path: Path):
    server = serve(payload, drop_after=3000, ignore_range=True)
    data = tmp_path / "nih"
    assert _fetch(data, "--links", str(_links(tmp_path, server, payload))) == 0
    for name, body in payload.items():
        assert (data / name).read_bytes() == body


def test_a_wrong_byte_is_refused_by_name_and_a_rerun_fetches_it_again(payload, serve, tmp_path: Path, capsys):
    bad = serve(payload, flip=True)
    data = tmp_path / "nih"
    assert _fetch(data, "--links", str(_links(tmp_path, bad, payload))) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "images_001.tar.gz refused" in err and bad.url + "images_001.tar.gz" in err
    assert "3 more" not in err and "2 more" in err  # every archive named; the CSV (not gzip) is taken
    record = json.loads((data / RECORD).read_text())
    assert not any(name.endswith(".tar.gz") for name in record["files"])
    assert not list(data.glob("images_*.tar.gz")) and len(list(data.glob("*.tar.gz.bad"))) == 3

    good = serve(payload)
    assert _fetch(data, "--links", str(_links(tmp_path, good, payload))) == 0
    assert all((data / name).read_bytes() == body for name, body in payload.items())


def test_a_published_sha256_is_checked(payload, serve, tmp_path: Path, capsys):
    server = serve(payload)
    links = _links(tmp_path, server, payload, **{"images_003.tar.gz": {"sha256": "0" * 64}})
    assert _fetch(tmp_path / "nih", "--links", str(links)) == 1
    assert "images_003.tar.gz refused" in capsys.readouterr().err
    assert (tmp_path / "nih" / "images_001.tar.gz").exists() and not (tmp_path / "nih" / "images_003.tar.gz").exists()


@pytest.mark.parametrize("change", ["flip", "cut"])
def test_a_rerun_refuses_an_archive_changed_since_it_was_fetched(change: str, payload, serve, tmp_path: Path, capsys):
    server = serve(payload)
    links = str(_links(tmp_path, server, payload))
    data = tmp_path / "nih"
    assert _fetch(data, "--links", links) == 0
    target = data / "images_002.tar.gz"
    body = bytearray(target.read_bytes())
    if change == "flip":
        body[len(body) // 3] ^= 1
    else:
        del body[-100:]
    target.write_bytes(bytes(body))
    capsys.readouterr()
    assert _fetch(data, "--links", links) == 1
    err = capsys.readouterr().err
    assert f"{target} changed since it was fetched" in err and ("sha256" in err if change == "flip" else "bytes" in err)


def test_an_archive_no_record_vouches_for_is_refused_unless_adopted(payload, serve, tmp_path: Path, capsys):
    server = serve(payload)
    data = tmp_path / "nih"
    data.mkdir()
    (data / "images_001.tar.gz").write_bytes(payload["images_001.tar.gz"])
    links = str(_links(tmp_path, server, payload))
    assert _fetch(data, "--links", links) == 1
    assert "images_001.tar.gz is here but not in fetch.json" in capsys.readouterr().err
    assert _fetch(data, "--links", links, "--adopt") == 0
    assert json.loads((data / RECORD).read_text())["files"]["images_001.tar.gz"]["adopted"] is True


def test_offline_fails_at_once_in_one_line_naming_the_first_url(tmp_path: Path, capsys):
    port = _closed_port()
    start = time.monotonic()
    assert main(["fetch", "nih", str(tmp_path / "nih"), "--quiet", "--mirror", f"http://127.0.0.1:{port}/nih"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot reach http://127.0.0.1:{port}/nih/images_001.tar.gz" in err
    assert time.monotonic() - start < 10, "no retries with backoff for a host that cannot be reached"
    assert not list((tmp_path / "nih").glob("images_*"))


def test_a_part_already_whole_is_finished_without_downloading_it_again(payload, serve, tmp_path: Path):
    server = serve(payload)
    data = tmp_path / "nih"
    data.mkdir()
    (data / "images_001.tar.gz.part").write_bytes(payload["images_001.tar.gz"])  # a kill just before the rename
    assert _fetch(data, "--links", str(_links(tmp_path, server, payload))) == 0
    assert (data / "images_001.tar.gz").read_bytes() == payload["images_001.tar.gz"]
    assert [r for r in server.requests if r[0] == "images_001.tar.gz"] == \
        [("images_001.tar.gz", f"bytes={len(payload['images_001.tar.gz'])}-")]  # answered 416: nothing more


def test_a_kill_between_record_and_rename_needs_no_network(payload, serve, tmp_path: Path):
    server = serve(payload)
    data = tmp_path / "nih"
    links = _links(tmp_path, server, payload)
    assert _fetch(data, "--links", str(links)) == 0
    os.replace(data / "images_002.tar.gz", data / "images_002.tar.gz.part")
    assert _fetch(data, "--mirror", f"http://127.0.0.1:{_closed_port()}/", "--parts", "2") == 0
    assert (data / "images_002.tar.gz").read_bytes() == payload["images_002.tar.gz"]


def test_fetch_resumes_after_kill_9(serve, tmp_path: Path):
    body = gzip.compress(os.urandom(600_000), mtime=0)  # incompressible: 600 kB on the wire
    server = serve({"images_001.tar.gz": body}, rate=100_000)
    links = _links(tmp_path, server, {"images_001.tar.gz": body})
    data = tmp_path / "nih"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cxr_fast.cli", "fetch", "nih", str(data), "--links", str(links),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = data / "images_001.tar.gz.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= 100_000):
        assert proc.poll() is None and time.monotonic() < deadline, "the download never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    held = part.stat().st_size
    assert 0 < held < len(body) and not (data / "images_001.tar.gz").exists(), "a half file keeps its .part name"

    server.rate = None
    assert _fetch(data, "--links", str(links)) == 0
    assert (data / "images_001.tar.gz").read_bytes() == body
    assert server.requests[-1] == ("images_001.tar.gz", f"bytes={held}-")


def test_download_retries_with_backoff_and_then_gives_up(tmp_path: Path, serve):
    body = gzip.compress(os.urandom(50_000))
    server = serve({"f.gz": body}, drop_after=1000)
    waits: list[float] = []
    digest = download(server.url + "f.gz", tmp_path / "f.gz.part", True, Policy(retries=3, backoff_s=0.5),
                      sleep=waits.append)
    assert digest.size == len(body) and waits == [0.5]

    dropping = serve({"g.gz": body}, drop_after=0)
    dropping.answered = _Never()
    waits.clear()
    with pytest.raises(CxrError, match="gave up after 3 retries"):
        download(dropping.url + "g.gz", tmp_path / "g.gz.part", True, Policy(retries=3, backoff_s=1.0),
                 sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0]


class _Never(dict):
    """An ``answered`` log that never remembers: every answer is a first one, and drops."""

    def get(self, key, default=None):
        return 0

    def __setitem__(self, key, value):
        pass
