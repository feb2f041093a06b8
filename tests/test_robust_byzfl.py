"""Cross-check: every fednode rule against byzfl 0.0.11's (EPFL) on the same random inputs.

byzfl is installed without its dependencies (``pip install --no-deps byzfl==0.0.11``,
scripts/_env.sh): its package ``__init__`` imports its training framework and so
torchvision, which fednode does not have. Only ``byzfl.aggregators`` (numpy + scipy's
``cdist``) is loaded here, through a stand-in parent package that skips that ``__init__``.

Conventions that differ, and how the test maps them:

* ``trimmed:<beta>`` drops ``k = floor(beta n)`` values at each end; byzfl's ``TrMean(f)``
  drops ``f``: compared with ``f = k``.
* fednode's Krum scores by the ``n - f - 2`` nearest others (Blanchard et al. 2017); byzfl's
  ``Krum(f)`` averages the ``n - f - 1`` nearest: ``krum:f`` == ``Krum(f + 1)`` (the argmin
  of a sum and of a mean over the same count are the same).
* ``multikrum:f:m`` averages the ``m`` best-scored; byzfl's ``MultiKrum(f)`` averages the
  ``n - f`` best by ``n - f - 1`` neighbours: ``multikrum:f:(n-f-1)`` == ``MultiKrum(f+1)``.
* byzfl 0.0.11 has no Bulyan. Its second phase is byzfl's ``Meamed(2f)`` (mean of the
  ``theta - 2f`` values closest to the median) over the selected set; its selection is
  ``theta = n - 2f`` Krum picks, each by byzfl's ``Krum`` where byzfl's ``2f < n`` check
  allows, else by the plain loop ``_krum_pick`` below (written from the paper).
* ``centered_clip:tau:L`` == ``CenteredClipping(tau=tau, L=L)`` from centre 0 (a fresh
  byzfl object each time: byzfl keeps the last result as the next call's centre).
* ``geomed`` iterates Weiszfeld to convergence from the mean; byzfl's
  ``GeometricMedian(nu, T)`` runs T steps from 0: compared with T = 300, nu = 1e-9.
* ``nnm`` (bare, with krum:f) == ``NNM(f)`` followed by the rule; ``norm_bound:c`` ==
  ``Clipping(c)``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import numpy as np
import pytest

from fednode.training import robust
from fednode.training.buffered import make_aggregator


def _byzfl_aggregators() -> types.ModuleType:
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("CI"):  # scripts/_env.sh installs it: CI must not skip
            pytest.fail("byzfl is not installed")
        pytest.skip("byzfl is not installed (scripts/_env.sh installs it)", allow_module_level=True)
    if "byzfl" not in sys.modules:
        parent = types.ModuleType("byzfl")
        parent.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = parent
    from byzfl import aggregators  # type: ignore[import-not-found]

    return aggregators


byz = _byzfl_aggregators()
SEEDS = range(5)


def _inputs(seed: int, n: int = 11, d: int = 37) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[: n // 4] += rng.normal(scale=5.0, size=(n // 4, d)).astype(np.float32)  # outliers
    return x


def _run(spec: str, x: np.ndarray) -> np.ndarray:
    agg = make_aggregator(spec)
    agg.start(x.shape[1], capacity=x.shape[0])
    for i, row in enumerate(x):
        agg.add(row.copy(), 1.0, f"p{i}")
    return agg.finish()[0]


def _close(ours: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_allclose(ours, np.asarray(theirs, dtype=np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_median(seed):
    x = _inputs(seed)
    _close(_run("median", x), byz.Median()(x.copy()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.2, 0.45])
def test_trimmed_mean(seed, beta):
    x = _inputs(seed)
    k = int(beta * x.shape[0])
    _close(_run(f"trimmed:{beta}", x), byz.TrMean(f=k)(x.copy()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("f", [0, 1, 2, 3])
def test_krum(seed, f):
    x = _inputs(seed)
    _close(_run(f"krum:{f}", x), byz.Krum(f=f + 1)(x.copy()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("f", [1, 2, 3])
def test_multikrum(seed, f):
    x = _inputs(seed)
    m = x.shape[0] - f - 1
    _close(_run(f"multikrum:{f}:{m}", x), byz.MultiKrum(f=f + 1)(x.copy()))


def _krum_pick(pool: np.ndarray, f: int) -> int:
    """Krum's choice by a plain loop over pairs (reference for byzfl's refused sizes)."""
    n = len(pool)
    k = max(n - f - 2, 1)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((pool[i] - pool[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[:k]))
    return int(np.argmin(scores))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("f", [1, 2])
def test_bulyan(seed, f):
    n = 6 * f + 1 + seed % 3  # byzfl's Meamed(2f) on n - 2f rows needs n > 6f
    x = _inputs(seed, n=n)
    pool = list(range(n))
    chosen = []
    for _ in range(n - 2 * f):
        rows = x[pool].astype(np.float64)
        if 2 * (f + 1) < len(pool):  # byzfl's own check
            pick_vec = byz.Krum(f=f + 1)(rows.copy())
            pick = int(np.flatnonzero((rows == pick_vec).all(axis=1))[0])
        else:
            pick = _krum_pick(rows, f)
        chosen.append(pool.pop(pick))
    selected = x[sorted(chosen)]
    expected = byz.Meamed(f=2 * f)(selected.astype(np.float64))
    _close(_run(f"bulyan:{f}", x), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("tau", "iters"), [(0.5, 1), (2.0, 3), (10.0, 5)])
def test_centered_clip(seed, tau, iters):
    x = _inputs(seed)
    expected = byz.CenteredClipping(tau=tau, L=iters)(x.copy())
    _close(_run(f"centered_clip:{tau}:{iters}", x), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_geomed(seed):
    x = _inputs(seed)
    expected = byz.GeometricMedian(nu=1e-9, T=300)(x.astype(np.float64))
    np.testing.assert_allclose(_run("geomed:500", x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("f", [1, 2, 3])
def test_nnm_then_rule(seed, f):
    x = _inputs(seed)
    mixed = byz.NNM(f=f)(x.astype(np.float64))
    _close(_run(f"nnm+krum:{f}", x), byz.Krum(f=f + 1)(mixed))
    _close(_run(f"nnm:{f}+median", x), byz.Median()(mixed))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("c", [0.5, 3.0, 30.0])
def test_norm_bound(seed, c):
    x = _inputs(seed)
    clipped = byz.Clipping(c=c)(x.astype(np.float64))
    mine = x.copy()
    robust.norm_bound(mine, c)
    _close(mine, clipped)
    # the streaming (fedavg) and the buffered (median) paths clip the same way
    _close(_run(f"norm_bound:{c}", x), clipped.mean(axis=0))
    _close(_run(f"norm_bound:{c}+median", x), np.median(clipped, axis=0))
