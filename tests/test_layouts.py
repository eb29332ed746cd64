"""Every dataset layout end to end, as a newcomer would try it: ``synth D --layout L``, ``verify D``, then the tiny
study ``configs/layouts/L.yaml`` on D, and its report; plus what the layer promises across datasets: detection,
one-line refusals, one store per dataset holding the union of the labels' subsamples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cxr_fast.cli import main
from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import DATASETS

ROOT = Path(__file__).resolve().parents[1]


def _config(layout: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "layouts" / f"{layout}.yaml").read_text())


def _label(layout: str) -> str:
    return _config(layout)["grids"][0]["labels"][0]


@pytest.mark.parametrize("layout", DATASETS)
def test_a_layout_synthesised_verifies_and_runs_its_tiny_study(tmp_path, layout, capsys):
    if layout in ("vindr", "rsna"):
        pytest.importorskip("pydicom")
    data, study = tmp_path / layout, tmp_path / "study"
    assert main(["synth", str(data), "--layout", layout, "--n", "80", "--size", "96", "--enrich", _label(layout),
                 "--enrich-fraction", "0.5", "--quiet"]) == 0
    assert main(["verify", str(data), "--dataset", layout, "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "images usable" in said and "under 128 px" in said  # 96 px images: flagged, never silently upsampled
    assert main(["study", str(ROOT / "configs" / "layouts" / f"{layout}.yaml"), "--data", str(data),
                 "--dataset", layout, "--out", str(study), "--quiet"]) == 0
    rows = [json.loads(line) for line in (study / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["dataset"] == layout and rows[0]["label"] == _label(layout)
    assert rows[0]["auc"] is not None or rows[0]["auc_status"] == "tied"
    metrics = json.loads((study / rows[0]["run_dir"] / "metrics.json").read_text())
    assert metrics["data"]["dataset"] == layout and metrics["data"]["label_map"]  # provenance: table and policies
    assert main(["report", str(study)]) == 0


def test_auto_detection_names_the_layout_and_a_wrong_dataset_is_one_line(tmp_path):
    from cxr_fast.data.sets import detect, read_dataset

    data = tmp_path / "cx"
    assert main(["synth", str(data), "--layout", "chexpert", "--n", "40", "--size", "64", "--quiet"]) == 0
    assert detect(data) == "chexpert"
    assert read_dataset(data).name == "chexpert"
    with pytest.raises(CxrError, match="not in the PadChest layout"):
        read_dataset(data, "padchest")
    with pytest.raises(CxrError, match="no dataset layout found"):
        detect(tmp_path)


def test_a_label_the_dataset_lacks_is_one_line_naming_the_labels_it_has(tmp_path, capsys):
    from cxr_fast.data.sets import read_dataset
    from cxr_fast.data.sets.base import LabelMissingError

    data = tmp_path / "cx"
    assert main(["synth", str(data), "--layout", "chexpert", "--n", "40", "--size", "64", "--quiet"]) == 0
    with pytest.raises(LabelMissingError, match=r"has no Nodule label; its labels: .*Cardiomegaly"):
        read_dataset(data).metadata.has("Nodule")
    # and a study asking for it is refused before it writes anything
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({**_config("chexpert"), "grids": [{**_config("chexpert")["grids"][0],
                                                                     "labels": ["Nodule"]}]}))
    assert main(["study", str(cfg), "--data", str(data), "--out", str(tmp_path / "s"), "--quiet"]) != 0
    assert "has no Nodule label; its labels: Atelectasis" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_study_keeps_one_store_per_dataset_holding_the_union_of_its_labels(tmp_path):
    from cxr_fast.api import run_study

    cfg = tmp_path / "two.yaml"
    config = _config("nih")
    config["train"].update(data="phantom:n=100,size=64,enrich=Nodule+Mass,fraction=0.3", subsample_size=50,
                           dataset="nih")
    config["grids"][0]["labels"] = ["Nodule", "Mass"]
    cfg.write_text(yaml.safe_dump(config))
    run_study(cfg, out=tmp_path / "study", progress=False)
    stores = [p for p in (tmp_path / "study" / "stores").iterdir() if p.is_dir()]
    assert len(stores) == 1, stores  # not one per label
    manifest = json.loads((stores[0] / "manifest.json").read_text())
    assert manifest["dataset"] == "nih" and manifest["targets"] is None  # labels come with each run
    from cxr_fast.data.source import resolve_dataset
    from cxr_fast.schema.run import RunConfig

    settings = {k: v for k, v in config["train"].items()}
    union: set[str] = set()
    for label in ("Nodule", "Mass"):
        run = RunConfig.parse({**settings, "label": label})
        union |= set(map(str, run.draw_subsample(resolve_dataset(run.data, quiet=True)).image_ids))
    assert sorted(manifest["image_ids"]) == sorted(union) and len(union) < 100  # the union, not the sum
    rows = [json.loads(line) for line in (tmp_path / "study" / "results.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {"Nodule", "Mass"}
