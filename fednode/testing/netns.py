"""A LAN of Linux network namespaces, and ``fednode run`` processes on it.

::

    namespace <run>-hub      bridge br0 (multicast snooping off), ports v0 .. v(N-1)
                               |            |                     |
    namespace <run>-n0       eth0 10.213.0.10/24       <run>-n1  eth0 10.213.0.11/24  ...
                             lo up, route 224.0.0.0/4 dev eth0 (mDNS)

Every node gets its own namespace, so each ``fednode run`` sees one private interface,
its own loopback, and the others only through the bridge — a small switched LAN on
which mDNS works as on a real one. Nothing is created in, routed to or bridged with the
machine's own network namespace: both ends of every veth are created inside namespaces
of this run (``ip -n <hub> link add ... peer ... netns <node>``), and the addresses
(``10.213.0.0/24`` by default) exist only inside them.

Names start with ``fnlan-<pid>-<random>``, so parallel runs do not collide and
:func:`cleanup_leftovers` removes exactly the namespaces whose creating process is gone
(a run killed with SIGKILL). :class:`Lan` is a context manager; leaving it — normally,
on an exception or on Ctrl-C — stops every process it started (SIGTERM, then SIGKILL
after a bound) and deletes every namespace it created.

Errors: :class:`NetnsError` when a namespace command fails; :class:`LanTimeout` when a
bounded wait runs out (its message carries the tail of every node's log).
Needs root and iproute2; :func:`unavailable_reason` says what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "fnlan"
SUBNET = "10.213.0"
#: first host number of a node (10.213.0.10, .11, ...)
FIRST_HOST = 10
#: bound on one ``ip`` command
IP_TIMEOUT_S = 10.0
#: how often bounded waits look at the logs
POLL_S = 0.25
#: how long stopped processes get between SIGTERM and SIGKILL
STOP_TIMEOUT_S = 30.0
MAX_NODES = 200


class NetnsError(RuntimeError):
    """A namespace could not be created or configured."""


class LanTimeout(AssertionError):
    """A bounded wait on the LAN ran out (an AssertionError, so tests report it as one)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from exc
    if check and res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {res.stderr.strip() or res.returncode}")
    return res


def unavailable_reason() -> str | None:
    """Why namespaces cannot be built here (None when they can): needs Linux, root, ``ip``
    and permission to create a namespace (probed by creating and deleting one)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"{PREFIX}-{os.getpid()}-probe{secrets.token_hex(2)}"
    try:
        _ip("netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe, check=False)
    return None


def skip_unless_available() -> None:
    """In a test: ``pytest.skip`` with the reason when namespaces cannot be built here."""
    reason = unavailable_reason()
    if reason is not None:
        import pytest

        pytest.skip(reason)


def list_namespaces() -> list[str]:
    res = _ip("netns", "list", check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace(name: str) -> None:
    """SIGKILL whatever still runs in namespace ``name``, then delete it."""
    res = _ip("netns", "pids", name, check=False)
    for token in res.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(token), signal.SIGKILL)
    _ip("netns", "del", name, check=False)


def cleanup_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces ``<prefix>-<pid>-...`` whose creating process is gone.

    Returns their names. Namespaces of live runs (another test session) are left alone.
    """
    removed = []
    for name in list_namespaces():
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != prefix or not parts[1].isdigit():
            continue
        if _pid_alive(int(parts[1])):
            continue
        _kill_namespace(name)
        removed.append(name)
    return removed


