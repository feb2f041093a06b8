"""examples/: every config loads, the README lists every folder, the simulation runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fednode.config import load_config
from fednode.sim.experiment import run_experiment
from fednode.sim.topology import load_topology

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NODE_CONFIGS = {
    "star-lan/coordinator.toml": ("coordinator", "star"),
    "star-lan/client.toml": ("client", "star"),
    "two-tier/coordinator.toml": ("coordinator", "two-tier"),
    "two-tier/aggregator.toml": ("aggregator", "two-tier"),
    "two-tier/client.toml": ("client", "two-tier"),
    "gossip-consortium/peer.toml": ("peer", "gossip"),
    "simulation/experiment.toml": ("client", "star"),
}


@pytest.mark.parametrize("name", sorted(NODE_CONFIGS))
def test_each_node_config_loads_as_the_role_it_says(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert (config.role, config.topology) == NODE_CONFIGS[name]


def test_every_example_config_is_checked_and_listed_in_the_readme() -> None:
    ours = {"star-lan", "two-tier", "gossip-consortium", "simulation"}
    files = {str(p.relative_to(EXAMPLES)) for d in ours for p in (EXAMPLES / d).glob("*.toml")}
    assert files == set(NODE_CONFIGS) | {"simulation/two_tier_faults.toml"}
    readme = (EXAMPLES / "README.md").read_text()
    assert all(f"`{d}/`" in readme for d in ours)


def test_the_consortium_is_closed_and_the_two_tier_example_places_by_region() -> None:
    peer = load_config(EXAMPLES / "gossip-consortium/peer.toml")
    assert not peer.net.open_membership and peer.net.network_key_file == "swarm.key"
    coordinator = load_config(EXAMPLES / "two-tier/coordinator.toml")
    assert coordinator.tier.placement == "region"


def test_the_simulation_example_runs_with_its_faults_and_attackers(tmp_path: Path) -> None:
    spec = load_topology(EXAMPLES / "simulation/two_tier_faults.toml")
    assert spec.kind == "two-tier" and len(spec.faults) == 1
    config = load_config(EXAMPLES / "simulation/experiment.toml", {"rounds.rounds": 2})
    res = run_experiment(spec, config, out=tmp_path)
    assert len(res.accuracy) == 2
    assert len(res.extra_summary["attackers"]) == 5  # round(0.2 * 24)
    assert (tmp_path / "summary.json").exists()
