"""A study's batch-size axis: ``batch_sizes: [8, 16, 32]`` runs each cell once per batch size, each its own cell (id,
run folder, fingerprint, row), resumable like any cell. The report gives each batch size its own set of rows in
Tables 2 and 3: its own star, paired DeLong tests between resolutions of that batch size only, and a seed spread
over its own seeds, never averaged with another batch size's. A study without the key keeps its cells and rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxr_fast.errors import CxrError
from cxr_fast.metrics import delong_auc_variance, paired_delong_test
from cxr_fast.report.build import make_report
from cxr_fast.study import apply_overrides, checked_cells, expand, parse_study, run_cells
from test_seeds import md_cells, read_csv, rows_of  # the study tests' readers of results and report tables

REPO = Path(__file__).resolve().parents[1]
N_VAL = 200
# tests/test_study.py's fake_config(), as in tests/test_seeds.py: its cells as the code before either axis made them.
PLAIN = {"name": "fake", "train": {"lr": 5e-4, "data": "/nonexistent", "init": "random"},
         "grids": [{"name": "table2", "labels": ["Nodule", "Mass"], "resolutions": [32, 64], "epochs": 1}]}
PLAIN_CELLS = [("Nodule/resnet34-e1/r32", "766372db4320"), ("Nodule/resnet34-e1/r64", "8ed67401d658"),
               ("Mass/resnet34-e1/r32", "b6b75c4f080b"), ("Mass/resnet34-e1/r64", "0acbc3e8597e")]


def batched(sizes: object = None, **more) -> dict:
    return {**PLAIN, **({"batch_sizes": sizes} if sizes is not None else {}), **more}


def with_grid(**grid) -> dict:
    return {**PLAIN, "grids": [{**PLAIN["grids"][0], **grid}]}


class BatchRun:
    """Stands in for training. Each (label, seed) has one validation set, shared by its resolutions and batch sizes
    as a real subsample is (the subsample does not depend on the batch size). At batch 8 the signal grows with
    resolution, at batch 32 it shrinks, so each batch size has its own best resolution. Writes the scores and
    returns their AUC and DeLong SD."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    def __call__(self, cfg) -> dict:
        self.calls.append((cfg.label, cfg.res, cfg.batch_size, cfg.seed))
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        y = (np.random.default_rng([cfg.seed, len(cfg.label)]).random(N_VAL) < 0.3).astype(np.float32)
        noise = np.random.default_rng([cfg.seed, len(cfg.label), cfg.res, cfg.batch_size]).normal(0, 1, N_VAL)
        slope = {8: 1.0, 16: 0.2, 32: -1.0}[cfg.batch_size]
        s = (y * (1.0 + slope * cfg.res / 64 + 0.1 * cfg.seed) + noise).astype(np.float32)
        ids = np.array([f"{cfg.label}_s{cfg.seed}_{i:04d}.png" for i in range(N_VAL)])
        np.savez(out / "predictions.npz", image_ids=ids, labels=y, scores=s)
        auc, var = delong_auc_variance(y, s)
        return {"auc": auc, "auc_sd": float(np.sqrt(var)), "n_pos": int(y.sum()), "n_neg": int(N_VAL - y.sum()),
                "n_val": N_VAL, "seed": cfg.seed, "init": "random", "recipe": "fastai07", "split": "image",
                "accuracy": 0.5, "wall_s": 0.1, "train_images_per_s": 1.0}


def batch_in(row: dict) -> int:
    """The batch size a row's cell id names; 8, the default and the cells' own run, where it names none."""
    match = re.search(r"batch_size=(\d+)", row["cell_id"])
    return int(match.group(1)) if match else 8


# ---------------------------------------------------------------------------------------------- cells


