"""flower-quickstart: the model, the data of one partition, training and evaluation.

The data are scikit-learn's 8x8 digits as fednode's built-in ``digits`` task splits and
partitions them (``fednode.training.digits`` / ``fednode.training.partition``), so this
app and ``--task digits`` train the same model on the same shards.
"""

import numpy as np
import torch
from torch import nn

from fednode.training.digits import load_digits_split
from fednode.training.partition import partition_indices


def Net() -> nn.Module:
    """MLP 64 -> 64 (ReLU) -> 10."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def load_data(partition_id: int, num_partitions: int, partitioner: str, seed: int):
    """(x_train, y_train) of this partition and the shared (x_test, y_test)."""
    x_tr, y_tr, x_te, y_te = load_digits_split()
    idx = partition_indices(y_tr, num_partitions, partitioner, seed=seed)[partition_id]
    return (
        torch.from_numpy(np.ascontiguousarray(x_tr[idx])),
        torch.from_numpy(np.ascontiguousarray(y_tr[idx])),
        torch.from_numpy(np.array(x_te)),
        torch.from_numpy(np.array(y_te)),
    )


def train(net, x, y, epochs, lr, momentum, batch_size, rng):
    """Local SGD; returns the mean training loss."""
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    total, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(y)))
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return total / max(steps, 1)


@torch.no_grad()
def test(net, x, y):
    """(loss, accuracy) on (x, y)."""
    net.eval()
    logits = net(x)
    loss = float(nn.CrossEntropyLoss()(logits, y))
    return loss, int((logits.argmax(1) == y).sum()) / max(len(y), 1)
