"""Dataclass configs: YAML files give defaults, CLI flags override them, the resolved result is saved.

Nothing global: every command builds its config object explicitly and passes it down.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxr_fast.errors import CxrError
from cxr_fast.io import write_text

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a one-line error naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CxrError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CxrError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CxrError(f"{p}: expected a mapping of settings at the top level")
    return data


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting keys the dataclass does not have."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise CxrError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**data)


def override(cfg: T, **changes: Any) -> T:
    """Return ``cfg`` with every change that is not None applied (None means "flag not given")."""
    given = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(cfg, **given)  # type: ignore[type-var]


def to_dict(cfg: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config atomically, so every run records exactly what it used."""
    data = cfg if isinstance(cfg, dict) else to_dict(cfg)
    write_text(path, yaml.safe_dump(data, sort_keys=False))
