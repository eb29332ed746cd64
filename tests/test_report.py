"""The report: tables hold the store's numbers, the star is the highest AUC, both tests are marked apart,
init and leakage are shown, the paper's other results have sections, figures and paper columns appear."""

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
from cxr_fast.report.build import make_report

PNG = b"\x89PNG\r\n\x1a\n"


# The fields a current run writes into its study row (issue 9); old rows lack them.
PROVENANCE = {"init": "imagenet", "weights_sha256": "ab" * 32, "weights_file": "/weights/resnet34.pth",
              "recipe": "fastai07", "split": "image", "subsample_size": 20000, "seed": 0, "val_leak_share": 0.71,
              "val_leak_images": 213, "accuracy": 0.8125, "pos_weight": 2.5, "auc_sd_note": None, "variant_tag": ""}

Key = tuple  # (label, res, arch, epochs) or (label, res, arch, epochs, variant_tag)


def val_labels(label: str, n: int = 300) -> np.ndarray:
    """The validation labels every cell of ``label`` shares (same subsample and split)."""
    rng = np.random.default_rng(sum(map(ord, label)))
    return (rng.random(n) < 0.3).astype(np.float32)


def make_study(root: Path, cells: dict[Key, float], grids: list[dict], n: int = 300, predictions: bool = True,
               extra: dict[Key, dict] | None = None, scores: dict[Key, np.ndarray] | None = None,
               base: dict | None = PROVENANCE, name: str = "synthetic") -> None:
    """A study folder as `cxr-fast study` leaves it: study.yaml, results.jsonl, runs/*/predictions.npz.

    ``cells`` maps (label, res, arch, epochs[, variant_tag]) to a signal strength; scores are label * strength
    + noise on validation images shared by every cell of a label, and the rows hold the AUC of those scores.
    ``scores`` replaces a cell's scores, ``extra`` overrides fields of its row, ``base`` is what every row
    records beyond the metrics (None: a row from before issue 9).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump({"name": name, "train": {"seed": 0}, "grids": grids}))
    for key, strength in cells.items():
        label, res, arch, epochs = key[:4]
        tag = key[4] if len(key) > 4 else ""
        y = val_labels(label, n)
        ids = np.array([f"{label}_{i:05d}.png" for i in range(n)])
        noise = np.random.default_rng(res * 7 + epochs + len(arch) + len(tag)).normal(0, 1, n)
        s = (scores or {}).get(key)
        s = (y * strength + noise).astype(np.float32) if s is None else np.asarray(s, dtype=np.float32)
        auc, var = delong_auc_variance(y, s)
        cell_id = f"{label}/{arch}-e{epochs}{'-' + tag if tag else ''}/r{res}"
        run = root / "runs" / cell_id
        run.mkdir(parents=True, exist_ok=True)
        if predictions:
            perm = np.random.default_rng(res).permutation(n)  # runs may list images in any order
            np.savez(run / "predictions.npz", image_ids=ids[perm], labels=y[perm], scores=s[perm],
                     scores_plain=s[perm])
        row = {"cell_id": cell_id, "label": label, "res": res, "arch": arch, "epochs": epochs,
               "run_dir": f"runs/{cell_id}", "auc": auc, "auc_sd": float(np.sqrt(var)),
               "n_pos": int(y.sum()), "n_neg": int(n - y.sum()), "n_val": n}
        if base is not None:
            row.update(base, variant_tag=tag, grids=[g["name"] for g in grids if label in g["labels"]][:1])
        row.update((extra or {}).get(key, {}))
        append_jsonl(root / "results.jsonl", row)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


GRID2 = {"name": "table2", "labels": ["Nodule", "Mass"], "resolutions": [32, 64, 128], "archs": ["resnet34"],
         "epochs": 3}
NODULE_GRID = {**GRID2, "labels": ["Nodule"]}


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


def md_cells(md: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their first cell ('128 × 128'), cells stripped."""
    return {cols[0]: cols[1:] for line in md.splitlines() if line.startswith("| ")
            for cols in [[c.strip() for c in line.strip().strip("|").split("|")]]}


