"""Every benchmark script still runs: each at the tiny size of ``scripts/bench/run_all --quick``.

The figures of these runs mean nothing; the test catches a script that no longer starts,
parses its flags or finishes. The cheap ones run by default; those that train for tens of
seconds even at their tiny size are marked ``slow``. vs_flower's Flower side needs root,
``unshare`` and flwr (the ``bench`` extra): without them its test is skipped, saying which.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_ALL = ROOT / "scripts" / "bench" / "run_all"

#: the scripts cheap enough at their tiny size to run on every test run (~1-8 s each)
FAST = ("wire", "codec_sizes", "aggregate", "secagg", "vs_flower")


def _run_all() -> object:
    loader = importlib.machinery.SourceFileLoader("bench_run_all", str(RUN_ALL))
    spec = importlib.util.spec_from_loader("bench_run_all", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


RUN_ALL_MODULE = _run_all()
BENCHES: dict[str, tuple[list[str], list[str]]] = RUN_ALL_MODULE.BENCHES  # type: ignore[attr-defined]


def flower_missing() -> str | None:
    if os.geteuid() != 0:
        return "vs_flower runs Flower only in a loopback-only netns: needs root"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "vs_flower needs unshare and ip for its loopback-only netns"
    if importlib.util.find_spec("flwr") is None:
        return "flwr is not installed (pip install -e '.[bench]')"
    return None


def test_every_bench_script_is_listed() -> None:
    scripts = {
        p.stem for p in (ROOT / "scripts" / "bench").glob("*.py") if not p.stem.startswith("_")
    }
    assert scripts == set(BENCHES)


@pytest.mark.parametrize(
    "name",
    [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in BENCHES],
)
def test_bench_runs_at_tiny_size(name: str, tmp_path: Path) -> None:
    if name == "vs_flower" and (reason := flower_missing()):
        pytest.skip(reason)
    cmd = RUN_ALL_MODULE.command(name, True, tmp_path)  # type: ignore[attr-defined]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip(), "the script printed nothing"
    if name == "vs_flower":  # both sides ran: fednode's and Flower's FedAvg times side by side
        line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("fedavg"))
        assert line.split()[5] != "-", line


def test_vs_flower_renders_a_result_without_flower(tmp_path: Path) -> None:
    """--render turns a result file into Markdown (no Flower needed)."""
    import json

    result = {
        "machine": {"date": "d", "cpu": "c", "cores": 2, "python": "3.11"},
        "tables": [
            {"case": "scale", "clients": 100, "rounds": 10,
             "rows": [{"measure": "total wall (s)", "fednode": 2.0, "flower": 8.0, "ratio": 0.25,
                       "target": 0.2, "met": False, "unit": "s"}],
             "runs": {"fednode": [{"load": 1.0}], "flower": [{"load": 1.5}]}},
        ],
    }  # fmt: skip
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    script = ROOT / "scripts" / "bench" / "vs_flower.py"
    out = subprocess.run(
        [sys.executable, str(script), "--render", str(path)], capture_output=True, text=True
    ).stdout
    assert "| total wall (s) | 2.00 | 8.00 | 0.25 | <= 0.2 | **no** |" in out