@dataclass
class NodeProcess:
    """One ``fednode run`` in its namespace; stdout (JSON lines) and stderr go to ``log``."""

    name: str
    namespace: str
    address: str
    workdir: Path
    log: Path
    args: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    _seen: int = field(default=0, repr=False)
    _events: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """JSON events logged so far (optionally only ``event == kind``); read incrementally."""
        if self.log.exists():
            with self.log.open("rb") as f:
                f.seek(self._seen)
                data = f.read()
            end = data.rfind(b"\n") + 1  # only whole lines
            self._seen += end
            for line in data[:end].splitlines():
                if line.startswith(b"{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        self._events.append(json.loads(line))
        return [e for e in self._events if kind is None or e.get("event") == kind]

    @property
    def peer_id(self) -> str | None:
        listening = self.events("listening")
        return listening[0]["peer"] if listening else None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


class Lan:
    """``size`` namespaces on one bridge; ``start`` runs ``fednode run`` in one of them.

    ``workdir`` holds one directory per node (its key file and log). ``python`` runs
    fednode (default: this interpreter).
    """

    def __init__(
        self,
        size: int,
        workdir: Path,
        *,
        subnet: str = SUBNET,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        if not 1 <= size <= MAX_NODES:
            raise ValueError(f"size must be in [1, {MAX_NODES}], got {size}")
        self.size = size
        self.workdir = Path(workdir)
        self.subnet = subnet
        self.python = python
        self.run_id = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.hub = f"{self.run_id}-hub"
        self.namespaces = [f"{self.run_id}-n{i}" for i in range(size)]
        self.nodes: list[NodeProcess] = []
        self._created: list[str] = []
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }

    def address(self, index: int) -> str:
        return f"{self.subnet}.{FIRST_HOST + index}"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Lan:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        """Build the hub, the bridge and one namespace per node."""
        cleanup_leftovers()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._add_namespace(self.hub)
        hub = ("-n", self.hub)
        _ip(*hub, "link", "set", "lo", "up")
        _ip(*hub, "link", "add", "br0", "type", "bridge")
        # forward multicast to every port whatever IGMP says (mDNS has no querier here)
        _ip(*hub, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip(*hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.namespaces):
            self._add_namespace(ns)
            # both veth ends are created inside this run's namespaces, never in the host's
            _ip(*hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip(*hub, "link", "set", f"v{i}", "master", "br0")
            _ip(*hub, "link", "set", f"v{i}", "up")
            node = ("-n", ns)
            _ip(*node, "link", "set", "lo", "up")
            _ip(*node, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip(*node, "link", "set", "eth0", "up")
            _ip(*node, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    def down(self) -> None:
        """Stop every process (bounded), then delete every namespace of this run."""
        try:
            self.stop(self.nodes, timeout=STOP_TIMEOUT_S)
        finally:
            for name in reversed(self._created):
                _kill_namespace(name)
            self._created.clear()

    # ------------------------------------------------------------------ processes
    def start(
        self,
        index: int,
        args: Sequence[str],
        name: str | None = None,
    ) -> NodeProcess:
        """Run ``fednode run --log json <args>`` in namespace ``index``, in its own directory
        (so its key file is its own)."""
        ns = self.namespaces[index]
        name = name or f"node{index}"
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "node.log"
        cmd = ("-m", "fednode.cli", "run", "--log", "json", *args)
        node = NodeProcess(name, ns, self.address(index), workdir, log, tuple(args))
        with log.open("wb") as out:
            node.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, self.python, *cmd],
                cwd=workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches the harness only
            )
        self.nodes.append(node)
        return node

    def stop(self, nodes: Iterable[NodeProcess], timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM ``nodes``, wait up to ``timeout`` for all, SIGKILL the rest."""
        nodes = [n for n in nodes if n.proc is not None]
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in nodes:
            assert node.proc is not None
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=5)

    # ------------------------------------------------------------------ waiting
    def wait_for(
        self,
        done: Callable[[], bool],
        timeout: float,
        what: str,
        *,
        on_poll: Callable[[], None] | None = None,
    ) -> float:
        """Poll ``done()`` until true, at most ``timeout`` seconds; returns the time taken.

        Errors: :class:`LanTimeout` naming ``what``, with each node's log tail; also when
        a node exits with an error status meanwhile.
        """
        start = time.monotonic()
        while True:
            if on_poll is not None:
                on_poll()
            if done():
                return time.monotonic() - start
            failed = [n for n in self.nodes if n.returncode not in (None, 0)]
            if failed:
                raise LanTimeout(
                    f"{what}: {failed[0].name} exited with {failed[0].returncode}\n{self.report()}"
                )
            if time.monotonic() - start > timeout:
                raise LanTimeout(f"{what}: not within {timeout:g}s\n{self.report()}")
            time.sleep(POLL_S)

    def report(self, lines: int = 12) -> str:
        parts = []
        for node in self.nodes:
            parts.append(f"--- {node.name} ({node.address}, exit {node.returncode}) ---")
            parts.append(node.tail(lines))
        return "\n".join(parts)
