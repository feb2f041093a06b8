"""Shared test setup: tiny models train fastest on one torch thread (2-core CI machines)."""

import torch

torch.set_num_threads(1)