def test_each_batch_size_is_its_own_cell_with_its_own_id_folder_and_fingerprint():
    cells = checked_cells(parse_study(batched([32, 8, 16])))
    assert len(cells) == 2 * 2 * 3
    nodule32 = {c.config.batch_size: c for c in cells if (c.label, c.res) == ("Nodule", 32)}
    assert sorted(nodule32) == [8, 16, 32]
    # The batch size the cell runs at without the axis (the default, 8) is the cell's own run: today's id and
    # fingerprint, so a finished study keeps its runs.
    assert (nodule32[8].cell_id, nodule32[8].fingerprint, nodule32[8].tag) == (*PLAIN_CELLS[0], "")
    assert nodule32[16].cell_id == "Nodule/resnet34-e1-batch_size=16/r32" and nodule32[16].tag == "batch_size=16"
    assert nodule32[32].config.out.endswith("runs/Nodule/resnet34-e1-batch_size=32/r32")
    assert len({c.cell_id for c in cells}) == len({c.fingerprint for c in cells}) == len(cells)
    # A label's resolutions stay together per batch size, as a label's resolutions per seed do.
    assert [c.cell_id for c in cells][:4] == ["Nodule/resnet34-e1/r32", "Nodule/resnet34-e1/r64",
                                              "Nodule/resnet34-e1-batch_size=16/r32",
                                              "Nodule/resnet34-e1-batch_size=16/r64"]


def test_the_stated_batch_size_is_the_cells_own_run_and_an_unlisted_default_leaves_no_untagged_cell():
    stated = expand(parse_study(batched([8, 16, 32], train={**PLAIN["train"], "batch_size": 16})))
    nodule32 = {c.settings.get("batch_size"): c.cell_id for c in stated if (c.label, c.res) == ("Nodule", 32)}
    assert nodule32 == {16: "Nodule/resnet34-e1/r32", 8: "Nodule/resnet34-e1-batch_size=8/r32",
                        32: "Nodule/resnet34-e1-batch_size=32/r32"}
    # Without 8 in the list every cell names its batch size: an untagged id never changes what it ran at.
    cells = expand(parse_study(batched([16, 32])))
    assert all(c.tag.startswith("batch_size=") for c in cells) and len(cells) == 8
    assert {c.settings["batch_size"] for c in cells} == {16, 32}


def test_a_grids_own_batch_sizes_replace_the_studys_and_combine_with_seeds():
    own = parse_study(batched([8, 16], grids=[{**PLAIN["grids"][0], "batch_sizes": [8, 64]}]))
    assert sorted({c.settings.get("batch_size", 8) for c in expand(own)}) == [8, 64]
    cells = checked_cells(parse_study(batched([8, 16], seeds=[0, 1])))
    assert len(cells) == 2 * 2 * 2 * 2
    nodule32 = sorted((c.config.batch_size, c.config.seed, c.cell_id) for c in cells
                      if (c.label, c.res) == ("Nodule", 32))
    assert nodule32 == [(8, 0, "Nodule/resnet34-e1/r32"), (8, 1, "Nodule/resnet34-e1-seed=1/r32"),
                        (16, 0, "Nodule/resnet34-e1-batch_size=16/r32"),
                        (16, 1, "Nodule/resnet34-e1-batch_size=16,seed=1/r32")]
    assert len({c.fingerprint for c in cells}) == len(cells)


def test_a_study_without_batch_sizes_keeps_its_cells_and_one_batch_size_changes_nothing(tmp_path):
    assert [(c.cell_id, c.fingerprint) for c in expand(parse_study(PLAIN))] == PLAIN_CELLS
    assert [(c.cell_id, c.fingerprint) for c in expand(parse_study(batched([8])))] == PLAIN_CELLS
    assert "batch_sizes" not in yaml.safe_dump(parse_study(PLAIN).to_dict())
    assert parse_study(batched([16, 8])).to_dict()["batch_sizes"] == [16, 8]
    # Resumes: a finished plain study reruns nothing with [8], and only the new batch sizes with [8, 16].
    run_cells(parse_study(PLAIN), tmp_path, run_fn=BatchRun(), progress=False)
    again = BatchRun()
    assert run_cells(parse_study(batched([8])), tmp_path, run_fn=again, progress=False).ran == 0 and not again.calls
    more = BatchRun()
    summary = run_cells(parse_study(batched([8, 16])), tmp_path, run_fn=more, progress=False)
    assert sorted(more.calls) == sorted((label, res, 16, 0) for label in ("Nodule", "Mass") for res in (32, 64))
    assert summary.already_done == 4 and summary.ran == 4
    rows = rows_of(tmp_path)
    assert len(rows) == len({r["cell_id"] for r in rows}) == 8
    assert [r["cell_id"] for r in rows][:4] == [c for c, _ in PLAIN_CELLS]


