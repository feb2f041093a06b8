"""The ``[net]`` section: where the node listens, how it finds others, who may talk to it."""

from __future__ import annotations

from dataclasses import dataclass

from ..addresses import bootstrap_peers, check_listen, parse_metrics_listen
from .sections import check


@dataclass(frozen=True)
class NetParams:
    """Where the node listens, how it finds others, and who may talk to it."""

    listen: str = "/ip4/0.0.0.0/tcp/0"
    bootstrap: tuple[str, ...] = ()
    mdns: bool = True
    federation: str = "fednode"
    key_file: str = "fednode.key"
    allow: tuple[str, ...] = ()
    open_membership: bool = True
    network_key_file: str = ""
    dial_timeout_s: float = 10.0
    send_timeout_s: float = 60.0
    peer_timeout_s: float = 30.0
    #: Unix socket for `fednode status` / `fednode promote` ("" = none; mode 0600)
    control_socket: str = ""
    #: Prometheus metrics at http://HOST:PORT/metrics ("" = off; e.g. 127.0.0.1:9464)
    metrics_listen: str = ""

    def validate(self) -> None:
        # each raises ConfigError naming its field (and the bad address)
        check_listen(self.listen)
        bootstrap_peers(self.bootstrap)
        check(bool(self.federation), "net.federation", self.federation, "a non-empty name")
        check(
            not (self.allow and self.open_membership),
            "net.open_membership",
            self.open_membership,
            "false when net.allow lists peers (an allow-list only means something for "
            "closed membership; set open_membership = false, or empty the list)",
        )
        for name in ("dial_timeout_s", "send_timeout_s", "peer_timeout_s"):
            value = getattr(self, name)
            check(value > 0, f"net.{name}", value, "a float > 0 (seconds)")
        if self.metrics_listen:
            parse_metrics_listen(self.metrics_listen)
