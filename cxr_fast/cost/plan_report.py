"""The plan as tables: per cell and per resolution (rich, for people), and planned beside actual time.

``planned_vs_actual(study_dir)`` is for ``cxr-fast report``: it reads the ``plan.json`` that
``cxr-fast study`` wrote into the study folder and each finished cell's recorded times
(``results.jsonl``, else the run's ``metrics.json``), and returns rows plus a markdown table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxr_fast.cost.plan import PLAN_FILE, human

TIMES = ("wall_s", "train_s", "eval_s", "setup_s")


def print_plan(doc: dict[str, Any], console: Any, cells: bool = True) -> None:
    """Per-cell table (optional), per-resolution table, fit lines and totals."""
    from rich.table import Table

    dev = doc["device"]
    if cells:
        table = Table(title=f"{doc['study']} on {dev['name']} ({dev['title']}, {dev['source']}): per run")
        for col in ("run", "steps", "step ms", "bound", "train", "eval", "wall", "wall, graphs", "bound, graphs",
                    "fits b", "resident"):
            table.add_column(col, justify="left" if col in ("run", "bound", "bound, graphs") else "right")
        for c in doc["cells"]:
            e, g, m = c["eager"], c["graphs"], c["memory"]
            table.add_row(c["cell_id"], f"{c['epochs']}x{c['steps_per_epoch']}", f"{e['step']['ms']:.2f}",
                          e["bound"], human(e["train_s"]), human(e["eval_s"]), human(e["wall_s"]), human(g["wall_s"]),
                          g["bound"], f"{c['batch_size']}/{m['max_batch']}" + ("" if m["fits"] else " ✗"),
                          f"{m['resident_gib']:.2f} GiB " + ("✓" if m["resident_fits"] else "✗"))
        console.print(table)
    table = Table(title=f"per resolution on {dev['name']}: what bounds a run, eager / with CUDA graphs")
    for col in ("res", "arch", "bound", "step ms", "max batch", "resident split", "loader"):
        table.add_column(col, justify="right" if col in ("res", "step ms", "max batch") else "left")
    for r in doc["by_res"]:
        for arch, a in sorted(r["archs"].items()):
            batch = f"{a['max_batch']} {a['precision']}" + (f", {a['max_batch_fp32']} fp32" if a["precision"] != "fp32" else "")
            table.add_row(str(r["res"]), arch, f"{a['bound']} / {a['bound_graphs']}",
                          f"{a['step_ms']:.1f} / {a['step_ms_graphs']:.1f}", batch,
                          f"{r['resident_gib']:.2f} GiB " + ("fits" if a["resident_fits"] else "does not fit"),
                          a["loader"])
    console.print(table)
    for line in doc["fit"]:
        console.print(line)
    for line in summary_lines(doc):
        console.print(line)
    if "pack" in doc:
        console.print(pack_markdown(doc), markup=False, highlight=False, soft_wrap=True)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The totals in words: eager and with CUDA graphs, and the makespan on the plan's GPUs."""
    n, gpus, dev = len(doc["cells"]), doc["gpus"], doc["device"]["name"]
    lines = []
    modes = [("eager", "eager PyTorch")] + ([("graphs", "with CUDA graphs")] if doc["device"]["kind"] == "gpu" else [])
    for mode, what in modes:
        t = doc["totals"][mode]
        bounds = ", ".join(f"{k} {v}" for k, v in t["bounds"].items() if v)
        lines.append(f"total, {what}: {human(t['wall_s'])} for {n} runs on one {dev} (training {human(t['train_s'])}, "
                     f"evaluation {human(t['eval_s'])}, setup and checkpoints {human(t['other_s'])}); runs bound by "
                     f"{bounds}")
        if gpus > 1:
            lines.append(f"  on {gpus} GPUs (Ray, one run per GPU): {human(t['makespan_s'])} longest first, "
                         f"{human(t['makespan_config_order_s'])} in config order (the executor's order today); "
                         f"no schedule beats {human(t['lower_bound_s'])}")
    return lines


PACK_MODES = (("eager", "eager PyTorch"), ("graphs", "CUDA graphs"), ("packed_graphs", "packed + CUDA graphs"))
# The baseline: K runs (each its own process) sharing one GPU with CUDA MPS (cost.plan.shared_job).
SHARED_MODES = (("shared_mps", "shared (MPS), K per GPU"), ("shared_mps_graphs", "shared (MPS) + CUDA graphs"))


