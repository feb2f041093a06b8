"""fednode.gossip."""
