"""Star FedAvg in the simulator: it learns, matches the plain algorithm, survives crashes."""

import dataclasses
import json

import numpy as np
import pytest

from fednode.cli import main
from fednode.config import load_config
from fednode.errors import RoundFailed
from fednode.sim.scenarios import build_star, crash_at_round, run_star
from fednode.training.task import load_task


def star_config(**overrides):
    base = {"rounds.rounds": 12, "rounds.min_available_clients": 10, "rounds.min_fit_clients": 5}
    base.update(overrides)
    return load_config(None, base)


def plain_fedavg(num_clients: int, rounds: int, seed: int = 0) -> list[float]:
    """Framework-free sequential FedAvg (McMahan et al. 2017) on the same task and seeds."""
    tasks = [
        load_task("digits", client_index=i, num_clients=num_clients, seed=seed)
        for i in range(num_clients)
    ]
    params = tasks[0].init_params(seed)
    accuracies = []
    for rnd in range(1, rounds + 1):
        config = {"round": rnd, "local_epochs": 5, "batch_size": 32, "lr": 0.05, "momentum": 0.9}
        results = [task.train(params, config) for task in tasks]
        total = sum(n for _, n, _ in results)
        params = sum(p.astype(np.float64) * (n / total) for p, n, _ in results).astype(np.float32)
        accuracies.append(tasks[0].evaluate(params)[2]["accuracy"])
    return accuracies


def first_round_at(accuracies, target):
    return next((i + 1 for i, a in enumerate(accuracies) if a >= target), None)


@pytest.mark.slow
def test_star_matches_plain_fedavg_loop():
    result = run_star(star_config(), 10)
    sim_acc = [r["accuracy"] for r in result.rounds]
    ref_acc = plain_fedavg(10, 12)
    assert len(sim_acc) == 12
    assert sim_acc[-1] >= 0.95
    r_sim, r_ref = first_round_at(sim_acc, 0.95), first_round_at(ref_acc, 0.95)
    assert r_sim is not None and r_ref is not None
    assert abs(r_sim - r_ref) <= 1
    assert abs(sim_acc[-1] - ref_acc[-1]) <= 0.01
    assert all(r["completed"] == 10 and r["failed"] == 0 for r in result.rounds)


def test_star_round_log_has_bytes_and_examples():
    result = run_star(star_config(**{"rounds.rounds": 2}), 10)
    first = result.rounds[0]
    assert first["examples"] == 1437  # every training sample, once per round
    size = load_task("digits").layout().size
    assert first["bytes_down"] >= 10 * size * 4 and first["bytes_up"] >= 10 * size * 4
    assert result.rounds[1]["accuracy"] > first["accuracy"] > 0.3


def test_three_of_ten_crashed_round_still_completes():
    sim, root = build_star(star_config(**{"rounds.rounds": 2}), 10)
    sim.fault_hooks.append(crash_at_round(2, [1, 2, 3]))
    result = sim.run(root)
    assert result.stop is not None and result.stop.error is None, result.stop
    second = result.rounds[1]
    assert second["round"] == 2
    assert second["completed"] == 7 and second["failed"] == 3
    assert second["failure_rate"] == pytest.approx(0.3)
    assert second["accuracy"] > result.rounds[0]["accuracy"]  # training went on
    assert result.virtual_s < 60  # crashes are noticed at once, not at the deadline


def test_crashes_beyond_min_fit_fail_with_clear_error():
    config = star_config(
        **{"rounds.rounds": 3, "rounds.min_fit_clients": 8, "rounds.max_failure_fraction": 0.5}
    )
    sim, root = build_star(config, 10)
    sim.fault_hooks.append(crash_at_round(2, [1, 2, 3]))
    result = sim.run(root)
    assert result.stop is not None and isinstance(result.stop.error, RoundFailed)
    failed = [e for e in result.events if e["event"] == "round_failed"]
    assert failed and "7 of 10 results" in failed[0]["reason"]
    assert "min_fit_clients 8" in failed[0]["reason"]
    assert [r["round"] for r in result.rounds] == [1]


def test_same_seed_same_rounds():
    a = run_star(star_config(**{"rounds.rounds": 2}), 5)
    b = run_star(star_config(**{"rounds.rounds": 2}), 5)
    assert json.dumps(a.rounds, sort_keys=True) == json.dumps(b.rounds, sort_keys=True)


def test_cli_sim_writes_results(tmp_path, capsys):
    code = main(
        [
            "sim",
            "--nodes",
            "4",
            "--rounds",
            "2",
            "--local-epochs",
            "1",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["nodes"] == 4
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]


def test_cli_config_error_names_field(capsys):
    assert main(["sim", "--nodes", "4", "--fraction-fit", "2"]) == 2
    out = capsys.readouterr().out
    assert "rounds.fraction_fit" in out and "(0, 1]" in out


def test_restarted_client_rejoins_and_trains_again():
    """Simulation.restart: a crashed client comes back as a new process (fresh role, same
    identity, new nonce stream) and is counted in the rounds after it returned."""
    from fednode.factory import make_role

    config = star_config(
        **{
            "rounds.rounds": 5,
            "train.local_epochs": 1,
            "rounds.min_available_clients": 3,
            "rounds.min_fit_clients": 3,
        }
    )
    sim, root = build_star(config, 4)
    victim = sim.nodes[2]
    size = victim.model_size

    def hook(s, peer, event, data):
        # rounds take 0.36 s of virtual time here
        if peer == root.peer and event == "round_start" and data["round"] == 2:
            s.crash(victim.peer)
            s.restart(
                victim.peer,
                lambda: make_role(dataclasses.replace(config, role="client"), size),
                after_s=0.2,
            )

    sim.fault_hooks.append(hook)
    result = sim.run(root)
    assert result.stop is not None and result.stop.error is None, result.stop
    kinds = [e["event"] for e in result.events if e["node"] == victim.index]
    assert "crashed" in kinds and "restarted" in kinds
    assert kinds.index("crashed") < kinds.index("restarted")
    assert victim.incarnation == 1
    by_round = {r["round"]: r for r in result.rounds}
    assert by_round[2]["completed"] == 3  # the crashed client is missing from round 2 ...
    assert by_round[5]["completed"] == 4  # ... and trains again once it is back
    assert sum(sum(n.stats.rejected.values()) for n in sim.nodes) == 0  # no replay drops


def test_restart_refuses_a_running_node():
    config = star_config(
        **{
            "rounds.rounds": 1,
            "rounds.min_available_clients": 2,
            "rounds.min_fit_clients": 2,
            "train.local_epochs": 1,
        }
    )
    sim, root = build_star(config, 2)
    errors = []

    def hook(s, peer, event, data):
        if event == "round_start" and not errors:
            try:
                s.restart(sim.nodes[1].peer, lambda: sim.nodes[1].role)
            except ValueError as exc:
                errors.append(str(exc))

    sim.fault_hooks.append(hook)
    result = sim.run(root)
    assert result.stop is not None and result.stop.error is None
    assert errors and "running" in errors[0]