def test_star_marks_the_highest_auc_even_when_not_significant(study, tmp_path):
    make_report(study, tmp_path / "out")
    rows = {(r["label"], int(r["res"])): r for r in read_csv(tmp_path / "out" / "table2.csv")}
    store = {(r["label"], r["res"]): r for r in read_jsonl(study / "results.jsonl")}
    # Mass 32 vs 64 differ by noise only: the higher one still carries the paper's star, without significance.
    best_res = max((32, 64), key=lambda r: store[("Mass", r)]["auc"])
    other = 96 - best_res
    assert rows[("Mass", best_res)]["best"] == "1" and rows[("Mass", other)]["best"] == "0"
    assert float(rows[("Mass", other)]["p_z_vs_best"]) >= 0.05
    assert float(rows[("Mass", other)]["p_paired_vs_best"]) >= 0.05
    assert rows[("Mass", other)]["sig_z"] == "0" and rows[("Mass", other)]["sig_paired"] == "0"
    table = md_cells((tmp_path / "out" / "table2.md").read_text())
    mass = table["Resolution"].index("Mass")
    assert table[f"{best_res} × {best_res}"][mass].endswith("*")
    assert not any(m in table[f"{other} × {other}"][mass] for m in "*†‡")
    # Nodule 128 is far better: starred, and both tests mark the others as significantly lower.
    nodule = table["Resolution"].index("Nodule")
    assert table["128 × 128"][nodule].endswith("*")
    for res in (32, 64):
        assert table[f"{res} × {res}"][nodule].endswith("†‡")
        assert float(rows[("Nodule", res)]["p_z_vs_best"]) < 0.05
        assert float(rows[("Nodule", res)]["p_paired_vs_best"]) < 0.05
    md = (tmp_path / "out" / "table2.md").read_text()
    assert "unpaired z-test" in md and "paired DeLong test" in md and "highest AUC" in md


def test_paired_delong_significant_where_the_z_test_is_not(tmp_path):
    """Two nearly identical scorings: the paired test sees the shared noise cancel, the z-test cannot."""
    from cxr_fast.metrics import auc_z_test, paired_delong_test

    y = val_labels("Nodule")
    noise = np.random.default_rng(1).normal(0, 1, y.size)
    a = y * 1.4 + noise
    b = y * 1.2 + noise + np.random.default_rng(2).normal(0, 0.05, y.size)
    cells = {("Nodule", 64, "resnet34", 3): 0.0, ("Nodule", 128, "resnet34", 3): 0.0}
    scores = {("Nodule", 128, "resnet34", 3): a, ("Nodule", 64, "resnet34", 3): b}
    make_study(tmp_path / "s", cells, [NODULE_GRID], scores=scores)
    make_report(tmp_path / "s")
    rows = {int(r["res"]): r for r in read_csv(tmp_path / "s" / "report" / "table2.csv")}
    store = {r["res"]: r for r in read_jsonl(tmp_path / "s" / "results.jsonl")}
    _, p_z = auc_z_test(store[128]["auc"], store[128]["auc_sd"], store[64]["auc"], store[64]["auc_sd"])
    _, p_paired = paired_delong_test(y, a, b)
    assert p_z > 0.05 and p_paired < 0.05  # the construction holds
    assert rows[128]["best"] == "1" and rows[64]["best"] == "0"
    assert float(rows[64]["p_z_vs_best"]) == pytest.approx(p_z)
    assert float(rows[64]["p_paired_vs_best"]) == pytest.approx(p_paired)
    assert rows[64]["sig_z"] == "0" and rows[64]["sig_paired"] == "1"
    cell64 = md_cells((tmp_path / "s" / "report" / "table2.md").read_text())["64 × 64"][0]
    assert cell64.endswith("‡") and "†" not in cell64
    sig = read_csv(tmp_path / "s" / "report" / "significance.csv")[0]
    assert (sig["best_res"], sig["beaten_z"], sig["beaten_paired"]) == ("128", "0", "1")
    summary = (tmp_path / "s" / "report" / "report.md").read_text()
    assert "yes (1 of 1)" in summary and "no (0 of 1; not 64 px p = " in summary


def test_without_predictions_only_the_z_test_is_computed(tmp_path):
    cells = {("Nodule", 32, "resnet34", 3): 0.2, ("Nodule", 64, "resnet34", 3): 2.5}
    make_study(tmp_path / "s", cells, [GRID2], predictions=False)
    make_report(tmp_path / "s")
    rows = read_csv(tmp_path / "s" / "report" / "table2.csv")
    r32 = next(r for r in rows if r["label"] == "Nodule" and r["res"] == "32")
    assert float(r32["p_z_vs_best"]) < 0.05 and r32["sig_z"] == "1"
    assert r32["p_paired_vs_best"] == "" and r32["sig_paired"] == ""
    cell = md_cells((tmp_path / "s" / "report" / "table2.md").read_text())["32 × 32"][0]
    assert cell.endswith("†") and "‡" not in cell
    assert "not tested (no shared predictions)" in (tmp_path / "s" / "report" / "significance.md").read_text()


