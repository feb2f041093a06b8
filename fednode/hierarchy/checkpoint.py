"""Versioned, atomic coordinator checkpoints: arrays as ``.npy`` (never pickled) + JSON.

Layout under the checkpoint directory::

    ckpt-00000012/            one version per completed round
        model.npy             float32 model, np.save(allow_pickle=False)
        opt.m.npy, opt.v.npy  server optimiser arrays, same format
        meta.json             round, model_version, optimiser scalars, membership, rng, ...
    LATEST                    name of the newest complete version

A version is written into a hidden temporary directory, every file fsynced, then renamed
into place (atomic on POSIX), and only then is ``LATEST`` replaced (write + fsync + rename).
A crash at any point leaves ``LATEST`` naming a complete version. The ``keep`` newest
versions are kept. Loading checks the format, that the model's digest matches the one in
the metadata, its dtype and that every value is finite; arrays load with
``allow_pickle=False``.

The coordinator calls :meth:`DirectoryCheckpoints.save` synchronously at the end of a round:
it is small and local. A model of hundreds of MB would want it off the event loop (see
docs/HIERARCHY.md: a ``Persist`` action run by the runner in a worker thread).

Errors: :class:`~fednode.errors.ConfigError` (field ``resume_from``) for a missing or
malformed checkpoint; OS errors on save propagate (a coordinator that cannot checkpoint
should not pretend it does).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..wire.tensors import DTYPE

FORMAT = 1
PREFIX = "ckpt-"


@dataclass
class Snapshot:
    """Everything a coordinator needs to continue after the round it was taken at."""

    round: int  #: last completed round
    model_version: int
    params: np.ndarray = field(repr=False)
    optimizer: str = "fedavg"
    optimizer_state: dict[str, Any] = field(default_factory=dict, repr=False)
    membership: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def _digest(arr: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).hexdigest()


def _fsync_write(path: Path, write: Any) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _save_array(path: Path, arr: np.ndarray) -> None:
    _fsync_write(path, lambda f: np.save(f, np.ascontiguousarray(arr), allow_pickle=False))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryCheckpoints:
    """Checkpoint store in ``root`` (created if missing)."""

    def __init__(self, root: str | Path, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = keep
        self.saved = 0

    def versions(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    def save(self, snap: Snapshot) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{snap.round:08d}"
        tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        params = np.asarray(snap.params, dtype=DTYPE)
        _save_array(tmp / "model.npy", params)
        scalars: dict[str, Any] = {}
        arrays: list[str] = []
        for key, value in sorted(snap.optimizer_state.items()):
            if isinstance(value, np.ndarray):
                _save_array(tmp / f"opt.{key}.npy", value)
                arrays.append(key)
            else:
                scalars[key] = value
        meta = {
            "format": FORMAT,
            "round": snap.round,
            "model_version": snap.model_version,
            "size": int(params.shape[0]),
            "dtype": "float32",
            "model_digest": _digest(params),
            "optimizer": snap.optimizer,
            "optimizer_scalars": scalars,
            "optimizer_arrays": arrays,
            "membership": snap.membership,
            "extra": snap.extra,
        }
        body = json.dumps(meta, sort_keys=True, indent=1).encode()
        _fsync_write(tmp / "meta.json", lambda f: f.write(body))
        _fsync_dir(tmp)
        final = self.root / name
        if final.exists():  # the same round again (after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        latest_tmp = self.root / f".LATEST-{uuid.uuid4().hex[:8]}"
        _fsync_write(latest_tmp, lambda f: f.write(name.encode()))
        os.replace(latest_tmp, self.root / "LATEST")
        _fsync_dir(self.root)
        self.saved += 1
        for old in self.versions()[: -self.keep]:
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self) -> Path | None:
        pointer = self.root / "LATEST"
        if pointer.is_file():
            path = self.root / pointer.read_text().strip()
            if path.is_dir():
                return path
        versions = self.versions()
        return versions[-1] if versions else None


def load_checkpoint(path: str | Path) -> Snapshot:
    """Load a version directory, or the newest version of a checkpoint root."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        found = DirectoryCheckpoints(path).latest()
        if found is None:
            raise ConfigError("resume_from", str(path), "a checkpoint directory (none found)")
        path = found
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ConfigError("resume_from", str(path), f"checkpoint format {FORMAT}")
        params = np.load(path / "model.npy", allow_pickle=False)
        state: dict[str, Any] = dict(meta["optimizer_scalars"])
        for key in meta["optimizer_arrays"]:
            state[key] = np.load(path / f"opt.{key}.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError("resume_from", str(path), f"a readable checkpoint ({exc})") from exc
    if (
        params.dtype != DTYPE
        or params.shape != (meta["size"],)
        or _digest(params) != meta["model_digest"]
        or not np.isfinite(params).all()
    ):
        raise ConfigError("resume_from", str(path), "a float32 model matching its digest")
    return Snapshot(
        round=int(meta["round"]),
        model_version=int(meta["model_version"]),
        params=params,
        optimizer=str(meta["optimizer"]),
        optimizer_state=state,
        membership={k: list(v) for k, v in meta["membership"].items()},
        extra=dict(meta.get("extra", {})),
    )


def rng_state_to_json(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_state_from_json(data: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)
