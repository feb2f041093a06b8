"""Model broadcasts as deltas of one shared public model (pure: no I/O).

With ``[wire] codec_down`` set, every node that sends models down the tree keeps one
*public model* ``x_hat`` with a version number, and every node below rebuilds exactly the
same ``x_hat``. The coordinator advances it towards its true model ``x`` by a compressed
step, with the error kept on the server (EF21-P, Gruntkowska, Tyurin & Richtárik 2023;
the downlink half of EF21-BC / DoubleSqueeze)::

    x_hat_{v} = x_hat_{u} + D(C(x - x_hat_{u}))      u = previous public version

so whatever ``C`` dropped stays in ``x - x_hat`` and is sent in a later step. A receiver
that holds ``x_hat_u`` (it answered a Fit of version ``u``) is sent the encoded step, any
other receiver the full ``x_hat_v`` once, as raw float32. Clients train from ``x_hat``,
so their deltas are relative to the model the server knows they hold. A regional
aggregator rebuilds ``x_hat`` like a client and forwards the same step (or the full model)
to its own children: no second compression, the same public model in the whole tree.

The Fit's ``config`` names the public model (``docs/PROTOCOL.md``, "Delta broadcasts"):
``public_version`` (int), ``public_digest`` (the first 7 bytes of the BLAKE3 of the
rebuilt model's float32 bytes, little-endian, as an int) and, on a delta only,
``public_base`` (the version the step applies to). A receiver that lacks the base, or
whose rebuilt model has another digest, raises :class:`~fednode.errors.DeltaError` and
keeps the model it had.
"""

from __future__ import annotations

import time
from typing import Any

import blake3
import numpy as np

from ..actions import Action, Emit, Send
from ..errors import DeltaError
from ..wire import messages as m
from ..wire.codecs import Codec, parse_codec

#: Fit.config keys of a public-model broadcast
VERSION_KEY, DIGEST_KEY, BASE_KEY = "public_version", "public_digest", "public_base"
PUBLIC_KEYS = (VERSION_KEY, DIGEST_KEY, BASE_KEY)
#: how the reason of a receiver's Reject starts when it cannot apply a delta
NO_BASE = "no base"
_FULL = parse_codec("none")


def digest(x: np.ndarray) -> int:
    """The public model's digest as carried in ``public_digest`` (an int below 2**56)."""
    data = np.ascontiguousarray(x, dtype="<f4")
    return int.from_bytes(blake3.blake3(data.tobytes()).digest()[:7], "little")


class PublicCopy:
    """A receiver's copy of the public model (client, aggregator)."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.x: np.ndarray | None = None
        self.rejected = 0

    def receive(self, fit: m.Fit) -> np.ndarray:
        """The model to train from: a plain Fit's vector, or the public model rebuilt
        from the broadcast (which then becomes this copy).

        Errors: :class:`DeltaError` (counted in :attr:`rejected`; the copy is unchanged)
        when the base is not the version held or the digest does not match.
        """
        assert fit.vector is not None
        cfg = fit.config
        if VERSION_KEY not in cfg:
            return fit.vector
        version, want, base = cfg.get(VERSION_KEY), cfg.get(DIGEST_KEY), cfg.get(BASE_KEY)
        try:
            if not all(type(v) is int for v in (version, want)) or (
                base is not None and type(base) is not int
            ):
                raise DeltaError(f"public model fields are not ints: {version!r} {want!r}")
            if base is None:
                x = np.array(fit.vector, dtype=np.float32, copy=True)
            elif self.x is None or self.version != base:
                raise DeltaError(
                    f"delta from public version {base}, this node holds {self.version}"
                )
            else:
                x = np.add(self.x, fit.vector, dtype=np.float32)
            if digest(x) != want:
                raise DeltaError(f"rebuilt public model {version} does not match its digest")
        except DeltaError:
            self.rejected += 1
            raise
        self.version, self.x = version, x
        return x


def refuse_delta(fit: m.Fit, exc: DeltaError) -> list[Action]:
    """What a receiver does with a broadcast it cannot apply: log it (``delta_rejected``)
    and tell the sender with a ``Reject`` whose reason starts with :data:`NO_BASE`, so that
    it sends the full model instead (:meth:`Broadcaster.refused`)."""
    detail = str(exc)
    info = {"peer": fit.sender, "round": fit.round, "error": type(exc).__name__, "detail": detail}
    reject = m.Reject(
        round=fit.round, model_version=fit.model_version, reason=f"{NO_BASE}: {detail}"[:200]
    )
    return [Emit("delta_rejected", info), Send(fit.sender, reject)]


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the public-model keys (a forwarder adds its own)."""
    return {k: v for k, v in config.items() if k not in PUBLIC_KEYS}


