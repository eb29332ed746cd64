"""A study's seed axis: ``seeds: [0, 1, 2]`` replicates every cell, each replicate its own cell (id, run folder,
one row), resumable like any cell; the report shows the across-seed SD of the AUC beside the DeLong SD. A study
without seeds keeps its cell ids, fingerprints, rows and report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxr_fast.errors import CxrError
from cxr_fast.io import read_jsonl
from cxr_fast.metrics import delong_auc_variance
from cxr_fast.report.build import make_report
from cxr_fast.study import RESULTS, apply_overrides, checked_cells, dry_run, expand, parse_study, run_cells

REPO = Path(__file__).resolve().parents[1]
N_VAL = 200
# tests/test_study.py's fake_config(): the study every expectation below without seeds was written for.
PLAIN = {"name": "fake", "train": {"lr": 5e-4, "data": "/nonexistent", "init": "random"},
         "grids": [{"name": "table2", "labels": ["Nodule", "Mass"], "resolutions": [32, 64], "epochs": 1}]}
# Its cell ids and fingerprints as the code before the seed axis made them (git 77c8d71).
PLAIN_CELLS = [("Nodule/resnet34-e1/r32", "766372db4320"), ("Nodule/resnet34-e1/r64", "8ed67401d658"),
               ("Mass/resnet34-e1/r32", "b6b75c4f080b"), ("Mass/resnet34-e1/r64", "0acbc3e8597e")]
# Its rows' fingerprints then (a run adds the resolved init, here none, to each cell's settings first).
PLAIN_ROWS = [("Nodule/resnet34-e1/r32", "0687ca7a32b9"), ("Nodule/resnet34-e1/r64", "8fc30d226541"),
              ("Mass/resnet34-e1/r32", "b4624488e54a"), ("Mass/resnet34-e1/r64", "b7ba54d0f88d")]
# Table 2's CSV columns before the seed axis: a study without seeds keeps exactly these.
PLAIN_COLUMNS = ["table", "label", "arch", "epochs", "res", "auc", "auc_sd", "auc_status", "best", "p_z_vs_best",
                 "sig_z", "p_paired_vs_best", "sig_paired", "auc_sd_note", "n_pos", "n_neg", "init", "weights_sha256",
                 "recipe", "split", "paper_auc", "paper_sd", "paper_best"]


def seeded(seeds: list[int] | None = None, **more) -> dict:
    return {**PLAIN, **({"seeds": seeds} if seeds is not None else {}), **more}


class SeededRun:
    """Stands in for training: each (label, seed) has its own validation set, shared by its resolutions as a real
    subsample is; the signal grows with resolution and moves a little with the seed. Returns the AUC and DeLong SD
    of the scores it writes, records its seed, and can raise on the n-th call (a kill)."""

    def __init__(self, interrupt_on: int | None = None) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.interrupt_on = interrupt_on

    def __call__(self, cfg) -> dict:
        self.calls.append((cfg.label, cfg.res, cfg.seed))
        if self.interrupt_on is not None and len(self.calls) == self.interrupt_on:
            raise KeyboardInterrupt
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([cfg.seed, len(cfg.label)])
        y = (rng.random(N_VAL) < 0.3).astype(np.float32)
        noise = np.random.default_rng([cfg.seed, len(cfg.label), cfg.res]).normal(0, 1, N_VAL)
        s = (y * (0.4 + cfg.res / 64 + 0.1 * cfg.seed) + noise).astype(np.float32)
        ids = np.array([f"{cfg.label}_s{cfg.seed}_{i:04d}.png" for i in range(N_VAL)])
        np.savez(out / "predictions.npz", image_ids=ids, labels=y, scores=s)
        auc, var = delong_auc_variance(y, s)
        return {"auc": auc, "auc_sd": float(np.sqrt(var)), "n_pos": int(y.sum()), "n_neg": int(N_VAL - y.sum()),
                "n_val": N_VAL, "seed": cfg.seed, "init": "random", "recipe": "fastai07", "split": "image",
                "accuracy": 0.5, "wall_s": 0.1, "train_images_per_s": 1.0}


def rows_of(study: Path) -> list[dict]:
    return read_jsonl(study / RESULTS)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def md_cells(md: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their first cell ('64 × 64', '64 × 64, batch 16'), cells stripped."""
    return {cols[0]: cols[1:] for line in md.splitlines() if line.startswith("| ")
            for cols in [[c.strip() for c in line.strip().strip("|").split("|")]]}