def test_tied_cells_are_shown_as_tied_and_left_out(tmp_path):
    cells = {("Nodule", res, "resnet34", 3): s for res, s in ((32, 0.0), (64, 0.8), (128, 1.5))}
    key = ("Nodule", 32, "resnet34", 3)
    make_study(tmp_path / "s", cells, [NODULE_GRID], scores={key: np.zeros(300)},
               extra={key: {"auc": None, "auc_sd": None, "auc_status": "tied"}})
    make_report(tmp_path / "s")
    rows = {int(r["res"]): r for r in read_csv(tmp_path / "s" / "report" / "table2.csv")}
    assert rows[32]["auc"] == "" and rows[32]["auc_status"] == "tied" and rows[32]["best"] == ""
    assert rows[32]["p_z_vs_best"] == "" and rows[32]["p_paired_vs_best"] == ""
    assert rows[128]["best"] == "1" and rows[64]["p_z_vs_best"] != ""
    table = md_cells((tmp_path / "s" / "report" / "table2.md").read_text())
    assert table["32 × 32"][0] == "tied"
    sig = read_csv(tmp_path / "s" / "report" / "significance.csv")[0]
    assert sig["others"] == "1" and sig["tied"] == "32"  # only 64 px is tested against the best


def test_mixed_init_is_refused_unless_asked_for(tmp_path, capsys):
    from cxr_fast.cli import main

    cells = {("Nodule", r, "resnet34", 3): s for r, s in ((32, 0.2), (64, 0.6), (128, 2.5))}
    make_study(tmp_path / "s", cells, [GRID2],
               extra={("Nodule", 64, "resnet34", 3): {"init": "random", "weights_sha256": None, "weights_file": None}})
    with pytest.raises(CxrError) as err:
        make_report(tmp_path / "s")
    msg = str(err.value)
    assert "\n" not in msg and "results.jsonl" in msg and "--mixed-init" in msg
    assert "random: Nodule/resnet34-e3/r64" in msg
    assert "imagenet (sha256 abababababab…): Nodule/resnet34-e3/r32, Nodule/resnet34-e3/r128" in msg
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "no")]) == 2
    err_line = capsys.readouterr().err.strip()
    assert len(err_line.splitlines()) == 1 and "Table 2 would mix initialisations" in err_line
    assert not (tmp_path / "no").exists()
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "yes"), "--mixed-init"]) == 0
    table = md_cells((tmp_path / "yes" / "table2.md").read_text())
    assert table["64 × 64"][0].endswith("[init random]") and "[init" not in table["32 × 32"][0]
    md = (tmp_path / "yes" / "table2.md").read_text()
    assert "Init: imagenet (weights resnet34.pth, sha256 abababababab…) in 2 cells; random in 1 cell, marked " \
           "[init random]" in md
    # Rows from before inits were recorded count as 'unknown', which is not 'imagenet'.
    make_study(tmp_path / "old", {("Nodule", 32, "resnet34", 3): 0.2}, [GRID2], base=None)
    make_study(tmp_path / "old", {("Nodule", 64, "resnet34", 3): 0.6}, [GRID2])
    with pytest.raises(CxrError, match="unknown: Nodule/resnet34-e3/r32"):
        make_report(tmp_path / "old")


def test_every_table_names_init_and_recipe(study, tmp_path):
    make_report(study, tmp_path / "out")
    for name in ("table2.md", "table3.md", "report.md"):
        assert "Init: imagenet (weights resnet34.pth, sha256 abababababab…) in all" in \
            (tmp_path / "out" / name).read_text()
    assert "recipe: fastai07 in all 5 cells" in (tmp_path / "out" / "table2.md").read_text()
    rows = read_csv(tmp_path / "out" / "table2.csv")
    kinds = {(r["init"], r["recipe"], r["weights_sha256"]) for r in rows if r["auc"]}
    assert kinds == {("imagenet", "fastai07", "ab" * 32)}
    # Old rows load; their init, recipe and leakage read 'unknown'.
    make_study(tmp_path / "old", {("Nodule", 32, "resnet34", 3): 0.2, ("Nodule", 64, "resnet34", 3): 1.0}, [GRID2],
               base=None)
    make_report(tmp_path / "old")
    md = (tmp_path / "old" / "report" / "report.md").read_text()
    assert "Init: unknown in all 2 cells · recipe: unknown in all 2 cells." in md
    assert "Nodule: unknown, these runs predate leakage recording" in md
    # A recipe that differs is marked on its cell (it is not refused).
    make_study(tmp_path / "rec", {("Nodule", 32, "resnet34", 3): 0.2, ("Nodule", 64, "resnet34", 3): 1.0,
                                  ("Nodule", 128, "resnet34", 3): 1.1}, [GRID2],
               extra={("Nodule", 32, "resnet34", 3): {"recipe": "modern"}})
    make_report(tmp_path / "rec")
    assert md_cells((tmp_path / "rec" / "report" / "table2.md").read_text())["32 × 32"][0].endswith("[recipe modern]")


