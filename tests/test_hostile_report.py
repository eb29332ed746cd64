"""Issue 19, classes 3 and 17 and class 9's results row: the report concludes nothing from missing evidence,
reads every results row by the one rule the study's resume reads it by, and never passes on numpy's advice
to unpickle a file. Study folders are built as `cxr-fast study` leaves them (tests/test_report.py's
``make_study``), without training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_report import GRID2, NODULE_GRID, control_study, make_study

from cxr_fast.cli import main
from cxr_fast.errors import CxrError

NODULE_32 = "runs/Nodule/resnet34-e3/r32/predictions.npz"


def _report(capsys, root: Path, out: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["report", str(root), "--out", str(out), *extra])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------------
# Class 3: a verdict the data cannot support says "cannot tell, because ..."


def test_without_runs_the_controls_verdict_is_cannot_tell_not_no(tmp_path, capsys):
    root = control_study(tmp_path / "s")
    shutil.rmtree(root / "runs")
    code, _ = _report(capsys, root, tmp_path / "r", "--json", str(tmp_path / "r.json"))
    assert code == 0
    md = (tmp_path / "r" / "controls.md").read_text()
    pos = next(line for line in md.splitlines() if line.startswith("**Positive control"))
    assert "?** Cannot tell, because Nodule's drop (128 against 32 px) has no paired DeLong test" in pos
    assert "predictions.npz" in pos and "missing" in pos and "No:" not in pos
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["controls"]["positive"]["answer"] == "cannot tell" and "missing" in doc["controls"]["positive"]["why"]
    # Table 2 says which cells could get no ‡ and why, so a missing mark does not read as "not significant".
    assert "No paired DeLong test (so no ‡ either way) for 6 cell(s)" in (tmp_path / "r" / "table2.md").read_text()


def test_one_missing_predictions_file_makes_best_beats_all_cannot_tell(tmp_path, capsys):
    cells = {("Nodule", 32, "resnet34", 3): 0.0, ("Nodule", 64, "resnet34", 3): 0.2,
             ("Nodule", 128, "resnet34", 3): 2.5}
    make_study(tmp_path / "s", cells, [NODULE_GRID])
    (tmp_path / "s" / "runs/Nodule/resnet34-e3/r64/predictions.npz").unlink()
    assert _report(capsys, tmp_path / "s", tmp_path / "r")[0] == 0
    sig = (tmp_path / "r" / "significance.md").read_text()
    # 128 px beats 32 px by the paired test; 64 px is untested: that is not a "no".
    assert "cannot tell (1 of 2 beaten; untested: 64 px, because runs/Nodule/resnet34-e3/r64/predictions.npz " \
           "is missing)" in sig


def test_truncated_predictions_are_one_line_naming_the_file(tmp_path, capsys):
    root = control_study(tmp_path / "s")
    path = root / NODULE_32
    path.write_bytes(path.read_bytes()[:300])
    code, err = _report(capsys, root, tmp_path / "r")
    line = _one_line(err)
    assert code == 2 and str(path) in line and "cut short" in line and "rerun that cell or delete the file" in line
    assert not (tmp_path / "r").exists()  # nothing concluded, nothing written


def test_predictions_holding_fewer_images_than_the_row_are_refused(tmp_path, capsys):
    root = control_study(tmp_path / "s")
    path = root / NODULE_32
    with np.load(path) as z:
        arrays = {k: z[k][:150] for k in z.files}  # the run scored 300 images; half are left
    np.savez(path, **arrays)
    code, err = _report(capsys, root, tmp_path / "r")
    line = _one_line(err)
    assert code == 2 and str(path) in line and "holds 150 images but its results row counted 300" in line


# --------------------------------------------------------------------------------------------------
# Class 17: numpy's advice to load a garbage file with pickles allowed is never passed on


def test_garbage_predictions_error_gives_no_pickle_advice(tmp_path, capsys):
    root = control_study(tmp_path / "s")
    (root / NODULE_32).write_bytes(b"this is not a numpy file" * 20)
    code, err = _report(capsys, root, tmp_path / "r")
    line = _one_line(err)
    assert code == 2 and str(root / NODULE_32) in line
    assert "allow_pickle" not in line and "pickle.load" not in line and "trust" not in line


def test_a_garbage_npy_array_is_one_line_without_the_advice(tmp_path):
    from cxr_fast.io import load_npy

    bad = tmp_path / "224.npy"
    bad.write_bytes(b"\x80\x04garbage" * 10)  # what numpy takes for a pickle
    with pytest.raises(CxrError) as info:
        load_npy(bad, mmap_mode="r")
    assert str(bad) in str(info.value) and "allow_pickle" not in str(info.value)
    np.save(tmp_path / "ok.npy", np.arange(4, dtype=np.uint8))
    assert load_npy(tmp_path / "ok.npy", mmap_mode="r").tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------------
# Class 3 and class 9: every results row is checked by one rule, by the report and by the study's resume


def _rewrite_row(root: Path, index: int, raw: str) -> None:
    """Replace one line of results.jsonl with ``raw`` (JSON text, so NaN can be written as numpy would)."""
    path = root / "results.jsonl"
    lines = path.read_text().splitlines()
    lines[index] = raw
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("field, text, said", [
    ("auc", "NaN", "auc must be a finite number, got nan"),
    ("auc", "null", "auc must be a number in [0, 1], got None"),
    ("auc", '"0.8"', "auc must be float, got '0.8'"),
    ("auc", "1.7", "auc must be in [0, 1], got 1.7"),
    ("res", '"abc"', "res must be int, got 'abc'"),
    ("auc_sd", "-0.01", "auc_sd must be 0 or more, got -0.01"),
])
def test_a_bad_row_is_named_by_the_report_and_by_the_study(tmp_path, capsys, field, text, said):
    from cxr_fast.api import results

    root = tmp_path / "s"
    make_study(root, {("Nodule", 32, "resnet34", 3): 0.2, ("Nodule", 64, "resnet34", 3): 1.0}, [NODULE_GRID])
    row = json.loads((root / "results.jsonl").read_text().splitlines()[1])
    raw = json.dumps(row).replace(f'"{field}": {json.dumps(row[field])}', f'"{field}": {text}')
    assert raw != json.dumps(row)
    _rewrite_row(root, 1, raw)
    code, err = _report(capsys, root, tmp_path / "r")
    line = _one_line(err)
    assert code == 2 and f"results.jsonl:2 (Nodule/resnet34-e3/r64): {said}" in line, line
    assert not (tmp_path / "r").exists()
    with pytest.raises(CxrError, match=r"results\.jsonl:2 \(Nodule/resnet34-e3/r64\): " + _re(said)):
        results(root)  # the study's own store, which its resume reads


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_a_study_resume_refuses_a_bad_row_instead_of_counting_it_done(tmp_path):
    from cxr_fast.study import load_study_config, run_cells

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"name": "h", "train": {"init": "random", "data": "/nonexistent"},
                                      "grids": [{"name": "g", "labels": ["Nodule"], "resolutions": [32],
                                                 "epochs": 1}]}))
    calls = []

    def fake(cfg):
        calls.append(cfg.res)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        return {"auc": 0.6, "auc_sd": 0.01, "n_pos": 5, "n_neg": 5, "init": "random"}

    out = tmp_path / "out"
    run_cells(load_study_config(config), out, run_fn=fake, progress=False)
    row = json.loads((out / "results.jsonl").read_text())
    _rewrite_row(out, 0, json.dumps({**row, "res": "abc"}))
    with pytest.raises(CxrError, match=r"results\.jsonl:1 \(Nodule/.*\): res must be int, got 'abc'"):
        run_cells(load_study_config(config), out, run_fn=fake, progress=False)
    assert calls == [32]


def test_a_tied_row_without_an_auc_still_reads(tmp_path, capsys):
    cells = {("Nodule", 32, "resnet34", 3): 0.0, ("Nodule", 64, "resnet34", 3): 1.0}
    key = ("Nodule", 32, "resnet34", 3)
    make_study(tmp_path / "s", cells, [NODULE_GRID], scores={key: np.zeros(300)},
               extra={key: {"auc": None, "auc_sd": None, "auc_status": "tied"}})
    assert _report(capsys, tmp_path / "s", tmp_path / "r")[0] == 0


def test_a_row_whose_label_is_not_in_the_config_is_named_not_a_new_column(tmp_path, capsys):
    root = tmp_path / "s"
    make_study(root, {("Nodule", 32, "resnet34", 3): 0.2, ("Mass", 32, "resnet34", 3): 1.0}, [NODULE_GRID])
    code, err = _report(capsys, root, tmp_path / "r")
    line = _one_line(err)
    assert code == 2 and "results.jsonl:2 (Mass/resnet34-e3/r32): label 'Mass' is not in study.yaml's grids " \
                          "(Nodule)" in line
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------------
# Class 3: --against states every setting that differs, and refuses different inits as Table 2 does


def test_against_states_every_difference_and_refuses_different_inits(tmp_path, capsys):
    cells = {("Nodule", 32, "resnet34", 3): 0.3, ("Nodule", 64, "resnet34", 3): 2.0}
    make_study(tmp_path / "a", cells, [GRID2], name="A")
    make_study(tmp_path / "b", cells, [GRID2], name="B", extra={k: {"recipe": "modern"} for k in cells})
    (tmp_path / "b" / "study.yaml").write_text(yaml.safe_dump(
        {"name": "B", "train": {"seed": 0, "lr": 0.001, "recipe": "modern"}, "grids": [GRID2]}))
    code, _ = _report(capsys, tmp_path / "a", tmp_path / "r", "--against", str(tmp_path / "b"))
    assert code == 0
    md = (tmp_path / "r" / "against.md").read_text()
    assert "Settings that differ (A / B): lr 0.0005 / 0.001; recipe fastai07 / modern." in md

    make_study(tmp_path / "c", cells, [GRID2], name="C",
               extra={k: {"init": "random", "weights_sha256": None} for k in cells})
    code, err = _report(capsys, tmp_path / "a", tmp_path / "r2", "--against", str(tmp_path / "c"))
    line = _one_line(err)
    assert code == 2 and "different inits" in line and "--mixed-init" in line and not (tmp_path / "r2").exists()
    code, _ = _report(capsys, tmp_path / "a", tmp_path / "r3", "--against", str(tmp_path / "c"), "--mixed-init")
    assert code == 0
    md = (tmp_path / "r3" / "against.md").read_text()
    assert "init imagenet (sha256 abababababab…) / random" in md and "Inits differ between A and B" in md


def test_against_same_settings_says_so(tmp_path, capsys):
    cells = {("Nodule", 32, "resnet34", 3): 0.3}
    make_study(tmp_path / "a", cells, [NODULE_GRID], name="A")
    make_study(tmp_path / "b", cells, [NODULE_GRID], name="B", n=200)
    assert _report(capsys, tmp_path / "a", tmp_path / "r", "--against", str(tmp_path / "b"))[0] == 0
    assert "No setting that changes results differs between A and B." in (tmp_path / "r" / "against.md").read_text()


def test_a_finished_runs_impossible_row_is_refused_before_it_is_written(tmp_path):
    """The row of a run just finished is checked by the rule it is read back by: written, an AUC of 1.7
    would only be caught when the report reads it; here the study stops and the file keeps what it had."""
    from cxr_fast.study.results import ResultsStore

    store = ResultsStore(tmp_path / "results.jsonl")
    good = {"cell_id": "Effusion/resnet34-e1/r32", "label": "Effusion", "res": 32, "arch": "resnet34", "epochs": 1,
            "auc": 0.7, "auc_sd": 0.05}
    store.append(good)
    before = store.path.read_bytes()
    with pytest.raises(CxrError, match=r"Effusion/resnet34-e1/r64.*auc.*1\.7.*not written, so a rerun redoes"):
        store.append(dict(good, cell_id="Effusion/resnet34-e1/r64", res=64, auc=1.7))
    assert store.path.read_bytes() == before
