"""A dict of JSON values in one file of the cache folder, held in memory too: what the planner counts once.

Why: counting a DenseNet121 step or memory profile on the ``meta`` device takes about a second, and a plan
of the paper's grid needs dozens. Keys are stored behind ``v<version>|torch <version>``, so a torch upgrade
or a change in what is counted misses the old entries, which are dropped the next time the file is
written. A damaged or foreign file reads as empty; a read-only cache folder only costs a recount next time.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any


class DiskCache:
    def __init__(self, name: str, version: int) -> None:
        self.name, self.version = name, version
        self._lock = threading.Lock()
        self._memory: dict[str, dict[str, Any]] = {}  # per file: its entries of this version

    def _path(self) -> Path:
        from cxr_fast.paths import cache_dir

        return cache_dir() / self.name  # looked up each time: tests point the cache folder elsewhere

    def _prefix(self) -> str:
        import torch

        return f"v{self.version}|torch {torch.__version__}|"

    def _entries(self, path: Path) -> dict[str, Any]:
        """This version's entries of ``path``, read once (call with the lock held)."""
        entries = self._memory.get(str(path))
        if entries is None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            prefix = self._prefix()
            entries = {k: v for k, v in data.items() if k.startswith(prefix)} if isinstance(data, dict) else {}
            self._memory[str(path)] = entries
        return entries

    def get(self, key: str) -> Any | None:
        with self._lock:
            return self._entries(self._path()).get(self._prefix() + key)

    def put(self, key: str, value: Any) -> None:
        from cxr_fast.io import write_json

        path = self._path()
        with self._lock:
            entries = self._entries(path)
            entries[self._prefix() + key] = value
            try:
                write_json(path, entries)
            except OSError:
                pass  # a read-only cache only costs the next run a recount

    def clear(self) -> None:
        """Forget what is held in memory (the file stays)."""
        with self._lock:
            self._memory.clear()