# ---------------------------------------------------------------------------------------------- cells


def test_three_seeds_are_three_cells_each_with_its_own_id_folder_and_seed():
    cells = checked_cells(parse_study(seeded([2, 0, 1])))
    assert len(cells) == 2 * 2 * 3
    nodule32 = {c.config.seed: c for c in cells if (c.label, c.res) == ("Nodule", 32)}
    assert sorted(nodule32) == [0, 1, 2]
    # The smallest seed is the cell's own run: today's id and fingerprint, so adding seeds keeps finished runs.
    assert (nodule32[0].cell_id, nodule32[0].fingerprint) == PLAIN_CELLS[0] and nodule32[0].tag == ""
    assert nodule32[1].cell_id == "Nodule/resnet34-e1-seed=1/r32" and nodule32[1].tag == "seed=1"
    assert nodule32[2].config.out.endswith("runs/Nodule/resnet34-e1-seed=2/r32")
    assert len({c.cell_id for c in cells}) == len({c.fingerprint for c in cells}) == len(cells)
    # A grid's own seeds replace the study's; a config that states `seed: 0` keeps it with seeds [0, ...].
    own = parse_study(seeded([0, 1], grids=[{**PLAIN["grids"][0], "seeds": [0, 5, 7]}]))
    assert sorted({c.settings.get("seed", 0) for c in expand(own)}) == [0, 5, 7]
    stated = parse_study(seeded([0, 1], train={**PLAIN["train"], "seed": 0}))
    assert [c.cell_id for c in expand(stated)][:2] == ["Nodule/resnet34-e1/r32", "Nodule/resnet34-e1/r64"]
    # Seeds without the default: the smallest is the cell's own run, with its seed in its settings.
    first = expand(parse_study(seeded([3, 4])))[0]
    assert (first.cell_id, first.settings["seed"]) == ("Nodule/resnet34-e1/r32", 3)


def test_each_seed_runs_once_and_a_rerun_runs_nothing(tmp_path):
    cfg = parse_study(seeded([0, 1, 2]))
    first = SeededRun()
    summary = run_cells(cfg, tmp_path, run_fn=first, progress=False)
    expected = {(label, res, seed) for label in ("Nodule", "Mass") for res in (32, 64) for seed in (0, 1, 2)}
    assert sorted(first.calls) == sorted(expected) and summary.ran == 12
    rows = rows_of(tmp_path)
    assert len(rows) == len({r["cell_id"] for r in rows}) == 12
    assert {(r["label"], r["res"], r["seed"]) for r in rows} == expected
    assert all((tmp_path / r["run_dir"] / "predictions.npz").is_file() for r in rows)
    again = SeededRun()
    assert run_cells(cfg, tmp_path, run_fn=again, progress=False).ran == 0 and again.calls == []
    assert len(rows_of(tmp_path)) == 12


def test_a_killed_seeded_study_resumes_with_every_seed_once(tmp_path):
    cfg = parse_study(seeded([0, 1, 2]))
    with pytest.raises(KeyboardInterrupt):
        run_cells(cfg, tmp_path, run_fn=SeededRun(interrupt_on=4), progress=False)
    done = [r["cell_id"] for r in rows_of(tmp_path)]
    assert done == ["Nodule/resnet34-e1/r32", "Nodule/resnet34-e1/r64", "Nodule/resnet34-e1-seed=1/r32"]
    status = dry_run(cfg, tmp_path, inputs=False).status
    assert [s for s in status.values()].count("done") == 3 and status["Nodule/resnet34-e1-seed=1/r64"] == "todo"
    second = SeededRun()
    summary = run_cells(cfg, tmp_path, run_fn=second, progress=False)
    assert second.calls[0] == ("Nodule", 64, 1)  # the interrupted cell is redone, once
    assert summary.already_done == 3 and summary.ran == 9 and len(set(second.calls)) == 9
    ids = [r["cell_id"] for r in rows_of(tmp_path)]
    assert len(ids) == len(set(ids)) == 12


def test_adding_seeds_to_a_finished_study_runs_only_the_new_seeds(tmp_path):
    run_cells(parse_study(PLAIN), tmp_path, run_fn=SeededRun(), progress=False)
    more = SeededRun()
    run_cells(parse_study(seeded([0, 1])), tmp_path, run_fn=more, progress=False)
    assert sorted(more.calls) == sorted((label, res, 1) for label in ("Nodule", "Mass") for res in (32, 64))