def pack_markdown(doc: dict[str, Any]) -> str:
    """The grid's totals eager, with graphs and packed + graphs on each GPU count, and the K of each group."""
    p, dev = doc["pack"], doc["device"]
    lines = [f"Packed training (--pack {p['pack']}) on {dev['name']} ({dev['source']}): K compatible runs (same "
             f"architecture, resolution, recipe, schedule, batch and precision) as one step, K models' FLOPs, bytes "
             f"and memory, {p['launch_factor']:g}x one model's launches (the issue's bound until gpu-check measures "
             f"it); jobs to the first free GPU, longest first.", "",
             "| total | jobs | " + " | ".join(f"{g} GPU{'s' if g > 1 else ''}" for g in p["gpus"]) + " |",
             "|---|---|" + "---|" * len(p["gpus"])]
    shared = p.get("shared", {}).get("totals", {})
    for mode, what in PACK_MODES + SHARED_MODES:
        t = p["totals"].get(mode) or shared.get(mode)
        if t is not None:
            lines.append(f"| {what} | {t['jobs']} | " + " | ".join(human(t["wall_s"][str(g)]) for g in p["gpus"])
                         + " |")
    if shared:
        lines.append("\nShared: K runs of a group (K as packed, fewer where K processes' memory, each with its own "
                     "CUDA context, does not fit), each its own process on one GPU (`study --executor ray "
                     "--runs-per-gpu K`) with CUDA MPS, their kernels side by side: each kernel slot takes max(launch, "
                     "K x its FLOPs or bytes), so launch-bound runs share for free and compute-bound ones do not "
                     "(cost.plan.shared_work). Without MPS they time-slice: the eager and graphs rows.")
    if dev["kind"] != "gpu":
        lines.append(f"\nCUDA graphs do nothing on {dev['name']}: its graphs rows are the eager step.")
    lines += ["", "| arch | res | recipe | epochs | batch | precision | cells | K | models per job | memory at K |"
              + (" shared K | shared memory |" if shared else ""),
              "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if shared else "")]
    for g in p["groups"]:
        lines.append(f"| {g['arch']} | {g['res']} | {g['recipe']} | {g['epochs']} | {g['batch_size']} | "
                     f"{g['precision']} | {g['cells']} | {g['k']} | {'+'.join(map(str, g['jobs']))} | "
                     f"{g['memory_gib']:.1f} / {g['capacity_gib']:g} GiB |"
                     + (f" {g['k_shared']} | {g['shared_memory_gib']:.1f} GiB |" if "k_shared" in g else ""))
    return "\n".join(lines) + "\n"


def _actual(study_dir: Path, row: dict[str, Any]) -> dict[str, float | None]:
    """A finished cell's recorded times: the result row's, filled from the run's metrics.json."""
    have = {k: row.get(k) for k in TIMES}
    if any(v is None for v in have.values()) and row.get("run_dir"):
        try:
            metrics = json.loads((study_dir / row["run_dir"] / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
        have = {k: have[k] if have[k] is not None else metrics.get(k) for k in TIMES}
    return {k: float(v) if isinstance(v, (int, float)) else None for k, v in have.items()}


def planned_vs_actual(study_dir: str | Path, plan: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Planned (eager) beside recorded seconds per finished cell; None when the study has no plan.

    Returns ``{"title", "rows", "fields", "total", "device", "markdown"}`` (a report section's parts: the
    markdown has no heading, ``fields`` are the CSV columns of ``rows``); each row has
    ``planned_*`` and ``actual_*`` for wall, train, eval and setup seconds and ``ratio`` (actual wall
    over planned wall). Only cells that are both planned and finished count toward the total.
    """
    from cxr_fast.io import read_jsonl

    study_dir = Path(study_dir)
    if plan is None:
        path = study_dir / PLAN_FILE
        if not path.is_file():
            return None
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    planned = {c["cell_id"]: c for c in plan.get("cells", [])}
    finished: dict[str, dict[str, Any]] = {}
    for row in read_jsonl(study_dir / "results.jsonl"):
        if isinstance(row, dict) and "cell_id" in row:
            finished.setdefault(row["cell_id"], row)
    rows = []
    for cell_id, c in planned.items():
        if cell_id not in finished:
            continue
        actual = _actual(study_dir, finished[cell_id])
        e = c["eager"]
        planned_times = {"wall_s": e["wall_s"], "train_s": e["train_s"], "eval_s": e["eval_s"], "setup_s": c["setup_s"]}
        row = {"cell_id": cell_id, "bound": e["bound"]}
        for k in TIMES:
            row[f"planned_{k}"] = planned_times[k]
            row[f"actual_{k}"] = actual[k]
        row["ratio"] = actual["wall_s"] / e["wall_s"] if actual["wall_s"] and e["wall_s"] else None
        rows.append(row)
    plan_total = sum(r["planned_wall_s"] for r in rows)
    actual_total = sum(r["actual_wall_s"] or 0.0 for r in rows)
    total = {"cells": len(rows), "planned_wall_s": plan_total, "actual_wall_s": actual_total,
             "error": (plan_total - actual_total) / actual_total if actual_total else None}
    dev = plan.get("device", {})
    fields = ["cell_id", "bound", "ratio"] + [f"{side}_{k}" for k in TIMES for side in ("planned", "actual")]
    return {"title": "Planned against actual time per run", "rows": rows, "fields": fields, "total": total,
            "device": f"{dev.get('name')} ({dev.get('source')})", "markdown": _markdown(rows, total, dev)}


def _markdown(rows: list[dict[str, Any]], total: dict[str, Any], dev: dict[str, Any]) -> str:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = [f"Planned (`cxr-fast plan`, {dev.get('name')}, {dev.get('source')}) against recorded seconds per run:",
             "", "| run | bound | planned wall | actual wall | actual / planned | planned train | actual train "
             "| planned eval | actual eval |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['cell_id']} | {r['bound']} | {s(r['planned_wall_s'])} | {s(r['actual_wall_s'])} | {ratio} "
                     f"| {s(r['planned_train_s'])} | {s(r['actual_train_s'])} | {s(r['planned_eval_s'])} "
                     f"| {s(r['actual_eval_s'])} |")
    err = "-" if total["error"] is None else f"{total['error']:+.1%}"
    lines.append(f"| **total ({total['cells']} runs)** | | {s(total['planned_wall_s'])} | {s(total['actual_wall_s'])} "
                 f"| | | | | |")
    lines += ["", f"Plan error on the total: {err} (planned minus actual, over actual)."]
    return "\n".join(lines) + "\n"
