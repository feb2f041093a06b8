"""Attack maths on small arrays, the [attack] config, topology attacker marks, and
``fednode run`` refusing an attack without ``--i-am-testing-an-attack``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from fednode.cli import main
from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.sim.attackers import AttackerMarks, choose_attackers, parse_attackers_flag
from fednode.sim.topology import build_topology
from fednode.training.attacks import (
    Attack,
    Attacker,
    alie_z,
    flip_labels,
    label_flipped,
    parse_attack,
    poison,
)
from fednode.training.linear import load_linear_task

DELTA = np.array([1.0, -2.0, 0.5, 0.0], dtype=np.float32)
KNOWN = np.array([[1.0, 0.0, 2.0, -1.0], [3.0, 2.0, 2.0, 1.0], [2.0, 1.0, 5.0, 0.0]], np.float32)


def test_signflip_negates_and_scale_multiplies():
    assert np.array_equal(poison(parse_attack("signflip"), DELTA), -DELTA)
    assert np.array_equal(poison(parse_attack("scale:10"), DELTA), 10 * DELTA)
    out = poison(parse_attack("scale:-3"), DELTA)
    assert out.dtype == np.float32 and np.array_equal(out, -3 * DELTA)


def test_gaussian_replaces_the_update_with_seeded_noise_of_that_sigma():
    attack = parse_attack("gaussian:2")
    big = np.zeros(20_000, dtype=np.float32)
    a = poison(attack, big, rng=np.random.default_rng(1))
    b = poison(attack, big, rng=np.random.default_rng(1))
    assert np.array_equal(a, b)
    assert abs(float(a.std()) - 2.0) < 0.05 and abs(float(a.mean())) < 0.05


def test_alie_is_mean_minus_z_std_and_ipm_minus_eps_mean():
    mean, std = KNOWN.mean(axis=0), KNOWN.std(axis=0)
    out = poison(parse_attack("alie"), DELTA, KNOWN, z=1.5)
    np.testing.assert_allclose(out, mean - 1.5 * std, rtol=1e-6)
    out = poison(parse_attack("ipm:0.5"), DELTA, KNOWN)
    np.testing.assert_allclose(out, -0.5 * mean, rtol=1e-6)
    # a lone attacker knows only its own update: ALIE sends it, IPM -eps times it
    np.testing.assert_allclose(poison(parse_attack("alie"), DELTA, z=1.0), DELTA)
    np.testing.assert_allclose(poison(parse_attack("ipm:2"), DELTA), -2 * DELTA)


def test_alie_z_follows_baruch_et_al():
    # n = 50, f = 12 (the paper's example): s = floor(26) - 12 = 14, z = Phi^-1(36 / 50)
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(36 / 50))
    assert alie_z(20, 4) == pytest.approx(NormalDist().inv_cdf(13 / 20))
    assert alie_z(10, 8) == pytest.approx(NormalDist().inv_cdf(9 / 10))  # s clamped to 1
    with pytest.raises(ValueError):
        alie_z(5, 0)


def test_attacker_uses_its_z_and_its_collusion():
    class Board:
        def known(self, me, round, base, config, own):
            return np.stack([own, 3 * own])

    attacker = Attacker(parse_attack("alie"), z=2.0, collusion=Board())
    out = attacker.apply(DELTA, round=1, base=DELTA, config={})
    np.testing.assert_allclose(out, 2 * DELTA - 2.0 * np.abs(DELTA))
    auto = Attacker(parse_attack("alie"), n=20, f=4)
    assert auto.z_value() == pytest.approx(alie_z(20, 4))


def test_labelflip_changes_labels_and_leaves_the_update_alone():
    y = np.array([0, 1, 9, 4])
    assert flip_labels(y).tolist() == [9, 8, 0, 5]
    task = load_linear_task("synthetic", client_index=0, num_clients=4, seed=0)
    before = task._y.copy()
    label_flipped(task)
    assert np.array_equal(task._y, 9 - before) and not np.array_equal(task._y, before)
    assert np.array_equal(poison(parse_attack("labelflip"), DELTA), DELTA)


@pytest.mark.parametrize(
    "spec",
    ["flip", "scale", "scale:x", "signflip:2", "gaussian:0", "ipm:-1", "scale:inf", "alie:1"],
)
def test_bad_attack_spec_fails_at_load_naming_the_field(spec):
    with pytest.raises(ConfigError, match=r"attack\.kind"):
        load_config(None, {"attack.kind": spec})


def test_attack_is_off_by_default_and_fields_are_checked():
    assert load_config(None, {}).attack.kind == ""
    assert load_config(None, {"attack.kind": "ipm:0.1"}).attack.kind == "ipm:0.1"
    with pytest.raises(ConfigError, match=r"attack\.omniscient"):
        load_config(None, {"attack.kind": "scale:2", "attack.omniscient": True})
    with pytest.raises(ConfigError, match=r"attack\.colluders"):
        load_config(None, {"attack.colluders": 0})
    assert parse_attack("scale:10") == Attack("scale", 10.0)


def test_topology_marks_attackers_by_id_or_fraction_deterministically():
    topo = build_topology("star", "star", 11)
    assert topo.attackers == AttackerMarks()
    marks = AttackerMarks(fraction=0.2)
    a = choose_attackers(marks, topo.roles, seed=3)
    assert len(a) == 2 and a == choose_attackers(marks, topo.roles, seed=3)
    assert 0 not in a  # never the coordinator
    picks = {choose_attackers(marks, topo.roles, seed=s) for s in range(8)}
    assert len(picks) > 1  # the seed draws them
    assert choose_attackers(AttackerMarks(nodes=(4, 2)), topo.roles, 0) == (2, 4)
    assert parse_attackers_flag("0.25") == AttackerMarks(fraction=0.25)
    assert parse_attackers_flag("3,7") == AttackerMarks(nodes=(3, 7))


def test_topology_spec_attackers_are_validated(tmp_path):
    from fednode.sim.topology import load_topology

    def spec(extra: str) -> str:
        path = tmp_path / "t.toml"
        path.write_text(f'kind = "star"\n{extra}\n[graph]\ngenerator = "star"\nn = 6\n')
        return str(path)

    assert load_topology(spec("attackers = [2, 5]")).attackers.nodes == (2, 5)
    assert load_topology(spec("attacker_fraction = 0.4")).attackers.fraction == 0.4
    for bad, name in [
        ("attackers = [0]", "attackers[0]"),  # the coordinator
        ("attackers = [9]", "attackers[0]"),
        ("attackers = [2, 2]", "attackers"),
        ("attacker_fraction = 1.5", "attacker_fraction"),
        ("attackers = [1]\nattacker_fraction = 0.2", "attackers"),
    ]:
        with pytest.raises(ConfigError, match=name.replace("[", r"\[")):
            load_topology(spec(bad))


def test_sim_refuses_an_attack_without_attackers_and_attackers_without_an_attack():
    from fednode.sim.experiment import run_experiment

    topo = build_topology("star", "star", 4)
    with pytest.raises(ConfigError, match="attackers"):
        run_experiment(topo, overrides={"attack.kind": "signflip", "rounds.rounds": 1})
    with pytest.raises(ConfigError, match=r"attack\.kind"):
        run_experiment(topo, overrides={"rounds.rounds": 1}, attackers=AttackerMarks(nodes=(1,)))


def test_fednode_run_refuses_an_attack_without_the_flag(tmp_path, capsys):
    config = tmp_path / "node.toml"
    config.write_text('role = "client"\n[attack]\nkind = "scale:10"\n')
    key = tmp_path / "never.key"
    code = main(["run", "--config", str(config), "--key-file", str(key), "--no-mdns"])
    out = capsys.readouterr()
    assert code == 2
    assert "attack.kind" in out.out + out.err and "--i-am-testing-an-attack" in out.out + out.err
    assert not key.exists()  # refused before any side effect (no key file written)


def test_fednode_run_refuses_omniscient_even_with_the_flag(tmp_path, capsys):
    config = tmp_path / "node.toml"
    config.write_text('[attack]\nkind = "alie"\nomniscient = true\n')
    key = tmp_path / "never.key"
    args = ["run", "--config", str(config), "--key-file", str(key), "--i-am-testing-an-attack"]
    assert main(args) == 2
    out = capsys.readouterr()
    assert "attack.omniscient" in out.out + out.err
    assert not key.exists()


def test_fednode_run_refusal_in_a_subprocess(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('[attack]\nkind = "signflip"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "fednode.cli", "run", "--config", str(config), "--no-mdns"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "attack.kind" in proc.stdout + proc.stderr
    assert not any(tmp_path.glob("*.key"))
