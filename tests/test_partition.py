"""Partitioners: every sample to exactly one client, seeded, and the skew each promises."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.errors import ConfigError
from fednode.training.digits import load_digits_split
from fednode.training.partition import parse_partition, partition_indices

LABELS = load_digits_split()[1]


@settings(max_examples=40, deadline=None)
@given(
    spec=st.sampled_from(
        ["iid", "dirichlet:0.1", "dirichlet:1", "dirichlet:100", "shards:1", "shards:2", "shards:5"]
    ),
    num_clients=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_partition_is_exact_cover_and_reproducible(spec, num_clients, seed):
    parts = partition_indices(LABELS, num_clients, spec, seed=seed)
    assert len(parts) == num_clients
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))  # each sample exactly once
    assert all(len(p) >= 1 for p in parts)
    again = partition_indices(LABELS, num_clients, spec, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def _label_skew(parts):
    """Mean total-variation distance between client label histograms and the global one."""
    glob = np.bincount(LABELS, minlength=10) / len(LABELS)
    tv = [0.5 * np.abs(np.bincount(LABELS[p], minlength=10) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tv))


def test_dirichlet_alpha_controls_skew():
    iid = _label_skew(partition_indices(LABELS, 10, "iid", seed=1))
    mild = _label_skew(partition_indices(LABELS, 10, "dirichlet:10", seed=1))
    strong = _label_skew(partition_indices(LABELS, 10, "dirichlet:0.1", seed=1))
    assert iid < 0.1
    assert iid < mild < strong
    assert strong > 0.5


def test_shards_give_few_labels_per_client():
    parts = partition_indices(LABELS, 20, "shards:2", seed=0)
    labels_per_client = [len(np.unique(LABELS[p])) for p in parts]
    assert max(labels_per_client) <= 4  # 2 shards, each spanning at most 2 labels
    iid_parts = partition_indices(LABELS, 20, "iid", seed=0)
    assert min(len(np.unique(LABELS[p])) for p in iid_parts) >= 8


def test_different_seeds_differ():
    a = partition_indices(LABELS, 10, "iid", seed=0)
    b = partition_indices(LABELS, 10, "iid", seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "spec",
    ["", "iid:3", "dirichlet", "dirichlet:0", "dirichlet:nan", "shards:0", "shards:x", "random"],
)
def test_bad_partition_specs(spec):
    with pytest.raises(ConfigError) as info:
        parse_partition(spec)
    assert info.value.field == "data.partition"


def test_too_many_clients_is_a_config_error():
    with pytest.raises(ConfigError):
        partition_indices(LABELS[:5], 6, "iid")
