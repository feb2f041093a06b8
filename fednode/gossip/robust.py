"""Robust gossip steps: ClippedGossip over a peer's links (pure; ``gossip.robust``).

A plain step moves a peer by ``sum_j c_j (theirs_j - mine_j)`` (:func:`.links.mix`); a
clipped step first scales each link's difference to norm at most ``tau_i``
(:mod:`fednode.training.clipping`: He, Karimireddy & Jaggi 2022), so a neighbour that
sends anything at all moves the peer by at most ``c_j * tau_i`` per step. With a lossless
codec ``mine_j`` is the peer's model, so this is the paper's ``clip(x_j - x_i, tau_i)``;
with CHOCO it clips the compressed link's difference (``theirs_j - mine_j``), the move
the step would make.

Conservation: a fixed ``tau`` clips both ends of a lossless link to the same norm (their
differences are exact opposites), so the network sum is still conserved; the adaptive
``tau`` differs per peer and is not. Clipped links are counted (``clipped`` in the
``gossip_round`` record).
"""

from __future__ import annotations

import numpy as np

from ..training.clipping import ClipSpec, adaptive_tau, clip_rows
from .links import F64, Link, combine


def _norms(d: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", d, d))


def clipped_mix(
    x: np.ndarray, links: list[Link], coefs: list[float], clip: ClipSpec
) -> tuple[np.ndarray, list[float], int]:
    """A sync step with every link's difference clipped: (new model, distances, clipped)."""
    dist = [link.distance(x) or 0.0 for link in links]
    d = np.array([link.delta() for link in links], dtype=F64)
    tau = clip.tau
    if tau is None:
        tau = adaptive_tau(_norms(d), np.asarray(coefs, dtype=F64), clip.delta)
    d, clipped = clip_rows(d, tau)
    return combine(x, coefs, d), dist, clipped


def clipped_delta(link: Link, links: list[Link], clip: ClipSpec) -> tuple[np.ndarray, int]:
    """An async exchange's ``(1, n)`` difference over ``link``, clipped; the adaptive
    radius comes from all ``links`` with a model (equal weights)."""
    d = link.delta()[None, :]
    tau = clip.tau
    if tau is None:
        known = [lk for lk in links if lk.theirs is not None and lk.mine is not None]
        all_d = np.array([lk.delta() for lk in known], dtype=F64) if known else d
        tau = adaptive_tau(_norms(all_d), np.ones(all_d.shape[0]), clip.delta)
    return clip_rows(d, tau)
