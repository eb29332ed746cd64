"""The folders a study's runs use, which every node of a cluster must see as the driver does.

A Ray cluster's nodes may not share a filesystem; a run on a node that does not would read other data or
write its predictions where the driver never finds them. The executor checks these folders on every node
before any run starts (``cxr_fast.executors.SharedFolders``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cxr_fast.executors import SharedFolders
from cxr_fast.study.grid import Cell


def shared_folders(cells: Sequence[Cell], study_dir: Path) -> SharedFolders:
    """The study folder, each cell's data folder (a path, or a phantom spec that each node finds in its own
    cache, as its runs would) and each store outside the study folder (those inside are shared with it)."""
    from cxr_fast.data.source import PHANTOM, data_folder
    from cxr_fast.stores.manifest import data_of

    study_dir = Path(study_dir).resolve()
    names: set[str] = set()
    for cell in cells:
        c = cell.config
        data = data_of(c.data, c.store)
        names.add(PHANTOM if data is None else str(data))
        if c.store:
            store = Path(c.store).resolve()
            if not store.is_relative_to(study_dir):
                names.add(str(store))
    return SharedFolders(study_dir, tuple(sorted(names)), data_folder)
