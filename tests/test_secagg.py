"""Secure aggregation rounds: the unmasked sum is exact under dropouts at every stage,
too many dropouts abort with no sum, masks are ChaCha20 streams and look uniform."""

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from scipy.stats import chi2

from fednode.crypto.masking import neighbours, ring_order
from fednode.errors import RoundFailed, SecAggAborted
from fednode.testing.secagg_round import STAGES, RoundStats, identities, make_params, run_round

DIM = 40
CLASSIC = {"n": 7, "k": 6, "t": 4}  # k = n - 1: Bonawitz et al.; tolerates n - t = 3
PLUS = {"n": 12, "k": 4, "t": 3}  # 5 holders per member: any k + 1 - t = 2 may drop


def _setup(n, k, t, dim=DIM, **kw):
    members = identities(n)
    params = make_params(members, threshold=t, neighbours=k, dim=dim, **kw)
    rng = np.random.default_rng(n * 1000 + k)
    inputs = {m: rng.uniform(-1.2, 1.2, dim) for m in params.members}  # some get clipped
    return params, members, inputs


def _plain_sum(params, inputs, included):
    return sum(params.encoding.quantise(inputs[m])[0] for m in included)


def _check(params, members, inputs, drops):
    result = run_round(params, members, inputs, drops)
    masked_in = [
        m for m in params.members if m not in drops or STAGES.index(drops[m]) > STAGES.index("mask")
    ]
    assert result.survivors == tuple(masked_in)
    assert np.array_equal(result.total_int, _plain_sum(params, inputs, masked_in))
    assert np.array_equal(result.total, result.total_int * params.encoding.quantum)
    return result


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("dropouts", ["none", "one", "n-t"])
def test_classic_sum_is_exact_with_dropouts_at_each_stage(stage, dropouts):
    n, t = CLASSIC["n"], CLASSIC["t"]
    params, members, inputs = _setup(**CLASSIC)
    count = {"none": 0, "one": 1, "n-t": n - t}[dropouts]
    drops = {m: stage for m in params.members[:count]}
    _check(params, members, inputs, drops)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("count", [0, 1, 2])
def test_secagg_plus_sum_is_exact_with_up_to_k_plus_1_minus_t_dropouts_at_each_stage(stage, count):
    params, members, inputs = _setup(**PLUS)
    ring = ring_order(params.members, params.round_seed)
    drops = {m: stage for m in ring[:count]}  # ring neighbours: the worst placement
    _check(params, members, inputs, drops)


@pytest.mark.parametrize("stage", STAGES)
def test_secagg_plus_survives_more_dropouts_spread_over_the_ring(stage):
    """Every 3rd member on the ring (4 of 12) drops: each 5-member neighbourhood keeps
    3 = t holders, so the round completes though 4 > k + 1 - t."""
    params, members, inputs = _setup(**PLUS)
    ring = ring_order(params.members, params.round_seed)
    _check(params, members, inputs, {m: stage for m in ring[::3]})


def test_mixed_dropouts_across_stages():
    params, members, inputs = _setup(n=9, k=8, t=4)
    drops = dict(zip(params.members[:5], ["advertise", "share", "mask", "unmask", "unmask"]))
    _check(params, members, inputs, drops)


@pytest.mark.parametrize("stage", STAGES)
def test_classic_more_than_n_minus_t_dropouts_abort_with_no_sum(stage):
    n, t = CLASSIC["n"], CLASSIC["t"]
    params, members, inputs = _setup(**CLASSIC)
    drops = {m: stage for m in params.members[: n - t + 1]}
    stats = RoundStats()
    with pytest.raises(SecAggAborted) as info:
        run_round(params, members, inputs, drops, stats)
    assert isinstance(info.value, RoundFailed)
    server = stats.server
    with pytest.raises(SecAggAborted):  # stays aborted: nothing released later
        server.finish()


def test_secagg_plus_aborts_when_a_neighbourhood_loses_too_many():
    params, members, inputs = _setup(**PLUS)
    ring = ring_order(params.members, params.round_seed)
    drops = {m: "unmask" for m in ring[:3]}  # ring[1]'s 5 holders keep only 2 < t
    with pytest.raises(SecAggAborted, match="shares of"):
        run_round(params, members, inputs, drops)


