"""``fednode`` command line: parsing and presentation only; the work lives in the package.

Commands: ``run`` (a real node), ``demo``, ``sim``, ``train --centralized``, ``keygen``,
``status`` and ``promote``; one module each (``status``/``promote``: ``control``).
Every command has ``--help``; configuration errors print one line naming the field and
exit with status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rich.markup import escape

from .. import __version__
from ..errors import ConfigError, FednodeError
from . import control, demo, keygen, run, sim, train
from .common import console


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fednode",
        description="One node program for federated learning: client, regional aggregator, "
        "coordinator or gossip peer. Star, two-tier and gossip from one codebase.",
    )
    parser.add_argument("--version", action="version", version=f"fednode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, demo, sim, train):
        module.add_parser(sub)
    control.add_parsers(sub)
    keygen.add_parser(sub)
    return parser


COMMANDS = {
    "run": run.cmd_run,
    "demo": demo.cmd_demo,
    "sim": sim.run_sim,
    "train": train.cmd_train,
    "keygen": keygen.cmd_keygen,
    "status": control.cmd_status,
    "promote": control.cmd_promote,
}


def _sigterm_interrupts() -> None:
    """Make SIGTERM behave like Ctrl-C until a node installs its own handler, so a process
    stopped while it loads (torch takes seconds) says "interrupted" and exits 130."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (e.g. tests)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _sigterm_interrupts()
        import torch

        torch.set_num_threads(1)  # tiny models: one thread per process is fastest
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        console.print(f"[red]config error[/]: {escape(str(exc))}")  # [tool.x] stays text
        return 2
    except FednodeError as exc:
        console.print(f"[red]error[/]: {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
