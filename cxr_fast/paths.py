"""Where cxr-fast keeps things it makes for the user: the built-in phantom and bundled metadata."""

from __future__ import annotations

import os
from pathlib import Path

RESOURCES = Path(__file__).parent / "data" / "resources"
BUNDLED_METADATA = RESOURCES / "Data_Entry_2017_v2020.csv.gz"
BUNDLED_BBOXES = RESOURCES / "BBox_List_2017.csv.gz"


def cache_dir() -> Path:
    """``$CXR_FAST_CACHE``, else ``$XDG_CACHE_HOME/cxr-fast``, else ``~/.cache/cxr-fast``."""
    env = os.environ.get("CXR_FAST_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cxr-fast"