@pytest.mark.parametrize("sizes, said", [
    ([], "s.yaml: batch_sizes must be a non-empty list of batch sizes such as [8, 16, 32], got []"),
    (8, "s.yaml: batch_sizes must be a non-empty list of batch sizes such as [8, 16, 32], got 8"),
    ([8, 16, 8], "s.yaml: batch_sizes repeat a batch size: [8, 16, 8]"),
    ([8, 0], "s.yaml: batch_sizes[1]: batch_size must be at least 1, got 0"),
    ([8, "sixteen"], "s.yaml: batch_sizes[1]: batch_size must be int, got 'sixteen'"),
    ([8, 2.5], "s.yaml: batch_sizes[1]: batch_size must be a whole number, got 2.5"),
    ([True], "s.yaml: batch_sizes[0]: batch_size must be int, got True"),
])
def test_a_bad_batch_sizes_list_is_one_line_naming_it(sizes, said):
    with pytest.raises(CxrError) as err:
        parse_study(batched(sizes), "s.yaml")
    assert str(err.value) == said


def test_a_batch_size_not_among_the_batch_sizes_is_refused_in_one_line(tmp_path, capsys):
    from cxr_fast.cli import main

    with pytest.raises(CxrError, match=r"^s.yaml: grid table2 has batch_sizes \[8, 16\] and batch_size 12 .*drop one$"):
        parse_study(batched([8, 16], train={**PLAIN["train"], "batch_size": 12}), "s.yaml")
    with pytest.raises(CxrError, match=r"^s.yaml: grid table2 has batch_sizes \[8, 16\] and batch_size 4 "):
        parse_study(with_grid(batch_sizes=[8, 16], train={"batch_size": 4}), "s.yaml")
    with pytest.raises(CxrError, match=r"^s.yaml: grids\[0\]: batch_sizes\[0\]: batch_size must be at least 1"):
        parse_study(with_grid(batch_sizes=[-8]), "s.yaml")
    with pytest.raises(CxrError, match=r"^overrides: grid table2 has batch_sizes \[8, 16\] and batch_size 32 "):
        apply_overrides(parse_study(batched([8, 16])), batch_size=32)  # --batch-size on a study with the axis
    assert apply_overrides(parse_study(batched([8, 16])), batch_size=16).train["batch_size"] == 16  # one of them
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(batched([8, 8])))
    assert main(["study", str(bad), "--out", str(tmp_path / "s"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "batch_sizes repeat a batch size: [8, 8]" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_dry_run_lists_each_batch_size_and_plan_prices_each(tmp_path, capsys):
    from cxr_fast.cli import main
    from cxr_fast.cost import devices
    from cxr_fast.cost.plan import pack_groups, plan_study
    from cxr_fast.study import load_study_config

    quick = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())  # it states batch_size: 8, one of them
    path = tmp_path / "quick-batch.yaml"
    path.write_text(yaml.safe_dump({**quick, "batch_sizes": [8, 16, 32]}))
    assert main(["study", str(path), "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "18 cells" in out and "Mass/resnet34-e2-batch_size=32/r128" in out and "Nodule/resnet34-e2/r32" in out
    # `plan` reads the same cells: each priced at its own batch size, and never packed with another batch size.
    cells = [c for c in checked_cells(load_study_config(path)) if c.res == 32]
    doc = plan_study(cells, devices.resolve("h100"), pack="auto")
    by_id = {r["cell_id"]: r for r in doc["cells"]}
    sizes = {r["batch_size"] for r in doc["cells"]}
    assert sizes == {8, 16, 32} and len(doc["cells"]) == 6
    at = {b: by_id[f"Nodule/resnet34-e2{'' if b == 8 else f'-batch_size={b}'}/r32"] for b in (8, 16, 32)}
    assert at[8]["steps_per_epoch"] == 2 * at[16]["steps_per_epoch"] == 4 * at[32]["steps_per_epoch"]
    flops = {b: at[b]["work_per_step"]["flops"] for b in (8, 16, 32)}
    assert flops[32] == pytest.approx(2 * flops[16], rel=0.05) and flops[16] == pytest.approx(2 * flops[8], rel=0.05)
    groups = [{doc["cells"][i]["batch_size"] for i in g} for g in pack_groups(doc["cells"])]
    assert sorted(map(sorted, groups)) == [[8], [16], [32]]  # Nodule and Mass of one batch size pack together
    assert sorted(g["batch_size"] for g in doc["pack"]["groups"]) == [8, 16, 32]


def test_the_batch_axis_example_config_is_valid():
    from cxr_fast.study import load_study_config

    cfg = load_study_config(REPO / "configs" / "batch-axis.yaml")
    cells = checked_cells(cfg)
    assert {c.config.batch_size for c in cells if c.res == 600} == {8, 16, 32}


# ---------------------------------------------------------------------------------------------- report


def _paired_p(study: Path, rows: dict, a: tuple, b: tuple) -> float:
    """The paired DeLong p between two rows' predictions, computed here from their files."""
    za = np.load(study / rows[a]["run_dir"] / "predictions.npz")
    zb = np.load(study / rows[b]["run_dir"] / "predictions.npz")
    assert list(za["image_ids"]) == list(zb["image_ids"])
    return paired_delong_test(za["labels"], za["scores"], zb["scores"])[1]


def test_each_batch_size_is_its_own_row_set_with_its_own_star_and_tests(tmp_path):
    study = tmp_path / "study"
    run_cells(parse_study(batched([8, 16, 32])), study, run_fn=BatchRun(), progress=False)
    make_report(study, tmp_path / "r", json_path=tmp_path / "report.json")
    rows = {(r["label"], r["res"], batch_in(r)): r for r in rows_of(study)}
    t2 = md_cells((tmp_path / "r" / "table2.md").read_text())
    nodule = t2["Resolution"].index("Nodule")
    for b in (8, 16, 32):
        for res in (32, 64):
            own = rows[("Nodule", res, b)]
            assert t2[f"{res} × {res}, batch {b}"][nodule].startswith(f"{own['auc']:.3f} ± {own['auc_sd']:.3f}")
    assert "32 × 32" not in t2  # every row names its batch size
    # Each batch size stars its own best: the higher resolution at 8, the lower at 32.
    assert rows[("Nodule", 64, 8)]["auc"] > rows[("Nodule", 32, 8)]["auc"]
    assert rows[("Nodule", 32, 32)]["auc"] > rows[("Nodule", 64, 32)]["auc"]
    assert t2["64 × 64, batch 8"][nodule].split(" ")[2].endswith("*")
    assert t2["32 × 32, batch 32"][nodule].split(" ")[2].endswith("*")
    assert not t2["32 × 32, batch 8"][nodule].split(" ")[2].endswith("*")
    # The paired test is between resolutions of one batch size: the CSV's p is that pair's, not another batch's.
    csv2 = {(r["label"], int(r["res"]), int(r["batch_size"])): r for r in read_csv(tmp_path / "r" / "table2.csv")}
    assert len(csv2) == 12 and list(read_csv(tmp_path / "r" / "table2.csv")[0])[:5] == \
        ["table", "label", "arch", "epochs", "batch_size"]
    within = _paired_p(study, rows, ("Nodule", 64, 8), ("Nodule", 32, 8))
    across = _paired_p(study, rows, ("Nodule", 64, 8), ("Nodule", 32, 32))
    assert float(csv2[("Nodule", 32, 8)]["p_paired_vs_best"]) == pytest.approx(within)
    assert within != pytest.approx(across)
    assert float(csv2[("Nodule", 64, 32)]["p_paired_vs_best"]) == \
        pytest.approx(_paired_p(study, rows, ("Nodule", 32, 32), ("Nodule", 64, 32)))
    assert csv2[("Nodule", 64, 8)]["best"] == "1" and csv2[("Nodule", 32, 32)]["best"] == "1"
    assert "seeds" not in read_csv(tmp_path / "r" / "table2.csv")[0]  # batch sizes are not seeds
    t3 = md_cells((tmp_path / "r" / "table3.md").read_text())
    assert {k for k in t3 if k.endswith(("batch 8", "batch 16", "batch 32"))} == set(t2) - {"Resolution"}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "12 of 12 runs finished" in report and "no longer in study.yaml" not in report
    assert "own set of rows" in (tmp_path / "r" / "table2.md").read_text()
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    assert sorted((c["label"], c["resolution"], c["batch_size"]) for c in cells) == sorted(rows)


def test_seeds_are_spread_within_one_batch_size_never_across(tmp_path):
    study = tmp_path / "study"
    run_cells(parse_study(batched([8, 16], seeds=[0, 1, 2])), study, run_fn=BatchRun(), progress=False)
    make_report(study, tmp_path / "r")
    by = {(r["label"], r["res"], r["seed"], batch_in(r)): r for r in rows_of(study)}
    assert len(by) == 24
    csv2 = {(r["label"], int(r["res"]), int(r["batch_size"])): r for r in read_csv(tmp_path / "r" / "table2.csv")}
    t2 = md_cells((tmp_path / "r" / "table2.md").read_text())
    for b in (8, 16):
        for res in (32, 64):
            aucs = [by[("Mass", res, s, b)]["auc"] for s in (0, 1, 2)]
            rec = csv2[("Mass", res, b)]
            assert rec["seeds"] == "0 1 2" and float(rec["auc"]) == pytest.approx(by[("Mass", res, 0, b)]["auc"])
            assert float(rec["auc_seed_sd"]) == pytest.approx(float(np.std(aucs, ddof=1)))
            assert float(rec["auc_seed_mean"]) == pytest.approx(float(np.mean(aucs)))
            cell = t2[f"{res} × {res}, batch {b}"][t2["Resolution"].index("Mass")]
            assert f"± {np.std(aucs, ddof=1):.3f} (3 seeds)" in cell
    assert "24 of 24 runs finished" in (tmp_path / "r" / "report.md").read_text()


def test_a_study_without_batch_sizes_reports_as_before(tmp_path):
    plain, one = tmp_path / "plain", tmp_path / "one"
    run_cells(parse_study(PLAIN), plain, run_fn=BatchRun(), progress=False)
    make_report(plain, tmp_path / "r-plain")
    assert "batch_size" not in read_csv(tmp_path / "r-plain" / "table2.csv")[0]
    assert "32 × 32" in md_cells((tmp_path / "r-plain" / "table2.md").read_text())
    assert "own set of rows" not in (tmp_path / "r-plain" / "report.md").read_text()
    # A grid that states one batch size of its own keeps one set of rows too: there is no axis.
    run_cells(parse_study(with_grid(train={"batch_size": 16})), one, run_fn=BatchRun(), progress=False)
    make_report(one, tmp_path / "r-one")
    assert "batch_size" not in (tmp_path / "r-one" / "table2.csv").read_text().splitlines()[0].split(",")
