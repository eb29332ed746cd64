"""NIH's ``images_NNN.tar.gz`` as a data folder (issue 14): streamed by verify and prepare, never extracted.

Byte-identical stores from the archives and from the extracted folder; the reader's rules for members
(plain files named NAME or images/NAME only; links, paths outside and repeats refused); a truncated or
corrupt archive named with the member where it broke, with the work before it kept and finished by a
rerun once the archive is whole again.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

import cxr_fast.data.archives as A
import cxr_fast.data.archive_stream as S
import cxr_fast.stores.prepare as P
from cxr_fast.cli import main
from cxr_fast.data.sets.nih import read_nih_folder
from cxr_fast.data.reader import DataWarning, ImageError, read_gray
from imagesets import make_dataset
from tarballs import pack

pytestmark = pytest.mark.usefixtures("one_thread")


def _store_files(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name not in (P.MANIFEST, P.LOCK)}


def _same_store(a: Path, b: Path) -> None:
    """Every store file equal byte for byte, and the manifests equal but for where the sources were."""
    assert _store_files(a) == _store_files(b)
    ma, mb = (json.loads((s / P.MANIFEST).read_text()) for s in (a, b))
    for m in (ma, mb):
        m.pop("sources")
        for record in m["files"].values():
            record.pop("mtime_ns")
    assert ma == mb


def _pngs(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.suffix.lower() == ".png"}


def test_prepare_from_archives_is_byte_identical_and_writes_no_png(tiny_phantom: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, capsys):
    arch = tmp_path / "arch"
    pack(tiny_phantom, arch, parts=3)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # any temporary file lands where it is seen
    cache = Path(os.environ["CXR_FAST_CACHE"])
    before = _pngs(tmp_path) | _pngs(cache)
    common = ["--label", "Nodule", "--res", "64", "--format", "cache", "--quiet", "--size", "64"]
    assert main(["prepare", str(tiny_phantom), "--out", str(tmp_path / "from-folder"), "--workers", "2", *common]) == 0
    assert main(["prepare", str(arch), "--out", str(tmp_path / "from-archives"), "--workers", "2", *common]) == 0
    assert _pngs(tmp_path) | _pngs(cache) == before, "no PNG was written anywhere"
    _same_store(tmp_path / "from-folder", tmp_path / "from-archives")

    # One worker (the inline path) and JPEGs too: the same bytes again.
    jpeg = ["--label", "Nodule", "--res", "32", "--format", "jpeg,cache", "--quiet", "--size", "64"]
    assert main(["prepare", str(tiny_phantom), "--out", str(tmp_path / "j1"), "--workers", "1", *jpeg]) == 0
    assert main(["prepare", str(arch), "--out", str(tmp_path / "j2"), "--workers", "1", *jpeg]) == 0
    _same_store(tmp_path / "j1", tmp_path / "j2")
    assert _pngs(tmp_path) | _pngs(cache) == before


def test_verify_streams_the_archives(tiny_phantom: Path, tmp_path: Path, capsys):
    arch = tmp_path / "arch"
    pack(tiny_phantom, arch, parts=2)
    out = tmp_path / "report.json"
    assert main(["verify", str(arch), "--json", str(out), "--quiet", "--workers", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["n_ok"] == report["n_images"] == 64 and report["usable"] and report["archives"] == []


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"", **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def test_member_rules_refuse_links_paths_outside_and_repeats(tmp_path: Path, capsys):
    src, ids, _ = make_dataset(tmp_path / "src", n=8, size=96)
    png = {name: (src / "images" / name).read_bytes() for name in ids}
    arch = tmp_path / "arch"
    arch.mkdir()
    (arch / "Data_Entry_2017_v2020.csv").write_bytes((src / "Data_Entry_2017_v2020.csv").read_bytes())
    with tarfile.open(arch / "images_001.tar.gz", "w:gz") as tar:
        _member(tar, "images", type=tarfile.DIRTYPE)
        _member(tar, "images/README.txt", b"not an image, ignored")
        _member(tar, f"images/{ids[0]}", png[ids[0]])
        _member(tar, f"images/{ids[1]}", type=tarfile.SYMTYPE, linkname="../../secret.png")
        _member(tar, f"../{ids[2]}", png[ids[2]])
        _member(tar, f"/{ids[3]}", png[ids[3]])
        _member(tar, f"deep/images/{ids[4]}", png[ids[4]])
        _member(tar, f"images/{ids[5]}", png[ids[5]])
        _member(tar, f"images/{ids[6]}", type=tarfile.LNKTYPE, linkname=f"images/{ids[5]}")
        _member(tar, f"images/{ids[7]}", type=tarfile.FIFOTYPE)
    with tarfile.open(arch / "images_02.tar.gz", "w:gz") as tar:  # NIH's script names them images_01 ...
        _member(tar, f"images/{ids[0]}", png[ids[1]])  # the same name again, other pixels

    out = tmp_path / "report.json"
    assert main(["verify", str(arch), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    report = json.loads(out.read_text())
    refused = {r["image"]: r["reason"] for r in report["refused"]}
    assert set(refused) == set(ids) - {ids[5]} and report["n_ok"] == 1 and not report["usable"]
    assert "claimed by 2 archive members" in refused[ids[0]] and "images_02.tar.gz" in refused[ids[0]]
    assert "is a link" in refused[ids[1]] and "is a link" in refused[ids[6]]
    assert "outside" in refused[ids[2]] and "absolute" in refused[ids[3]]
    assert "NAME or images/NAME" in refused[ids[4]] and "not a plain file" in refused[ids[7]]
    assert f"refused in an archive: {ids[1]}" in capsys.readouterr().out

    with pytest.warns(DataWarning, match="7 image name"):
        ds = read_nih_folder(arch)
    assert ds.metadata.image_ids.tolist() == [ids[5]]
    store = P.prepare_store(ds, [ids[5]], [1.0], tmp_path / "store",
                            P.PrepareConfig(resolutions=(32,), formats=("cache",), workers=1, quiet=True))
    reference = P.prepare_store(read_nih_folder(src), [ids[5]], [1.0], tmp_path / "reference",
                                P.PrepareConfig(resolutions=(32,), formats=("cache",), workers=1, quiet=True))
    assert np.array_equal(store.cache_array(32), reference.cache_array(32))


def _partial_rows(store: Path, res: int) -> np.ndarray:
    return np.flatnonzero(np.load(store / "cache" / f"{res}.state.npy") == 1)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_broken_archive_is_named_keeps_its_work_and_a_rerun_finishes(damage: str, tmp_path: Path, capsys):
    src, ids, labels = make_dataset(tmp_path / "src", n=9, size=320)  # members larger than a tar read-ahead
    arch = tmp_path / "arch"
    archives = pack(src, arch, parts=3)
    whole = archives[1].read_bytes()
    cfg = P.PrepareConfig(resolutions=(32,), formats=("jpeg", "cache"), workers=2, quiet=True)
    reference = tmp_path / "reference"
    P.prepare_store(read_nih_folder(src), ids, labels, reference, cfg)

    broken = bytearray(whole)
    if damage == "truncate":
        broken = broken[: len(whole) * 6 // 10]
    else:
        broken[len(whole) // 2] ^= 0x40
    archives[1].write_bytes(bytes(broken))
    with pytest.warns(DataWarning, match="images_002.tar.gz: broken"):
        ds = read_nih_folder(arch)
    store = tmp_path / "store"
    with pytest.raises(P.UnfinishedStoreError) as info:
        P.prepare_store(ds, ids, labels, store, cfg)
    message = str(info.value)
    assert re.search(r"images_002\.tar\.gz: broken (in|after) member 'images/\d+_000\.png'|"
                     r"images_002\.tar\.gz: broken at its end", message), message
    assert "\n" not in message and "kept in" in message and "left to do" in message
    done = _partial_rows(store, 32)
    assert set(range(3)) | set(range(6, 9)) <= set(done.tolist()), "archives 1 and 3 are kept"
    assert len(done) < 9 and not json.loads((store / P.MANIFEST).read_text())["bad"], \
        "what the broken archive did not give is left to do, not judged unreadable"
    kept = np.load(store / "cache" / "32.npy.partial", mmap_mode="r")
    assert np.array_equal(kept[done], np.load(reference / "cache" / "32.npy")[done])

    out = tmp_path / "verify.json"
    assert main(["verify", str(arch), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    assert "images_002.tar.gz" in json.loads(out.read_text())["archives"][0]["problem"]
    assert "broken archive: " in capsys.readouterr().out

    archives[1].write_bytes(whole)  # fetched again
    P.prepare_store(read_nih_folder(arch), ids, labels, store, cfg)
    _same_store(reference, store)


def test_images_on_disk_win_and_the_reader_names_an_archive_member(tmp_path: Path):
    src, ids, _ = make_dataset(tmp_path / "src", n=4, size=96)
    arch = tmp_path / "arch"
    pack(src, arch, parts=2)
    (arch / "images").mkdir()
    (arch / "images" / ids[0]).write_bytes((src / "images" / ids[0]).read_bytes())
    ds = read_nih_folder(arch)
    assert ds.path_of(ids[0]) == arch / "images" / ids[0]
    assert ds.path_of(ids[3]) == arch / "images_002.tar.gz" / "images" / ids[3]
    with pytest.raises(ImageError, match="a member of the archive images_002.tar.gz, which only verify and prepare"):
        read_gray(ds.path_of(ids[3]))

    # A folder whose images are all on disk never lists its archives.
    full = tmp_path / "full"
    pack(src, full, parts=2)
    (full / "images").mkdir()
    for name in ids:
        (full / "images" / name).write_bytes((src / "images" / name).read_bytes())
    assert read_nih_folder(full).archives is None


def test_listings_are_cached_until_the_archive_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src, _, _ = make_dataset(tmp_path / "src", n=4, size=96)
    arch = tmp_path / "arch"
    archives = pack(src, arch, parts=2)
    assert len(read_nih_folder(arch).archives.members) == 4
    calls: list[str] = []
    real = A.list_archive
    monkeypatch.setattr(A, "list_archive", lambda p: calls.append(Path(p).name) or real(p))
    assert len(read_nih_folder(arch).archives.members) == 4 and calls == []
    os.utime(archives[0], ns=(1, 1))
    assert len(read_nih_folder(arch).archives.members) == 4 and calls == ["images_001.tar.gz"]


def _die_on_second(payload: str, data: bytes) -> str:
    if payload.endswith("#2"):
        os._exit(3)
    return payload


def test_a_worker_that_dies_is_named_and_its_unread_members_returned(tmp_path: Path):
    src, ids, _ = make_dataset(tmp_path / "src", n=6, size=96)
    paths = pack(src, tmp_path / "arch", parts=2)
    tasks = [(str(p), {f"images/{n}": f"{p.name}#{i}" for i, n in enumerate(ids[k * 3:(k + 1) * 3], 1)})
             for k, p in enumerate(paths)]
    events = list(S.imap_members(_die_on_second, tasks, "test", workers=2, quiet=True))
    finished = {Path(e.archive).name: e for e in events if isinstance(e, S.Finished)}
    assert set(finished) == {"images_001.tar.gz", "images_002.tar.gz"}
    for name, event in finished.items():
        assert re.search(r"worker died \(exit code 3\)|every worker died \(exit codes 3, 3\)", event.problem)
        read = {e.result for e in events if isinstance(e, S.Read) and Path(e.archive).name == name}
        # What the dying worker had not yet handed over comes back as unread, never as lost.
        assert {f"{name}#2", f"{name}#3"} <= set(event.unread) and read | set(event.unread) == \
            {f"{name}#1", f"{name}#2", f"{name}#3"} and not read & set(event.unread)


def test_a_consumer_that_stops_early_stops_the_read(tmp_path: Path):
    src, ids, _ = make_dataset(tmp_path / "src", n=3, size=96)
    (path,) = pack(src, tmp_path / "arch", parts=1)
    reader = A.read_members(path, {f"images/{n}" for n in ids})
    assert next(reader)[0] == f"images/{ids[0]}"
    reader.close()  # no error, no leaked file
