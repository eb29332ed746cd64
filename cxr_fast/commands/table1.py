"""``cxr-fast table1``: the paper's Table 1 data columns from a metadata file."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr_fast.schema.flags import add_run_flags, number_flag
from cxr_fast.schema.run import DATASET_FIELDS
from cxr_fast.vocabulary import SEED_BOUNDS

HELP = "print the paper's Table 1 columns: positives, single-finding cases, loss weight"
DESCRIPTION = (
    "For the paper's eight labels: images with the label, images where it is the only label, and the loss weight "
    "(negatives/positives in the per-label enriched subsample). Reads the bundled real ChestX-ray14 metadata "
    "unless --metadata is given; accepts the torchxrayvision v2020 CSV and NIH's original (trailing comma) form. "
    "With --data DIR, any dataset's folder (--dataset, its policies): the paper's labels it maps, and a line "
    "naming those it does not."
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metadata", metavar="CSV", help="Data_Entry_2017*.csv[.gz] (default: the bundled v2020 file)")
    p.add_argument("--data", metavar="DIR", help="a dataset folder instead (any layout --dataset names)")
    add_run_flags(p.add_argument_group("which dataset DIR is, and how it is read"), DATASET_FIELDS)
    number_flag(p, "--size", int, ge=1, default=20_000, help="subsample size")
    number_flag(p, "--seed", int, **SEED_BOUNDS, default=0, help="subsample seed (the weights do not depend on it)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cxr_fast.data.labels import PAPER_LABELS
    from cxr_fast.data.sampling import table1
    from cxr_fast.data.sets.nih import read_metadata
    from cxr_fast.errors import CxrError
    from cxr_fast.io import write_json
    from cxr_fast.paths import BUNDLED_METADATA
    from cxr_fast.schema.flags import given
    from cxr_fast.schema.run import RunConfig

    if args.data and args.metadata:
        raise CxrError("give --metadata or --data, not both")
    if args.data:
        meta = RunConfig.parse(given(args, DATASET_FIELDS), "flags").read_dataset(args.data).metadata
        path = meta.source
    else:
        path = args.metadata or BUNDLED_METADATA
        meta = read_metadata(path)
    labels = tuple(label for label in PAPER_LABELS if label in meta.label_names)
    missing = [label for label in PAPER_LABELS if label not in labels]
    if missing:
        print(f"{path} has no {', '.join(missing)} label(s); its labels: {', '.join(meta.label_names)}")
    rows = table1(meta, labels=labels, size=args.size, seed=args.seed)
    repeats = f" ({len(meta.duplicates)} repeated rows dropped)" if meta.duplicates else ""
    table = Table(title=f"Table 1 columns: {Path(path).name}, {len(meta)} images{repeats}")
    for col in ("label", "positives", "single-finding", "subsample", "loss weight"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for r in rows:
        table.add_row(r["label"], str(r["positives"]), str(r["single_finding"]), str(r["subsample"]),
                      "—" if r["loss_weight"] is None else f"{r['loss_weight']:.3f}")
    Console().print(table)
    if args.json:
        write_json(args.json, {"metadata": str(path), "n_images": len(meta),
                               "duplicates_dropped": len(meta.duplicates), "rows": rows})
    return 0
