"""The threat model of issue 13 ("Hardening"), in one place: what a careless or hostile input must never do.

Seven classes of failure, each of which produced a wrong number without saying so, or lost or
misreported data:

1. AUC from underflowed probabilities: ranking metrics on a sigmoid that rounds every score to 0
   reported "AUC 0.500" as a result; ties must be said, never scored.
2. The reader follows image names out of the data folder: an ``Image Index`` with a separator, ``..``,
   an absolute path or a link leading out is read; ``verify`` counts it usable, ``prepare`` stores it.
3. Duplicate metadata rows: a repeated ``Image Index`` passes ``verify``, is counted twice by ``table1``
   and can land on both sides of the train/validation split.
4. A refused command still writes: a study refused for changed settings has already rewritten files.
5. Config values checked late, or not at all: wrong types and ranges found after work was done.
6. Damaged stores and run files: a truncated ``.npy`` or garbage JPEG gives a traceback; a ``.npy``
   overwritten in place at the same size trains silently on garbage; a failed ``prepare`` leaves a
   half-made store.
7. Silent overwrite of a finished run.

Plus the smaller items of the same probe (absurd image shapes, ``--store`` without ``--data``, a bench
that hid a failed section, a divergence message that guessed, a single positive's DeLong SD, a torn
``results.jsonl`` line skipped without a word). Every test drives the CLI or the public API on tiny data in ``tmp_path`` and fails
on the code as it was before the fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import cxr_fast.stores.decode as D
import cxr_fast.stores.prepare as P
from cxr_fast.cli import main
from cxr_fast.data.sets.nih import read_nih_folder, read_metadata
from cxr_fast.data.reader import DataWarning, OutsideRootError
from cxr_fast.errors import CxrError
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.models import Normalize
from cxr_fast.schema.run import RunConfig
from cxr_fast.train import run_training
from cxr_fast.feed import make_loader
from imagesets import HEADER, make_dataset

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def _nih(tmp_path: Path, n: int = 10) -> tuple[Path, list[str]]:
    """A tiny NIH-layout folder: ``n`` 96 px PNGs, odd ones Effusion."""
    root, ids, _ = make_dataset(tmp_path / "data", n=n, size=96)
    return root, ids


def _csv(root: Path) -> Path:
    return root / "Data_Entry_2017_v2020.csv"


def _add_rows(root: Path, *rows: str) -> None:
    with open(_csv(root), "a", encoding="utf-8") as fh:
        fh.write("".join(f"{r}\n" for r in rows))


def _row(name: str, finding: str = "Effusion", patient: int = 900) -> str:
    return f"{name},{finding},0,{patient},50,M,PA,96,96,0.143,0.143"


def _prepare(root: Path | None, out: Path, *extra: str) -> int:
    args = ["prepare"] + ([str(root)] if root is not None else [])
    return main(args + ["--label", "effusion", "--out", str(out), "--size", "40", "--workers", "1", "--quiet", *extra])


def _cache_spec(root: Path, store: Path, res: int = 32) -> LoaderSpec:
    """A loader spec over every image of ``store`` (read from its manifest: opening it is what is tested)."""
    manifest = json.loads((store / P.MANIFEST).read_text())
    return LoaderSpec(dataset=read_nih_folder(root), image_ids=np.array(manifest["image_ids"]),
                      targets=np.array(manifest["targets"], dtype=np.float32), res=res, batch_size=4, train=False,
                      device=CPU, store=store, num_workers=0)


class _Shifted(nn.Module):
    """A tiny real model whose two-way output puts the positive class ~300 nats down: float32 sigmoids of
    its log-odds are exactly 0 for every image, though the log-odds still rank the images."""

    def __init__(self, shift: float = -300.0, constant: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(Normalize(), nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 1))
        self.shift, self.constant = shift, constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)[:, 0] * (0.0 if self.constant else 1.0) + self.shift
        return torch.stack([torch.zeros_like(z), z], dim=1).log_softmax(dim=1)


def _run_cfg(data: Path, out: Path, **kw) -> RunConfig:
    base = dict(label="No Finding", res=32, epochs=1, batch_size=8, lr=1e-9, loader="resident", data=str(data),
                out=str(out), init="random", tta=2, workers=1, device="cpu")
    base.update(kw)
    return RunConfig(**base)


# ==================================================================================================
# Class 1: no AUC from underflowed probabilities; ties said, never scored
# ==================================================================================================

def test_auc_is_computed_from_log_odds_where_every_probability_underflows(tiny_phantom, tmp_path, monkeypatch):
    monkeypatch.setattr("cxr_fast.models.build_model", lambda *a, **k: _Shifted())
    m = run_training(_run_cfg(tiny_phantom, tmp_path / "run"), progress=False)
    saved = np.load(tmp_path / "run" / "predictions.npz")
    assert np.all(torch.sigmoid(torch.from_numpy(saved["scores"])).numpy() == 0)  # the old path's zeros
    from sklearn.metrics import roc_auc_score

    assert m["auc"] == pytest.approx(roc_auc_score(saved["labels"], saved["scores"]))
    assert m["auc"] != 0.5 and m["auc_sd"] > 0 and m["auc_status"] is None
    assert m["score_space"] == "log-odds" and "log space" in m["tta_average"]


def test_tta_mean_keeps_the_order_of_mean_probabilities_that_round_to_zero():
    from cxr_fast.metrics import tta_mean_logit

    views = np.array([[-300.0, -250.0, -320.0], [-301.0, -249.0, -310.0]])
    naive = torch.sigmoid(torch.tensor(views, dtype=torch.float32)).mean(0)
    assert torch.all(naive == 0)  # averaging float32 probabilities destroys the ranking
    kept = tta_mean_logit(views)
    assert list(np.argsort(kept)) == [2, 0, 1]
    # Where nothing underflows it is exactly the log-odds of the mean probability, as fastai 0.7 averages.
    v = np.array([[0.3, -1.0], [2.0, 0.5]])
    p = (1 / (1 + np.exp(-v))).mean(0)
    np.testing.assert_allclose(tta_mean_logit(v), np.log(p / (1 - p)))


def test_a_fully_tied_score_vector_is_reported_as_tied_never_as_auc_0_5(tiny_phantom, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("cxr_fast.models.build_model", lambda *a, **k: _Shifted(shift=0.0, constant=True))
    out = tmp_path / "tied"
    code = main(["train", "--label", "No Finding", "--res", "32", "--epochs", "1", "--data", str(tiny_phantom),
                 "--out", str(out), "--loader", "resident", "--tta", "0", "--init", "random", "--device", "cpu",
                 "--lr", "1e-9", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "AUC tied" in captured.out and "ranks nothing" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auc"] is None and metrics["auc_status"] == "tied"


def test_a_single_positive_is_warned_and_marked():
    from cxr_fast.metrics import score_auc

    with pytest.warns(UserWarning, match="single positive"):
        r = score_auc(np.array([1, 0, 0, 0]), np.array([2.0, 1.0, 0.5, -1.0]))
    assert r.auc == 1.0 and r.note.startswith("one positive")


# ==================================================================================================
# Class 2: image names that lead out of the data folder
# ==================================================================================================


@pytest.fixture()
def escaping(tmp_path: Path) -> tuple[Path, list[str]]:
    """A dataset whose metadata names four files outside it, each a real decodable PNG out there:
    by ``..``, by absolute path, through a subfolder name, and through a link in ``images/``."""
    root, _ = _nih(tmp_path)
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((96, 96), 250, np.uint8)).save(secret)
    (root / "images" / "sub").mkdir()
    os.symlink(secret, root / "images" / "sub" / "x.png")
    os.symlink(secret, root / "images" / "linked.png")
    names = ["../../secret.png", str(secret), "sub/x.png", "linked.png"]
    _add_rows(root, *(_row(name, patient=900 + i) for i, name in enumerate(names)))
    return root, names


def test_verify_lists_every_name_leading_outside_as_bad(escaping, tmp_path: Path, capsys):
    root, names = escaping
    out = tmp_path / "report.json"
    assert main(["verify", str(root), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    report = json.loads(out.read_text())
    assert sorted(o["image"] for o in report["outside"]) == sorted(names)
    assert report["n_ok"] == 10 and report["n_images"] == 14 and not report["usable"]
    printed = capsys.readouterr().out
    assert all(f"outside the data folder: {name}" in printed for name in names)


def test_prepare_skips_outside_names_with_one_counted_warning(escaping, tmp_path: Path, capsys):
    root, names = escaping
    assert _prepare(root, tmp_path / "store", "--res", "32", "--format", "jpeg,cache") == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and re.search(r"4 image name\(s\) lead outside .* skipped \(e\.g\. '\.\./\.\./secret\.png'",
                                          warned[0])  # one counted line, not one per image
    store = P.open_store(tmp_path / "store")
    assert not set(names) & set(store.image_ids.tolist()), "no outside file entered the store"
    assert store.image_ids.size == 10
    assert float(store.cache_array(32).max()) < 250, "the outside file's pixels (all 250) are not in it"


def test_every_lookup_refuses_a_name_leading_outside(escaping):
    root, names = escaping
    with pytest.warns(DataWarning):
        dataset = read_nih_folder(root)
    assert set(dataset.outside) == set(names)
    assert not set(names) & set(dataset.metadata.image_ids.tolist())
    for name in names:
        with pytest.raises(OutsideRootError):
            dataset.path_of(name)


def test_nested_tarball_folders_follow_the_same_rule(tmp_path: Path):
    root, ids = _nih(tmp_path, n=4)
    nested = root / "images_001" / "images"
    nested.mkdir(parents=True)
    for name in ids:
        shutil.move(root / "images" / name, nested / name)
    (root / "images").rmdir()
    outside = tmp_path / "elsewhere.png"
    shutil.copy(nested / ids[0], outside)
    (nested / ids[0]).unlink()
    os.symlink(outside, nested / ids[0])
    out = tmp_path / "report.json"
    assert main(["verify", str(root), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    report = json.loads(out.read_text())
    assert [o["image"] for o in report["outside"]] == [ids[0]] and report["n_ok"] == 3


def test_a_store_manifest_naming_anything_outside_the_store_is_refused(tmp_path: Path, capsys):
    root, _ = _nih(tmp_path)
    store = tmp_path / "store"
    assert _prepare(root, store, "--res", "32", "--format", "cache") == 0
    manifest = json.loads((store / P.MANIFEST).read_text())
    for key, value, message in (("image_ids", ["../../data/images/x.png"] + manifest["image_ids"][1:],
                                 "not a bare file name"),
                                ("formats", {"cache": ["../../../secret"]}, "resolution")):
        hostile = dict(manifest, **{key: value})
        (store / P.MANIFEST).write_text(json.dumps(hostile))
        assert main(["verify", "--store", str(store)]) == 1
        err = capsys.readouterr().err
        assert message in err and "refused" in err and err.count("\n") == 1
    (store / P.MANIFEST).write_text(json.dumps(manifest))
    # A store file replaced by a link to a copy outside: same bytes, still refused.
    outside = tmp_path / "copy.npy"
    shutil.copy(store / "cache" / "32.npy", outside)
    (store / "cache" / "32.npy").unlink()
    os.symlink(outside, store / "cache" / "32.npy")
    assert main(["verify", "--store", str(store)]) == 1
    assert "32.npy: damaged (a link leading outside" in capsys.readouterr().out


# ==================================================================================================
# Class 3: repeated metadata rows
# ==================================================================================================


def test_verify_fails_on_repeated_rows_and_lists_them(tmp_path: Path, capsys):
    root, ids = _nih(tmp_path, n=6)
    lines = _csv(root).read_text().splitlines()
    _add_rows(root, lines[1], lines[4])
    out = tmp_path / "report.json"
    assert main(["verify", str(root), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    report = json.loads(out.read_text())
    assert report["duplicates"] == [ids[0], ids[3]] and report["n_images"] == report["n_ok"] == 6
    assert f"repeated: {ids[0]}" in capsys.readouterr().out


def _paper_labels_csv(path: Path) -> Path:
    """Two images per paper label plus ten without a finding: small enough for table1 in milliseconds."""
    from cxr_fast.data.labels import PAPER_LABELS

    rows = [_row(f"{i:08d}_000.png", label, patient=i) for i, label in enumerate(PAPER_LABELS * 2)]
    rows += [_row(f"{100 + i:08d}_000.png", "No Finding", patient=100 + i) for i in range(10)]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_table1_counts_a_repeated_row_once_and_says_how_many_were_dropped(tmp_path: Path, capsys):
    csv = _paper_labels_csv(tmp_path / "Data_Entry_2017.csv")
    effusion = [line for line in csv.read_text().splitlines() if ",Effusion," in line]
    with open(csv, "a") as fh:
        fh.write("\n".join(effusion * 2) + "\n")
    out = tmp_path / "t1.json"
    assert main(["table1", "--metadata", str(csv), "--json", str(out)]) == 0
    assert re.search(r"warning: .*4 repeated Image Index row\(s\) dropped", capsys.readouterr().err)
    result = json.loads(out.read_text())
    assert {r["label"]: r["positives"] for r in result["rows"]}["Effusion"] == 2
    assert result["n_images"] == 26 and result["duplicates_dropped"] == 4


def test_a_repeated_image_never_lands_on_both_sides_of_the_split(tmp_path: Path):
    from cxr_fast.data.sampling import subsample

    root, _ = _nih(tmp_path, n=20)
    _add_rows(root, *_csv(root).read_text().splitlines()[1:])  # every row twice
    with pytest.warns(DataWarning, match="20 repeated"):
        meta = read_metadata(_csv(root))
    sub = subsample(meta, "Effusion", size=40, seed=0)
    train, val = set(sub.part("train")[0].tolist()), set(sub.part("val")[0].tolist())
    assert len(sub.image_ids) == len(set(sub.image_ids.tolist())) == 20 and not train & val


def test_repeats_that_disagree_are_refused_naming_both_lines(tmp_path: Path, capsys):
    root, ids = _nih(tmp_path, n=4)
    _add_rows(root, _row(ids[0], "Nodule", patient=1))
    assert main(["table1", "--metadata", str(_csv(root))]) == 2
    err = capsys.readouterr().err
    assert f"{ids[0]} is listed again with other findings or patient than on line 2" in err and err.count("\n") == 1


# ==================================================================================================
# Class 4: a refused command writes nothing
# ==================================================================================================

def _fake_study(tmp_path: Path, **train) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "name": "hostile", "train": {"init": "random", "data": "/nonexistent", "lr": 5e-4, **train},
        "grids": [{"name": "g", "labels": ["Nodule"], "resolutions": [32], "epochs": 1}]}))
    return config


def _finish_fake(cfg_path: Path, out: Path) -> None:
    from cxr_fast.study import load_study_config, run_cells

    def fake(cfg):
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        return {"auc": 0.6, "auc_sd": 0.01, "n_pos": 5, "n_neg": 5, "init": "random"}

    run_cells(load_study_config(cfg_path), out, run_fn=fake, progress=False)


def test_a_refused_study_rerun_leaves_study_yaml_and_dry_run_refuses_alike(tmp_path, capsys):
    out = tmp_path / "out"
    _finish_fake(_fake_study(tmp_path), out)
    before = (out / "study.yaml").read_bytes()
    changed = _fake_study(tmp_path, lr=0.1)
    assert main(["study", str(changed), "--out", str(out), "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert (out / "study.yaml").read_bytes() == before  # the report still describes what ran
    assert main(["study", str(changed), "--out", str(out), "--dry-run"]) == 2  # not "done"
    assert "other settings" in capsys.readouterr().err
    assert main(["study", str(_fake_study(tmp_path)), "--out", str(out), "--dry-run"]) == 0
    assert "1 done" in capsys.readouterr().out


def test_a_rerun_with_more_epochs_is_not_reported_as_more_runs_than_the_config_has(tmp_path):
    from cxr_fast.report.build import make_report
    from cxr_fast.study import apply_overrides, load_study_config, run_cells

    def fake(cfg):
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        y = np.array([0, 1] * 10, dtype=np.float32)
        np.savez(out / "predictions.npz", image_ids=np.array([f"{i}.png" for i in range(20)]), labels=y,
                 scores=y + np.random.default_rng(cfg.epochs).normal(0, 1, 20).astype(np.float32))
        return {"auc": 0.6, "auc_sd": 0.01, "n_pos": 10, "n_neg": 10, "init": "random", "recipe": "fastai07"}

    config = _fake_study(tmp_path)
    out = tmp_path / "out"
    run_cells(load_study_config(config), out, run_fn=fake, progress=False)
    run_cells(apply_overrides(load_study_config(config), epochs=2), out, run_fn=fake, progress=False)
    text = (make_report(out).out / "report.md").read_text()
    assert "1 of 1 runs finished" in text and "1 more finished run(s) belong to cells no longer in study.yaml" in text


# ==================================================================================================
# Class 5: every value of every cell checked before any work, by one set of rules
# ==================================================================================================

@pytest.mark.parametrize("train, grid_train, expected", [
    ({"batch_size": "eight"}, {}, "batch_size must be int, got 'eight'"),
    ({"seed": -1}, {}, "seed must be in [0, 4294967295], got -1"),
    ({}, {"lr": -1}, "lr must be positive"),
    ({"recipe": "fastai2"}, {}, "unknown recipe"),
])
def test_bad_study_values_are_one_line_errors_before_anything_runs(tmp_path, capsys, train, grid_train, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({
        "name": "bad", "train": {"init": "random", "data": "/nonexistent", **train},
        "grids": [{"name": "first", "labels": ["Nodule"], "resolutions": [32], "epochs": 1},
                  {"name": "second", "labels": ["Mass"], "resolutions": [32], "epochs": 1, "train": grid_train}]}))
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        assert main(["study", str(config), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1
    assert not out.exists()  # nothing was written, not even the folder


def test_fractional_epochs_are_refused_not_truncated(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"name": "bad", "train": {"init": "random"},
                                      "grids": [{"name": "g", "labels": ["Nodule"], "resolutions": [32],
                                                 "epochs": 2.5}]}))
    assert main(["study", str(config), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "epochs must be a whole number" in capsys.readouterr().err


def test_resolution_limits_are_one_set_across_commands(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"name": "s", "train": {"init": "random"},
                                      "grids": [{"name": "g", "labels": ["Nodule"], "resolutions": [8]}]}))
    runs = {
        "train": ["train", "--res", "8", "--init", "random", "--out", str(tmp_path / "t")],
        "study": ["study", str(config), "--out", str(tmp_path / "s"), "--dry-run"],
        "bench": ["bench", "--res", "8"],
        "memory": ["memory", "--res", "8"],
        "prepare": ["prepare", str(tmp_path), "--label", "Nodule", "--res", "8", "--out", str(tmp_path / "p")],
    }
    for name, argv in runs.items():
        assert main(argv) == 2, name
        assert "8 is out of range (16 to 4096 px)" in capsys.readouterr().err, name


# ==================================================================================================
# Class 6: damaged stores; a failed prepare leaves no half-made store
# ==================================================================================================


@pytest.fixture()
def prepared(tmp_path: Path) -> tuple[Path, Path]:
    root, _ = _nih(tmp_path)
    store = tmp_path / "store"
    assert _prepare(root, store, "--res", "32,48", "--format", "jpeg,cache") == 0
    return root, store


def _overwrite_in_place(path: Path, keep_mtime: bool) -> None:
    """Garbage over the pixels, same size; optionally with the old mtime put back."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        fh.write(bytes(range(256)) * 8)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_npy_overwritten_in_place_is_found_by_verify_and_rebuilt_by_prepare(prepared, tmp_path: Path, capsys):
    root, store = prepared
    good = np.array(P.open_store(store).cache_array(32))
    npy = store / "cache" / "32.npy"
    _overwrite_in_place(npy, keep_mtime=True)
    assert main(["verify", "--store", str(store)]) == 1
    out = capsys.readouterr().out
    assert f"{npy}: damaged (content differs" in out and "--format cache --res 32" in out
    assert _prepare(root, store, "--res", "32", "--format", "cache") == 0
    assert re.search(r"warning: .*32.npy: damaged .* rebuilding it", capsys.readouterr().err)
    assert np.array_equal(P.open_store(store).cache_array(32), good), "the rebuilt array is the original"
    assert main(["verify", "--store", str(store)]) == 0


