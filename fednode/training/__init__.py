"""fednode.training."""
