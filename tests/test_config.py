"""Config: defaults work, bad values fail at start naming field, value and expectation."""

import pytest

from fednode.config import NodeConfig, load_config
from fednode.errors import ConfigError


def test_defaults_are_valid():
    config = load_config()
    assert isinstance(config, NodeConfig)
    assert config.train.local_epochs == 5 and config.train.lr == 0.05
    assert config.train.batch_size == 32 and config.train.momentum == 0.9


def test_toml_file_and_override(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('role = "coordinator"\n[rounds]\nrounds = 7\nfraction_fit = 0.5\n')
    config = load_config(path, {"rounds.rounds": 9, "train.lr": None})
    assert config.role == "coordinator"
    assert config.rounds.rounds == 9  # the override wins
    assert config.rounds.fraction_fit == 0.5
    assert config.train.lr == 0.05  # None means "not given"


@pytest.mark.parametrize(
    ("toml", "field", "fragment"),
    [
        ('rolee = "client"', "rolee", "a known key"),
        ('role = "server"', "role", "one of client, aggregator"),
        ("[rounds]\nrounds = 0", "rounds.rounds", "integer >= 1"),
        ('[rounds]\nrounds = "ten"', "rounds.rounds", "an integer"),
        ("[rounds]\nfraction_fit = 1.5", "rounds.fraction_fit", "(0, 1]"),
        (
            "[rounds]\nmin_fit_clients = 5\nmin_available_clients = 2",
            "rounds.min_available_clients",
            ">= min_fit_clients",
        ),
        ("[train]\nlr = -1", "train.lr", "> 0"),
        ("[train]\nlocal_epochs = true", "train.local_epochs", "an integer"),
        ('[data]\npartition = "dirichlet:-1"', "data.partition", "dirichlet:<alpha>"),
        ("[data]\nclient_index = 4\nnum_clients = 4", "data.client_index", "[0, num_clients=4)"),
        ('[wire]\ncodec = "gzip"', "codec", ""),
        ("[net]\nlisten = 'tcp://x'", "net.listen", "multiaddr"),
        ("[net]\nlisten = '/ip4/1.2.3/tcp/0'", "net.listen", "is not IPv4"),
        ("[net]\nlisten = '/ip4/127.0.0.1/udp/9'", "net.listen", "/tcp/<port>"),
        ("[net]\nbootstrap = ['garbage']", "net.bootstrap", "/p2p/<peer id>"),
        ("[net]\nbootstrap = ['/ip4/10.0.0.2/tcp/4001']", "net.bootstrap", "/p2p/<peer id>"),
        ("train = 3", "train", "a table"),
        ("[train]\nepochs = 3", "train.epochs", "a known key"),
        ("[net]\nallow = ['12D3KooWx']", "net.open_membership", "false when net.allow"),
        ("[server]\nresume_from = 'latest'", "server.resume_from", "checkpoint_dir"),
        ("[wire]\nmax_inbound_frames = 0", "wire.max_inbound_frames", ">= 1"),
        (
            "[wire]\nmax_inbound_frames = 4\nmax_inbound_frames_per_peer = 8",
            "wire.max_inbound_frames_per_peer",
            "[1, max_inbound_frames]",
        ),
    ],
)
def test_bad_config_names_field_value_and_expectation(tmp_path, toml, field, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == field
    assert fragment in info.value.expected
    assert repr(info.value.value) in str(info.value) or str(info.value.value) in str(info.value)


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("role = \n")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="readable TOML"):
        load_config(tmp_path / "missing.toml")


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(AttributeError):
        config.seed = 3  # type: ignore[misc]


def test_gossip_table_reaches_the_peer(tmp_path):
    import numpy as np

    from fednode.factory import make_role
    from fednode.gossip import GossipPeer

    path = tmp_path / "peer.toml"
    path.write_text('role = "peer"\n[gossip]\nmode = "async"\ndegree = 3\nmax_degree = 6\n')
    config = load_config(path, {"gossip.exchanges_per_round": 2.0})
    peer = make_role(config, 4, np.zeros(4, np.float32), me="p0")
    assert isinstance(peer, GossipPeer)
    assert peer.gossip.mode == "async" and peer.gossip.degree == 3
    assert peer.gossip.exchanges_per_round == 2.0
    with pytest.raises(ConfigError) as info:
        load_config(None, {"gossip.mode": "gather"})
    assert info.value.field == "gossip.mode"
    with pytest.raises(ConfigError) as info:
        load_config(None, {"gossip.degree": 9})  # above max_degree 8
    assert info.value.field == "gossip.max_degree"
