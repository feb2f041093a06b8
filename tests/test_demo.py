"""`fednode demo`: star, two-tier and gossip on the same task, one results table."""

import re

import pytest

from fednode.cli import main


def rows(out: str) -> dict[str, list[str]]:
    table = out.split("results", 1)[1]
    found = {}
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] in ("star", "two-tier", "gossip"):
            found[cells[0]] = cells
    return found


@pytest.mark.slow
def test_demo_runs_three_topologies_into_one_table(capsys):
    code = main(
        [
            "demo",
            "--rounds",
            "4",
            "--local-epochs",
            "1",
            "--clients",
            "6",
            "--peers",
            "8",
            "--aggregators",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    table = rows(out)
    assert set(table) == {"star", "two-tier", "gossip"}
    assert table["star"][1] == "1+6" and table["two-tier"][1] == "1+2+6"
    assert table["gossip"][1] == "8 peers"
    for name, cells in table.items():
        accuracy, rounds = float(cells[2]), int(cells[3])
        assert rounds == 4, name
        assert 0.5 < accuracy <= 1.0, (name, accuracy)  # it learned (chance is 0.1)
    assert "star FedAvg" in out  # the star run's round table


def test_demo_one_topology_and_bad_counts(capsys):
    code = main(
        ["demo", "--topology", "star", "--rounds", "1", "--local-epochs", "1", "--clients", "3"]
    )
    out = capsys.readouterr().out
    assert code == 0 and set(rows(out)) == {"star"}
    assert main(["demo", "--peers", "0"]) == 2
    assert "--peers" in capsys.readouterr().out


def test_centralized_baseline_trains_and_refuses_zero_epochs(capsys):
    assert main(["train", "--centralized", "--epochs", "2", "--task", "digits:numpy"]) == 0
    out = capsys.readouterr().out
    accuracies = [float(m) for m in re.findall(r"│\s+\d+\s+│\s+([0-9.]+)\s+│", out)]
    assert len(accuracies) == 2 and accuracies[-1] > 0.5  # two epochs, and it learned
    assert main(["train", "--centralized", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().out