class Broadcaster:
    """A sender's side: the public model, the step to send, who holds which version."""

    def __init__(self, codec_down: str = "none", *, seed: int = 0) -> None:
        self.enabled = codec_down != "none"
        self.codec: Codec = parse_codec(codec_down, seed=seed)
        self.x: np.ndarray | None = None
        self.version: int | None = None
        self.digest = 0
        self.base: int | None = None
        self.step: bytes | memoryview | None = None
        self.step_codec = "none"
        self._full: bytes | None = None
        #: peer -> public version it proved to hold (it answered a Fit of that version)
        self.held: dict[str, int] = {}
        #: seconds spent in the codec (encode + the sender's own decode)
        self.codec_s = 0.0

    def advance(self, model: np.ndarray, version: int) -> None:
        """Coordinator: move the public model towards ``model`` as ``version``."""
        if self.version == version and self.x is not None:
            return
        if self.x is None:
            self.x, self.base, self.step = np.array(model, dtype=np.float32, copy=True), None, None
        else:
            t0 = time.perf_counter()
            step = self.codec.encode(np.subtract(model, self.x, dtype=np.float32))
            decoded = self.codec.decode(step, self.x.shape[0])
            self.codec_s += time.perf_counter() - t0
            self.x = np.add(self.x, decoded, dtype=np.float32)
            self.base, self.step, self.step_codec = self.version, step, self.codec.spec
        self.version, self.digest, self._full = version, digest(self.x), None

    def adopt(self, copy: PublicCopy, fit: m.Fit) -> None:
        """Aggregator: take the public model just rebuilt from ``fit`` and forward the
        same step (a delta Fit) or the full model (any other) to the children."""
        assert copy.x is not None and copy.version is not None
        self.enabled = True
        if copy.version == self.version:
            return
        delta = fit.config.get(BASE_KEY) is not None
        self.base = fit.config[BASE_KEY] if delta else None
        self.step = fit.payload if delta else None
        self.step_codec = fit.codec
        self.x, self.version, self._full = copy.x, copy.version, None
        self.digest = int(fit.config[DIGEST_KEY])

    def fit_for(
        self, peer: str, *, round: int, model_version: int, config: dict[str, Any]
    ) -> m.Fit:
        """The Fit for ``peer``: the step if it holds the base, else the full model."""
        assert self.x is not None and self.version is not None
        cfg = {**config, VERSION_KEY: self.version, DIGEST_KEY: self.digest}
        if self.step is not None and self.held.get(peer) == self.base:
            cfg[BASE_KEY] = self.base
            return m.Fit(
                round=round,
                model_version=model_version,
                codec=self.step_codec,
                payload=self.step,
                config=cfg,
            )
        if self._full is None:
            self._full = _FULL.encode(self.x)
        return m.Fit(
            round=round, model_version=model_version, codec="none", payload=self._full, config=cfg
        )

    def acked(self, peer: str, version: int | None) -> None:
        """``peer`` answered a Fit of public ``version``: it holds that model."""
        if self.enabled and version is not None:
            self.held[peer] = version

    def refused(self, peer: str, reason: str) -> bool:
        """Whether ``peer``'s Reject with ``reason`` refused a delta it held no base for
        (:func:`refuse_delta`): then it is forgotten, so :meth:`fit_for` sends it the full
        model, once; a second refusal finds it no longer held and is a plain decline."""
        if not self.enabled or not reason.startswith(NO_BASE) or peer not in self.held:
            return False
        self.forget(peer)
        return True

    def forget(self, peer: str) -> None:
        """``peer`` left or refused a delta: it is sent the full model next time."""
        self.held.pop(peer, None)
