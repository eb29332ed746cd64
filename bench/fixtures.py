"""Per dataset layout: the rows, labels and positives that its reader finds in the built-in phantom written in that
layout (``synth --layout``: n=200, size 256, seed 0), under the default policies. A fixture check, made by
``python -m cxr_fast.bench.fixtures`` (results/datasets/fixtures.md), so a change to a reader or a writer shows.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from cxr_fast.data.layouts import write_layout
from cxr_fast.data.sets import read_dataset
from cxr_fast.vocabulary import DATASETS


def main() -> int:
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp())
    print("| layout | version | rows | left out | labels: positives (known rows, where the policy leaves some "
          "unknown) |")
    print("| --- | --- | --- | --- | --- |")
    for name in DATASETS:
        write_layout(tmp / name, name, quiet=True, n=200, size=256, seed=0)
        ds = read_dataset(tmp / name)
        m = ds.metadata
        cells = []
        for label in m.label_names:
            pos = int((m.has(label) & m.known_for(label)).sum())
            known = int(m.known_for(label).sum())
            cells.append(f"{label} {pos}" + (f" ({known})" if known != len(m) else ""))
        left = ", ".join(f"{why} {n}" for why, n in ds.left_out.items() if n) or "none"
        print(f"| {name} | {ds.version or '—'} | {len(m)} | {left} | {'; '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
