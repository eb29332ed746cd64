"""The built-in phantom: NIH layout, real label rows, deterministic, findings at their real sizes, and a control:
documented conspicuity settings that mean the same at every resolution, anatomy that no nodule can be
mistaken for at full resolution, and a null label that draws nothing and never reaches real data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cxr_fast.cli import main
from cxr_fast.data.conspicuity import Conspicuity
from cxr_fast.data.labels import NULL_LABEL
from cxr_fast.data.sets.nih import read_nih_folder, read_metadata
from cxr_fast.data.phantom import PhantomSpec, lesion_sizes, make_phantom, render
from cxr_fast.data.phantom_draw import SOFT_TISSUE
from cxr_fast.errors import CxrError
from cxr_fast.paths import BUNDLED_METADATA


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((root / "images").iterdir()) + [root / "Data_Entry_2017_v2020.csv"]:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_seeded_runs_are_identical_whatever_the_worker_count(tmp_path):
    a = make_phantom(tmp_path / "a", n=12, size=96, seed=5, workers=1, quiet=True)
    b = make_phantom(tmp_path / "b", n=12, size=96, seed=5, workers=2, quiet=True)
    c = make_phantom(tmp_path / "c", n=12, size=96, seed=6, workers=2, quiet=True)
    assert _digest(a) == _digest(b) != _digest(c)


def test_rows_come_from_the_real_metadata(tiny_phantom):
    real = read_metadata(BUNDLED_METADATA)
    ds = read_nih_folder(tiny_phantom)
    where = {name: i for i, name in enumerate(real.image_ids.tolist())}
    for i, name in enumerate(ds.metadata.image_ids.tolist()):
        j = where[name]
        assert ds.metadata.label_strings[i] == real.label_strings[j]
        assert ds.metadata.patient_ids[i] == real.patient_ids[j]
    assert set(ds.image_paths) == set(ds.metadata.image_ids.tolist())


def test_interrupted_run_resumes_and_different_settings_are_refused(tmp_path):
    root = make_phantom(tmp_path / "p", n=6, size=64, seed=1, quiet=True)
    before = _digest(root)
    victim = sorted((root / "images").iterdir())[2]
    victim.unlink()
    (root / ".complete").unlink()
    make_phantom(root, n=6, size=64, seed=1, quiet=True)
    assert _digest(root) == before
    with pytest.raises(CxrError, match="holds a phantom made with"):
        make_phantom(root, n=6, size=64, seed=2, quiet=True)


def _lesion_area(label: str, size: int = 1024, trials: int = 6) -> float:
    """Median pixel count of the largest lesion that drawing ``label`` adds, against the same image without it
    (one lesion: an image may hold two nodules)."""
    from scipy import ndimage

    spec = PhantomSpec(size, 0, lesion_sizes())
    areas = []
    for i in range(trials):
        plain = render(spec, i, ()).astype(int)
        with_lesion = render(spec, i, (label,)).astype(int)
        parts, n = ndimage.label(np.abs(with_lesion - plain) > 8)
        areas.append(int(np.bincount(parts.ravel())[1:].max()) if n else 0)
    return float(np.median(areas))


def test_nodules_are_drawn_smaller_than_masses_and_both_are_visible():
    nodule, mass = _lesion_area("Nodule"), _lesion_area("Mass")
    # A median nodule box is 69 px at 1024 px (area ~3,700 px as a disc); a mass box 124 px (~12,000 px).
    assert 300 < nodule < 12_000
    assert mass > 1.5 * nodule


def test_cardiomegaly_widens_the_heart():
    spec = PhantomSpec(256, 0, lesion_sizes())
    plain = np.stack([render(spec, i, ()) for i in range(4)]).astype(float)
    big = np.stack([render(spec, i, ("Cardiomegaly",)) for i in range(4)]).astype(float)
    diff = big - plain
    heart_rows, apex_rows = slice(int(256 * 0.58), int(256 * 0.68)), slice(0, int(256 * 0.25))
    # The widened heart adds density beside the normal heart border, and nothing near the apices.
    assert (diff[:, heart_rows] > 15).mean() > 0.05
    assert np.abs(diff[:, apex_rows]).mean() < 0.5


def test_full_size_pngs_are_near_real_file_sizes(tmp_path):
    root = make_phantom(tmp_path / "p", n=2, size=1024, seed=0, quiet=True)
    sizes = [p.stat().st_size for p in (root / "images").iterdir()]
    assert all(200_000 < s < 900_000 for s in sizes)


def test_synth_command_rejects_bad_values_in_one_line(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--n", "0"]) == 2
    assert "--n must be positive" in capsys.readouterr().err


def test_enrichment_over_represents_labels_with_real_rows(tmp_path):
    root = make_phantom(tmp_path / "e", n=40, size=32, seed=0, enrich=("Nodule", "Mass"), enrich_fraction=0.5, quiet=True)
    meta = read_nih_folder(root).metadata
    # Real frequencies would give about 2 nodules and 2 masses in 40 images; half are drawn from them.
    assert meta.has("Nodule").sum() >= 10 and meta.has("Mass").sum() >= 10
    real = read_metadata(BUNDLED_METADATA)
    assert set(meta.image_ids.tolist()) <= set(real.image_ids.tolist())
    with pytest.raises(CxrError, match="unknown label"):
        make_phantom(tmp_path / "f", n=4, size=32, enrich=("Tumour",), quiet=True)


def test_data_can_name_a_built_in_phantom_made_once_into_the_cache(monkeypatch, tmp_path):
    from cxr_fast.data.source import data_root, parse_phantom_spec, resolve_dataset

    monkeypatch.setenv("CXR_FAST_CACHE", str(tmp_path / "cache"))
    spec = "phantom:n=8,size=32,seed=3,enrich=Mass,fraction=0.5"
    assert parse_phantom_spec(spec) == {"n": 8, "size": 32, "seed": 3, "enrich": ("Mass",), "enrich_fraction": 0.5}
    assert parse_phantom_spec("phantom:contrast=20,edge=0.3,noise=0,null=0.4,only=Nodule+Mass") == {
        "look": Conspicuity(contrast=20, edge=0.3, noise=0, null=0.4), "only": ("Nodule", "Mass")}
    root = data_root(spec, quiet=True)
    assert root.parent == tmp_path / "cache" and (root / ".complete").exists()
    assert resolve_dataset(spec, quiet=True).metadata.has("Mass").sum() >= 4
    assert data_root(spec, quiet=True) == root  # reused, not remade
    with pytest.raises(CxrError, match="unknown phantom setting 'colour'"):
        parse_phantom_spec("phantom:colour=red")
    with pytest.raises(CxrError, match="phantom null must be in \\[0, 1\\), got 1.5"):
        parse_phantom_spec("phantom:null=1.5")
    with pytest.raises(CxrError, match="bad value 'sharp' for edge"):
        parse_phantom_spec("phantom:edge=sharp")


# ---------------------------------------------------------------------------------------------------
# The control: settings, null label, anatomy


def test_control_settings_are_in_the_cache_key_and_written_into_the_folder(monkeypatch, tmp_path):
    from cxr_fast.data.source import data_root, phantom_dir

    monkeypatch.setenv("CXR_FAST_CACHE", str(tmp_path / "cache"))
    plain, bright = phantom_dir(8, 32), phantom_dir(8, 32, look=Conspicuity(contrast=120))
    assert plain != bright and "c120" in bright.name and phantom_dir(8, 32, look=Conspicuity(null=0.5)) != plain
    root = data_root("phantom:n=8,size=32,contrast=25,edge=0.2,noise=4,null=0.5", quiet=True)
    marker = json.loads((root / ".phantom.json").read_text())
    assert marker["look"] == {"contrast": 25.0, "edge": 0.2, "noise": 4.0, "null": 0.5}
    with pytest.raises(CxrError, match="holds a phantom made with"):
        make_phantom(root, n=8, size=32, look=Conspicuity(contrast=26), quiet=True)


def test_synth_takes_the_control_settings(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--n", "6", "--size", "32", "--contrast", "30", "--null", "0.5",
                 "--workers", "1", "--quiet"]) == 0
    assert "c30-e0.05" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / ".phantom.json").read_text())["look"]["contrast"] == 30.0
    assert main(["synth", str(tmp_path / "t"), "--n", "6", "--edge", "0"]) == 2
    assert "--edge must be in (0, 1], got 0" in capsys.readouterr().err


def test_null_label_is_given_at_random_and_draws_no_pixel(tmp_path):
    without = make_phantom(tmp_path / "a", n=40, size=48, seed=2, quiet=True, workers=1)
    null = make_phantom(tmp_path / "b", n=40, size=48, seed=2, quiet=True, workers=1, look=Conspicuity(null=0.5))
    meta_a, meta_b = read_nih_folder(without).metadata, read_nih_folder(null).metadata
    flags = meta_b.has(NULL_LABEL)
    assert 10 <= flags.sum() <= 30  # a fair coin per image
    assert meta_b.image_ids.tolist() == meta_a.image_ids.tolist()  # the same real rows
    for name in meta_a.image_ids.tolist():  # and the same pixels: the null label is drawn nowhere
        assert (without / "images" / name).read_bytes() == (null / "images" / name).read_bytes()
    assert not meta_a.has(NULL_LABEL).any()
    real = set(meta_b.image_ids[flags].tolist())
    nodules = set(meta_b.image_ids[meta_b.has("Nodule")].tolist())
    assert real - nodules and (real & nodules or not nodules)  # independent of the findings, not tied to one


def test_real_data_never_carries_the_null_label(tmp_path):
    folder = tmp_path / "nih"
    folder.mkdir()
    (folder / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
        "a.png,Nodule|Null_Control,0,1,50,M,PA\n")
    with pytest.raises(CxrError, match="unknown label 'Null_Control' for image a.png \\(a phantom control label"):
        read_nih_folder(folder)
    real = read_metadata(BUNDLED_METADATA)
    with pytest.raises(CxrError, match="Null_Control is the phantom's control label"):
        real.has(NULL_LABEL)
    with pytest.raises(CxrError, match="enrich and only name real findings"):
        make_phantom(tmp_path / "p", n=4, size=32, enrich=(NULL_LABEL,), quiet=True)


def test_only_keeps_rows_whose_findings_are_all_listed(tmp_path):
    root = make_phantom(tmp_path / "o", n=60, size=32, seed=1, enrich=("Nodule", "Mass"), enrich_fraction=0.6,
                        only=("Nodule", "Mass"), quiet=True, workers=1)
    meta = read_nih_folder(root).metadata
    assert meta.has("Nodule").sum() >= 10 and meta.has("Mass").sum() >= 10
    for label in ("Effusion", "Infiltration", "Atelectasis", "Cardiomegaly"):
        assert not meta.has(label).any()
    with pytest.raises(CxrError, match="enrich Effusion is not among only=Nodule"):
        make_phantom(tmp_path / "x", n=4, size=32, enrich=("Effusion",), only=("Nodule",), quiet=True)


def _quiet(size: int, **look: float) -> PhantomSpec:
    return PhantomSpec(size, 0, lesion_sizes(), Conspicuity(noise=0.0, **look))


def test_a_lesion_adds_its_contrast_over_the_local_background():
    # Mass lobes are a union: the lesion adds `contrast` (times this image's exposure), never more.
    low = [render(_quiet(256, contrast=20), i, ("Mass",)).astype(float) - render(_quiet(256, contrast=20), i, ())
           for i in range(4)]
    high = [render(_quiet(256, contrast=60), i, ("Mass",)).astype(float) - render(_quiet(256, contrast=60), i, ())
            for i in range(4)]
    for a, b in zip(low, high):
        assert 20 * 0.8 <= a.max() <= 20 * 1.2 and b.max() == pytest.approx(3 * a.max(), rel=0.1)


def test_edge_sets_how_sharp_a_lesion_is():
    def rim(edge: float) -> float:  # pixels part-way between background and full contrast
        d = [render(_quiet(256, edge=edge), i, ("Mass",)).astype(float) - render(_quiet(256, edge=edge), i, ())
             for i in range(3)]
        return float(np.mean([((x > 0.15 * x.max()) & (x < 0.85 * x.max())).sum() / (x > 0.15 * x.max()).sum()
                              for x in d]))
    assert rim(0.5) > 3 * rim(0.05)


def test_settings_mean_the_same_at_every_size():
    """Defined in the 1024 px frame: a 512 px phantom resized to 128 is the 128 px phantom (noise too)."""
    from cxr_fast.data.resize import resize_uint8

    for i in range(3):
        big = resize_uint8(render(_quiet(512), i, ("Nodule",)), 128).astype(float)
        small = resize_uint8(render(_quiet(128), i, ("Nodule",)), 128).astype(float)
        assert np.abs(big - small).mean() < 2.0
    noisy = [render(PhantomSpec(s, 0, lesion_sizes(), Conspicuity(noise=16)), 0, ()).astype(float)
             - render(_quiet(s), 0, ()) for s in (1024, 256)]
    assert noisy[0].std() == pytest.approx(16 * 1.0, rel=0.15) and noisy[1].std() == pytest.approx(16 / 4, rel=0.15)


def test_ribs_stay_inside_the_body_and_the_heart_is_dense():
    spec = _quiet(256)
    for i in range(4):
        img = render(spec, i, ()).astype(float)
        beside = img[60:110, :3], img[60:110, -3:]  # air beside the upper chest, where rib arcs once ran on
        assert beside[0].std() < 0.6 and beside[1].std() < 0.6
        heart = img[int(256 * 0.63), int(256 * 0.54)]
        lung = np.median(img[int(256 * 0.35), int(256 * 0.25):int(256 * 0.3)])
        assert heart - lung > 0.8 * (SOFT_TISSUE - 60)  # soft tissue against aerated lung


def test_a_nodule_differs_from_normal_anatomy_by_size():
    """The documented property: normal anatomy has no nodule-sized round opacity in the lungs. A blob detector
    tuned to the smallest nodule box finds every nodule above anything in a normal lung at full resolution."""
    from scipy import ndimage

    from cxr_fast.data.phantom_draw import draw_chest

    size, spec = 256, PhantomSpec(256, 0, lesion_sizes())
    sigma = 46 / 2 / np.sqrt(2) * size / 1024

    def blob(i: int, labels: tuple[str, ...]) -> float:
        chest, a = draw_chest(np.random.default_rng([0, i, 0]), size, False, False)  # render's anatomy stream
        yy, xx = np.mgrid[0:size, 0:size]
        inside = np.zeros((size, size), dtype=bool)
        for cx in (a.left_cx, a.right_cx):
            inside |= ((yy - a.lung_cy) / (0.8 * a.lung_ry)) ** 2 + ((xx - cx) / (0.8 * a.lung_rx)) ** 2 < 1
        lungs = inside & (chest < (SOFT_TISSUE + 50) / 2)  # aerated lung, not the heart or diaphragm over it
        response = -ndimage.gaussian_laplace(render(spec, i, labels).astype(float), sigma) * sigma ** 2
        return float(response[ndimage.binary_erosion(lungs, iterations=int(2 * sigma))].max())

    normal = [blob(i, ()) for i in range(12)]
    nodule = [blob(i, ("Nodule",)) for i in range(12)]
    assert min(nodule) > max(normal)
