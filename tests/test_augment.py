"""The two augmentation recipes and every backend that applies them.

``modern``: rotation keeps content and fills black, flip mirrors, padding is black, seeded runs
repeat, TTA views. ``fastai07`` (the paper's): each augmentation's observed range matches fastai
0.7's constants as cited in ``cxr_fast.augment.FASTAI07``, its lighting is fastai's formula, applied
after the rotation, and the torch path, the fused CPU kernel, the PIL baseline's transforms, the DALI
CPU graph and every loader backend apply the config they are given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_fast import augment as A
from cxr_fast.errors import CxrError
from cxr_fast.feed import make_loader

PATHS = [pytest.param(False, id="torch"), pytest.param(True, id="fused")]


def _params(n: int, angle: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0), flip: bool = False,
            affine: bool = True, brightness: float = 1.0, contrast: float = 1.0, additive: bool = False,
            lighting_last: bool = False) -> A.AugmentParams:
    f = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return A.AugmentParams(f(angle), f(scale), f(shift[0]), f(shift[1]), torch.full((n,), flip),
                           torch.full((n,), affine), f(brightness), f(contrast), additive=additive,
                           lighting_last=lighting_last)


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


@pytest.mark.parametrize("cfg", [pytest.param(A.MODERN, id="modern"), pytest.param(A.FASTAI07, id="fastai07")])
@pytest.mark.parametrize("size", [(37, 41), (64, 64), (600, 600)])
def test_fused_kernel_equals_torch_path(size, cfg: A.AugmentConfig):
    _needs_kernel(True)
    h, w = size
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 1, h, w), dtype=np.uint8))
    p = A.draw_params(8, A.epoch_generator(11, 0), cfg)
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


@pytest.mark.parametrize("cfg", [pytest.param(A.MODERN, id="modern"), pytest.param(A.FASTAI07, id="fastai07")])
@pytest.mark.parametrize("fused", PATHS)
def test_rows_augment_a_gathered_batch(fused: bool, cfg: A.AugmentConfig):
    _needs_kernel(fused)
    source = torch.randint(0, 256, (10, 1, 40, 40), dtype=torch.uint8)
    rows = torch.tensor([7, 2, 2, 9])
    p = A.draw_params(4, A.epoch_generator(4, 0), cfg)
    direct = A.apply(source, p, fused=fused, rows=rows)
    gathered = A.apply(source[rows], p, fused=fused)
    assert torch.allclose(direct, gathered, atol=1e-6)


# --- recipes ------------------------------------------------------------------------------------


def test_recipes_pick_fastai07_and_modern():
    fa = A.augment_config("fastai07")
    # The constants cited in cxr_fast.augment (fastai 0.7, old/fastai/transforms.py at c752c9f3).
    assert (fa.max_rotate, fa.p_affine, fa.max_pad) == (20.0, 0.75, 0.0)
    assert (fa.max_lighting, fa.p_lighting, fa.p_flip) == (0.05, 1.0, 0.5)
    assert fa.lighting == "fastai07" and fa.lighting_last
    assert A.augment_config("modern") == A.AugmentConfig() == A.MODERN
    with pytest.raises(CxrError, match="recipe"):
        A.augment_config("fastai1")
    with pytest.raises(ValueError):
        A.AugmentConfig(lighting="additive")
    with pytest.raises(ValueError):
        A.AugmentConfig(p_flip=1.5)


def test_modern_draws_are_unchanged():
    """The modern recipe's parameters for seed 0, as drawn before the fastai07 recipe existed."""
    p = A.draw_params(3, torch.Generator().manual_seed(0), A.MODERN)
    assert p.affine.tolist() == [False, True, True] and p.flip.tolist() == [False, False, False]
    expected = {"angle": [0.0, -8.470564314553993, -11.782456261536517],
                "scale": [1.0, 1.047435071511303, 1.0712416599307937],
                "shift_x": [0.0, -0.030662075174027664, 0.040589779078764536],
                "brightness": [0.8904080811753562, 1.0350115847345787, 1.0981504642310345],
                "contrast": [1.0232972301520904, 1.0727782742720833, 0.8910622546387525]}
    for name, values in expected.items():
        assert torch.allclose(getattr(p, name), torch.tensor(values, dtype=torch.float64), rtol=0, atol=1e-12), name
    assert not p.additive and not p.lighting_last


