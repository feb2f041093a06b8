"""Bytes-to-accuracy: every run reports the frame bytes on all links until the measured
accuracy is first reached, next to the round it was reached in; measuring never stops."""

import json

import numpy as np
import pytest

from fednode.config import RoundParams, load_config
from fednode.errors import ConfigError
from fednode.sim import run_experiment

FAST = {"train.local_epochs": 1, "rounds.rounds": 4, "data.task": "digits:numpy"}


def test_measured_at_defaults_to_95_on_digits_only():
    assert RoundParams().measured_at("digits") == 0.95
    assert RoundParams().measured_at("digits:mlp:128") == 0.95
    assert RoundParams().measured_at("synthetic") is None
    assert RoundParams(measure_accuracy=0.5).measured_at("synthetic") == 0.5


def test_measure_accuracy_out_of_range_names_the_field():
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"rounds.measure_accuracy": 1.5})
    assert info.value.field == "rounds.measure_accuracy"


def test_star_run_reports_bytes_to_target_without_stopping(tmp_path):
    # a low target is reached early; the run still does all its rounds
    over = {**FAST, "rounds.measure_accuracy": 0.3}
    res = run_experiment("star10", overrides=over, out=tmp_path)
    assert res.error is None and list(res.rounds) == [1, 2, 3, 4]
    hit = next(int(r) for r, a in zip(res.rounds, res.accuracy) if a >= 0.3)
    rounds, nbytes = res.to_target()
    assert rounds == hit
    assert nbytes == int(res.bytes[:hit].sum()) and nbytes > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["measure_accuracy"] == 0.3
    assert summary["rounds_to_target"] == hit and summary["bytes_to_target"] == nbytes
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["bytes_total"] for r in rows] == list(np.cumsum(res.bytes))
    assert rows[hit - 1]["bytes_total"] == nbytes


def test_unreached_target_reports_none():
    res = run_experiment("star10", overrides={**FAST, "rounds.measure_accuracy": 1.0})
    assert res.to_target() == (None, None)
    assert res.summary()["bytes_to_target"] is None


def test_all_links_means_every_frame_of_every_node():
    # two-tier: aggregator <-> client frames count as much as the coordinator's own
    res = run_experiment("two_tier_3x10", overrides={**FAST, "rounds.rounds": 2})
    coordinator = sum(r["bytes_up"] + r["bytes_down"] for r in res.records)
    assert res.bytes.sum() > 2 * coordinator  # payload bytes of its links are a small part
