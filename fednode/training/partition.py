"""Split a labelled dataset among clients: IID, Dirichlet(alpha) label skew, k shards each,
or a feature shift (``rotated:<k>``, ``permuted:<k>``).

All schemes are seeded and reproducible: the same (labels, num_clients, spec, seed) gives
the same partition on every machine, so client ``i`` of ``n`` can compute its own share
without talking to anyone.

Feature shift (the setting FedBN was made for): the labels are split IID, and the clients
form ``k`` groups (client ``i`` is in group ``i % k``) that see differently transformed
inputs, :func:`shift_features`. ``rotated:<k>`` (k in 1..8) turns square images by the
k first of the eight symmetries of the square (0, 90, 180, 270 degrees, then the same
after a transpose); ``permuted:<k>`` (k >= 1) shuffles the features with one fixed
permutation per group, drawn from the seed (group 0 keeps the identity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

SCHEMES = (
    "'iid', 'dirichlet:<alpha>' (alpha > 0), 'shards:<k>' (k >= 1), 'rotated:<k>' "
    "(1 <= k <= 8) or 'permuted:<k>' (k >= 1)"
)
#: feature-shift schemes: IID labels, k groups of clients with differently transformed inputs
SHIFTS = ("rotated", "permuted")
MAX_ROTATIONS = 8


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    scheme: str
    param: float = 0.0

    def __str__(self) -> str:
        if self.scheme == "iid":
            return "iid"
        if self.scheme in ("shards", *SHIFTS):
            return f"{self.scheme}:{int(self.param)}"
        return f"{self.scheme}:{self.param:g}"


def parse_partition(spec: str) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:0.5``, ``shards:2``, ``rotated:4`` or ``permuted:4``;
    ConfigError('data.partition') if bad."""
    scheme, _, arg = spec.strip().partition(":")
    try:
        if scheme == "iid" and not arg:
            return PartitionSpec("iid")
        if scheme == "dirichlet":
            alpha = float(arg)
            if alpha > 0 and np.isfinite(alpha):
                return PartitionSpec("dirichlet", alpha)
        if scheme == "shards":
            k = int(arg)
            if k >= 1:
                return PartitionSpec("shards", float(k))
        if scheme in SHIFTS:
            k = int(arg)
            if k >= 1 and (scheme != "rotated" or k <= MAX_ROTATIONS):
                return PartitionSpec(scheme, float(k))
    except ValueError:
        pass
    raise ConfigError("data.partition", spec, SCHEMES)


def partition_indices(
    labels: np.ndarray, num_clients: int, spec: PartitionSpec | str, seed: int = 0
) -> list[np.ndarray]:
    """Sample indices for every client. Every sample goes to exactly one client.

    Dirichlet follows Hsu et al. 2019 ("Measuring the effects of non-identical data
    distribution"): for each class, client shares ~ Dir(alpha); resampled (bounded) until
    every client holds at least one sample. Shards follows McMahan et al. 2017: sort by
    label, cut into ``num_clients * k`` shards, deal ``k`` shards to each client.
    """
    if isinstance(spec, str):
        spec = parse_partition(spec)
    n = len(labels)
    if num_clients < 1 or num_clients > n:
        raise ConfigError("data.num_clients", num_clients, f"an integer in [1, {n}]")
    rng = np.random.default_rng(seed)
    if spec.scheme == "iid" or spec.scheme in SHIFTS:  # a feature shift splits labels IID
        perm = rng.permutation(n)
        return [np.sort(part) for part in np.array_split(perm, num_clients)]
    if spec.scheme == "shards":
        k = int(spec.param)
        num_shards = num_clients * k
        if num_shards > n:
            raise ConfigError("data.partition", str(spec), f"at most {n} shards in all")
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, num_shards)
        deal = rng.permutation(num_shards).reshape(num_clients, k)
        return [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]
    classes = np.unique(labels)
    for _attempt in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, spec.param))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(r) for r in result) >= 1:
            return result
    raise ConfigError(
        "data.partition",
        str(spec),
        f"an alpha large enough that each of {num_clients} clients gets data (100 draws failed)",
    )


def shift_features(
    x: np.ndarray, spec: PartitionSpec | str, client_index: int, seed: int = 0
) -> np.ndarray:
    """The inputs ``x`` (samples x features) as client ``client_index`` sees them under a
    feature-shift scheme (a new array); ``x`` itself for every other scheme.

    ``rotated``: the features must form a square image (64 = 8 x 8); group ``g`` applies
    symmetry ``g`` of the square (``g % 4`` quarter turns, transposed first when ``g >= 4``).
    ``permuted``: group ``g > 0`` applies the permutation drawn from ``(seed, g)``.
    Errors: ConfigError('data.partition') for ``rotated`` on non-square inputs.
    """
    if isinstance(spec, str):
        spec = parse_partition(spec)
    if spec.scheme not in SHIFTS:
        return x
    group = client_index % int(spec.param)
    if group == 0:
        return x
    dim = x.shape[1]
    if spec.scheme == "permuted":
        perm = np.random.default_rng((seed, group, 0x9E4)).permutation(dim)
        return np.ascontiguousarray(x[:, perm])
    side = round(dim**0.5)
    if side * side != dim:
        raise ConfigError("data.partition", str(spec), f"square image inputs (got {dim} features)")
    img = x.reshape(-1, side, side)
    if group >= 4:
        img = img.transpose(0, 2, 1)
    img = np.rot90(img, k=group % 4, axes=(1, 2))
    return np.ascontiguousarray(img.reshape(-1, dim))
