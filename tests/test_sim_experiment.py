"""Topology experiments: every shipped spec runs; same seed, same bytes; faults show."""

import argparse
import json

import numpy as np
import pytest

from fednode.cli.sim import add_sim_arguments, run_sim
from fednode.sim import (
    FaultSchedule,
    SimOptions,
    build_topology,
    list_topologies,
    load_topology,
    mixing_time,
    run_experiment,
)
from fednode.sim.topology import TOPOLOGY_DIR, CrashFault, LossFault, PartitionFault, StragglerFault

FAST = {"train.local_epochs": 1, "rounds.rounds": 3}


def task_for(kind: str) -> dict:
    return {"data.task": "synthetic" if kind == "gossip" else "digits:numpy"}


@pytest.mark.parametrize("name", list_topologies())
def test_every_shipped_spec_runs_three_rounds(name, tmp_path):
    topo = load_topology(name)
    result = run_experiment(name, overrides={**FAST, **task_for(topo.kind)}, out=tmp_path)
    assert result.error is None
    assert list(result.rounds) == [1, 2, 3]
    assert np.all((result.accuracy >= 0) & (result.accuracy <= 1))
    assert np.all(result.bytes > 0)
    if topo.kind == "gossip":
        assert result.consensus is not None and len(result.consensus) == 4
        assert (tmp_path / "consensus.png").is_file()
    for f in ("config.json", "rounds.jsonl", "nodes.jsonl", "summary.json", "accuracy.png"):
        assert (tmp_path / f).is_file(), f
    assert (tmp_path / "topology.png").is_file()
    assert (tmp_path / "spec.toml").read_text() == (TOPOLOGY_DIR / f"{name}.toml").read_text()


