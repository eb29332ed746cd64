"""The ``cxr-fast`` command: a thin dispatcher over one module per subcommand.

Each module in ``cxr_fast.commands`` defines ``HELP`` (one line), ``configure(parser)`` and
``run(args) -> int``. Modules import heavy libraries (torch, DALI) inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import warnings
from typing import Iterator, Sequence

from cxr_fast.version import __version__
from cxr_fast.errors import CxrError

# Order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "bench": "cxr_fast.commands.bench",
    "train": "cxr_fast.commands.train",
    "memory": "cxr_fast.commands.memory",
    "plan": "cxr_fast.commands.plan",
    "gpu-check": "cxr_fast.commands.gpu_check",
    "study": "cxr_fast.commands.study",
    "report": "cxr_fast.commands.report",
    "prepare": "cxr_fast.commands.prepare",
    "lr-find": "cxr_fast.commands.lr_find",
    "evaluate": "cxr_fast.commands.evaluate",
    "synth": "cxr_fast.commands.synth",
    "fetch": "cxr_fast.commands.fetch",
    "verify": "cxr_fast.commands.verify",
    "table1": "cxr_fast.commands.table1",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-fast",
        description="Chest X-ray image-resolution studies, fast: decode once, GPU loaders, "
        "channels-last AMP, AUC with DeLong errors. Runs on a built-in phantom when no data is given.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet
                continue
            raise
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        # A warning (random init, rows skipped, a damaged file rebuilt) is one line for the user, not a
        # source location; each distinct one is shown once.
        warnings.simplefilter("default")
        previous = warnings.showwarning
        warnings.showwarning = lambda message, *a, **k: print(
            f"cxr-fast {args.command}: warning: {message}", file=sys.stderr)
        try:
            with _sigterm_as_interrupt():
                return _run(args)
        finally:
            warnings.showwarning = previous


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a plain ``kill``), raised like Ctrl-C so the same cleanup runs: workers stopped, work kept."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises ``_Terminated`` instead of ending the process on the spot, which
    would leave its pool workers running and its checkpoints unwritten (main thread only: Python's rule)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from cxr_fast.schema.flags import check_number_flags

    try:
        check_number_flags(args._parser, args)  # every numeric flag's declared bounds, before any work
        return int(args._run(args) or 0)
    except CxrError as exc:
        print(f"cxr-fast {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # disk full, permission denied, a folder that vanished: name it, no traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"cxr-fast {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        how, code = ("terminated (SIGTERM)", 143) if isinstance(exc, _Terminated) else ("interrupted", 130)
        print(f"cxr-fast {args.command}: {how}; finished work is kept, rerun to resume", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
