"""Clipping of neighbour differences for robust gossip (ClippedGossip), pure numpy.

ClippedGossip (He, Karimireddy & Jaggi, "Byzantine-robust decentralized learning via
ClippedGossip", 2022) replaces the gossip step by ::

    x_i <- x_i + gamma * sum_j w_ij * clip(x_j - x_i, tau_i),   clip(v, t) = v * min(1, t / ||v||)

so one neighbour can move a peer by at most ``gamma * w_ij * tau_i`` per step, whatever it
sends. ``[gossip] robust`` selects it (:func:`parse_gossip_robust`):

* ``clip:<tau>`` — a fixed radius;
* ``clip:auto[:<delta>]`` — an adaptive radius (with ``delta`` unset and equal weights,
  the rule of the authors' reference code; docs/ROBUSTNESS.md compares it with the
  paper): ``tau_i`` is chosen so that the neighbours carrying the largest ``delta`` of
  peer i's neighbour weight (the farthest ones) are clipped, i.e. ``tau_i`` is the
  distance of the farthest neighbour left unclipped (:func:`adaptive_tau`). ``delta`` is
  the weight a peer assumes may be Byzantine; by default the largest single neighbour
  weight (the farthest neighbour is always clipped to the distance of the next one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

EXPECTED = "'' (off), 'clip:<tau>' (tau > 0) or 'clip:auto[:<delta>]' (0 < delta < 1)"


@dataclass(frozen=True)
class ClipSpec:
    """A parsed ``gossip.robust``: a fixed ``tau``, or adaptive (``tau`` None) with ``delta``
    (None: the largest single neighbour weight)."""

    tau: float | None = None
    delta: float | None = None

    @property
    def spec(self) -> str:
        if self.tau is not None:
            return f"clip:{self.tau:g}"
        return "clip:auto" if self.delta is None else f"clip:auto:{self.delta:g}"


def parse_gossip_robust(spec: str, field: str = "gossip.robust") -> ClipSpec | None:
    """``""`` -> None (plain gossip); ``"clip:0.5"``, ``"clip:auto"``, ``"clip:auto:0.3"``."""
    if not spec:
        return None
    parts = spec.split(":")
    if parts[0] != "clip" or len(parts) not in (2, 3):
        raise ConfigError(field, spec, EXPECTED)
    try:
        if parts[1] == "auto":
            delta = float(parts[2]) if len(parts) == 3 else None
            if delta is not None and not 0 < delta < 1:
                raise ValueError
            return ClipSpec(None, delta)
        tau = float(parts[1])
        if len(parts) != 2 or not (tau > 0 and math.isfinite(tau)):
            raise ValueError
        return ClipSpec(tau)
    except ValueError:
        raise ConfigError(field, spec, EXPECTED) from None


def adaptive_tau(norms: np.ndarray, weights: np.ndarray, delta: float | None = None) -> float:
    """The radius that clips the farthest neighbours holding ``delta`` of the weight.

    Neighbours are sorted by distance (far first); the weight of the farthest ones is
    summed until it reaches ``delta``; ``tau`` is the distance of the next (the farthest
    neighbour left unclipped), or the nearest distance when all are needed.
    """
    if norms.size == 0:
        return math.inf
    w = np.asarray(weights, dtype=np.float64)
    d = w.max() if delta is None else delta * w.sum()
    order = np.argsort(-norms, kind="stable")
    cum = np.cumsum(w[order])
    k = int(np.searchsorted(cum, d * (1 - 1e-12)))  # farthest k+1 reach delta: clip them
    nxt = min(k + 1, norms.size - 1)
    return float(norms[order[nxt]])


def clip_rows(d: np.ndarray, tau: float) -> tuple[np.ndarray, int]:
    """Scale each row of ``d`` (in place) to norm at most ``tau``; (d, rows clipped)."""
    norms = np.sqrt(np.einsum("ij,ij->i", d, d))
    scale = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
    d *= scale[:, None]
    return d, int(np.count_nonzero(scale < 1.0))