@pytest.mark.parametrize("name", ["ring16_partition", "two_tier_3x10"])
def test_same_seed_gives_byte_identical_metrics(name, tmp_path):
    topo = load_topology(name)
    overrides = {**task_for(topo.kind), "train.local_epochs": 1, "rounds.rounds": 12}
    for run in ("a", "b"):
        run_experiment(topo, overrides=overrides, out=tmp_path / run)
    for f in ("rounds.jsonl", "nodes.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
        assert (tmp_path / "a" / f).stat().st_size > 0


def test_other_seed_gives_other_metrics(tmp_path):
    base = {**task_for("gossip"), **FAST}
    a = run_experiment("ring16", overrides={**base, "seed": 1})
    b = run_experiment("ring16", overrides={**base, "seed": 2})
    assert not np.array_equal(a.consensus, b.consensus)


def test_partition_raises_consensus_error_and_run_completes():
    overrides = {"data.task": "synthetic", "rounds.rounds": 14, "train.local_epochs": 1}
    healthy = run_experiment(build_topology("gossip", "cycle_graph", 16), overrides=overrides)
    split = build_topology(
        "gossip",
        "cycle_graph",
        16,
        faults=[{"type": "partition", "groups": "halves", "from_round": 4, "to_round": 10}],
    )
    faulty = run_experiment(split, overrides=overrides)
    assert faulty.error is None and list(faulty.rounds) == list(range(1, 15))
    assert [f["fault"] for f in faulty.faults] == ["partition", "heal"]
    # same until the split (just after the fastest peer is done with round 3: every
    # peer finishing round 3 at that instant finishes it unsplit)
    assert np.array_equal(healthy.consensus[:4], faulty.consensus[:4])
    grew, grew_healthy = np.diff(faulty.consensus)[3:9], np.diff(healthy.consensus)[3:9]
    assert np.all(grew > grew_healthy)  # split, the halves drift apart faster, every round
    assert grew.sum() > 1.3 * grew_healthy.sum()
    assert faulty.consensus[10] < faulty.consensus[9]  # healed, they pull together again
    assert healthy.consensus[10] > healthy.consensus[9]


def test_crash_and_restart_show_in_round_records_and_bytes():
    faults = [{"type": "crash", "node": v, "round": 2, "restart_round": 4} for v in (1, 2, 3)]
    topo = build_topology("star", "star", 10, faults=faults)
    res = run_experiment(topo, overrides={"data.task": "digits:numpy", "rounds.rounds": 5})
    assert res.error is None and list(res.rounds) == [1, 2, 3, 4, 5]
    assert [r["failed"] for r in res.records] == [0, 3, 0, 0, 0]  # picked, then gone
    # back from round 5: a coordinator picks round r's clients in the step closing r - 1
    assert [r["completed"] for r in res.records] == [9, 6, 6, 6, 9]
    assert res.bytes[2] < 0.8 * res.bytes[4]
    alive = {r["round"]: r["alive"] for r in res.node_rows if r["node"] == 1}
    assert alive == {1: True, 2: False, 3: False, 4: True, 5: True}
    kinds = [(f["round"], f["fault"]) for f in res.faults]
    assert kinds == [(2, "crash")] * 3 + [(4, "restart")] * 3


def test_fault_schedule_states_by_round():
    faults = (
        CrashFault(3, 5, 8),
        PartitionFault(10, 20, ((0, 1), (2, 3))),
        LossFault(2, 4, 0.5),
        LossFault(3, None, 0.5),
        StragglerFault(0, None, (1,), 4.0),
    )
    sched = FaultSchedule(faults, {v: v for v in range(4)})
    assert sched.down_at(4) == set() and sched.down_at(5) == {3} and sched.down_at(8) == set()
    assert sched.partition_at(9) is None and sched.partition_at(10) is faults[1]
    assert sched.loss_at(3) == pytest.approx(0.75) and sched.loss_at(4) == pytest.approx(0.5)
    assert sched.slowdown_at(7) == {1: 4.0}


def test_trio_driver_gives_the_same_rounds_as_des():
    overrides = {"data.task": "digits:numpy", "rounds.rounds": 2, "train.local_epochs": 1}
    topo = build_topology("star", "star", 5)
    des = run_experiment(topo, overrides=overrides)
    trio = run_experiment(topo, overrides=overrides, options=SimOptions(driver="trio"))
    np.testing.assert_array_equal(des.accuracy, trio.accuracy)
    np.testing.assert_allclose(des.loss, trio.loss, rtol=1e-6)


def test_two_workers_give_the_same_gossip_curves():
    overrides = {"data.task": "synthetic", **FAST}
    one = run_experiment("ring16", overrides=overrides)
    two = run_experiment("ring16", overrides=overrides, options=SimOptions(workers=2))
    np.testing.assert_allclose(one.consensus, two.consensus, rtol=1e-9)
    np.testing.assert_array_equal(one.accuracy, two.accuracy)
    assert one.messages == two.messages
    assert any("2 worker processes" in note for note in two.notes)


def test_two_workers_run_a_two_tier_tree_to_the_same_models():
    overrides = {"data.task": "digits:numpy", **FAST}
    one = run_experiment("two_tier_3x10", overrides=overrides)
    two = run_experiment("two_tier_3x10", overrides=overrides, options=SimOptions(workers=2))
    np.testing.assert_array_equal(one.accuracy, two.accuracy)
    assert [r["clients_completed"] for r in two.records] == [30, 30, 30]
    assert len(two.node_rows) == len(one.node_rows) == 3 * 34  # every shard wrote its rows
    assert two.bytes.sum() == pytest.approx(one.bytes.sum(), rel=0.1)  # window-granular


@pytest.mark.parametrize(
    ("spec", "task", "options"),
    [
        ("ring16", "synthetic", SimOptions()),
        ("ring16", "synthetic", SimOptions(workers=2)),
        ("star10", "digits:numpy", SimOptions()),
        ("star10", "digits:numpy", SimOptions(driver="trio")),
    ],
    ids=["gossip", "gossip-2-workers", "star", "star-trio"],
)
def test_progress_reports_rounds_as_they_finish(spec, task, options):
    calls: list[tuple[int, int]] = []
    res = run_experiment(
        spec,
        overrides={"data.task": task, **FAST},
        options=options,
        progress=lambda done, total: calls.append((done, total)),
    )
    done = [d for d, _ in calls]
    assert done == sorted(set(done)) and done[-1] == len(res.rounds) == 3  # grows, ends
    assert {total for _, total in calls} == {3}


def test_cli_progress_line_on_a_terminal_only():
    import io

    from rich.console import Console

    from fednode.cli.sim import _progress

    tty = Console(file=io.StringIO(), force_terminal=True, width=100)
    with _progress(tty, "ring16") as update:
        assert update is not None
        update(2, 5)
    shown = tty.file.getvalue()
    assert "ring16" in shown and "2/5" in shown and "building the nodes" in shown
    plain = Console(file=io.StringIO(), force_terminal=False)
    with _progress(plain, "ring16") as update:
        assert update is None  # a pipe or a log file gets no progress line
    assert plain.file.getvalue() == ""


def test_cli_suggests_workers_only_for_big_single_process_runs():
    from fednode.cli.sim import HINT_WORKERS_FROM, _workers_hint

    big = HINT_WORKERS_FROM
    assert "--workers 2" in (_workers_hint(big, 1, 2) or "")
    assert "--workers 8" in (_workers_hint(big, 1, 64) or "")  # capped
    assert _workers_hint(big - 1, 1, 2) is None  # small run
    assert _workers_hint(big, 2, 2) is None  # already sharded
    assert _workers_hint(big, 1, 1) is None  # nothing to shard over


def test_result_arrays_and_pandas():
    res = run_experiment("torus4x4", overrides={"data.task": "synthetic", **FAST})
    assert res.bound is not None and res.bound.shape == res.consensus.shape
    rows = res.table()
    assert [r["round"] for r in rows] == [1, 2, 3] and "consensus_error" in rows[0]
    pd = pytest.importorskip("pandas")
    frame = res.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == [1, 2, 3]


def test_mixing_time_orders_graphs_as_expected():
    ring = load_topology("ring16").graph
    complete = load_topology("complete16").graph
    assert mixing_time(complete) < mixing_time(ring)


def cli(*argv):
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    return run_sim(parser.parse_args(list(argv)))


def test_cli_compare_plots_runs_on_shared_axes(tmp_path, capsys):
    code = cli(
        "--compare", "ring16", "hypercube16", "--rounds", "2", "--local-epochs", "1",
        "--task", "synthetic", "--out", str(tmp_path), "--json",
    )  # fmt: skip
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["topology"] for r in rows] == ["ring16", "hypercube16"]
    for f in ("accuracy.png", "consensus.png", "bytes.png", "compare.json"):
        assert (tmp_path / f).is_file(), f
    assert (tmp_path / "00-ring16" / "rounds.jsonl").is_file()


