"""Command line: ``dirichlet-prune pretrain|prune|compare-guides|search|evaluate|export``.

The command line only parses options, calls the library and prints. Each sub-command is a
module with ``add_parser(subparsers)`` and ``run(args)``: ``pretrain``, ``prune``,
``compare_guides``, ``search``, ``evaluate``, ``export``; ``options`` holds what they share. Every error is
one line on stderr: ``dirichlet-prune: error: <message>`` with exit status 2 for bad input (a
bad option value included), ``dirichlet-prune: numerical error: <message>`` with status 3, and
status 130 after Ctrl-C. Launched by ``torchrun`` (``prune`` and ``pretrain``), every process
joins the process group and runs data-parallel (``pyro_dirichlet_prune.distributed``). The
command line owns its process, so it keeps freed memory in it (``allocator.retain_freed_memory``):
its training loops stop paying for page faults.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .. import __version__, distributed
from ..allocator import retain_freed_memory
from ..errors import NumericalError, UserError
from . import compare_guides, evaluate, export, pretrain, prune, search
from .options import PROG, ArgumentParser, flag_words, parse_seeds, print_error, set_threads
from .search import add_search_parser, parse_methods, run_search_cli, search_config_from_args

COMMANDS = {"pretrain": pretrain, "prune": prune, "compare-guides": compare_guides, "search": search,
            "evaluate": evaluate, "export": export}

__all__ = ["COMMANDS", "PROG", "add_search_parser", "build_parser", "main", "parse_methods", "parse_seeds",
           "run_search_cli", "search_config_from_args"]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Dirichlet pruning of pre-trained CNNs as a Pyro program (Adamczewski & Park, 2021).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        parser.commands[name] = module.add_parser(sub)
    return parser


def interrupted_message(args: argparse.Namespace) -> str:
    """What Ctrl-C left behind: the partial state a ``--resume`` continues, where it is kept,
    or that nothing was written."""
    out = getattr(args, "out", None)
    if out is None or not hasattr(args, "resume"):
        return "interrupted; nothing was written"
    if args.command == "search":
        from ..search import is_unfinished_search

        if is_unfinished_search(out):
            return (f"interrupted; the finished records of the search are kept in {out}: run the same command with "
                    f"--resume to continue it (finished records are not recomputed)")
        return "interrupted; nothing was written"
    from ..report import work_folder
    from ..runstate import STATE_FILE

    work = work_folder(out)
    if (work / STATE_FILE).is_file():
        return (f"interrupted; the partial run is kept in {work}: run the same command with --resume to "
                f"continue it from its last saved state")
    return "interrupted; nothing was written"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    retain_freed_memory()
    try:
        set_threads(getattr(args, "threads", None))
        if distributed.launched():  # started by torchrun: join its process group (prune, pretrain)
            if args.command not in ("prune", "pretrain"):
                raise UserError(f"{args.command} runs in one process; launch prune or pretrain with torchrun (search "
                                f"and compare-guides spread their jobs with jobs/scheduler instead)")
            distributed.init_from_env(args.device)
            args.device = distributed.local_device(args.device)
            if not distributed.is_main():  # rank 0 speaks for the job; errors still reach stderr
                sys.stdout = open(os.devnull, "w")
        COMMANDS[args.command].run(args)
    except UserError as exc:
        print_error("error", flag_words(str(exc), parser, args.command))
        return 2
    except NumericalError as exc:
        print_error("numerical error", str(exc))
        return 3
    except KeyboardInterrupt:
        print(f"{PROG}: {interrupted_message(args)}", file=sys.stderr)
        return 130
    return 0