def test_auc_sd_note_gets_a_footnote_mark(tmp_path):
    cells = {("Hernia", 32, "resnet34", 3): 0.5, ("Hernia", 64, "resnet34", 3): 1.0}
    note = "one positive: DeLong SD omits the positives' variance"
    make_study(tmp_path / "s", cells, [{**GRID2, "labels": ["Hernia"], "resolutions": [32, 64]}],
               extra={("Hernia", 32, "resnet34", 3): {"auc_sd_note": note}})
    make_report(tmp_path / "s")
    table = md_cells((tmp_path / "s" / "report" / "table2.md").read_text())
    assert "§" in table["32 × 32"][0] and "§" not in table["64 × 64"][0]
    assert f"§ {note} (Hernia/resnet34-e3/r32)." in (tmp_path / "s" / "report" / "table2.md").read_text()


def test_leakage_section_states_the_share_per_label(tmp_path):
    cells = {("Nodule", 32, "resnet34", 3): 0.5, ("Nodule", 64, "resnet34", 3): 1.0, ("Mass", 32, "resnet34", 3): 1.0}
    make_study(tmp_path / "s", cells, [GRID2], extra={
        ("Mass", 32, "resnet34", 3): {"split": "patient", "val_leak_share": 0.0, "val_leak_images": 0}})
    make_report(tmp_path / "s")
    md = (tmp_path / "s" / "report" / "report.md").read_text()
    assert "- Nodule: 71% of validation images (213 of 300) have a patient in training (image-wise split)." in md
    assert "- Mass: 0% of validation images (0 of 300) have a patient in training (patient-wise split)." in md
    rows = {r["label"]: r for r in read_csv(tmp_path / "s" / "report" / "leakage.csv")}
    nodule = rows["Nodule"]
    assert (nodule["val_leak_share"], nodule["val_leak_images"], nodule["cells"]) == ("0.71", "213", "2")
    assert rows["Mass"]["split"] == "patient"


def test_table1_section_says_not_run(tmp_path):
    cells = {("Nodule", 64, "resnet34", 3): 0.5, ("Nodule", 320, "resnet34", 3): 1.5, ("Mass", 64, "resnet34", 3): 1.0}
    grid = {**GRID2, "resolutions": [64, 320]}
    make_study(tmp_path / "s", cells, [grid], extra={("Nodule", 320, "resnet34", 3): {"accuracy": 0.901}})
    make_report(tmp_path / "s")
    store = {(r["label"], r["res"]): r for r in read_jsonl(tmp_path / "s" / "results.jsonl")}
    table = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")[1:]]
             for line in (tmp_path / "s" / "report" / "table1.md").read_text().splitlines() if line.startswith("| ")}
    n64, n320 = store[("Nodule", 64)], store[("Nodule", 320)]
    assert table["Nodule"] == [f"{n64['auc']:.3f} ± {n64['auc_sd']:.3f}", f"{n320['auc']:.3f} ± {n320['auc_sd']:.3f}",
                               "81.2", "90.1", "2.500"]
    assert table["Mass"][1] == "not run" and table["Mass"][3] == "not run" and table["Mass"][2] == "81.2"
    rows = {r["label"]: r for r in read_csv(tmp_path / "s" / "report" / "table1.csv")}
    assert rows["Mass"]["status320"] == "not run" and rows["Mass"]["auc320"] == ""
    assert float(rows["Nodule"]["accuracy320"]) == 0.901


HERNIA_GRID = {"name": "hernia2000", "labels": ["Hernia"], "resolutions": [256], "archs": ["resnet34"], "epochs": 3,
               "train": {"subsample_size": 2000}}