# --- fastai07: the draws against fastai 0.7's constants ------------------------------------------


def test_fastai07_draws_match_fastai_constants():
    n = 20_000
    p = A.draw_params(n, torch.Generator().manual_seed(0), A.FASTAI07)
    assert p.additive and p.lighting_last
    # RandomRotate(20, p=0.75): rand0(20) is uniform in [-20, 20); rotates when random() < 0.75.
    turned = p.angle[p.affine]
    assert float(turned.abs().max()) <= 20.0 and float(turned.min()) < -19.9 and float(turned.max()) > 19.9
    assert bool((p.angle[~p.affine] == 0).all())
    assert abs(float(p.affine.double().mean()) - 0.75) < 0.015
    # No zoom, no padding, no shift.
    assert bool((p.scale == 1).all() and (p.shift_x == 0).all() and (p.shift_y == 0).all())
    # RandomFlip(p=0.5).
    assert abs(float(p.flip.double().mean()) - 0.5) < 0.015
    # RandomLighting(0.05, 0.05) on every image: b = rand0(0.05) in [-0.05, 0.05) ...
    b = p.brightness
    assert float(b.min()) >= -0.05 and float(b.max()) < 0.05
    assert float(b.min()) < -0.0495 and float(b.max()) > 0.0495 and bool((b != 0).all())
    # ... and c = -1 / (r - 1) for r < 0 else r + 1, r = rand0(0.05): c in [1 / 1.05, 1.05).
    c = p.contrast
    assert float(c.min()) >= 1 / 1.05 - 1e-12 and float(c.max()) < 1.05
    assert float(c.min()) < 1 / 1.05 + 1e-3 and float(c.max()) > 1.05 - 1e-3
    # The mapping itself, from the same two uniforms fastai's rand0 turns into b and r.
    g = torch.Generator().manual_seed(0)
    torch.rand(n, 8, generator=g, dtype=torch.float64)
    v = torch.rand(n, 2, generator=g, dtype=torch.float64)
    r = (v[:, 1] * 2 - 1) * 0.05
    assert torch.allclose(b, (v[:, 0] * 2 - 1) * 0.05, rtol=0, atol=1e-15)
    assert torch.allclose(c, torch.where(r < 0, -1 / (r - 1), r + 1), rtol=0, atol=1e-15)
    # Rotations and flips do not depend on the lighting mode: a seed turns both recipes alike.
    q = A.draw_params(n, torch.Generator().manual_seed(0), dataclasses.replace(A.FASTAI07, lighting="multiplicative"))
    assert torch.equal(q.angle, p.angle) and torch.equal(q.flip, p.flip)


# --- fastai07: the pixel arithmetic ---------------------------------------------------------------


@pytest.mark.parametrize("fused", PATHS)
def test_fastai07_lighting_is_fastais_formula(fused: bool):
    """lighting(im, b, c) = clip((im - mean(im)) * c + mean(im) + b, 0, 1), computed by hand."""
    _needs_kernel(fused)
    x = torch.tensor([[[[50, 100], [150, 200]]]], dtype=torch.uint8)
    # mean 125/255; b = 0.03, c = 1/1.04 (r = -0.04): (v/255 - 125/255) / 1.04 + 125/255 + 0.03
    out = A.apply(x, _params(1, affine=False, brightness=0.03, contrast=1 / 1.04, additive=True,
                             lighting_last=True), fused=fused)
    assert torch.allclose(out, torch.tensor([[[[0.237391, 0.425928], [0.614465, 0.803002]]]]), atol=2e-6)
    # Both clips: [[0, 255]] has mean 0.5; c = 1.05 with b = -0.05 gives -0.075 -> 0 and 0.975,
    # with b = +0.05 gives 0.025 and 1.075 -> 1.
    y = torch.tensor([[[[0, 255]]], [[[0, 255]]]], dtype=torch.uint8)
    p = _params(2, affine=False, contrast=1.05, additive=True, lighting_last=True)
    p.brightness = torch.tensor([-0.05, 0.05], dtype=torch.float64)
    assert torch.allclose(A.apply(y, p, fused=fused), torch.tensor([[[[0.0, 0.975]]], [[[0.025, 1.0]]]]), atol=2e-6)


