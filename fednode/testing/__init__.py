"""Test and demo support that needs real processes: a LAN of network namespaces.

:mod:`fednode.testing.netns` builds the LAN and runs ``fednode run`` in it;
:mod:`fednode.testing.lan` runs the star, two-tier and gossip federations on it (used
by ``tests/lan`` and ``scripts/lan-demo``). Nothing here is imported by the node itself.
"""
