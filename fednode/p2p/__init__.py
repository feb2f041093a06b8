"""fednode.p2p."""
