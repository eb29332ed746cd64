"""The report: tables hold the store's numbers, stars follow the paired test, figures and paper columns appear."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxr_fast import paper_results
from cxr_fast.errors import CxrError
from cxr_fast.io import append_jsonl, read_jsonl
from cxr_fast.metrics import delong_auc_variance
from cxr_fast.report import make_report

PNG = b"\x89PNG\r\n\x1a\n"


def make_study(root: Path, cells: dict[tuple[str, int, str, int], float], grids: list[dict],
               n: int = 300, predictions: bool = True) -> None:
    """A study folder as `cxr-fast study` leaves it: study.yaml, results.jsonl, runs/*/predictions.npz.

    ``cells`` maps (label, res, arch, epochs) to a signal strength; scores are label * strength + noise
    on validation images shared by every cell of a label, and the rows hold the AUC of those scores.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump({"name": "synthetic", "train": {"seed": 0}, "grids": grids}))
    for (label, res, arch, epochs), strength in cells.items():
        rng = np.random.default_rng(sum(map(ord, label)))  # same images and labels per label
        y = (rng.random(n) < 0.3).astype(np.float32)
        ids = np.array([f"{label}_{i:05d}.png" for i in range(n)])
        noise = np.random.default_rng(res * 7 + epochs + len(arch)).normal(0, 1, n)
        scores = (y * strength + noise).astype(np.float32)
        auc, var = delong_auc_variance(y, scores)
        cell_id = f"{label}/{arch}-e{epochs}/r{res}"
        run = root / "runs" / cell_id
        run.mkdir(parents=True, exist_ok=True)
        if predictions:
            perm = np.random.default_rng(res).permutation(n)  # runs may list images in any order
            np.savez(run / "predictions.npz", image_ids=ids[perm], labels=y[perm], scores=scores[perm])
        append_jsonl(root / "results.jsonl", {
            "cell_id": cell_id, "label": label, "res": res, "arch": arch, "epochs": epochs,
            "run_dir": f"runs/{cell_id}", "auc": auc, "auc_sd": float(np.sqrt(var)),
            "n_pos": int(y.sum()), "n_neg": int(n - y.sum())})


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


GRID2 = {"name": "table2", "labels": ["Nodule", "Mass"], "resolutions": [32, 64, 128], "archs": ["resnet34"],
         "epochs": 3}


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    cells = {("Nodule", 32, "resnet34", 3): 0.2, ("Nodule", 64, "resnet34", 3): 0.6,
             ("Nodule", 128, "resnet34", 3): 2.5,  # far better: starred
             ("Mass", 32, "resnet34", 3): 1.0, ("Mass", 64, "resnet34", 3): 1.05}  # Mass 128 missing
    make_study(tmp_path / "study", cells, [GRID2])
    return tmp_path / "study"


def test_tables_hold_the_numbers_from_the_store(study, tmp_path):
    result = make_report(study, tmp_path / "out")
    store = {(r["label"], r["res"]): r for r in read_jsonl(study / "results.jsonl")}
    rows = read_csv(tmp_path / "out" / "table2.csv")
    assert len(rows) == 6  # 2 labels x 3 resolutions, the missing cell included
    for row in rows:
        key = (row["label"], int(row["res"]))
        if key not in store:
            assert key == ("Mass", 128) and row["auc"] == ""
            continue
        assert float(row["auc"]) == pytest.approx(store[key]["auc"], abs=1e-12)
        assert float(row["auc_sd"]) == pytest.approx(store[key]["auc_sd"], abs=1e-12)
    md = (tmp_path / "out" / "table2.md").read_text()
    nodule128 = store[("Nodule", 128)]
    assert f"{nodule128['auc']:.3f} ± {nodule128['auc_sd']:.3f}*" in md
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ") and "×" in line}
    assert lines["128 × 128"].rstrip().endswith("| — |")  # Mass 128 is missing: a dash, not a crash
    assert "one validation set" in md
    names = {p.name for p in result.files}
    assert {"table2.md", "table2.csv", "table3.md", "table3.csv", "figure2.png", "figure3.png", "figure4.png",
            "report.md", "results.csv"} <= names
    for name in ("figure2.png", "figure3.png", "figure4.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG


def test_star_only_where_the_paired_test_says_so(study, tmp_path):
    make_report(study, tmp_path / "out")
    rows = {(r["label"], int(r["res"])): r for r in read_csv(tmp_path / "out" / "table2.csv")}
    assert rows[("Nodule", 128)]["best"] == "1" and rows[("Nodule", 128)]["starred"] == "1"
    assert float(rows[("Nodule", 64)]["p_vs_best"]) < 0.05 and rows[("Nodule", 64)]["test"] == "paired DeLong"
    # Mass 32 vs 64 differ by noise only: the better one is best but not starred.
    best = [r for k, r in rows.items() if k[0] == "Mass" and r["best"] == "1"]
    assert len(best) == 1 and best[0]["starred"] == "0"
    other = [r for k, r in rows.items() if k[0] == "Mass" and r["best"] == "0" and r["auc"]]
    assert float(other[0]["p_vs_best"]) >= 0.05


def test_without_predictions_the_z_test_is_used(tmp_path):
    cells = {("Nodule", 32, "resnet34", 3): 0.2, ("Nodule", 64, "resnet34", 3): 2.5}
    make_study(tmp_path / "s", cells, [GRID2], predictions=False)
    make_report(tmp_path / "s")
    rows = read_csv(tmp_path / "s" / "report" / "table2.csv")
    r32 = next(r for r in rows if r["label"] == "Nodule" and r["res"] == "32")
    assert r32["test"] == "z-test" and float(r32["p_vs_best"]) < 0.05


def test_figure3_reference_is_320_or_the_highest_below(study, tmp_path):
    result = make_report(study, tmp_path / "out")
    assert result.figure3_reference == 128
    rec = next(r for r in result.figure3 if r["label"] == "Nodule" and r["res"] == 64)
    store = {(r["label"], r["res"]): r for r in read_jsonl(study / "results.jsonl")}
    assert rec["percent"] == pytest.approx(100 * store[("Nodule", 64)]["auc"] / store[("Nodule", 128)]["auc"])
    assert "128 px, the highest resolution ≤ 320" in (tmp_path / "out" / "report.md").read_text()
    cells = {("Edema", r, "resnet34", 3): s for r, s in ((32, 0.5), (64, 1.0), (320, 2.0), (448, 2.1))}
    make_study(tmp_path / "s2", cells, [{**GRID2, "labels": ["Edema"], "resolutions": [32, 64, 320, 448]}])
    assert make_report(tmp_path / "s2").figure3_reference == 320


def test_compare_paper_puts_published_numbers_beside_ours(study, tmp_path):
    make_report(study, tmp_path / "out", compare=True)
    md = (tmp_path / "out" / "table2.md").read_text()
    assert "Nodule (paper A: resnet34 3 ep)" in md
    assert "0.767 ± 0.008" in md  # the paper's Nodule 128 px
    rows = read_csv(tmp_path / "out" / "table2.csv")
    n64 = next(r for r in rows if r["label"] == "Nodule" and r["res"] == "64")
    assert float(n64["paper_auc"]) == 0.689 and float(n64["paper_sd"]) == 0.009
    summary = (tmp_path / "out" / "report.md").read_text()
    assert "80.7" in summary  # the paper's Nodule 64/320 ratio, 0.689 / 0.854


def test_table3_has_a_column_per_architecture(tmp_path):
    cells = {}
    for arch, epochs in (("resnet34", 10), ("densenet121", 10)):
        for label in ("Mass", "Nodule"):
            for res in (64, 224):
                cells[(label, res, arch, epochs)] = 0.5 + res / 200
    grid = {"name": "table3", "labels": ["Mass", "Nodule"], "resolutions": [64, 224],
            "archs": ["resnet34", "densenet121"], "epochs": 10}
    make_study(tmp_path / "s", cells, [grid])
    result = make_report(tmp_path / "s", compare=True)
    md = (tmp_path / "s" / "report" / "table3.md").read_text()
    for col in ("Mass resnet34 10 ep", "Nodule densenet121 10 ep", "Mass (paper C: densenet121 10 ep)"):
        assert col in md
    assert "0.664 ± 0.009" in md  # paper's Nodule C at 64 px
    rows = read_csv(tmp_path / "s" / "report" / "table3.csv")
    assert len(rows) == 8 and {r["arch"] for r in rows} == {"resnet34", "densenet121"}
    assert (tmp_path / "s" / "report" / "figure4.png").read_bytes()[:8] == PNG
    assert any(t.name == "table3" for t in result.tables)


def test_cli_report_and_missing_study(study, tmp_path, capsys):
    from cxr_fast.cli import main

    assert main(["report", str(study), "--out", str(tmp_path / "cli"), "--compare-paper"]) == 0
    assert "Table 2" in capsys.readouterr().out and (tmp_path / "cli" / "table2.csv").is_file()
    with pytest.raises(CxrError, match="not a study folder"):
        make_report(tmp_path / "nothing")


def test_paper_numbers_are_transcribed_consistently():
    """Table 1's 64/320 px columns and Table 3's A columns repeat Table 2: a slip in one shows up here."""
    for label, row in paper_results.TABLE1.items():
        assert (paper_results.TABLE2[label][64].auc, paper_results.TABLE2[label][64].sd) == (row.auc64.auc, row.auc64.sd)
        assert (paper_results.TABLE2[label][320].auc, paper_results.TABLE2[label][320].sd) == (row.auc320.auc, row.auc320.sd)
    for label in ("Mass", "Nodule"):
        for res in paper_results.RESOLUTIONS:
            a, t2 = paper_results.TABLE3[("resnet34", 3)][label][res], paper_results.TABLE2[label][res]
            assert (a.auc, a.sd) == (t2.auc, t2.sd)
    for label, col in paper_results.TABLE2.items():
        stars = [r for r, v in col.items() if v.best]
        assert len(stars) == 1 and col[stars[0]].auc == max(v.auc for v in col.values())
    assert json.dumps(paper_results.paper_auc("Nodule", 320).auc) == "0.854"
    assert paper_results.paper_auc("Nodule", 320, "densenet121", 3) is None
