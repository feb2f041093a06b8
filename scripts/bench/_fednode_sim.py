"""fednode's side of ``vs_flower.py sim`` / ``scale``: ``fednode sim ARGS`` with round stamps.

``python scripts/bench/_fednode_sim.py sim --task digits ...`` is ``fednode sim ...``
(``fednode.cli.main``) plus one listener (``run_experiment(watch=...)``, the hook the live
dashboard uses) that prints ``{"round": r, "accuracy": a, "t": time.time()}`` to stderr
when the coordinator logs a round, so the benchmark can read the whole-process wall time
to a given accuracy the same way it reads Flower's (``_flower_sim.py``). The listener
does nothing else; stdout is the command's own (``--json``: the summary).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def main() -> int:
    import fednode.cli.sim as sim_cli
    from fednode.cli import main as fednode_main

    real = sim_cli.run_experiment

    def stamped(*args: Any, **kwargs: Any) -> Any:
        def watch(_topo: Any, _built: Any, _driver: Any) -> Any:
            def listen(_index: int, event: str, data: dict[str, Any], _now: float) -> None:
                if event == "round":
                    row = {"round": data["round"], "accuracy": data["accuracy"], "t": time.time()}
                    print(json.dumps(row), file=sys.stderr, flush=True)

            return listen

        if kwargs.get("watch") is None:  # `fednode sim` passes watch=None without --dashboard
            kwargs["watch"] = watch
        return real(*args, **kwargs)

    sim_cli.run_experiment = stamped  # type: ignore[assignment]
    return fednode_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