@pytest.mark.parametrize("seeds, said", [
    ([], "s.yaml: seeds must be a non-empty list of seeds such as [0, 1, 2], got []"),
    (3, "s.yaml: seeds must be a non-empty list of seeds such as [0, 1, 2], got 3"),
    ([0, 1, 1], "s.yaml: seeds repeat a seed: [0, 1, 1]"),
    ([0, -1], "s.yaml: seeds[1] must be in [0, 4294967295], got -1"),
    ([0, 2**32], "s.yaml: seeds[1] must be in [0, 4294967295], got 4294967296"),
    ([0, "one"], "s.yaml: seeds[1] must be a whole number, got 'one'"),
    ([0, 1.5], "s.yaml: seeds[1] must be a whole number, got 1.5"),
    ([True], "s.yaml: seeds[0] must be a whole number, got True"),
])
def test_a_bad_seeds_list_is_one_line_naming_it(seeds, said):
    with pytest.raises(CxrError) as err:
        parse_study(seeded(seeds), "s.yaml")
    assert str(err.value) == said


def test_a_seed_other_than_the_smallest_of_the_seeds_is_refused_in_one_line(tmp_path, capsys):
    from cxr_fast.cli import main

    with pytest.raises(CxrError, match=r"^s.yaml: grid table2 has seeds \[0, 1, 2\] and seed 1 .*drop one$"):
        parse_study(seeded([0, 1, 2], train={**PLAIN["train"], "seed": 1}), "s.yaml")
    with pytest.raises(CxrError, match=r"grids\[0\]: seeds must be a non-empty list"):
        parse_study(seeded(grids=[{**PLAIN["grids"][0], "seeds": "0,1"}]), "s.yaml")
    with pytest.raises(CxrError, match=r"^overrides: grid table2 has seeds \[0, 1\] and seed 4"):
        apply_overrides(parse_study(seeded([0, 1])), seed=4)  # --seed on a seeded study
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(seeded([0, 0])))
    assert main(["study", str(bad), "--out", str(tmp_path / "s"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "seeds repeat a seed: [0, 0]" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_dry_run_lists_the_seeded_cells_and_plan_counts_them(tmp_path, capsys):
    from cxr_fast.cli import main

    quick = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())  # it states seed: 0, the smallest
    path = tmp_path / "quick-seeds.yaml"
    path.write_text(yaml.safe_dump({**quick, "seeds": [0, 1, 2]}))
    assert main(["study", str(path), "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "18 cells" in out and "Mass/resnet34-e2-seed=2/r128" in out and "Nodule/resnet34-e2/r32" in out
    # `plan` reads the same cells (its command calls checked_cells), each replicate a run at its own seed.
    from cxr_fast.cost.plan import cells_from
    from cxr_fast.study import load_study_config

    planned = cells_from(checked_cells(load_study_config(path)))
    assert len(planned) == 18 and sorted({c.run_config().seed for c in planned}) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- report


def test_tables_show_the_across_seed_sd_beside_the_delong_sd_for_every_seeded_cell(tmp_path):
    study = tmp_path / "study"
    run_cells(parse_study(seeded([0, 1, 2])), study, run_fn=SeededRun(), progress=False)
    make_report(study, tmp_path / "r")
    rows = rows_of(study)
    by = {(r["label"], r["res"], r["seed"]): r for r in rows}
    t2 = md_cells((tmp_path / "r" / "table2.md").read_text())
    t3 = md_cells((tmp_path / "r" / "table3.md").read_text())
    csv2 = {(r["label"], int(r["res"])): r for r in read_csv(tmp_path / "r" / "table2.csv")}
    csv3 = {(r["label"], int(r["res"])): r for r in read_csv(tmp_path / "r" / "table3.csv")}
    for label in ("Nodule", "Mass"):
        for res in (32, 64):
            aucs = [by[(label, res, s)]["auc"] for s in (0, 1, 2)]
            own = by[(label, res, 0)]  # the table's number: the cell's own run, its smallest seed
            sd = float(np.std(aucs, ddof=1))
            shown = f"{own['auc']:.3f} ± {own['auc_sd']:.3f} (DeLong) ± {sd:.3f} (3 seeds)"
            assert t2[f"{res} × {res}"][t2["Resolution"].index(label)].startswith(shown)
            assert t3[f"{res} × {res}"][t3["Resolution"].index(f"{label} resnet34 1 ep")].startswith(shown)
            for table in (csv2, csv3):
                rec = table[(label, res)]
                assert float(rec["auc"]) == pytest.approx(own["auc"]) and rec["seeds"] == "0 1 2"
                assert float(rec["auc_seed_mean"]) == pytest.approx(np.mean(aucs))
                assert float(rec["auc_seed_sd"]) == pytest.approx(sd)
    md = (tmp_path / "r" / "table2.md").read_text()
    assert "its smallest seed" in md and "auc_seed_mean" in md
    report = (tmp_path / "r" / "report.md").read_text()
    assert "12 of 12 runs finished" in report  # each seed's cell counted once, none as 'no longer in study.yaml'
    # The non-inferiority section reads the same seed copies (one helper): three seeds, tested on seed 0.
    assert "3 seeds (0 1 2), tested on seed 0" in (tmp_path / "r" / "noninferiority.md").read_text()
    # ... and the report's JSON carries the spread of every seeded cell.
    make_report(study, tmp_path / "r2", json_path=tmp_path / "report.json")
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    nodule = next(c for c in cells if (c["label"], c["resolution"]) == ("Nodule", 32))
    aucs = [by[("Nodule", 32, s)]["auc"] for s in (0, 1, 2)]
    assert nodule["seeds"] == [0, 1, 2] and nodule["auc_seed_sd"] == pytest.approx(float(np.std(aucs, ddof=1)))


def test_a_cell_with_a_seed_still_to_run_says_how_many_seeds_its_sd_is_over(tmp_path):
    study = tmp_path / "study"
    cfg = parse_study(seeded([0, 1, 2]))
    with pytest.raises(KeyboardInterrupt):  # stops before Nodule 32 px seed 2
        run_cells(cfg, study, run_fn=SeededRun(interrupt_on=5), progress=False)
    make_report(study, tmp_path / "r")
    by = {(r["label"], r["res"], r["seed"]): r for r in rows_of(study)}
    t2 = md_cells((tmp_path / "r" / "table2.md").read_text())
    nodule = t2["Resolution"].index("Nodule")
    sd = float(np.std([by[("Nodule", 32, s)]["auc"] for s in (0, 1)], ddof=1))
    assert f"(DeLong) ± {sd:.3f} (2 seeds)" in t2["32 × 32"][nodule]
    assert t2["32 × 32"][t2["Resolution"].index("Mass")] == "—"  # Mass never ran: a dash, no seed text
    assert "4 of 12 runs finished" in (tmp_path / "r" / "report.md").read_text()


def test_a_study_without_seeds_keeps_its_cells_rows_and_report(tmp_path):
    plain, one = tmp_path / "plain", tmp_path / "one"
    assert [(c.cell_id, c.fingerprint) for c in expand(parse_study(PLAIN))] == PLAIN_CELLS
    run_cells(parse_study(PLAIN), plain, run_fn=SeededRun(), progress=False)
    rows = rows_of(plain)
    assert [(r["cell_id"], r["fingerprint"], r["variant_tag"]) for r in rows] == [(*c, "") for c in PLAIN_ROWS]
    assert "seeds" not in yaml.safe_load((plain / "study.yaml").read_text())
    make_report(plain, tmp_path / "r-plain")
    assert list(read_csv(tmp_path / "r-plain" / "table2.csv")[0]) == PLAIN_COLUMNS
    t2 = md_cells((tmp_path / "r-plain" / "table2.md").read_text())
    r32 = next(r for r in rows if r["cell_id"] == PLAIN_CELLS[0][0])
    assert t2["32 × 32"][t2["Resolution"].index("Nodule")].startswith(f"{r32['auc']:.3f} ± {r32['auc_sd']:.3f}")
    report = (tmp_path / "r-plain" / "report.md").read_text()
    assert "DeLong) ±" not in report and "auc_seed" not in report and "4 of 4 runs finished" in report
    # One seed, the default: the same cells, rows and report, byte for byte.
    run_cells(parse_study(seeded([0])), one, run_fn=SeededRun(), progress=False)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "finished_at"} for r in rs]  # noqa: E731
    assert drop(rows_of(one)) == drop(rows)
    make_report(one, tmp_path / "r-one")
    for name in ("table2.md", "table2.csv", "table3.md", "table3.csv", "noninferiority.md", "noninferiority.csv"):
        assert (tmp_path / "r-one" / name).read_bytes() == (tmp_path / "r-plain" / name).read_bytes(), name
