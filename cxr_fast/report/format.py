"""How the report writes things down: one Section type (Markdown + notes + CSV rows) and number formats.

Every part of the report, from Table 2 to the leakage section, is a Section, so each is written the same
way: ``NAME.md`` and ``NAME.csv`` in the report folder (atomically), and its text again in ``report.md``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_fast.io import write_text
from cxr_fast.report.data import SeedSpread, auc_of, is_tied, sd_of
from cxr_fast.vocabulary import AUC_TIED as TIED  # shown as the status itself

DASH = "—"
NOT_RUN = "not run"


@dataclass
class Section:
    name: str  # file stem in the report folder
    title: str
    markdown: str  # the body: tables and sentences
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # the CSV rows
    fields: list[str] = field(default_factory=list)  # the CSV columns; none: no CSV

    def text(self) -> str:
        notes = "".join(f"- {n}\n" for n in self.notes)
        return f"## {self.title}\n\n{self.markdown}\n" + (f"{notes}\n" if notes else "")


Table = Section  # Tables 2 and 3 are sections too; the old name stays for callers


def write_section(section: Section, out: Path) -> list[Path]:
    """``NAME.md`` always, ``NAME.csv`` when the section has columns."""
    files = [out / f"{section.name}.md"]
    write_text(files[0], section.text())
    if section.fields:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=section.fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(section.records)
        write_text(out / f"{section.name}.csv", buf.getvalue())
        files.append(out / f"{section.name}.csv")
    return files


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def fmt_auc(auc: float | None, sd: float | None = None) -> str:
    if auc is None:
        return DASH
    return f"{auc:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def auc_text(row: dict[str, Any] | None, missing: str = DASH) -> str:
    """A row's AUC ± SD, ``tied`` when its model ranked nothing, ``missing`` when there is no row."""
    if row is None:
        return missing
    if is_tied(row):
        return TIED
    auc = auc_of(row)
    return fmt_auc(auc, sd_of(row)) if auc is not None else missing


def with_seeds(text: str, row: dict[str, Any] | None, spread: SeedSpread | None) -> str:
    """'0.812 ± 0.021 (DeLong) ± 0.015 (3 seeds)': a cell's own AUC ± DeLong SD, then the SD of the AUC across the
    seeds it ran with ('2 of 3 seeds' when one gave no AUC); ``text`` as it was for a cell run with one seed."""
    if spread is None:
        return text
    delong = " (DeLong)" if auc_of(row) is not None and sd_of(row) is not None else ""
    sd = DASH if spread.sd is None else f"{spread.sd:.3f}"
    count = f"{spread.n} seeds" if spread.n == len(spread.seeds) else f"{spread.n} of {len(spread.seeds)} seeds"
    return f"{text}{delong} ± {sd} ({count})"


def fmt_p(p: float | None) -> str:
    if p is None:
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_z(z: float | None) -> str:
    return DASH if z is None else f"{z:.2f}"


def fmt_signed(x: float | None) -> str:
    return DASH if x is None else f"{x:+.3f}"


def blank(x: Any) -> Any:
    """A CSV value: None becomes an empty cell."""
    return "" if x is None else x


def res_list(values: list[int]) -> str:
    return ", ".join(f"{r} px" for r in values)
