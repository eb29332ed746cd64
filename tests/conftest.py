"""Shared fixtures: data the project makes itself, small enough for a 2-core CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache: the built-in phantom and stores go to a per-session folder."""
    monkeypatch.setenv("CXR_FAST_CACHE", str(tmp_path_factory.getbasetemp() / "cxr-fast-cache"))


@pytest.fixture(autouse=True)
def _no_weights_download(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never need the network: an empty torch hub cache of their own, and torchvision's weights URL
    pointed at a closed local port, so a test that forgets ``init: random`` fails fast, as offline."""
    import cxr_fast.weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))
    real = cxr_fast.weights.imagenet_url
    monkeypatch.setattr(cxr_fast.weights, "imagenet_url",
                        lambda arch: "http://127.0.0.1:9/" + real(arch).rsplit("/", 1)[-1])


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 phantom images at 256 px (seed 0) in the NIH layout; made once per test session."""
    from cxr_fast.data.phantom import make_phantom

    return make_phantom(tmp_path_factory.mktemp("tiny_phantom") / "data", n=64, size=256, seed=0,
                        workers=min(2, os.cpu_count() or 1), quiet=True)


@pytest.fixture()
def one_thread():
    """One torch intra-op thread: on a CPU shared with other jobs, OpenMP's spinning threads stall 3-30x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_metadata() -> Path:
    """The real ChestX-ray14 metadata, as bundled with the package."""
    from cxr_fast.paths import BUNDLED_METADATA

    return BUNDLED_METADATA