def test_hernia2000_section_with_and_without_the_cell(tmp_path):
    grid = {**GRID2, "labels": ["Hernia"], "resolutions": [128, 256]}
    ordinary = {("Hernia", 128, "resnet34", 3): 0.3, ("Hernia", 256, "resnet34", 3): 0.6}
    special = ("Hernia", 256, "resnet34", 3, "subsample_size=2000")
    make_study(tmp_path / "with", {special: 2.0, **ordinary}, [grid, HERNIA_GRID],  # the variant row comes first
               extra={special: {"subsample_size": 2000, "grids": ["hernia2000"], "n_val": 400}})
    make_report(tmp_path / "with")
    store = {r["cell_id"]: r for r in read_jsonl(tmp_path / "with" / "results.jsonl")}
    mine, plain = store["Hernia/resnet34-e3-subsample_size=2000/r256"], store["Hernia/resnet34-e3/r256"]
    assert mine["auc"] > plain["auc"] + 0.1
    # Table 2's Hernia 256 px is the ordinary cell, never the 2,000-image variant.
    t2 = {int(r["res"]): r for r in read_csv(tmp_path / "with" / "report" / "table2.csv")}
    assert float(t2[256]["auc"]) == pytest.approx(plain["auc"]) and len(t2) == 2
    md = (tmp_path / "with" / "report" / "hernia2000.md").read_text()
    assert f"| 2,000-image subsample | resnet34 3 ep | 2,000 | 256 px | {mine['auc']:.3f} ± {mine['auc_sd']:.3f} | " \
           f"400 ({mine['n_pos']}) |\n" in md
    assert f"| ordinary cell (Table 2) | resnet34 3 ep | 20,000 | 256 px | {plain['auc']:.3f} ± {plain['auc_sd']:.3f} " \
           "| " \
           f"300 ({plain['n_pos']}) |\n" in md
    csv_rows = {r["run"]: r for r in read_csv(tmp_path / "with" / "report" / "hernia2000.csv")}
    assert float(csv_rows["subsample2000"]["auc"]) == pytest.approx(mine["auc"])
    assert csv_rows["table2"]["cell_id"] == "Hernia/resnet34-e3/r256"
    make_report(tmp_path / "with", tmp_path / "with_paper", compare=True)
    md = (tmp_path / "with_paper" / "hernia2000.md").read_text()
    assert f"| {mine['auc']:.3f} ± {mine['auc_sd']:.3f} | 400 ({mine['n_pos']}) | 0.943 |\n" in md
    assert f"| 300 ({plain['n_pos']}) | 0.804 ± 0.038 |\n" in md
    make_study(tmp_path / "planned", ordinary, [grid, HERNIA_GRID])
    make_report(tmp_path / "planned")
    md = (tmp_path / "planned" / "report" / "hernia2000.md").read_text()
    assert "| 2,000-image subsample | — | 2,000 | 256 px | not run (in the config, not finished) |" in md
    make_study(tmp_path / "without", {("Nodule", 64, "resnet34", 3): 1.0}, [GRID2])
    make_report(tmp_path / "without")
    md = (tmp_path / "without" / "report" / "report.md").read_text()
    assert "## Hernia on a 2,000-image subsample" in md
    assert "| 2,000-image subsample | — | 2,000 | 256 px | not run |" in md
    assert "| ordinary cell (Table 2) | — | — | 256 px | not run |" in md


def test_against_puts_two_studies_side_by_side(tmp_path, capsys):
    from cxr_fast.cli import main
    from cxr_fast.metrics import auc_z_test

    a_cells = {("Nodule", 32, "resnet34", 3): 0.3, ("Nodule", 64, "resnet34", 3): 2.0, ("Mass", 64, "resnet34", 3): 1.0}
    b_cells = {("Nodule", 32, "resnet34", 3): 0.2, ("Nodule", 64, "resnet34", 3): 0.4,
               ("Mass", 128, "resnet34", 3): 1.0}
    make_study(tmp_path / "a", a_cells, [GRID2], name="paper")
    b_extra = {k: {"split": "patient", "val_leak_share": 0.0, "val_leak_images": 0, "init": "random",
                   "weights_sha256": None} for k in b_cells}
    make_study(tmp_path / "b", b_cells, [GRID2], name="paper-patients", n=200, extra=b_extra)
    assert main(["report", str(tmp_path / "a"), "--against", str(tmp_path / "b"), "--out", str(tmp_path / "r"),
                 "--mixed-init"]) == 0  # B started from random init: refused without it (issue 19)
    assert "paper (A) against paper-patients (B)" in capsys.readouterr().out
    rows = read_csv(tmp_path / "r" / "against.csv")
    assert [(r["label"], r["res"]) for r in rows] == [("Nodule", "32"), ("Nodule", "64")]  # only shared cells
    ra = {r["res"]: r for r in read_jsonl(tmp_path / "a" / "results.jsonl") if r["label"] == "Nodule"}
    rb = {r["res"]: r for r in read_jsonl(tmp_path / "b" / "results.jsonl") if r["label"] == "Nodule"}
    for row in rows:
        a, b = ra[int(row["res"])], rb[int(row["res"])]
        z, p = auc_z_test(a["auc"], a["auc_sd"], b["auc"], b["auc_sd"])
        assert float(row["diff"]) == pytest.approx(a["auc"] - b["auc"])
        assert float(row["z"]) == pytest.approx(z) and float(row["p_z"]) == pytest.approx(p)
        assert (row["init_a"], row["init_b"]) == ("imagenet (sha256 abababababab…)", "random")
        assert row["split_b"] == "patient"
    assert float(next(r for r in rows if r["res"] == "64")["p_z"]) < 0.05
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## paper (A) against paper-patients (B)" in md and "Inits differ between A and B" in md
    assert "image-wise split" in md and "patient-wise split" in md
    a64, b64 = ra[64], rb[64]
    assert f"| Nodule | resnet34 3 ep | 64 px | {a64['auc']:.3f} ± {a64['auc_sd']:.3f} | " \
           f"{b64['auc']:.3f} ± {b64['auc_sd']:.3f} | {a64['auc'] - b64['auc']:+.3f} |" in md
    with pytest.raises(CxrError, match="not a study folder"):
        make_report(tmp_path / "a", tmp_path / "r2", against=tmp_path / "nothing")


