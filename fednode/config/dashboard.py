"""The ``[dashboard]`` section: the node's read-only live web page (docs/DASHBOARD.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..addresses import is_loopback, parse_host_port
from .sections import check


@dataclass(frozen=True)
class DashboardParams:
    """``[dashboard]``: the read-only live web page (``--dashboard HOST:PORT``)."""

    #: where to serve it ("" = off; e.g. 127.0.0.1:8080). A non-loopback address needs
    #: ``token_file``
    listen: str = ""
    #: a file whose first line is the token every request must carry ("" = none)
    token_file: str = ""
    #: connections served at once (page, assets and live streams); more get 503
    max_connections: int = 8
    #: the newest events kept for the page's log
    event_log: int = 200
    #: ``fednode sim``: wall seconds the simulator pauses after each round, so the page
    #: can be followed (0 = full speed)
    round_pause_s: float = 0.0
    #: ``fednode sim``: wall seconds the page stays up after the run ends
    linger_s: float = 0.0

    def validate(self) -> None:
        if self.listen:
            host, _port = parse_host_port("dashboard.listen", self.listen)
            check(
                is_loopback(host) or bool(self.token_file),
                "dashboard.listen",
                self.listen,
                "a loopback address (127.0.0.1:PORT), or dashboard.token_file "
                "(--dashboard-token-file) for any other",
            )
        check(
            1 <= self.max_connections <= 1024,
            "dashboard.max_connections",
            self.max_connections,
            "an integer in [1, 1024]",
        )
        check(
            1 <= self.event_log <= 100_000,
            "dashboard.event_log",
            self.event_log,
            "an integer in [1, 100000]",
        )
        for name in ("round_pause_s", "linger_s"):
            value = getattr(self, name)
            check(
                0 <= value <= 3600 and math.isfinite(value),
                f"dashboard.{name}",
                value,
                "a number of seconds in [0, 3600]",
            )
