"""Command-line flags derived from the run schema: a setting's flag, type, choices and help are its declaration.

``add_run_flags(parser, names)`` adds ``--batch-size`` for ``batch_size`` with the declared type, the
``Literal``'s choices, ``--x/--no-x`` for a bool (never ``type=bool``) and the declared help with its default.
Unset flags stay absent from the parsed namespace, so a config file's value shows through and
``given(args)`` is exactly what the user typed. ``train``, ``lr-find``, ``study``, ``plan`` and ``prepare``
take their run flags from here, so a setting added to ``RunConfig`` is a flag everywhere at once.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable

from cxr_fast.schema.fields import base_type, choices, extra
from cxr_fast.schema.run import RunConfig


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def shown_default(name: str) -> str:
    """How a field's default reads in ``--help``: ``on``/``off`` for a bool, its declared words for a None."""
    info = RunConfig.model_fields[name]
    text = extra(info, "shown_default")
    if text is not None:
        return text
    default = info.default
    return {True: "on", False: "off"}.get(default, str(default)) if isinstance(default, bool) else str(default)


def add_run_flags(parser: argparse.ArgumentParser | Any, names: Iterable[str] | None = None, *,
                  flags: dict[str, str] | None = None, defaults: bool = False, show_defaults: bool = True,
                  help_for: dict[str, str] | None = None, required: Iterable[str] = ()) -> None:
    """Add one flag per run setting in ``names`` (default: all) to ``parser`` (or an argument group).

    ``flags`` renames a flag (``{"subsample_size": "--size"}``); ``defaults`` gives each flag its declared
    default instead of leaving it absent; ``help_for`` replaces a setting's help where a command means it
    differently; ``required`` names settings a command cannot do without (no default then).
    """
    fields = RunConfig.model_fields
    for name in names if names is not None else RunConfig.names():
        info = fields[name]
        kw: dict[str, Any] = {"dest": name, "default": info.default if defaults else argparse.SUPPRESS}
        text = (help_for or {}).get(name, info.description or "")
        if name in required:
            kw.pop("default")
            kw["required"] = True
        elif show_defaults:
            text += f" (default {shown_default(name)})"
        kw["help"] = text
        allowed = choices(info)
        tp = base_type(info)
        if allowed is not None:
            kw["choices"] = allowed
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = tp
            if extra(info, "metavar"):
                kw["metavar"] = extra(info, "metavar")
        action = parser.add_argument((flags or {}).get(name, flag_of(name)), **kw)
        action.run_setting = name  # made from the declaration (tests hold every command's run flags to it)


def number_flag(parser: argparse.ArgumentParser | Any, flag: str, kind: type = float, **kw: Any) -> argparse.Action:
    """A flag taking a number, with its bounds declared beside it (``ge``, ``gt``, ``le``, ``lt`` among ``kw``).

    The CLI checks every such flag with ``vocabulary.check_number`` before the command runs
    (``check_number_flags``): a NaN, an infinity or an out-of-range value is one line naming the flag, never a
    hang or a traceback after work was done. A default of None (for example "all cores") is not checked."""
    bounds = {k: kw.pop(k) for k in ("ge", "gt", "le", "lt") if k in kw}
    if kw.pop("integer", False):  # a bounds table's own word for a whole number (PHANTOM_BOUNDS)
        kind = int
    action = parser.add_argument(flag, type=kind, **kw)
    action.number_bounds = (kind is int, bounds)
    return action


def check_number_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check each ``number_flag`` of ``parser`` (a command's) against its bounds, in one line on failure."""
    from cxr_fast.vocabulary import check_number

    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        declared = getattr(action, "number_bounds", None)
        value = getattr(args, action.dest, None)
        if declared is not None and value is not None:
            integer, bounds = declared
            check_number(value, action.option_strings[0] if action.option_strings else action.dest,
                         integer=integer, **bounds)


def given(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The run settings the user gave as flags (absent ones are not in ``args``)."""
    return {n: getattr(args, n) for n in (names if names is not None else RunConfig.names()) if hasattr(args, n)}


def pack_flag(parser: argparse.ArgumentParser | Any, what: str) -> argparse.Action:
    """``--pack auto|1|K`` (``vocabulary.parse_pack``), one declaration for ``study`` and ``plan``; ``what`` says
    what the flag does for that command."""
    return parser.add_argument("--pack", metavar="auto|1|K",
                               help=f"{what}: K compatible runs (one architecture, resolution and recipe) trained as "
                                    "one packed step; auto = as many as fit the device's memory, at most 8; 1 = each "
                                    "run alone")