def test_architectures_compared_as_the_paper_did(tmp_path):
    from cxr_fast.metrics import auc_z_test, paired_delong_test

    cells = {(label, res, arch, 10): s for label in ("Mass", "Nodule") for res, s in ((64, 0.5), (224, 1.5))
             for arch in ("resnet34", "densenet121")}
    cells[("Mass", 224, "densenet121", 10)] = 0.6
    grid = {"name": "table3", "labels": ["Mass", "Nodule"], "resolutions": [64, 224],
            "archs": ["resnet34", "densenet121"], "epochs": 10}
    make_study(tmp_path / "s", cells, [grid])
    make_report(tmp_path / "s", compare=True)
    rows = {(r["label"], int(r["res"])): r for r in read_csv(tmp_path / "s" / "report" / "table3_architectures.csv")}
    assert len(rows) == 4
    assert (rows[("Mass", 224)]["arch_a"], rows[("Mass", 224)]["arch_b"]) == ("resnet34", "densenet121")
    store = {(r["label"], r["res"], r["arch"]): r for r in read_jsonl(tmp_path / "s" / "results.jsonl")}
    a, b = store[("Mass", 224, "resnet34")], store[("Mass", 224, "densenet121")]
    z, p = auc_z_test(a["auc"], a["auc_sd"], b["auc"], b["auc_sd"])
    assert float(rows[("Mass", 224)]["z"]) == pytest.approx(z) and float(rows[("Mass", 224)]["p_z"]) == pytest.approx(p)
    with np.load(tmp_path / "s" / a["run_dir"] / "predictions.npz") as za, \
            np.load(tmp_path / "s" / b["run_dir"] / "predictions.npz") as zb:
        order = np.argsort(zb["image_ids"])[np.argsort(np.argsort(za["image_ids"]))]
        _, p_paired = paired_delong_test(za["labels"], za["scores"], zb["scores"][order])
    assert float(rows[("Mass", 224)]["p_paired"]) == pytest.approx(p_paired)
    # The paper's own B against C from Table 3's published AUC ± SD: Mass 224 px 0.879 ± 0.006 vs 0.866 ± 0.007.
    pz, pp = auc_z_test(0.879, 0.006, 0.866, 0.007)
    assert float(rows[("Mass", 224)]["paper_diff"]) == pytest.approx(0.013)
    assert float(rows[("Mass", 224)]["paper_p_z"]) == pytest.approx(pp)
    md = (tmp_path / "s" / "report" / "report.md").read_text()
    assert "resnet34 10 ep (B) against densenet121 10 ep (C)" in md


