"""What the CLI prints where (issue 21, rough edges): ``--log json`` stdout is JSON lines
only, each event with a wall-clock UTC time; ``keygen`` names its own flag."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fednode.cli import main


@pytest.mark.net
def test_json_log_is_pure_json_with_utc_times(tmp_path: Path) -> None:
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    args = [sys.executable, "-m", "fednode.cli", "run", "--no-mdns", "--log", "json"]
    args += ["--role", "coordinator", "--listen", "/ip4/127.0.0.1/tcp/0"]
    args += ["--key-file", str(tmp_path / "k.key"), "--min-available-clients", "1"]
    args += ["--min-fit-clients", "1"]
    before = datetime.now(UTC)
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(args, stdout=o, stderr=e)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and b'"listening"' not in out.read_bytes():
            assert proc.poll() is None, err.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert records[0]["event"] == "listening"
    assert records[-1]["event"] == "stopped" and records[-1]["reason"] == "SIGTERM"
    for r in records:
        utc = datetime.fromisoformat(r["utc"])
        assert utc.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= utc <= datetime.now(UTC)
    text = err.read_text()
    assert "fednode coordinator" in text and "stopped: SIGTERM" in text  # people's lines


def test_keygen_names_its_flag_when_the_file_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    assert main(["keygen", "--out", str(path)]) == 0
    first = path.read_bytes()
    assert main(["keygen", "--out", str(path)]) == 2
    said = capsys.readouterr().out
    assert "--force" in said and "force=True" not in said
    assert path.read_bytes() == first  # not overwritten
    assert main(["keygen", "--out", str(path), "--force"]) == 0
    assert path.read_bytes() != first
