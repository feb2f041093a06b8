"""docs/grafana/fednode.json: well formed, and every query names a metric a node exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fednode.loop import RunStats
from fednode.prometheus import NodeMetrics

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "fednode.json"
METRIC = re.compile(r"\bfednode_[a-z_]+\b")


def _exported() -> set[str]:
    """The sample names of a node's exposition, with every metric family populated."""
    stats = RunStats(sent_frames=1, sent_bytes=10, received_frames=1, send_failures=1)
    stats.rejected["AuthError"] += 1
    stats.refused["LocalProtocolError"] += 1
    metrics = NodeMetrics(
        role="coordinator", peer_id="p", federation="f", stats=stats, peers=lambda: 1
    )
    metrics.on_event("round", {"round": 1, "accuracy": 0.5, "dp_epsilon": 1.0, "dp_delta": 1e-5})
    text = metrics.exposition().decode()
    return {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and ln[0] != "#"}


def _queried(dashboard: dict) -> set[str]:
    return {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }


def _unknown(dashboard: dict, exported: set[str]) -> set[str]:
    return _queried(dashboard) - exported


def test_every_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported()
    assert len(_queried(dashboard)) >= 10  # the panels query most of the families
    assert _unknown(dashboard, exported) == set()


def test_a_renamed_metric_would_be_caught() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][0]["targets"][0]["expr"] = "fednode_accuracy_percent"
    assert _unknown(dashboard, _exported()) == {"fednode_accuracy_percent"}


def test_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["refId"] for t in panel["targets"])
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "instance"]
