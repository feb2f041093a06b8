"""fednode.hierarchy."""