def test_classic_neighbourhood_is_everyone_and_plus_is_k_regular():
    params, _, _ = _setup(**CLASSIC)
    graph = neighbours(params.members, params.round_seed, 6)
    assert all(len(v) == 6 for v in graph.values())
    plus, _, _ = _setup(**PLUS)
    graph = neighbours(plus.members, plus.round_seed, 4)
    assert all(len(v) == 4 and m not in v for m, v in graph.items())
    assert all(m in graph[v] for m, vs in graph.items() for v in vs)  # symmetric


def test_sums_beyond_eight_are_exact_over_20_members():
    members = identities(20)
    params = make_params(members, threshold=5, neighbours=6, dim=8, clip=50.0, frac_bits=24)
    inputs = {m: np.full(8, 49.5) for m in params.members}
    result = run_round(params, members, inputs)
    assert result.total.tolist() == [20 * 49.5] * 8


# --------------------------------------------------------------------------- the masks
def _hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _chacha_u64(key, dim):
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * dim)), dtype="<u8").astype(np.uint64)


def _idb(peer):
    return len(peer.encode()).to_bytes(2, "big") + peer.encode()


def test_masked_input_is_encoding_plus_chacha20_masks_from_the_documented_derivation():
    import nacl.bindings

    params, members, inputs = _setup(n=6, k=4, t=3)
    stats = RoundStats()
    run_round(params, members, inputs, {}, stats)
    me = params.members[2]
    client = stats.clients[me]
    enc = params.encoding
    r = params.round.to_bytes(8, "big")
    want = enc.encode(inputs[me])[0]
    want = want + _chacha_u64(
        _hkdf(client._b, params.round_seed, b"fednode-secagg-v1 self-mask " + r + _idb(me)), DIM
    )
    for v in client.neighbours:
        shared = nacl.bindings.crypto_scalarmult(
            bytes(client._mask_sk), stats.sent[v]["advertise"].mask_pk
        )
        lo, hi = sorted((me, v))
        info = b"fednode-secagg-v1 pair-mask " + r + _idb(lo) + _idb(hi)
        m = _chacha_u64(_hkdf(shared, params.round_seed, info), DIM)
        want = want + m if me < v else want - m
    got = enc.from_bytes(stats.sent[me]["mask"].data, DIM)
    assert np.array_equal(got, want & enc.mask)


def test_numpy_random_generators_are_never_called(monkeypatch):
    params, members, inputs = _setup(**PLUS)

    def boom(*a, **k):
        raise AssertionError("numpy's random generator was called")

    for name in [
        "default_rng",
        "RandomState",
        "Generator",
        "seed",
        "bytes",
        "randint",
        "random",
        "rand",
        "integers",
        "SeedSequence",
        "PCG64",
        "MT19937",
    ]:
        if hasattr(np.random, name):
            monkeypatch.setattr(np.random, name, boom)
    result = run_round(params, members, inputs, {params.members[0]: "mask"})
    assert result.dropped == (params.members[0],)


def test_one_masked_update_is_uniform_bytes_by_chi_square():
    """An all-zero input (the most structured there is) masked: the byte histogram of
    the masked vector passes chi-square at p = 1e-6; the same test on the unmasked
    encoding of a real update fails it, so the test can tell."""
    params, members, _ = _setup(n=5, k=4, t=3, dim=16384)
    zeros = {m: np.zeros(params.dim) for m in params.members}
    stats = RoundStats()
    run_round(params, members, zeros, {}, stats)
    data = stats.sent[params.members[0]]["mask"].data
    limit = chi2.isf(1e-6, 255)

    def stat(raw):
        counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256)
        expected = len(raw) / 256
        return float(((counts - expected) ** 2 / expected).sum())

    assert stat(data) < limit
    plain = params.encoding.to_bytes(
        params.encoding.encode(np.random.default_rng(1).normal(0, 0.1, params.dim))[0]
    )
    assert stat(plain) > limit
