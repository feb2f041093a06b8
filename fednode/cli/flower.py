"""``--flower-app PATH`` / ``--run-config``: a Flower app as the task of ``fednode run|sim``.

The app is read, its ClientApp imported and its ServerApp's strategy mapped before
anything starts (every problem is a ConfigError, exit status 2); the mapping is printed.
Precedence: defaults < config file < the app's ServerApp < command-line flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import ConfigError


def add_flower(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("Flower apps (docs/FLOWER.md)")
    group.add_argument(
        "--flower-app",
        metavar="PATH",
        help="run this Flower app's ClientApp as the task (its pyproject.toml names the "
        "components); a stock strategy of its ServerApp sets the round settings",
    )
    group.add_argument(
        "--run-config",
        metavar="'K=V ...'",
        help="with --flower-app: override the app's [tool.flwr.app.config] (as flwr run)",
    )


def flower_overrides(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """The dotted overrides of the Flower app the flags (or the config file's
    ``data.task = "flower:..."``) name, its mapping printed with ``say``; {} without one."""
    from ..flower.app import is_flower_spec, make_spec

    app, run_config = getattr(args, "flower_app", None), getattr(args, "run_config", None)
    if app is not None:
        if getattr(args, "task", None):
            raise ConfigError("task", args.task, "no --task with --flower-app (the app is it)")
        spec = make_spec(app, run_config or "")
    elif run_config is not None:
        raise ConfigError("run-config", run_config, "--flower-app PATH beside it")
    else:
        task = getattr(args, "task", None)
        if task is None:
            config: Path | None = getattr(args, "config", None)
            task = load_config(config, None).data.task if config else ""
        if not is_flower_spec(task):
            return {}
        spec = task
    from ..flower.strategy import app_overrides

    out, lines = app_overrides(spec)
    for line in lines:
        say.print(line, highlight=False, markup=False, soft_wrap=True)
    return out
