"""The built-in phantom: NIH layout, real label rows, deterministic, findings at their real sizes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from cxr_fast.cli import main
from cxr_fast.data.nih import open_dataset, read_metadata
from cxr_fast.data.phantom import PhantomSpec, lesion_sizes, make_phantom, render
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
    ds = open_dataset(tiny_phantom)
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
    """Median number of pixels that drawing ``label`` changes, against the same image without it."""
    spec = PhantomSpec(size, 0, lesion_sizes())
    areas = []
    for i in range(trials):
        plain = render(spec, i, ()).astype(int)
        with_lesion = render(spec, i, (label,)).astype(int)
        areas.append(int((np.abs(with_lesion - plain) > 8).sum()))
    return float(np.median(areas))


def test_nodules_are_drawn_smaller_than_masses_and_both_are_visible():
    nodule, mass = _lesion_area("Nodule"), _lesion_area("Mass")
    # A median nodule box is 69 px at 1024 px (area ~4,800 px); a mass box 124 px (~15,000 px).
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
    meta = open_dataset(root).metadata
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
    root = data_root(spec, quiet=True)
    assert root.parent == tmp_path / "cache" and (root / ".complete").exists()
    assert resolve_dataset(spec, quiet=True).metadata.has("Mass").sum() >= 4
    assert data_root(spec, quiet=True) == root  # reused, not remade
    with pytest.raises(CxrError, match="unknown phantom setting 'colour'"):
        parse_phantom_spec("phantom:colour=red")