def test_compare_paper_shows_every_published_value(tmp_path):
    cells = {("Nodule", 64, "resnet34", 3): 0.5, ("Nodule", 320, "resnet34", 3): 1.5,
             ("Hernia", 256, "resnet34", 3): 1.0}
    make_study(tmp_path / "s", cells, [{**GRID2, "labels": ["Nodule", "Hernia"], "resolutions": [64, 256, 320]}])
    make_report(tmp_path / "s", compare=True)
    t1 = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")[1:]]
          for line in (tmp_path / "s" / "report" / "table1.md").read_text().splitlines() if line.startswith("| ")}
    assert t1["Nodule"][1] == "0.689 ± 0.009" and t1["Nodule"][3] == "0.854 ± 0.006"
    assert t1["Nodule"][6] == "80.1" and t1["Nodule"][8] == "2.159"
    assert t1["Emphysema"][0] == "not run" and t1["Emphysema"][8] == "6.949"  # every paper label is listed
    assert "| 2,000-image subsample | — | 2,000 | 256 px | not run | — | 0.943 |" in \
           (tmp_path / "s" / "report" / "hernia2000.md").read_text()
    sig = (tmp_path / "s" / "report" / "significance.md").read_text()
    # The paper's Nodule best (448 px, 0.868 ± 0.006) against 320 px (0.854 ± 0.006): z = 1.65, p = 0.099.
    assert "| Nodule | resnet34 3 ep |" in sig and "448 px" in sig and "not 320 px p = 0.099" in sig
    assert "Paper: not measured" in (tmp_path / "s" / "report" / "leakage.md").read_text()


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
        t64, t320 = paper_results.TABLE2[label][64], paper_results.TABLE2[label][320]
        assert (t64.auc, t64.sd) == (row.auc64.auc, row.auc64.sd)
        assert (t320.auc, t320.sd) == (row.auc320.auc, row.auc320.sd)
    for label in ("Mass", "Nodule"):
        for res in paper_results.RESOLUTIONS:
            a, t2 = paper_results.TABLE3[("resnet34", 3)][label][res], paper_results.TABLE2[label][res]
            assert (a.auc, a.sd) == (t2.auc, t2.sd)
    for label, col in paper_results.TABLE2.items():
        stars = [r for r, v in col.items() if v.best]
        assert len(stars) == 1 and col[stars[0]].auc == max(v.auc for v in col.values())
    for label, row in paper_results.TABLE1.items():  # weight = negatives / positives in a 20,000-image subsample
        size = paper_results.SUBSAMPLE_SIZE
        # abs=1e-3: the paper cuts rather than rounds (Hernia 87.1057 is printed 87.105)
        assert row.loss_weight == pytest.approx((size - row.positives) / row.positives, abs=1e-3), label
        assert 50 < row.accuracy320 < 100 and row.single_finding < row.positives
    hernia = paper_results.HERNIA_SUBSAMPLE
    assert (hernia.label, hernia.subsample_size, hernia.res, hernia.auc) == ("Hernia", 2000, 256, 0.943)
    assert hernia.auc > paper_results.TABLE2["Hernia"][256].auc  # the text: Hernia "improves to 0.943"
    # The text's Edema 32 px figure, 88.1% (0.814 of 0.924), repeats Table 2.
    edema = paper_results.TABLE2["Edema"]
    assert 100 * edema[32].auc / edema[320].auc == pytest.approx(88.1, abs=0.05)
    assert json.dumps(paper_results.paper_auc("Nodule", 320).auc) == "0.854"
    assert paper_results.paper_auc("Nodule", 320, "densenet121", 3) is None


# --------------------------------------------------------------------------------------------------
# Controls (issue 10): the two answers in words, every cell as JSON


CONTROL_GRID = {"name": "table2", "labels": ["Nodule", "Mass", "Null_Control"], "resolutions": [32, 64, 128],
                "archs": ["resnet34"], "epochs": 3}


def control_study(root: Path, nodule: tuple[float, float, float] = (0.1, 0.8, 1.6),
                  mass: tuple[float, float, float] = (1.5, 1.6, 1.6), null: tuple[float, float, float] = (0, 0, 0),
                  data: str | None = "phantom:n=1000,size=256,null=0.3") -> Path:
    """A control study: signal strength per resolution (32, 64, 128) for each of the three labels."""
    cells = {(label, res, "resnet34", 3): s for label, strengths in (("Nodule", nodule), ("Mass", mass),
                                                                     ("Null_Control", null))
             for res, s in zip((32, 64, 128), strengths)}
    make_study(root, cells, [CONTROL_GRID], name="control")
    if data is not None:
        (root / "study.yaml").write_text(yaml.safe_dump({"name": "control", "train": {"seed": 0, "data": data},
                                                         "grids": [CONTROL_GRID]}))
    return root