def test_npy_overwritten_in_place_is_refused_when_a_loader_opens_it(prepared):
    root, store = prepared
    _overwrite_in_place(store / "cache" / "32.npy", keep_mtime=False)
    with pytest.raises(CxrError, match=r"32\.npy: damaged \(content differs.*cxr-fast prepare"):
        make_loader("cache", _cache_spec(root, store))


def test_truncated_npy_is_one_line_naming_it(prepared, capsys):
    root, store = prepared
    npy = store / "cache" / "48.npy"
    npy.write_bytes(npy.read_bytes()[:1000])
    with pytest.raises(CxrError, match=r"48\.npy: damaged \(1000 bytes where"):
        make_loader("resident", _cache_spec(root, store, res=48))
    assert main(["verify", "--store", str(store)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "damaged" in line]
    assert len(lines) == 1 and "48.npy" in lines[0] and "rebuilds it" in lines[0]


def test_garbage_jpeg_is_named_and_rebuilt(prepared, capsys):
    root, store = prepared
    jpeg = sorted((store / "jpeg").glob("*.jpg"))[3]
    jpeg.write_bytes(b"\xff\xd8 not a jpeg")
    assert main(["verify", "--store", str(store)]) == 1
    assert f"{jpeg}: damaged" in capsys.readouterr().out
    capsys.readouterr()
    assert _prepare(root, store, "--res", "32", "--format", "jpeg") == 0
    assert f"warning: {jpeg}: damaged" in capsys.readouterr().err
    assert np.asarray(Image.open(jpeg)).shape == (96, 96)
    assert main(["verify", "--store", str(store)]) == 0


def test_a_failed_prepare_leaves_no_half_made_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    root, _ = _nih(tmp_path)
    real = D._work

    def disk_full_at_res_48(job):
        if 48 in job[2]:
            raise OSError(28, "No space left on device")
        return real(job)

    monkeypatch.setattr(D, "_work", disk_full_at_res_48)
    fresh = tmp_path / "fresh"
    assert _prepare(root, fresh, "--res", "48", "--format", "cache") == 1
    assert "No space left" in capsys.readouterr().err
    assert not fresh.exists(), "a store started from nothing is removed"
    kept = tmp_path / "kept"
    assert _prepare(root, kept, "--res", "32", "--format", "cache") == 0
    assert _prepare(root, kept, "--res", "48", "--format", "cache") == 1
    assert P.open_store(kept).cache_resolutions == [32], "an existing store keeps its finished parts"


def test_damaged_run_files_are_one_line_errors(tiny_phantom, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("cxr_fast.models.build_model", lambda *a, **k: _Shifted(shift=0.0))
    out = tmp_path / "run"
    run_training(_run_cfg(tiny_phantom, out, epochs=1), progress=False)
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    argv = ["train", "--label", "No Finding", "--res", "32", "--epochs", "2", "--data", str(tiny_phantom),
            "--out", str(out), "--loader", "resident", "--tta", "2", "--init", "random", "--device", "cpu",
            "--lr", "1e-9", "--workers", "1", "--quiet", "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is damaged" in err and "--overwrite" in err and err.count("\n") == 1
    (out / "metrics.json").write_text("{not json")
    ckpt.unlink()
    with pytest.warns(UserWarning, match="metrics.json is damaged"):
        m = run_training(_run_cfg(tiny_phantom, out), progress=False, resume=True)
    assert m["epochs"] == 1 and json.loads((out / "metrics.json").read_text())["auc"] == m["auc"]


def test_a_torn_last_results_row_is_said_not_skipped_silently(tmp_path):
    from cxr_fast.io import read_jsonl

    path = tmp_path / "results.jsonl"
    path.write_text('{"cell_id": "a"}\n{"cell_id": "b", "au')
    with pytest.warns(UserWarning, match="torn last line"):
        assert read_jsonl(path) == [{"cell_id": "a"}]
    path.write_text('{"cell_id": "a"}\n{broken}\n{"cell_id": "c"}\n')
    with pytest.raises(CxrError, match="results.jsonl:2 is not valid JSON"):
        read_jsonl(path)


# ==================================================================================================
# Class 7: a finished run is never overwritten silently; a failed run leaves no folder
# ==================================================================================================

def test_a_finished_run_folder_is_refused_then_reused_or_overwritten_on_request(tiny_phantom, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setattr("cxr_fast.models.build_model", lambda *a, **k: _Shifted(shift=0.0))
    out = tmp_path / "run"
    first = run_training(_run_cfg(tiny_phantom, out), progress=False)
    before = (out / "metrics.json").read_bytes()
    other = ["train", "--label", "No Finding", "--res", "32", "--epochs", "1", "--data", str(tiny_phantom),
             "--out", str(out), "--loader", "resident", "--tta", "0", "--init", "random", "--device", "cpu",
             "--lr", "0.5", "--quiet"]
    assert main(other) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before
    assert run_training(_run_cfg(tiny_phantom, out), progress=False, resume=True) == first
    assert main([*other, "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["tta"] == 0


def test_a_failed_run_leaves_no_half_made_folder(tiny_phantom, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(CxrError, match="validation set has no"):
        run_training(_run_cfg(tiny_phantom, out, val_fraction=0.02), progress=False)
    assert not out.exists()


# ==================================================================================================
# Smaller items: absurd shapes, --store without --data, one set of resolution limits
# ==================================================================================================


def test_verify_flags_images_of_absurd_shape(tmp_path: Path):
    root, _ = _nih(tmp_path, n=2)
    shapes = {"tiny.png": (4, 4), "strip.png": (3000, 1), "long.png": (64, 300), "ok.png": (80, 100)}
    for name, (w, h) in shapes.items():
        Image.fromarray(np.full((h, w), 120, np.uint8)).save(root / "images" / name)
        _add_rows(root, _row(name, "No Finding", patient=hash(name) % 1000 + 10))
    out = tmp_path / "report.json"
    assert main(["verify", str(root), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    odd = {o["image"]: o["reason"] for o in json.loads(out.read_text())["odd_shape"]}
    assert set(odd) == {"tiny.png", "strip.png", "long.png"} and "4x4" in odd["tiny.png"]


def test_prepare_without_data_uses_the_folder_the_store_was_made_from(prepared, monkeypatch: pytest.MonkeyPatch):
    import cxr_fast.data.source as source

    root, store = prepared

    def no_phantom(**_kw):
        raise AssertionError("the default phantom was made although the store names its data folder")

    monkeypatch.setattr(source, "default_phantom", no_phantom)
    assert _prepare(None, store, "--res", "64", "--format", "cache") == 0
    assert P.open_store(store).cache_resolutions == [32, 48, 64]
    from cxr_fast.stores.manifest import data_of

    assert Path(data_of(None, store)) == root.resolve()  # what train --store uses without --data


def test_prepare_uses_the_shared_resolution_limits(tmp_path: Path, capsys):
    root, _ = _nih(tmp_path, n=2)
    assert _prepare(root, tmp_path / "store", "--res", "8", "--format", "cache") == 2
    assert "16 to 4096" in capsys.readouterr().err and not (tmp_path / "store").exists()


def test_divergence_message_says_what_was_observed(tiny_phantom, tmp_path, monkeypatch):
    class Nan(_Shifted):
        def forward(self, x):
            return super().forward(x) * float("nan")

    monkeypatch.setattr("cxr_fast.models.build_model", lambda *a, **k: Nan(shift=0.0))
    with pytest.raises(CxrError, match="although the inputs varied"):
        run_training(_run_cfg(tiny_phantom, tmp_path / "nan"), progress=False)


def test_bench_exits_non_zero_when_a_section_errored(tiny_phantom, tmp_path, monkeypatch, capsys):
    import cxr_fast.loaders.cache as cache

    def broken(spec):
        raise RuntimeError("store exploded")

    monkeypatch.setattr(cache, "build", broken)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("cpu:\n  batch_size: 2\n  warmup: 0\n  iters: 1\n  train_seconds: 0\n  loader_batch_size: 4\n"
                   "  loader_batches: 1\n  loader_seconds: 0\n  n_images: 12\n")
    rc = main(["bench", "--config", str(cfg), "--res", "32", "--arch", "resnet34", "--loaders", "cache",
               "--data", str(tiny_phantom), "--device", "cpu", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "section(s) failed" in err and "store exploded" in err
    assert (tmp_path / "r" / "bench.json").is_file()  # the rows that ran are still written
