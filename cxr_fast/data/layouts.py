"""The built-in phantom written in any dataset's layout (``cxr-fast synth OUT --layout L``).

The phantom is made once in the NIH layout (``data.source.default_phantom``, cached), then the dataset's own
module writes it in its layout (``Dataset.write_phantom``): every reader has a fixture in its real layout, and a
newcomer can try one without the data. The folder is written beside ``OUT`` and renamed into place when whole,
so an interrupted run leaves no half-made dataset; ``.synth.json`` records what it was made from, and a rerun
with the same settings finds it made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cxr_fast.data.sets import dataset_class
from cxr_fast.data.sets.base import Dataset, DatasetOptions
from cxr_fast.data.sets.nih import read_nih_folder
from cxr_fast.data.source import default_phantom
from cxr_fast.errors import CxrError
from cxr_fast.io import write_json

MARKER = ".synth.json"


def write_layout(out: str | Path, layout: str, quiet: bool = False, **phantom: Any) -> Dataset:
    """Write the phantom (``default_phantom``'s settings) into ``out`` in ``layout``; returns it opened."""
    cls = dataset_class(layout)
    target = Path(out)
    source_dir = default_phantom(quiet=quiet, **phantom)
    record = {"layout": layout, "phantom": source_dir.name}
    if target.exists():
        marker = target / MARKER
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == record:
            return cls.read(target, DatasetOptions())
        if any(target.iterdir()):
            raise CxrError(f"{target} exists and is not empty; choose a new or empty folder")
        target.rmdir()
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        cls.write_phantom(read_nih_folder(source_dir), partial, seed=int(phantom.get("seed", 0)))
        write_json(partial / MARKER, record)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return cls.read(target, DatasetOptions())
