"""External validation: a run trained on one dataset scored on another's images of its finding, refused where the
two share images (by the datasets' word, or by pixels), and shown beside the internal AUC in a study's report."""

from __future__ import annotations

import json

import pytest
import yaml

from cxr_fast.api import evaluate, fit
from cxr_fast.cli import main
from cxr_fast.errors import CxrError

PHANTOM = ["--n", "80", "--size", "96", "--enrich", "Cardiomegaly,Nodule", "--enrich-fraction", "0.6", "--quiet"]
SPEC = "phantom:n=80,size=96,enrich=Cardiomegaly+Nodule,fraction=0.6"  # the same phantom as PHANTOM, seed 0
TINY = dict(res=32, epochs=1, init="random", optimizer="adam", lr=1e-3, subsample_size=80, tta=0, device="cpu",
            loader="resident", batch_size=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    fit(label="Cardiomegaly", data=SPEC, out=str(out), **TINY)
    return out


@pytest.fixture(scope="module")
def other_chexpert(tmp_path_factory):
    """Another phantom (seed 1: other patients, other pixels) in the CheXpert layout."""
    folder = tmp_path_factory.mktemp("cx") / "chexpert"
    assert main(["synth", str(folder), "--layout", "chexpert", "--seed", "1", *PHANTOM]) == 0
    return folder


def test_a_run_scored_on_another_dataset_gives_its_auc_with_the_delong_sd(trained, other_chexpert):
    from cxr_fast.data.sets import read_dataset

    rec = evaluate(trained, other_chexpert)
    meta = read_dataset(other_chexpert).metadata
    known = meta.known_for("Cardiomegaly")
    assert rec["external_dataset"] == "chexpert" and rec["trained_on"] == "nih" and rec["res"] == 32
    assert rec["n_pos"] == int((meta.has("Cardiomegaly") & known).sum())  # every known image, scored
    assert rec["n_pos"] + rec["n_neg"] == int(known.sum())
    assert 0.0 <= rec["auc"] <= 1.0 and rec["auc_sd"] > 0
    assert json.loads((trained / "external-chexpert.json").read_text())["auc"] == rec["auc"]


@pytest.mark.parametrize("layout", ["csv", "chexpert"])
def test_the_runs_own_images_in_another_layout_are_refused_by_their_pixels(trained, tmp_path, layout):
    # csv copies the PNGs; chexpert re-encodes them as JPEG (quality 95): both are the training images
    folder, written = tmp_path / layout, trained / f"external-{layout}.json"
    written.unlink(missing_ok=True)  # another test's score
    assert main(["synth", str(folder), "--layout", layout, *PHANTOM]) == 0
    with pytest.raises(CxrError, match=r"shares \d+ image\(s\) with the run's training images"):
        evaluate(trained, folder)
    assert not written.exists()


def test_rsna_is_never_an_external_test_for_an_nih_model(trained, tmp_path):
    folder = tmp_path / "rsna"
    pytest.importorskip("pydicom")
    assert main(["synth", str(folder), "--layout", "rsna", "--seed", "1", *PHANTOM]) == 0
    with pytest.raises(CxrError, match="RSNA.*images are NIH ChestX-ray14's"):
        evaluate(trained, folder)


def test_a_study_scores_each_cell_externally_and_the_report_shows_both_columns(tmp_path, other_chexpert):
    config = {"name": "ext", "train": {"data": SPEC, **{k: v for k, v in TINY.items() if k not in ("res", "epochs")}},
              "external": [str(other_chexpert)],
              "grids": [{"name": "t", "labels": ["Cardiomegaly", "Nodule"], "resolutions": [32], "epochs": 1}]}
    (tmp_path / "ext.yaml").write_text(yaml.safe_dump(config))
    assert main(["study", str(tmp_path / "ext.yaml"), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    rows = {r["label"]: r for r in map(json.loads, (tmp_path / "s" / "results.jsonl").read_text().splitlines())}
    assert rows["Cardiomegaly"]["external"][0]["dataset"] == "chexpert"
    assert 0 <= rows["Cardiomegaly"]["external"][0]["auc"] <= 1
    assert rows["Nodule"]["external"][0]["status"].startswith("unmapped: ")  # CheXpert has no Nodule
    assert main(["report", str(tmp_path / "s")]) == 0
    text = (tmp_path / "s" / "report" / "external.md").read_text()
    assert "internal AUC (SD)" in text and "external: chexpert AUC (SD)" in text
    assert "Nodule not mapped by chexpert" in text


def test_a_study_whose_external_set_is_its_training_data_is_refused_before_it_writes(tmp_path):
    pytest.importorskip("pydicom")
    folder = tmp_path / "nih"
    assert main(["synth", str(folder), *PHANTOM]) == 0
    rsna = tmp_path / "rsna"
    assert main(["synth", str(rsna), "--layout", "rsna", *PHANTOM]) == 0
    config = {"name": "bad", "train": {"data": str(folder), **{k: v for k, v in TINY.items() if k not in ("res", "epochs")}},
              "external": [{"data": str(rsna), "dataset": "rsna"}],
              "grids": [{"name": "t", "labels": ["Pneumonia"], "resolutions": [32], "epochs": 1}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["study", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "s"), "--quiet"]) != 0
    assert not (tmp_path / "s").exists()
