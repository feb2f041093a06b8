"""The coordinator's picture of the federation tree: who is under whom (pure, no I/O).

::

    coordinator
    ├── client            direct child: advertised with parent = coordinator (or none)
    ├── aggregator A      direct child; its advert lists its children
    │   ├── client
    │   └── client
    └── aggregator B ...

Sources of truth, newest wins: a client's own advert says where it is; an aggregator's
advert (``Advert.children``) says who is under it; the coordinator's ``Assign`` moves a
client (pending until the aggregator lists it). The coordinator is the placement
authority: a client reporting to it is either kept direct or assigned under an
aggregator — same region first, then the least loaded (``TierParams.placement``).

With auto-promotion on (``promote_at``), a labelled client whose region has no
aggregator yet stays direct, so that its region can grow to ``promote_at`` and get one.

Promotion turns a direct client into an aggregator (``Assign(role="aggregator")``) and
moves a share of its region under it (``Assign(role="client", parent=new)``); the
coordinator holds the next round until the new aggregator's advert arrives ("settled")
or ``settle_s`` passes. Failover: when an aggregator goes down its children are
forgotten here; they re-home themselves (advert to the coordinator) and are placed again.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from ..actions import Action, Emit, Send
from ..config import TierParams
from ..wire import messages as m


@dataclass
class Tree:
    tier: TierParams = field(default_factory=TierParams)
    me: str = ""
    #: direct children (clients and aggregators) by their last advert: the selectable set
    direct: dict[str, m.Advert] = field(default_factory=dict)
    #: client -> aggregator, as the aggregators report it
    under: dict[str, str] = field(default_factory=dict)
    #: client -> aggregator it was assigned to, not yet confirmed by that aggregator
    pending: dict[str, str] = field(default_factory=dict)
    #: promoted peer -> time by which the round start stops waiting for it
    promoting: dict[str, float] = field(default_factory=dict)
    #: promoted to take a whole region: its region's direct clients follow it once it settled
    takes_region: set[str] = field(default_factory=set)
    promotions: int = 0

    # --- queries ---------------------------------------------------------------------
    def aggregators(self) -> list[str]:
        return sorted(p for p, a in self.direct.items() if a.role == "aggregator")

    def load(self, agg: str) -> int:
        advert = self.direct.get(agg)
        confirmed = set(advert.children) if advert else set()
        leaving = {c for c in confirmed if self.pending.get(c, agg) != agg}  # assigned elsewhere
        return len((confirmed - leaving) | {c for c, a in self.pending.items() if a == agg})

    def leaves(self, peer: str) -> int:
        """Clients reachable through direct child ``peer`` (1 for a client)."""
        advert = self.direct.get(peer)
        if advert is None:
            return 0
        return advert.load if advert.role == "aggregator" else 1

    def as_dict(self) -> dict[str, list[str]]:
        """``{parent: sorted children}`` with the coordinator under its own id (or "")."""
        out: dict[str, list[str]] = {self.me: sorted(self.direct)}
        for agg in self.aggregators():
            out[agg] = sorted(self.direct[agg].children)
        return out

    def settling(self, now: float) -> bool:
        for peer, until in list(self.promoting.items()):
            if now >= until:
                del self.promoting[peer]
        return bool(self.promoting)

    # --- inputs ----------------------------------------------------------------------
    def on_advert(self, msg: m.Advert) -> list[Action]:
        """Update the tree from an advert addressed to us; returns placement actions."""
        self.me = self.me or msg.recipient
        peer = msg.sender
        if msg.parent and msg.parent != self.me:  # reports elsewhere now
            self.direct.pop(peer, None)
            if msg.role == "client" and msg.parent in self.direct:
                self.under[peer] = msg.parent
                if self.pending.get(peer) == msg.parent:
                    del self.pending[peer]
            return []
        if msg.role == "aggregator":
            return self._on_aggregator(msg)
        self.under.pop(peer, None)
        self.pending.pop(peer, None)
        target = self.place(msg)
        if target is None:
            self.direct[peer] = msg
            return []
        self.direct.pop(peer, None)
        return self.assign(peer, target)

    def _on_aggregator(self, msg: m.Advert) -> list[Action]:
        peer = msg.sender
        new = peer not in self.direct or self.direct[peer].role != "aggregator"
        self.direct[peer] = msg
        self.under.pop(peer, None)
        self.pending.pop(peer, None)
        listed = set(msg.children)
        for child, agg in list(self.under.items()):
            if agg == peer and child not in listed:
                del self.under[child]
        for child in listed:
            self.under[child] = peer
            self.direct.pop(child, None)
            if self.pending.get(child) == peer:
                del self.pending[child]
        if not new:
            return []
        if self.promoting.pop(peer, None) is None:
            return self.rebalance() + self.level(peer)
        # a promoted aggregator got its share with the promotion; if it was promoted for a
        # whole region, that region's latecomers follow it
        if peer in self.takes_region:
            self.takes_region.discard(peer)
            return self.rebalance(region_only=True)
        return []

    def on_down(self, peer: str) -> list[str]:
        """Forget ``peer``; returns the clients that were under it (now orphans)."""
        self.direct.pop(peer, None)
        self.under.pop(peer, None)
        self.pending.pop(peer, None)
        self.promoting.pop(peer, None)
        self.takes_region.discard(peer)
        orphans = sorted(
            {c for c, a in self.under.items() if a == peer}
            | {c for c, a in self.pending.items() if a == peer}
        )
        for child in orphans:
            self.under.pop(child, None)
            self.pending.pop(child, None)
        return orphans

    # --- placement -------------------------------------------------------------------
    def place(self, advert: m.Advert, region_only: bool = False) -> str | None:
        """Aggregator a reporting client should go under, or None to keep it direct."""
        policy = "region" if region_only else self.tier.placement
        aggs = [a for a in self.aggregators() if a not in self.promoting]
        if policy == "none" or not aggs:
            return None
        same = [a for a in aggs if advert.region and self.direct[a].region == advert.region]
        # with auto-promotion on, a labelled region waits for an aggregator of its own
        spill = policy == "least_loaded" and not (advert.region and self.tier.promote_at)
        pool = same or (aggs if spill else [])
        if not pool:
            return None
        return min(pool, key=lambda a: (self.load(a), a))

    def assign(self, client: str, agg: str, addrs: tuple[str, ...] | None = None) -> list[Action]:
        """Move ``client`` under ``agg``, telling it where ``agg`` listens (``addrs``;
        default: what ``agg`` advertised), so it can dial ``agg`` without discovery."""
        self.pending[client] = agg
        if addrs is None:
            known = self.direct.get(agg)
            addrs = known.addrs if known is not None else ()
        return [Send(client, m.Assign(role="client", parent=agg, addrs=addrs))]

    def rebalance(self, region_only: bool = False) -> list[Action]:
        """Place every direct client that has somewhere better to be (an aggregator joined)."""
        actions: list[Action] = []
        for peer, advert in sorted(self.direct.items()):
            if advert.role != "client":
                continue
            target = self.place(advert, region_only)
            if target is not None:
                del self.direct[peer]
                actions += self.assign(peer, target)
        return actions

    def level(self, newcomer: str) -> list[Action]:
        """Move clients from busier aggregators of ``newcomer``'s region (``least_loaded``)
        until its load is the fair share: otherwise whichever aggregator advertised first
        keeps every client that arrived before the others (as on a LAN, where start order
        is arbitrary). A moved client that already trained this round for its old parent
        declines the newcomer's request for it (see ``Client``): nothing is counted twice.
        """
        if self.tier.placement != "least_loaded":
            return []
        region = self.direct[newcomer].region
        peers = [
            a
            for a in self.aggregators()
            if a not in self.promoting and self.direct[a].region == region
        ]
        share = sum(self.load(a) for a in peers) // len(peers)
        actions: list[Action] = []
        while self.load(newcomer) < share:
            busiest = max(peers, key=lambda a: (self.load(a), a))
            if self.load(busiest) - self.load(newcomer) < 2:
                break
            movable = sorted(
                c
                for c in set(self.direct[busiest].children)
                if self.under.get(c) == busiest and self.pending.get(c) is None
            )
            if not movable:
                break
            child = movable[-1]
            self.under.pop(child, None)
            actions += self.assign(child, newcomer)
        return actions

    # --- promotion -------------------------------------------------------------------
    def promote(self, peer: str, now: float, share: float = 0.5) -> list[Action]:
        """Turn direct client ``peer`` into an aggregator and move ``share`` of its region."""
        advert = self.direct.get(peer)
        if advert is None or advert.role != "client":
            return [Emit("promotion_refused", {"peer": peer, "reason": "not a direct client"})]
        region = [
            p
            for p, a in sorted(self.direct.items())
            if p != peer and a.role == "client" and a.region == advert.region
        ]
        moved = region[: math.ceil(share * len(region))]
        del self.direct[peer]
        self.promoting[peer] = now + self.tier.settle_s
        if share >= 1.0:
            self.takes_region.add(peer)
        self.promotions += 1
        actions: list[Action] = [
            Send(peer, m.Assign(role="aggregator", parent=self.me, children=tuple(moved))),
            Emit("promoted", {"peer": peer, "region": advert.region, "children": len(moved)}),
        ]
        for child in moved:
            del self.direct[child]
            actions += self.assign(child, peer, advert.addrs)
        return actions

    def auto_promote(self, now: float) -> list[Action]:
        """Promote one client in each region whose direct clients reached ``promote_at``."""
        if not self.tier.promote_at or self.promoting:
            return []
        counts = Counter(a.region for a in self.direct.values() if a.role == "client")
        covered = {self.direct[a].region for a in self.aggregators()}
        actions: list[Action] = []
        for region, n in sorted(counts.items()):
            if n >= self.tier.promote_at and (region not in covered or not region):
                first = min(
                    p for p, a in self.direct.items() if a.role == "client" and a.region == region
                )
                actions += self.promote(first, now, share=1.0)
        return actions
