"""Command-line entry point: ``stability-lab`` and ``python -m stability_lab``.

The CLI only parses and calls the library. Sub-commands live in
:mod:`stability_lab.cli.commands` (one module each, exposing ``HELP``,
``add_arguments(parser)`` and ``main(args) -> int``). ``stability-lab --task ...``
without a sub-command means ``stability-lab run --task ...``, so the brief's
``python stability_lab.py --task logistic_regression --sweep precision,lr,lambda``
works as written.

Errors a user can cause print one line, ``stability-lab: error: ...``, and exit with
code 2, without a traceback; faults of the machine (disk full, read-only or locked or
damaged store) print one line too and exit with code 3. Nothing here imports torch:
``--help`` and argument errors stay fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from stability_lab.errors import LabError

#: OSErrors that are faults of the machine (one line, exit 3), not bugs
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                       errno.EIO}

COMMANDS = ("run", "show", "repro", "playbook", "nist", "replay", "report", "portability",
            "evaluate")
PROG = "stability-lab"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        hint = f"; see '{self.prog} --help'"
        sys.stderr.write(f"{PROG}: error: {message}{hint}\n")
        raise SystemExit(2)


def _load(name: str):
    try:
        return importlib.import_module(f"stability_lab.cli.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"stability_lab.cli.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from stability_lab import __version__

    parser = _Parser(
        prog=PROG,
        description="A failure harness for ML pipelines: is the model wrong, or is the "
        "computation unstable? Runs matched sweeps, names numerical failure signatures "
        "with their onset, recommends fixes with numbers, and proves them.",
        epilog="Without a sub-command, 'stability-lab --task ...' means 'stability-lab run "
        "--task ...'. Example: "
        "stability-lab --task logistic_regression --sweep precision,lr,lambda",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run", *argv]
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    try:
        args = parser.parse_args(argv)
        args._argv = argv  # the command line as parsed (stored with a sweep)
        if not getattr(args, "_main", None):
            parser.print_help()
            return 2
        return int(args._main(args) or 0)
    except LabError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; completed runs are kept in the store\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        from stability_lab.paths import os_fault

        where = exc.filename or "a file"
        sys.stderr.write(f"{PROG}: error: {os_fault(exc, where, 'fix that and run again')}\n")
        return 3


def entry() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