@pytest.mark.parametrize("fused", PATHS)
def test_fastai07_fills_black_then_lights_the_rotated_picture(fused: bool):
    _needs_kernel(fused)
    grey = torch.full((1, 1, 64, 64), 200, dtype=torch.uint8)
    corners = [0, 0, -1, -1], [0, -1, 0, -1]
    # The border is black: rotate_cv's BORDER_CONSTANT with value 0.
    unlit = A.apply(grey, _params(1, angle=20.0, brightness=0.0, additive=True, lighting_last=True), fused=fused)
    assert torch.equal(unlit[0, 0][corners], torch.zeros(4))
    # Then fastai lights the rotated picture around its own mean, black corners included: the
    # corners become (0 - m) * c + m + b, the middle (200/255 - m) * c + m + b.
    m = float(unlit.double().mean())
    assert 0.6 < m < 0.75
    b, c = 0.01, 0.96
    lit = A.apply(grey, _params(1, angle=20.0, brightness=b, contrast=c, additive=True, lighting_last=True),
                  fused=fused)
    assert torch.allclose(lit, ((unlit - m) * c + m + b).clamp(0, 1), atol=1e-5)
    assert torch.allclose(lit[0, 0][corners], torch.full((4,), m * (1 - c) + b), atol=1e-5)
    assert float(lit[0, 0, 32, 32]) == pytest.approx((200 / 255 - m) * c + m + b, abs=1e-5)
    # Lighting first (the modern order) would have kept the corners black.
    first = A.apply(grey, _params(1, angle=20.0, brightness=b, contrast=c, additive=True), fused=fused)
    assert torch.equal(first[0, 0][corners], torch.zeros(4))


# --- fastai07: what every implementation does to a probe picture ------------------------------

# A 48 px picture: a mid-grey frame (128) around a square split into a dark left (77) and a bright
# right (179) half. Two probes, 6.5 px left and right of the centre, stay inside their halves under
# any rotation up to 20 degrees, so each view tells its own contrast c and offset k (y = c * x + k),
# whether it was flipped, whether it was rotated (the corner is not the lit frame), its brightness b
# (unrotated: k = (1 - c) * mean + b) and how much of it lies outside the rotated picture.
S, LO, MID, HI = 48, 77, 128, 179


