"""The paper's augmentation: rotation keeps content and fills black, flip mirrors, padding is black,
seeded runs repeat, TTA views; and the fused CPU kernel equals the torch (GPU) path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_fast import augment as A

PATHS = [pytest.param(False, id="torch"), pytest.param(True, id="fused")]


def _params(n: int, angle: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0), flip: bool = False,
            affine: bool = True, brightness: float = 1.0, contrast: float = 1.0) -> A.AugmentParams:
    f = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return A.AugmentParams(f(angle), f(scale), f(shift[0]), f(shift[1]), torch.full((n,), flip),
                           torch.full((n,), affine), f(brightness), f(contrast))


def _disc(size: int = 96, radius: float = 0.3) -> torch.Tensor:
    """A bright disc with an off-centre dark notch, well inside the frame: rotation keeps all of it."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    r = ((yy - c) ** 2 + (xx - c) ** 2).sqrt() / size
    img = (r < radius).float() * 200
    img[(yy - c - 10) ** 2 + (xx - c - 12) ** 2 < 36] = 60
    return img.round().to(torch.uint8)[None, None]


def _needs_kernel(fused: bool) -> None:
    if fused and A._cpu_kernel() is None:
        pytest.skip("numba is not installed: the fused CPU kernel is not used here")


@pytest.mark.parametrize("fused", PATHS)
def test_rotation_keeps_content_and_fills_black(fused: bool):
    _needs_kernel(fused)
    x = _disc()
    out = A.apply(x, _params(1, angle=20.0), fused=fused)
    ref = A.to_float(x)
    # Content kept: the disc's total brightness survives a 20 degree turn (bilinear blur only).
    assert abs(float(out.sum()) / float(ref.sum()) - 1) < 0.01
    # ... and turning back restores it up to two rounds of interpolation.
    back = A.apply((out * 255).round().to(torch.uint8), _params(1, angle=-20.0), fused=fused)
    assert float((back - ref).abs().mean()) < 0.01
    # The notch moved: it is a rotation, not a no-op.
    assert float((out - ref).abs().max()) > 0.3
    # A white frame turned 20 degrees leaves exactly black corners, the middle untouched.
    white = torch.full((1, 1, 64, 64), 255, dtype=torch.uint8)
    turned = A.apply(white, _params(1, angle=20.0, brightness=1.15, contrast=0.85), fused=fused)
    corners = turned[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.equal(corners, torch.zeros(4)), "rotation must fill with black, after lighting"
    assert float(turned[0, 0, 24:40, 24:40].min()) > 0.99


@pytest.mark.parametrize("fused", PATHS)
def test_flip_mirrors_exactly(fused: bool):
    _needs_kernel(fused)
    x = torch.randint(0, 256, (3, 1, 20, 24), dtype=torch.uint8)
    expected = A.to_float(x).flip(-1)
    assert torch.equal(A.apply(x, _params(3, flip=True, affine=False), fused=fused), expected)
    # The same mirror through the affine sampler (angle 0, no padding) is exact too.
    assert torch.allclose(A.apply(x, _params(3, flip=True, affine=True), fused=fused), expected, atol=1e-6)


@pytest.mark.parametrize("fused", PATHS)
def test_padding_is_black_and_shrinks_the_picture(fused: bool):
    _needs_kernel(fused)
    white = torch.full((1, 1, 100, 100), 255, dtype=torch.uint8)
    out = A.apply(white, _params(1, scale=1 / 0.9), fused=fused)[0, 0]
    assert torch.equal(out[:4], torch.zeros(4, 100)) and torch.equal(out[:, -4:], torch.zeros(100, 4))
    assert float(out[10:90, 10:90].min()) > 0.99
    inside = float((out > 0.5).float().mean())
    assert abs(inside - 0.81) < 0.03  # 90% of each side


def test_lighting_changes_brightness_and_contrast_around_the_mean():
    x = torch.tensor([[[[50, 100], [150, 200]]]], dtype=torch.uint8)
    brighter = A.apply(x, _params(1, affine=False, brightness=1.2))
    assert torch.allclose(brighter, A.to_float(x) * 1.2, atol=1e-6)
    flatter = A.apply(x, _params(1, affine=False, contrast=0.5))
    m = float(A.to_float(x).mean())
    assert torch.allclose(flatter, (A.to_float(x) - m) * 0.5 + m, atol=1e-6)


def test_seeded_runs_repeat_and_seeds_differ():
    x = torch.randint(0, 256, (6, 1, 48, 48), dtype=torch.uint8)
    a = A.augment(x, A.epoch_generator(5, 2))
    b = A.augment(x, A.epoch_generator(5, 2))
    c = A.augment(x, A.epoch_generator(5, 3))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    p = A.draw_params(2000, torch.Generator().manual_seed(0))
    assert float(p.angle.abs().max()) <= 20.0 and float(p.angle.abs().max()) > 19.0
    assert 0.7 < float(p.affine.float().mean()) < 0.8 and 0.45 < float(p.flip.float().mean()) < 0.55
    assert float(p.scale.min()) >= 1.0 and float(p.scale.max()) <= 1 / 0.9 + 1e-9
    assert float(p.brightness.min()) >= 0.8 and float(p.brightness.max()) <= 1.2


def test_input_is_not_modified_and_float_input_works():
    x = torch.rand(4, 1, 32, 32)
    before = x.clone()
    out = A.augment(x, A.epoch_generator(0, 0))
    assert torch.equal(x, before) and out.dtype == torch.float32 and out.shape == x.shape


def test_tta_views_plain_plus_four_augmented():
    x = torch.randint(0, 256, (3, 1, 40, 40), dtype=torch.uint8)
    views = A.tta_views(x, n=4, seed=1)
    assert len(views) == 5
    assert torch.equal(views[0], A.to_float(x))
    assert all(v.shape == (3, 1, 40, 40) and v.dtype == torch.float32 for v in views)
    assert sum(not torch.equal(v, views[0]) for v in views[1:]) >= 3
    again = A.tta_views(x, n=4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(views, again))


@pytest.mark.parametrize("size", [(37, 41), (64, 64), (600, 600)])
def test_fused_kernel_equals_torch_path(size):
    _needs_kernel(True)
    h, w = size
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 1, h, w), dtype=np.uint8))
    p = A.draw_params(8, A.epoch_generator(11, 0))
    fused = A.apply(x, p, fused=True)
    plain = A.apply(x, p, fused=False)
    assert float((fused - plain).abs().max()) < 5e-4


def test_output_pool_never_overwrites_a_batch_still_held():
    _needs_kernel(True)
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    pool = A.OutputPool()
    g = A.epoch_generator(0, 0)
    first = A.augment(x, g, pool=pool)
    kept = first.clone()
    view = first[:, :, ::2]
    del first
    second = A.augment(x, g, pool=pool)
    assert second.data_ptr() != view.data_ptr(), "a view still holds the first batch's memory"
    assert torch.equal(view, kept[:, :, ::2])
    ptr = second.data_ptr()
    del second
    third = A.augment(x, g, pool=pool)
    assert third.data_ptr() == ptr, "memory nobody holds is reused"


@pytest.mark.parametrize("fused", PATHS)
def test_rows_augment_a_gathered_batch(fused: bool):
    _needs_kernel(fused)
    source = torch.randint(0, 256, (10, 1, 40, 40), dtype=torch.uint8)
    rows = torch.tensor([7, 2, 2, 9])
    p = A.draw_params(4, A.epoch_generator(4, 0))
    direct = A.apply(source, p, fused=fused, rows=rows)
    gathered = A.apply(source[rows], p, fused=fused)
    assert torch.allclose(direct, gathered, atol=1e-6)
