"""Scatter-gather payloads: the sealer frames a vector without copying it, the bytes on
the wire stay the same, and every consumer of a frame sees the same payload."""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

import numpy as np
import pytest
import trio

from fednode.crypto import envelope
from fednode.crypto.envelope import Membership, Receiver, Sealer, digest
from fednode.crypto.identity import Identity
from fednode.errors import PayloadError
from fednode.p2p.memory import MemoryNetwork
from fednode.wire import messages as m
from fednode.wire.codecs import RawCodec, parse_codec
from fednode.wire.frames import Frame, Inbound
from fednode.wire.tensors import all_finite

N = 1000
A, B, C = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
T0 = 1_800_000_000.0


def vector(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def sealer() -> Sealer:
    counter = itertools.count()
    return Sealer(A, clock=lambda: T0, nonce=lambda n: next(counter).to_bytes(n, "big"))


def receiver(peer: Identity = B) -> Receiver:
    members = Membership(frozenset({A.peer_id}))
    return Receiver(peer.peer_id, members, model_size=N, clock=lambda: T0)


@pytest.mark.parametrize(
    "spec", ["none", "fp16", "int8", "topk:0.05+int8", "topk:0.05", "none+zstd", "int8+zstd"]
)
def test_encode_parts_are_the_encoded_bytes_in_pieces(spec: str) -> None:
    x = vector()
    parts = parse_codec(spec, seed=0).encode_parts(x)
    assert b"".join(parts) == parse_codec(spec, seed=0).encode(x)


def test_codec_none_frames_the_vector_itself() -> None:
    x = vector()
    header, body = RawCodec().encode_parts(x)
    assert len(header) == 8
    assert np.shares_memory(np.frombuffer(body, np.uint8), x)


def test_sealed_vector_is_not_copied_and_the_wire_bytes_are_unchanged() -> None:
    x = vector()
    framed = sealer().seal(m.Update(recipient=B.peer_id, vector=x))
    joined = sealer().seal(m.Update(recipient=B.peer_id, payload=RawCodec().encode(x)))
    assert np.shares_memory(np.frombuffer(framed.parts[-1], np.uint8), x)
    assert framed.head == joined.head  # same length, digest, nonce, time: same signed header
    assert b"".join(framed.parts) == bytes(joined.payload)
    assert framed.nbytes == joined.nbytes == len(joined.head) + 8 + 4 * N
    assert digest(tuple(framed.parts)) == digest(bytes(joined.payload))


def test_a_frame_in_parts_opens_as_sent_and_as_a_network_receiver_gets_it() -> None:
    x = vector(1)
    frame = sealer().seal(m.Update(recipient=B.peer_id, vector=x))
    in_process = receiver().open(Inbound(A.peer_id, frame))
    network = receiver().open(Inbound(A.peer_id, Frame(frame.head, b"".join(frame.parts))))
    for msg in (in_process, network):
        np.testing.assert_array_equal(msg.vector, x)
        assert len(msg.payload) == 8 + 4 * N  # one buffer, counted in bytes


def test_a_tampered_part_fails_the_digest() -> None:
    frame = sealer().seal(m.Update(recipient=B.peer_id, vector=vector()))
    header, body = frame.parts
    spoiled = bytearray(body)
    spoiled[123] ^= 1
    rx = receiver()
    with pytest.raises(PayloadError, match="digest"):
        rx.open(Inbound(A.peer_id, Frame(frame.head, (header, spoiled))))
    assert rx.accepted == 0 and len(rx.replay) == 0


def test_seal_for_a_recipient_equals_sealing_a_copy_addressed_to_it() -> None:
    msg = m.Update(num_examples=5, metrics={"loss": 0.25}, vector=vector())
    direct = sealer().seal(msg, C.peer_id)
    copied = sealer().seal(dataclasses.replace(msg, recipient=C.peer_id))
    assert direct.head == copied.head and direct.parts == copied.parts


def test_a_broadcast_hashes_its_payload_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = envelope._digest_views
    monkeypatch.setattr(envelope, "_digest_views", lambda p: calls.append(1) or real(p))
    fit = m.Fit(payload=RawCodec().encode(vector(2)), config={"lr": 0.1})
    s = sealer()
    frames = {peer: s.seal(fit, peer.peer_id) for peer in (B, C)}
    assert len(calls) == 1
    for peer, frame in frames.items():
        got = receiver(peer).open(Inbound(A.peer_id, frame))
        assert got.recipient == peer.peer_id
        np.testing.assert_array_equal(got.vector, vector(2))


def test_frame_payload_joins_parts_once_and_counts_bytes() -> None:
    floats = memoryview(np.arange(4, dtype=np.float32))
    frame = Frame(b"head", (b"ab", floats))
    assert frame.payload_len == 18 and frame.nbytes == 22
    assert [len(p) for p in frame.parts] == [2, 16]
    assert frame.payload == b"ab" + floats.tobytes()
    assert frame.payload is frame.payload  # joined once
    assert frame == Frame(b"head", b"ab" + floats.tobytes())
    with pytest.raises(AttributeError):
        frame.head = b"other"  # type: ignore[misc]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 1, 7, 8, 15, 16, 50_001, 99_997, 99_998, 99_999])
def test_all_finite_finds_any_nan_or_inf(dtype: Any, bad: float, where: int) -> None:
    x = np.ones(100_000, dtype=dtype)
    x[where] = bad
    assert not all_finite(x)


def test_all_finite_accepts_finite_values_whose_squares_overflow() -> None:
    big = np.full(1 << 17, 3e38, dtype=np.float32)  # the sum of squares is inf: exact check
    assert all_finite(big)
    assert all_finite(np.zeros(0, np.float32)) and all_finite(vector())
    assert not all_finite(np.array([1.0, np.inf], np.float32))  # small: the exact check
    assert not all_finite(np.append(big, np.float32(np.nan)))


async def test_memory_send_nowait_delivers_or_does_nothing() -> None:
    net = MemoryNetwork(buffer=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        a, b = net.attach(A.peer_id), net.attach(B.peer_id)
        assert a.send_nowait(B.peer_id, Frame(b"1", b"x"))
        assert not a.send_nowait(B.peer_id, Frame(b"2", b"y"))  # inbox full
        assert (net.sent_frames, net.sent_bytes) == (1, 2)  # the refusal counted nothing
        assert (await b.incoming.receive()).frame.head == b"1"
        assert a.send_nowait(B.peer_id, Frame(b"3", (b"z", b"w")))
        assert (await b.incoming.receive()).frame.payload == b"zw"
        nursery.cancel_scope.cancel()


@pytest.mark.net
async def test_libp2p_writes_the_parts_in_order() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from fednode.p2p.libp2p_host import Libp2pTransport

    def key(n: int) -> Any:
        return create_new_key_pair(n.to_bytes(32, "big"))

    a, b = Libp2pTransport(key(11)), Libp2pTransport(key(12))
    head = m.frame_head(b"\xa1\x61k\x03", bytes(64))
    big = np.frombuffer(os.urandom(3_000_000), dtype=np.float32)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            for t in (a, b):
                await nursery.start(t.run)
            await a.connect(b.local_peer, b.addresses())
            for parts in ((b"12345678", b"small"), (b"12345678", memoryview(big))):
                async with trio.open_nursery() as sending:
                    sending.start_soon(a.send, b.local_peer, Frame(head, parts))
                    inbound = await b.incoming.receive()
                assert bytes(inbound.frame.payload) == b"".join(bytes(p) for p in parts)
        nursery.cancel_scope.cancel()