def _probe_picture() -> np.ndarray:
    img = np.full((S, S), MID, dtype=np.uint8)
    img[S // 4: S - S // 4, S // 4: S // 2] = LO
    img[S // 4: S - S // 4, S // 2: S - S // 4] = HI
    return img


def _outside_at(degrees: float) -> float:
    """Share of the probe picture's pixels outside it after a turn of ``degrees`` (torch path)."""
    x = torch.from_numpy(_probe_picture())[None, None]
    return float((A.apply(x, _params(1, angle=degrees), fused=False) < 0.25).float().mean())


def _observe(views: np.ndarray, tol: float) -> dict[str, np.ndarray]:
    """Read each augmented view (N x S x S float in [0, 1]) of the probe picture back."""
    left, right = views[:, 23:25, 17].mean(1), views[:, 23:25, 30].mean(1)
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    c = (hi - lo) / ((HI - LO) / 255)
    k = lo - c * LO / 255
    rotated = np.abs(views[:, 0, 0] - (c * MID / 255 + k)) > tol
    mean = _probe_picture().mean() / 255
    return {"c": c, "k": k, "flipped": left > right, "rotated": rotated,
            "b": (k - (1 - c) * mean)[~rotated],
            "outside": (views < c[:, None, None] * 0.25 + k[:, None, None]).mean(axis=(1, 2)),
            "darkest": views.min(axis=(1, 2))}


def _check_fastai07_views(views: np.ndarray, tol: float) -> None:
    """Every constant of ``A.FASTAI07`` as the views show it; ``tol``: the implementation's rounding."""
    o = _observe(views, tol)
    n = len(views)
    slack = 3 * tol / ((HI - LO) / 255)  # contrast is a difference of two rounded probes over 0.4
    # RandomLighting(0.05, 0.05): c in [1/1.05, 1.05], b in [-0.05, 0.05], both reached.
    assert o["c"].min() >= 1 / 1.05 - slack and o["c"].max() <= 1.05 + slack
    assert o["c"].min() < 0.97 and o["c"].max() > 1.03
    assert o["b"].min() >= -0.05 - 2 * tol and o["b"].max() <= 0.05 + 2 * tol
    assert o["b"].min() < -0.03 and o["b"].max() > 0.03
    # RandomRotate(20, p=0.75): rotated share, and no view turned further than 20 degrees while
    # some come near it; the unrotated ones have no black border at all (no zoom, no padding).
    assert abs(o["rotated"].mean() - 0.75) < 0.1, o["rotated"].mean()
    assert o["outside"].max() <= _outside_at(21.0) and o["outside"].max() >= _outside_at(16.0)
    assert (o["outside"][~o["rotated"]] == 0).all()
    # RandomFlip(p=0.5).
    assert abs(o["flipped"].mean() - 0.5) < 0.12, o["flipped"].mean()
    # fastai's order: the black outside was lit with the picture, so its value is max(k, 0) and is
    # above black in a good share of the views (lighting first would leave it exactly 0).
    ext = o["rotated"] & (o["outside"] > 0.05)
    assert ext.sum() > n / 3
    assert np.abs(o["darkest"][ext] - np.maximum(o["k"][ext], 0)).max() <= 3 * tol
    assert (o["darkest"][ext] > 0.01).mean() > 0.25


@pytest.mark.parametrize("fused", PATHS)
def test_fastai07_observed_ranges_torch_and_fused(fused: bool):
    _needs_kernel(fused)
    x = torch.from_numpy(_probe_picture())[None, None].expand(1000, 1, S, S).contiguous()
    views = A.augment(x, A.epoch_generator(1, 0), A.FASTAI07) if fused else \
        A.apply(x, A.draw_params(1000, A.epoch_generator(1, 0), A.FASTAI07), fused=False)
    _check_fastai07_views(views[:, 0].numpy(), tol=1e-4)


def test_fastai07_observed_ranges_pil_baseline():
    from cxr_fast.loaders.pil import _transforms

    transform, picture = _transforms(A.FASTAI07), Image.fromarray(_probe_picture(), mode="L")
    views = []
    for i in range(400):
        torch.manual_seed(i)  # as PilDataset seeds each item
        views.append(np.asarray(transform(picture), dtype=np.float32) / 255)
    _check_fastai07_views(np.stack(views), tol=2.5 / 255)  # uint8 out, rounded after the lighting


def test_fastai07_observed_ranges_dali_cpu_graph(tmp_path: Path):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import pipeline_def

    from cxr_fast.loaders.dali import dali_graph

    jpeg = tmp_path / "probe.jpg"
    Image.fromarray(_probe_picture(), mode="L").save(jpeg, quality=95)

    @pipeline_def(batch_size=128, num_threads=1, device_id=None, seed=3, exec_dynamic=True)
    def pipe():
        return dali_graph([str(jpeg)] * 256, list(range(256)), S, True, True, False, A.FASTAI07)

    p = pipe()
    p.build()
    views = []
    for _ in range(2):
        images, _ = p.run()
        views += [np.asarray(images[i])[0] for i in range(len(images))]
    _check_fastai07_views(np.stack(views), tol=3 / 255)  # JPEG, and uint8 through the augmentation


def test_tta_views_use_the_config_they_are_given():
    x = torch.from_numpy(_probe_picture())[None, None].expand(200, 1, S, S).contiguous()
    views = A.tta_views(x, n=4, seed=2, cfg=A.FASTAI07)
    assert len(views) == 5 and torch.equal(views[0], A.to_float(x))
    for v in views[1:]:
        o = _observe(v[:, 0].numpy(), tol=1e-4)
        assert o["c"].min() >= 1 / 1.05 - 1e-4 and o["c"].max() <= 1.05 + 1e-4  # fastai's, not modern's 1 +- 0.2
        assert (o["outside"][~o["rotated"]] == 0).all()  # and no padding
    assert not all(torch.equal(a, b) for a, b in zip(views[1:], A.tta_views(x, n=4, seed=2)[1:]))


# --- every loader backend applies the config in its spec -------------------------------------------


@pytest.fixture(scope="module")
def gray_set(tmp_path_factory: pytest.TempPathFactory):
    """64 uniform mid-grey 32 px images in the NIH layout: any non-uniform output is geometry."""
    from cxr_fast.data.sets.nih import read_nih_folder
    from imagesets import HEADER

    root = tmp_path_factory.mktemp("gray") / "data"
    (root / "images").mkdir(parents=True)
    lines, ids = [HEADER], []
    for i in range(64):
        name = f"{i + 1:08d}_000.png"
        Image.fromarray(np.full((32, 32), MID, dtype=np.uint8), mode="L").save(root / "images" / name)
        ids.append(name)
        lines.append(f"{name},{'Effusion' if i % 2 else 'No Finding'},0,{i + 1},50,M,PA,32,32,0.143,0.143")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return read_nih_folder(root), np.array(ids), (np.arange(64) % 2).astype(np.float32)


@pytest.mark.parametrize("name", ["pil", "cache", "resident", "ffcv", "dali"])
def test_every_backend_applies_the_config_in_its_spec(name: str, gray_set):
    from cxr_fast.loaders import backend
    from cxr_fast.loaders.base import LoaderSpec

    if name in ("ffcv", "dali"):
        pytest.importorskip({"ffcv": "ffcv", "dali": "nvidia.dali"}[name])
    ok, reason = backend(name).available()
    assert ok, reason
    ds, ids, labels = gray_set
    spec = LoaderSpec(dataset=ds, image_ids=ids, targets=labels, res=32, batch_size=8, train=True,
                      device=torch.device("cpu"), seed=1, num_workers=0, augmentation=A.FASTAI07)
    x = torch.cat([images for images, _ in make_loader(name, spec)])[:, 0].double()
    v, tol = MID / 255, 1.5 / 255
    assert x.shape == (64, 32, 32)
    flat = (x.amax(dim=(1, 2)) - x.amin(dim=(1, 2))) <= tol  # unrotated: still uniform
    assert 6 <= int(flat.sum()) <= 30  # a quarter of 64
    # fastai07's additive brightness: the uniform picture moves by b in [-0.05, 0.05], reaching past
    # the +-0.025 that a 5% brightness factor could give this mid-grey.
    shift = x[flat].mean(dim=(1, 2)) - v
    assert float(shift.abs().max()) <= 0.05 + tol and float(shift.abs().max()) > 0.03
    # Lighting after the rotation: where a view turned far enough to leave whole pixels outside the
    # picture, its darkest pixel is the lit black, max((1 - c) * m + b, 0), above black in some views.
    centre, darkest = x[:, 14:18, 14:18].mean(dim=(1, 2)), x.amin(dim=(1, 2))
    turned = (x < centre[:, None, None] / 2).double().mean(dim=(1, 2)) > 0.05
    assert int(turned.sum()) >= 20
    assert int((turned & (darkest > 2 / 255)).sum()) >= 3
