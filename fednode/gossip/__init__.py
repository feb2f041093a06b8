"""Coordinator-free gossip consortium: peers that train locally and average with neighbours.

Pure state machines (no trio, no libp2p), run by :func:`fednode.runner.run_role` like every
role. ``docs/GOSSIP.md`` describes the protocols, their guarantees and measured rates.
"""

from ..config import GossipParams
from .core import WaitFor
from .links import Link, LinkCodec, mh_weight
from .peer import GossipPeer
from .states import TRANSITIONS, Phase

__all__ = [
    "TRANSITIONS",
    "GossipParams",
    "GossipPeer",
    "Link",
    "LinkCodec",
    "Phase",
    "WaitFor",
    "mh_weight",
]
