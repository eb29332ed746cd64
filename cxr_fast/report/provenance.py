"""Init and recipe made visible: a line per table, a mark per cell that differs, and a refusal to mix inits.

An ImageNet-started and a randomly started model differ by far more than a resolution step, so a table
whose cells started from different weights would read as a resolution effect. The report therefore names
the init (with the weights' hash) and the recipe of every table, marks the cells that differ from the most
common kind, and refuses to mix inits in one table unless the user asks for it (``--mixed-init``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from cxr_fast.errors import CxrError
from cxr_fast.report.data import Study, describe_init, init_kind, init_of, recipe_of

SHOWN_CELLS = 6  # cell ids named per kind in the one-line refusal


def _majority(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> str | None:
    counts = Counter(key(r) for r in rows)
    return max(counts, key=lambda k: counts[k]) if counts else None  # ties: first seen


def _kinds(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def check_one_init(study: Study, table: str, rows: list[dict[str, Any]]) -> None:
    """One line naming the cells of each init when a table would mix them; rows without `init` are 'unknown'."""
    kinds = _kinds(rows, init_kind)
    if len(kinds) <= 1:
        return
    parts = []
    for kind, members in kinds.items():
        ids = [str(r.get("cell_id")) for r in members]
        more = f" and {len(ids) - SHOWN_CELLS} more" if len(ids) > SHOWN_CELLS else ""
        parts.append(f"{kind}: {', '.join(ids[:SHOWN_CELLS])}{more}")
    raise CxrError(f"{study.root / 'results.jsonl'}: {table} would mix initialisations ({'; '.join(parts)}); "
                   "rerun those cells with one init, or pass --mixed-init to show them together, each cell marked")


def _init_mark(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """'init random' when the row's init differs from the table's most common one, else ''."""
    major = _majority(rows, init_kind)
    if init_kind(row) == major:
        return ""
    same_name = any(init_kind(r) == major and init_of(r) == init_of(row) for r in rows)
    return f"init {init_kind(row) if same_name else init_of(row)}"  # same name, other weights: show the hash


def _recipe_mark(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    return "" if recipe_of(row) == _majority(rows, recipe_of) else f"recipe {recipe_of(row)}"


def cell_mark(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """' [init random · recipe modern]' for a cell unlike the table's most common kind, else ''."""
    parts = [m for m in (_init_mark(row, rows), _recipe_mark(row, rows)) if m]
    return f" [{' · '.join(parts)}]" if parts else ""


def provenance_note(rows: list[dict[str, Any]]) -> str:
    """'Init: imagenet (weights …, sha256 …) in all 16 cells · recipe: fastai07 in all 16 cells.'"""
    if not rows:
        return "Init and recipe: no finished cells yet."
    inits = _describe(rows, init_kind, describe_init, _init_mark)
    recipes = _describe(rows, recipe_of, recipe_of, _recipe_mark)
    return f"Init: {inits} · recipe: {recipes}."


def _describe(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str], show: Callable[[dict[str, Any]], str],
              mark: Callable[[dict[str, Any], list[dict[str, Any]]], str]) -> str:
    kinds = _kinds(rows, key)
    if len(kinds) == 1:
        return f"{show(rows[0])} in {'all ' if len(rows) > 1 else ''}{_cells(len(rows))}"
    major = _majority(rows, key)
    parts = []
    for kind, members in sorted(kinds.items(), key=lambda kv: kv[0] != major):
        shown = "" if kind == major else f", marked [{mark(members[0], rows)}]"
        parts.append(f"{show(members[0])} in {_cells(len(members))}{shown}")
    return "; ".join(parts)


def _cells(n: int) -> str:
    return f"{n} cell{'s' if n != 1 else ''}"


def init_summary(rows: list[dict[str, Any]]) -> str:
    """'imagenet (…) ×72' or 'imagenet (…) ×60, random ×12': a study's inits in a few words."""
    kinds = _kinds(rows, init_kind)
    return ", ".join(f"{describe_init(members[0])} ×{len(members)}" for members in kinds.values()) or "no cells"
