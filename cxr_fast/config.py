"""Reading and writing settings files: YAML in (one-line errors naming the file), the resolved result out.

The run settings are a schema of their own (``cxr_fast.schema``); the helpers here serve the smaller
dataclass settings of other commands (``bench``'s). Nothing global: every command builds its config object
explicitly and passes it down.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxr_fast.errors import CxrError
from cxr_fast.io import write_text

T = TypeVar("T")


# What a settings file may expand to, each use of an alias counted whole: real ones hold hundreds of values
# (PyYAML's own dumper writes aliases for a list used twice), a "billion laughs" of nested aliases billions.
MAX_YAML_VALUES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that counts what a document expands to before building it: a few lines of nested aliases
    (a "billion laughs") expand to gigabytes once a value is printed or hashed, so such a file, or a recursive
    alias, is refused while it is still a small graph of nodes."""

    def construct_document(self, node: Any) -> Any:
        size = _expanded(node, {}, set())
        if size > MAX_YAML_VALUES:
            raise yaml.YAMLError(f"its aliases expand it to {size:,} values, over the {MAX_YAML_VALUES:,} a "
                                 "settings file may hold; write the values out")
        return super().construct_document(node)


def _expanded(node: Any, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` stands for once every alias in it is copied out (memoized: linear in nodes)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise yaml.YAMLError(f"a recursive alias on line {node.start_mark.line + 1}")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded(k, sizes, open_) + _expanded(v, sizes, open_) for k, v in node.value)
    else:
        size = 1
    open_.discard(key)
    sizes[key] = size
    return size


def parse_yaml(text: str, source: str | Path) -> Any:
    """The one reader of a user's YAML (run configs, study files, bench settings, a study's ``study.yaml``):
    safe types only, and at most ``MAX_YAML_VALUES`` once aliases are expanded; an error is one line naming
    ``source``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: safe types only
    except yaml.YAMLError as exc:
        raise CxrError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise CxrError(f"{source}: not valid YAML (nested too deeply)") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a one-line error naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CxrError(f"config file not found: {p}")
    data = parse_yaml(p.read_text(encoding="utf-8"), p)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CxrError(f"{p}: expected a mapping of settings at the top level")
    return data


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting keys the dataclass does not have and values of the wrong type."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise CxrError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    check_types(cls, data, source)
    return cls(**data)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _matches(value: Any, tp: Any) -> bool:
    """Whether a YAML/CLI value fits a field annotation: no bool for a number, no 2.5 for an int."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, (str, Path))
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, tp) if isinstance(tp, type) else True


def check_types(cls: type, data: dict[str, Any], source: str = "config") -> None:
    """One line naming the first setting whose value has the wrong type, e.g. ``batch_size: eight``."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        tp = hints.get(key, Any)
        if not _matches(value, tp):
            args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
            want = " or ".join(_type_name(a) for a in args)
            raise CxrError(f"{source}: {key} must be {want}, got {value!r}")


def override(cfg: T, **changes: Any) -> T:
    """Return ``cfg`` with every change that is not None applied (None means "flag not given")."""
    given = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(cfg, **given)  # type: ignore[type-var]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A settings object (a dataclass, or a pydantic model such as ``RunConfig``) as plain YAML values."""
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="python")

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
