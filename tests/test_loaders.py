"""Every loader backend against the reference pixels, and the contract's train-mode promises.

Tolerances against ``cxr_fast.loaders.reference`` (decode, float, antialiased bilinear resize), on
the same 640 px images (one RGBA, one 16-bit) at 32, 224 and 600 px, augmentation off:

- ``cache``, ``resident``, ``ffcv``: max |error| <= 0.5/255 (uint8 rounding of the reference);
- ``pil``: max |error| <= 1.5/255 (PIL resizes in 8-bit fixed point, then rounds);
- ``dali``: mean |error| <= 0.5/255 and max |error| <= 4/255 (quality-95 JPEG is lossy; measured
  0.06-0.10/255 mean and 1.8/255 max on these images with DALI 2.4 CPU operators).

A backend that cannot run here is skipped only when its library is not importable (DALI, FFCV).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_fast.data.sets.nih import read_nih_folder
from cxr_fast.loaders import BACKENDS, availability, backend
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.reference import reference_batch
from cxr_fast.feed import make_loader
from imagesets import make_dataset

TOLERANCE = {
    "cache": {"max": 0.5 / 255 + 1e-6},
    "resident": {"max": 0.5 / 255 + 1e-6},
    "ffcv": {"max": 0.5 / 255 + 1e-6},
    "pil": {"max": 1.5 / 255},
    "dali": {"mean": 0.5 / 255, "max": 4.0 / 255},
}
OPTIONAL = {"dali": "nvidia.dali", "ffcv": "ffcv"}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images640(tmp_path_factory: pytest.TempPathFactory):
    root, ids, labels = make_dataset(tmp_path_factory.mktemp("loaders") / "data", n=8, size=640, rgba=True,
                                     sixteen=True)
    return read_nih_folder(root), np.array(ids), labels


def _need(name: str) -> None:
    """Skip only when an optional library is missing; a core backend must always be available."""
    ok, reason = backend(name).available()
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name], reason=reason)
    assert ok, f"{name} should run here: {reason}"


def _spec(data, res: int, train: bool, batch_size: int = 3, seed: int = 0, augment: bool = True) -> LoaderSpec:
    ds, ids, labels = data
    return LoaderSpec(dataset=ds, image_ids=ids, targets=labels, res=res, batch_size=batch_size, train=train,
                      device=CPU, seed=seed, augment=augment, num_workers=0)


def _collect(loader) -> tuple[torch.Tensor, torch.Tensor, int]:
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        n += 1
    return torch.cat(xs), torch.cat(ys), n


def test_every_backend_reports_availability_with_a_reason():
    report = availability()
    assert set(report) == set(BACKENDS)
    for name, (ok, reason) in report.items():
        assert isinstance(ok, bool) and isinstance(reason, str) and reason, name
    for core in ("pil", "cache", "resident"):
        assert report[core][0], report[core][1]


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_matches_reference_pixels(name: str, images640):
    _need(name)
    ds, ids, labels = images640
    tol = TOLERANCE[name]
    for res in (32, 224, 600):
        loader = make_loader(name, _spec(images640, res, train=False))
        x, y, n = _collect(loader)
        assert n == len(loader) == 3
        assert x.shape == (len(ids), 1, res, res) and x.dtype == torch.float32 and x.device == CPU
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, torch.from_numpy(labels)), "eval mode keeps the spec's order"
        err = (x - reference_batch(ds, ids, res)).abs()
        if "max" in tol:
            assert float(err.max()) <= tol["max"], f"{name} {res}px max error {float(err.max()) * 255:.2f}/255"
        if "mean" in tol:
            assert float(err.mean()) <= tol["mean"], f"{name} {res}px mean error {float(err.mean()) * 255:.2f}/255"


def _label_from_pixels(x: torch.Tensor) -> torch.Tensor:
    """Positives were drawn bright, negatives dark: the mean of the non-black pixels tells them apart
    whatever the rotation, padding, flip and lighting did."""
    flat = x.flatten(1)
    lit = flat > 0.02
    return ((flat * lit).sum(1) / lit.sum(1).clamp(min=1) > 0.4).float()


@pytest.mark.parametrize("name", list(BACKENDS))
def test_train_mode_shuffles_augments_repeats_and_keeps_labels(name: str, images640):
    _need(name)
    ds, ids, labels = images640
    first = make_loader(name, _spec(images640, 64, train=True, seed=7))
    x0, y0, n0 = _collect(first)
    assert n0 == len(first) == 3 and x0.shape == (len(ids), 1, 64, 64)
    assert float(x0.min()) >= 0.0 and float(x0.max()) <= 1.0
    assert torch.equal(_label_from_pixels(x0), y0), "a label left its image"
    assert sorted(y0.tolist()) == sorted(labels.tolist())
    plain = reference_batch(ds, ids, 64)
    # Augmented: no image equals its plain reference (up to the store's rounding).
    distances = torch.cdist(x0.flatten(1), plain.flatten(1))
    assert float(distances.min()) > 0.05

    again = make_loader(name, _spec(images640, 64, train=True, seed=7))
    x1, y1, _ = _collect(again)
    assert torch.equal(x0, x1) and torch.equal(y0, y1), "the same seed must give the same batches"

    # The next epoch is shuffled afresh: the label order changes (8 images: a repeat is 1 in 70).
    orders = {tuple(y0.tolist())}
    for epoch in (1, 2):
        again.set_epoch(epoch)
        _, y, _ = _collect(again)
        orders.add(tuple(y.tolist()))
    assert len(orders) > 1


@pytest.mark.parametrize("name", ["cache", "resident"])
def test_shuffling_keeps_each_label_with_its_own_image(name: str, images640):
    """Without augmentation every yielded image is exactly one of the inputs: check it is the one
    whose label came with it (labels here are the image's index, so any mix-up shows)."""
    ds, ids, _ = images640
    index_labels = np.arange(len(ids), dtype=np.float32)
    spec = LoaderSpec(dataset=ds, image_ids=ids, targets=index_labels, res=32, batch_size=3, train=True,
                      device=CPU, seed=3, augment=False, num_workers=0)
    x, y, _ = _collect(make_loader(name, spec))
    plain = reference_batch(ds, ids, 32)
    nearest = torch.cdist(x.flatten(1), plain.flatten(1)).argmin(1)
    assert torch.equal(nearest.float(), y)
    assert not torch.equal(y, torch.from_numpy(index_labels)), "train mode should shuffle"


def test_drop_last_and_length(images640):
    spec = _spec(images640, 32, train=True, batch_size=3)
    spec.drop_last = True
    loader = make_loader("resident", spec)
    x, _, n = _collect(loader)
    assert n == len(loader) == 2 and x.shape[0] == 6


def test_explicit_store_is_used(images640, tmp_path: Path):
    from cxr_fast.stores.manifest import open_store

    spec = _spec(images640, 32, train=False)
    spec.store = tmp_path / "store"
    make_loader("cache", spec)
    store = open_store(spec.store)
    assert store.has("cache", 32) and store.image_ids.tolist() == list(images640[1])


def test_asking_for_availability_leaves_torch_threads_alone():
    """FFCV sets torch to one thread on import; the backend must undo that."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        availability()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