def test_controls_section_answers_both_questions_with_the_numbers(tmp_path, capsys):
    from cxr_fast.cli import main
    from cxr_fast.metrics import paired_delong_test

    root = control_study(tmp_path / "s")
    assert main(["report", str(root), "--out", str(tmp_path / "r"), "--json", str(tmp_path / "r.json")]) == 0
    assert "Positive control" in capsys.readouterr().out
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Controls" in md and md.index("## Controls") < md.index("## Table 3")
    store = {(r["label"], r["res"]): r for r in read_jsonl(root / "results.jsonl")}
    n32, n128 = store[("Nodule", 32)], store[("Nodule", 128)]
    pos = next(line for line in md.splitlines() if line.startswith("**Positive control"))
    assert "?** Yes." in pos
    assert f"from {n128['auc']:.3f} ± {n128['auc_sd']:.3f} at 128 px to {n32['auc']:.3f} ± {n32['auc_sd']:.3f} " \
           f"at 32 px, a low/high ratio of {n32['auc'] / n128['auc']:.3f}" in pos
    neg = next(line for line in md.splitlines() if line.startswith("**Negative control"))
    assert "?** Yes: the largest distance from 0.5 is" in neg and "at 64 px" in neg

    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc["cells"]) == 9 and doc["controls"]["positive"]["answer"] == "yes"
    assert doc["controls"]["negative"]["answer"] == "yes"
    cell = next(c for c in doc["cells"] if (c["label"], c["resolution"]) == ("Nodule", 32))
    assert {"label", "resolution", "architecture", "auc", "delong_sd", "paired_delong_p_vs_highest"} <= set(cell)
    assert cell["architecture"] == "resnet34" and cell["role"] == "small lesion" and cell["highest_resolution"] == 128
    assert cell["auc"] == pytest.approx(n32["auc"]) and cell["delong_sd"] == pytest.approx(n32["auc_sd"])
    y = val_labels("Nodule")  # make_study's scores, rebuilt: the p is DeLong's paired test against 128 px
    ids = np.array([f"Nodule_{i:05d}.png" for i in range(300)])
    scores = {}
    for res in (32, 128):
        with np.load(root / "runs" / f"Nodule/resnet34-e3/r{res}" / "predictions.npz") as z:
            order = {k: i for i, k in enumerate(z["image_ids"].tolist())}
            scores[res] = z["scores"][[order[k] for k in ids]]
    assert cell["paired_delong_p_vs_highest"] == pytest.approx(paired_delong_test(y, scores[128], scores[32])[1])
    top = next(c for c in doc["cells"] if (c["label"], c["resolution"]) == ("Nodule", 128))
    assert top["paired_delong_p_vs_highest"] is None
    assert str(tmp_path) not in (tmp_path / "r.json").read_text()  # no machine paths
    assert (tmp_path / "r" / "controls.csv").is_file() and (tmp_path / "r" / "figure2.png").read_bytes()[:8] == PNG


def test_controls_say_no_when_the_null_label_leaks_or_the_small_lesion_holds_up(tmp_path):
    # A copied study whose phantom folder is not on this machine: the null label alone proves the phantom.
    root = control_study(tmp_path / "leak", null=(0.0, 0.9, 0.0), data="/elsewhere/cache/phantom-v3-n1000")
    make_report(root, tmp_path / "r1", json_path=tmp_path / "r1.json")
    neg = json.loads((tmp_path / "r1.json").read_text())["controls"]["negative"]
    assert neg["answer"] == "no" and abs(neg["sd_from_half"]["64"]) > 2
    assert "No: outside at 64 px" in (tmp_path / "r1" / "controls.md").read_text()

    flat = control_study(tmp_path / "flat", nodule=(1.5, 1.55, 1.6))
    make_report(flat, tmp_path / "r2", json_path=tmp_path / "r2.json")
    pos = json.loads((tmp_path / "r2.json").read_text())["controls"]["positive"]
    assert pos["answer"] == "no" and not pos["small_drop_significant"]
    assert "No: Nodule's own drop is not significant at p < 0.05" in (tmp_path / "r2" / "controls.md").read_text()


def test_no_controls_on_real_data_without_the_null_label(tmp_path):
    root = tmp_path / "real"
    make_study(root, {("Nodule", 32, "resnet34", 3): 0.2, ("Mass", 32, "resnet34", 3): 1.0,
                      ("Nodule", 64, "resnet34", 3): 1.0, ("Mass", 64, "resnet34", 3): 1.0}, [GRID2])
    (root / "study.yaml").write_text(yaml.safe_dump({"name": "real", "train": {"data": str(tmp_path / "nih")},
                                                     "grids": [GRID2]}))
    result = make_report(root, tmp_path / "r", json_path=tmp_path / "r.json")
    assert not any(s.name == "controls" for s in result.sections) and not (tmp_path / "r" / "controls.md").exists()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["controls"] is None and len(doc["cells"]) == 4
    assert {c["role"] for c in doc["cells"]} == {None}
