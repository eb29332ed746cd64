"""``prepare``: decode once into jpeg / uint8 cache / ffcv stores; resume; unreadable images; staleness."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxr_fast.stores.decode as D
import cxr_fast.stores.prepare as P
from cxr_fast.cli import main
from cxr_fast.data.sets.nih import read_nih_folder
from cxr_fast.data.reader import DataWarning, read_gray
from cxr_fast.errors import CxrError
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.data.resize import resize_uint8
from cxr_fast.loaders.reference import reference_batch
from cxr_fast.feed import make_loader
from imagesets import make_dataset


@pytest.fixture
def data(tmp_path: Path):
    root, ids, labels = make_dataset(tmp_path / "data", n=6, size=128, rgba=True, truncated=True)
    return read_nih_folder(root), ids, labels


def _cfg(**kw) -> P.PrepareConfig:
    base = {"resolutions": (32, 64), "formats": ("jpeg", "cache"), "workers": 1, "quiet": True}
    base.update(kw)
    return P.PrepareConfig(**base)


def test_prepare_writes_formats_and_lists_unreadable_images(data, tmp_path: Path):
    ds, ids, labels = data
    store = P.prepare_store(ds, ids, labels, tmp_path / "store", _cfg(workers=2))
    bad_name = ids[-1]
    assert list(store.bad) == [bad_name] and "truncated" in store.bad[bad_name]
    assert store.cache_resolutions == [32, 64] and store.has("jpeg")
    for res in (32, 64):
        arr = store.cache_array(res)
        assert arr.shape == (len(ids), res, res) and arr.dtype == np.uint8
        for row, name in enumerate(ids[:-1]):
            assert np.array_equal(arr[row], resize_uint8(read_gray(ds.path_of(name)), res))
    listed = (tmp_path / "store" / "jpeg" / "files.txt").read_text().split("\n")
    assert len([line for line in listed if line]) == len(ids) - 1
    jpeg = np.asarray(Image.open(store.jpeg_path(ids[1])))  # the RGBA source, as gray
    assert jpeg.ndim == 2 and np.abs(jpeg.astype(int) - read_gray(ds.path_of(ids[1]))).mean() < 2
    assert not store.jpeg_path(bad_name).exists()
    assert not list((tmp_path / "store").rglob("*.partial")) and not list((tmp_path / "store").rglob(".*.tmp"))
    written = {p.relative_to(tmp_path / "store").as_posix() for p in (tmp_path / "store").rglob("*.*")
               if p.name not in (P.MANIFEST, P.LOCK)}
    assert written == set(store.manifest["files"]), "every file the store holds has its checksum recorded"
    assert not store.damage(full=True)

    # A loader over the store leaves the unreadable image out, and says so.
    spec = LoaderSpec(dataset=ds, image_ids=np.array(ids), targets=labels, res=32, batch_size=4, train=False,
                      device=torch.device("cpu"), store=tmp_path / "store")
    with pytest.warns(UserWarning, match=bad_name):
        loader = make_loader("cache", spec)
    x = torch.cat([b for b, _ in loader])
    assert x.shape[0] == len(ids) - 1
    assert float((x - reference_batch(ds, ids[:-1], 32)).abs().max()) <= 0.5 / 255 + 1e-6


def test_prepare_resumes_after_an_interruption(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ds, ids, labels = data
    ids, labels = ids[:-1], labels[:-1]
    calls: list[str] = []
    real_work = D._work

    def interrupted(job):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(job[1])
        return real_work(job)

    monkeypatch.setattr(D, "_work", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.prepare_store(ds, ids, labels, tmp_path / "store", _cfg())
    partial = tmp_path / "store" / "cache" / "32.npy.partial"
    assert partial.exists() and not (tmp_path / "store" / "cache" / "32.npy").exists()
    assert int((np.load(tmp_path / "store" / "cache" / "32.state.npy") == 1).sum()) == 3

    calls.clear()
    monkeypatch.setattr(D, "_work", lambda job: (calls.append(job[1]), real_work(job))[1])
    store = P.prepare_store(ds, ids, labels, tmp_path / "store", _cfg())
    assert len(calls) == len(ids) - 3, "the second run decodes only what the first did not finish"
    fresh = P.prepare_store(ds, ids, labels, tmp_path / "fresh", _cfg())
    for res in (32, 64):
        assert np.array_equal(store.cache_array(res), fresh.cache_array(res))
    assert all(store.jpeg_path(i).exists() for i in ids)

    calls.clear()
    P.prepare_store(ds, ids, labels, tmp_path / "store", _cfg())
    assert calls == [], "a finished store is not decoded again"
    P.prepare_store(ds, ids, labels, tmp_path / "store", _cfg(resolutions=(32, 48), formats=("cache",)))
    assert len(calls) == len(ids) and P.open_store(tmp_path / "store").cache_resolutions == [32, 48, 64]


def test_stale_store_is_detected_and_rejected(data, tmp_path: Path):
    ds, ids, labels = data
    ids, labels = ids[:-1], labels[:-1]
    out = tmp_path / "store"
    P.prepare_store(ds, ids, labels, out, _cfg(formats=("cache",)))
    P.open_store(out, ds)  # fresh: fine

    changed = ds.path_of(ids[2])
    Image.fromarray(np.full((128, 128), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    with pytest.raises(P.StaleStoreError, match="stale") as err:
        P.open_store(out, ds)
    assert str(out) in str(err.value) and ids[2] in str(err.value)
    with pytest.raises(P.StaleStoreError):
        P.prepare_store(ds, ids, labels, out, _cfg(formats=("cache",)))
    spec = LoaderSpec(dataset=ds, image_ids=np.array(ids), targets=labels, res=32, batch_size=8, train=False,
                      device=torch.device("cpu"), store=out)
    with pytest.raises(CxrError, match="stale"):
        make_loader("resident", spec)

    # A store in the cache folder, made on demand, is rebuilt instead: the new pixels come through.
    spec.store = None
    first = torch.cat([x for x, _ in make_loader("resident", spec)])
    Image.fromarray(np.full((128, 128), 250, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 2 * 10**9))
    second = torch.cat([x for x, _ in make_loader("resident", spec)])
    assert float(first[2].mean()) < 0.1 and float(second[2].mean()) > 0.9


def test_a_damaged_store_in_the_cache_folder_is_remade(data):
    """No user made it, so a damaged on-demand store is rebuilt (said once), like a stale one."""
    ds, ids, labels = data
    ids, labels = ids[:-1], labels[:-1]
    spec = LoaderSpec(dataset=ds, image_ids=np.array(ids), targets=labels, res=32, batch_size=8, train=False,
                      device=torch.device("cpu"), num_workers=1)
    first = torch.cat([x for x, _ in make_loader("cache", spec)])
    npy = P.auto_store_dir(ds, ids, labels) / "cache" / "32.npy"
    npy.write_bytes(npy.read_bytes()[:500])
    with pytest.warns(DataWarning, match="32.npy: damaged .* remaking this cached store"):
        second = torch.cat([x for x, _ in make_loader("cache", spec)])
    assert torch.equal(first, second)


def test_foreign_or_unknown_folders_are_refused(data, tmp_path: Path):
    ds, ids, labels = data
    out = tmp_path / "store"
    P.prepare_store(ds, ids[:3], labels[:3], out, _cfg(formats=("cache",)))
    with pytest.raises(P.StaleStoreError, match="another subsample"):
        P.prepare_store(ds, ids[:4], labels[:4], out, _cfg(formats=("cache",)))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CxrError, match="not a cxr-fast store"):
        P.prepare_store(ds, ids[:3], labels[:3], other, _cfg())
    assert [p.name for p in other.iterdir()] == ["notes.txt"], "a refused folder is left as it was"
    with pytest.raises(CxrError, match="unknown store format"):
        P.prepare_store(ds, ids[:3], labels[:3], tmp_path / "x", _cfg(formats=("zip",)))
    with pytest.raises(CxrError, match="not a cxr-fast store"):
        P.open_store(other)
    spec = LoaderSpec(dataset=ds, image_ids=np.array(ids[:5]), targets=labels[:5], res=32, batch_size=2,
                      train=False, device=torch.device("cpu"), store=out)
    with pytest.raises(CxrError, match="does not hold"):
        make_loader("cache", spec)


def test_prepare_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    root, ids, _ = make_dataset(tmp_path / "data", n=10, size=96, truncated=True)
    out = tmp_path / "store"
    rc = main(["prepare", str(root), "--label", "effusion", "--out", str(out), "--res", "32,48",
               "--format", "jpeg,cache", "--size", "20", "--split", "patient", "--workers", "1", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 1, "an unreadable image makes the run report failure, after finishing the rest"
    assert ids[-1] in text and "skipped" in text
    store = P.open_store(out)
    m = store.manifest
    assert m["label"] == "Effusion" and m["split"] == "patient" and len(m["is_val"]) == len(m["image_ids"])
    assert store.cache_resolutions == [32, 48] and store.has("jpeg")
    assert sorted(m["image_ids"]) == sorted(ids)

    rc = main(["prepare", str(root), "--label", "Effusion", "--out", str(tmp_path / "s2"), "--format", "gif"])
    assert rc == 2 and "unknown store format" in capsys.readouterr().err


def test_ffcv_writer_is_bounded_and_atomic(data, tmp_path: Path):
    pytest.importorskip("ffcv")
    ds, ids, labels = data
    out = tmp_path / "store"
    hung = _cfg(resolutions=(32,), formats=("cache", "ffcv"), ffcv_timeout_s=0.01)
    with pytest.raises(CxrError, match="did not finish"):
        P.prepare_store(ds, ids[:4], labels[:4], out, hung)
    assert not out.exists(), "a store started from nothing is removed when its run fails"
    P.prepare_store(ds, ids[:4], labels[:4], out, _cfg(resolutions=(32,), formats=("cache",)))
    with pytest.raises(CxrError, match="did not finish"):
        P.prepare_store(ds, ids[:4], labels[:4], out, hung)
    assert not list((out / "ffcv").iterdir()), "a stopped write leaves nothing behind"
    assert P.open_store(out).has("cache", 32), "an existing store keeps its finished parts"
    store = P.prepare_store(ds, ids[:4], labels[:4], out, _cfg(resolutions=(32,), formats=("ffcv",)))
    assert store.has("ffcv", 32) and store.ffcv_path(32).stat().st_size > 0
    assert not P.open_store(out).damage(full=True), "the .beton is recorded with its checksum"