def test_cli_star_shortcut_keeps_the_old_summary(tmp_path):
    code = cli("--nodes", "3", "--rounds", "2", "--task", "digits:numpy", "--out", str(tmp_path))
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["nodes"] == 3 and summary["rounds"] == 2


def test_cli_bad_spec_is_a_config_error():
    from fednode.errors import ConfigError

    with pytest.raises(ConfigError, match="topology"):
        cli("--topology", "no_such_spec", "--rounds", "1")


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [("--eval-nodes", "-1", "eval_nodes"), ("--node-metrics", "-3", "node_metrics"),
     ("--workers", "0", "workers"), ("--train-cost", "-0.5", "train_cost_s")],
)  # fmt: skip
def test_cli_bad_sim_option_fails_at_start_naming_it(tmp_path, flag, value, field):
    from fednode.errors import ConfigError

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=field):
        cli(flag, value, "--rounds", "1", "--out", str(out))
    assert not out.exists()  # nothing was run or written


def test_consensus_sums_do_not_depend_on_how_models_are_batched(monkeypatch):
    """The collector folds models into the consensus sums in batches: one at a time gives
    the same curve (to float64 rounding) as one batch per round."""
    from fednode.sim import metrics

    overrides = {"data.task": "synthetic", **FAST}
    batched = run_experiment("ring16", overrides=overrides)
    monkeypatch.setattr(metrics, "_FOLD_BATCH", 1)
    single = run_experiment("ring16", overrides=overrides)
    assert batched.consensus is not None and single.consensus is not None
    assert np.all(batched.consensus[1:] > 0)
    np.testing.assert_allclose(batched.consensus, single.consensus, rtol=1e-12)
    np.testing.assert_array_equal(batched.accuracy, single.accuracy)


@pytest.mark.parametrize("how", ["dies", "raises"])
def test_a_failing_worker_stops_the_run_with_a_clear_error(monkeypatch, how):
    import os

    from fednode.errors import SimWorkerError
    from fednode.sim.des import DesSimulation

    real = DesSimulation.run_window
    windows = [0]

    def run_window(self, until):  # inherited by the forked workers
        windows[0] += 1
        if self.shard == 1 and windows[0] > 3:
            if how == "dies":
                os._exit(3)  # no word to the parent, like the out-of-memory killer
            raise ValueError("a bug in a role")
        return real(self, until)

    monkeypatch.setattr(DesSimulation, "run_window", run_window)
    overrides = {"data.task": "synthetic", **FAST}
    with pytest.raises(SimWorkerError) as caught:
        run_experiment("ring16", overrides=overrides, options=SimOptions(workers=2))
    text = str(caught.value)
    if how == "dies":
        assert text == "simulation worker 1 died: exit 3"
    else:
        assert text.startswith("simulation worker 1 failed:") and "a bug in a role" in text
    import multiprocessing

    assert multiprocessing.active_children() == []  # the other worker was stopped too
