"""How a setting is declared, and how a refused value is said: the schema's two pieces of machinery.

``setting(...)`` is pydantic's ``Field`` plus what the rest of cxr-fast reads off a declaration: the flag's
metavar and the noun a wrong choice is called by, and four roles a study and a resumed run need
(``grid``: set per cell by the grids, not by a ``train:`` block; ``speed_only``: changes speed, not results,
so it is left out of a cell's fingerprint; ``resume_free``: may differ when a run is resumed; ``per_model``: may
differ between the runs one packed step trains, ``cxr_fast.packed``, each model having its own).

``explain(error, source)`` turns pydantic's ``ValidationError`` into the project's one-line error, in the
words cxr-fast has always used: ``cfg.yaml: batch_size must be int, got 'eight'``, ``unknown recipe
'fastai2'; choose from fastai07, modern``, ``lr must be positive, got -1``. The phrase for a range comes
from the declared bounds, so a bound and its message cannot drift apart.
"""

from __future__ import annotations

import os
import types
import typing
from typing import Annotated, Any

import annotated_types
from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo

from cxr_fast.vocabulary import range_phrase  # the words for a range, shared with ``vocabulary.check_number``


def _path_text(value: Any) -> Any:
    """A folder or file given as a ``Path`` from Python is the same setting as its text from YAML."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathText = Annotated[str, BeforeValidator(_path_text)]


def setting(default: Any, help: str, *, metavar: str | None = None, noun: str | None = None,
            grid: bool = False, speed_only: bool = False, resume_free: bool = False, per_model: bool = False,
            shown_default: str | None = None, **bounds: Any) -> Any:
    """A field of a settings model: its default, help text, bounds (``ge``, ``gt``, ``lt``, ``le``) and roles."""
    extra = {"metavar": metavar, "noun": noun, "grid": grid, "speed_only": speed_only,
             "resume_free": resume_free, "per_model": per_model, "shown_default": shown_default}
    return Field(default, description=help, json_schema_extra=extra, **bounds)


def extra(info: FieldInfo, key: str) -> Any:
    """One of ``setting``'s extras of a declared field (None when absent)."""
    data = info.json_schema_extra
    return data.get(key) if isinstance(data, dict) else None


def bounds(info: FieldInfo) -> dict[str, Any]:
    """The declared bounds of a field, e.g. ``{"ge": 1}``."""
    out: dict[str, Any] = {}
    for m in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(annotated_types, name.capitalize())):
                out[name] = getattr(m, name)
    return out


_TYPE_WORDS = {"int_type": "int", "int_parsing": "int", "float_type": "float", "float_parsing": "float",
               "bool_type": "bool", "bool_parsing": "bool", "string_type": "str"}


def _type_message(key: str, value: Any, want: str, nullable: bool) -> str:
    if want == "int" and isinstance(value, float) and not isinstance(value, bool):
        return f"{key} must be a whole number, got {value!r}"  # 2.5 epochs is refused, never truncated
    return f"{key} must be {want}{' or null' if nullable else ''}, got {value!r}"


def base_type(info: FieldInfo) -> Any:
    """A field's type without ``Optional`` and ``Annotated``: ``int`` for ``int | None``, the ``Literal`` itself."""
    tp = info.annotation
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def choices(info: FieldInfo) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` field, else None."""
    tp = base_type(info)
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def explain(error: ValidationError, source: str, fields: dict[str, FieldInfo]) -> str:
    """The first problem of ``error`` as one line, prefixed by ``source`` (a file, a study cell)."""
    problems = error.errors(include_url=False)
    extras = sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden" and p["loc"])
    if extras:
        return f"{source}: unknown setting(s) {', '.join(extras)}; known: {', '.join(sorted(fields))}"
    first = problems[0]
    key = str(first["loc"][0]) if first["loc"] else ""
    value, kind, info = first.get("input"), first["type"], fields.get(key)
    same_key = [p for p in problems if p["loc"][:1] == first["loc"][:1]]
    if kind in _TYPE_WORDS:
        nullable = any(p["type"] == "none_required" for p in same_key)
        return f"{source}: {_type_message(key, value, _TYPE_WORDS[kind], nullable)}"
    if kind == "literal_error" and info is not None:
        noun = extra(info, "noun") or key
        return f"{source}: unknown {noun} {value!r}; choose from {', '.join(map(str, choices(info) or ()))}"
    if kind == "finite_number":
        return f"{source}: {key} must be a finite number, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{source}: {key} must be {range_phrase(bounds(info) if info else {})}, got {value!r}"
    if kind == "value_error":
        return f"{source}: {first['ctx']['error']}"
    return f"{source}: {key}: {first['msg']}" if key else f"{source}: {first['msg']}"
