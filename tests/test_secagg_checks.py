"""Secure aggregation refuses what breaks the protocol: forged or wrong-round messages,
shares to non-neighbours, wrong lengths, the "came back" member, asking twice. Each
refusal is a typed error and leaves the state as it was (the round still completes)."""

from dataclasses import replace

import numpy as np
import pytest

from fednode.crypto import shamir
from fednode.crypto.secagg import SecAggClient
from fednode.crypto.secagg_messages import UnmaskRequest
from fednode.crypto.secagg_server import SecAggServer
from fednode.errors import (
    AuthError,
    ConfigError,
    LocalProtocolError,
    PayloadError,
    RemoteProtocolError,
    SecAggAborted,
)
from fednode.testing.secagg_round import identities, make_params

DIM = 16


class Round:
    """A SecAgg+ round (n=10, k=4, t=3) driven by hand, stage by stage."""

    def __init__(self, n=10, k=4, t=3):
        self.ids = identities(n, b"checks")
        self.params = make_params(self.ids, threshold=t, neighbours=k, dim=DIM)
        self.members = self.params.members
        self.clients = {m: SecAggClient(self.params, self.ids[m]) for m in self.members}
        self.server = SecAggServer(self.params)
        rng = np.random.default_rng(7)
        self.x = {m: rng.uniform(-1, 1, DIM) for m in self.members}
        self.adv = {m: c.advertise() for m, c in self.clients.items()}

    def advertise(self):
        for msg in self.adv.values():
            self.server.receive_advertise(msg)
        self.keys = self.server.close_advertise()

    def share(self):
        self.advertise()
        self.shares = {m: self.clients[m].share_keys(k) for m, k in self.keys.items()}
        for msg in self.shares.values():
            self.server.receive_shares(msg)
        self.inbox = self.server.close_shares()

    def mask(self, skip=()):
        self.share()
        self.masked = {m: self.clients[m].masked_input(s, self.x[m]) for m, s in self.inbox.items()}
        for m, msg in self.masked.items():
            if m not in skip:
                self.server.receive_masked(msg)
        self.request = self.server.close_masked()

    def finish(self):
        for m in self.request.survivors:
            self.server.receive_unmask(self.clients[m].unmask(self.request))
        return self.server.finish()

    def expected(self, skip=()):
        enc = self.params.encoding
        return sum(enc.quantise(self.x[m])[0] for m in self.members if m not in skip)


def other_neighbour_pair(r):
    me = r.members[0]
    far = next(m for m in r.members if m != me and m not in r.clients[me].neighbours)
    return me, far


# --------------------------------------------------------------------------- stage 0
def test_forged_advertisement_is_refused_and_the_round_goes_on():
    r = Round()
    m0, m1 = r.members[:2]
    forged = replace(r.adv[m0], signature=r.ids[m1].sign(r.adv[m0].payload()))
    with pytest.raises(AuthError) as info:
        r.server.receive_advertise(forged)
    assert info.value.peer == m0
    r.mask()
    assert np.array_equal(r.finish().total_int, r.expected())


def test_wrong_round_advertisement_is_refused_even_if_correctly_signed():
    r = Round()
    m0 = r.members[0]
    msg = replace(r.adv[m0], round=r.params.round + 1)
    msg = replace(msg, signature=r.ids[m0].sign(msg.payload()))
    with pytest.raises(RemoteProtocolError, match="round"):
        r.server.receive_advertise(msg)


def test_repeated_and_short_keys_are_refused():
    r = Round()
    m0 = r.members[0]
    r.server.receive_advertise(r.adv[m0])
    with pytest.raises(RemoteProtocolError, match="twice"):
        r.server.receive_advertise(r.adv[m0])
    with pytest.raises(PayloadError):
        r.server.receive_advertise(replace(r.adv[r.members[1]], mask_pk=b"x" * 31))


def test_client_refuses_forged_keys_of_a_neighbour():
    r = Round()
    r.advertise()
    me = r.members[0]
    msg = r.keys[me]
    bad = replace(msg.keys[0], mask_pk=bytes(32))  # signature no longer matches
    with pytest.raises(AuthError):
        r.clients[me].share_keys(replace(msg, keys=(bad, *msg.keys[1:])))
    r.clients[me].share_keys(msg)  # state unchanged: the genuine message still works


def test_client_refuses_keys_of_a_non_neighbour():
    r = Round()
    r.advertise()
    me, far = other_neighbour_pair(r)
    msg = r.keys[me]
    with pytest.raises(RemoteProtocolError, match="not a neighbour"):
        r.clients[me].share_keys(replace(msg, keys=(*msg.keys, r.adv[far])))


# --------------------------------------------------------------------------- stage 1
def test_server_refuses_a_share_to_a_non_neighbour():
    r = Round()
    r.advertise()
    me, far = other_neighbour_pair(r)
    msg = r.clients[me].share_keys(r.keys[me])
    share = replace(msg.shares[0], receiver=far)
    share = replace(share, signature=r.ids[me].sign(share.payload()))
    with pytest.raises(RemoteProtocolError, match="not a neighbour"):
        r.server.receive_shares(replace(msg, shares=(share, *msg.shares[1:])))
    r.server.receive_shares(msg)


def test_server_refuses_truncated_ciphertext_and_missing_holders():
    r = Round()
    r.advertise()
    me = r.members[0]
    msg = r.clients[me].share_keys(r.keys[me])
    short = replace(msg.shares[0], ciphertext=msg.shares[0].ciphertext[:-1])
    with pytest.raises(PayloadError):
        r.server.receive_shares(replace(msg, shares=(short, *msg.shares[1:])))
    with pytest.raises(RemoteProtocolError, match="holders"):
        r.server.receive_shares(replace(msg, shares=msg.shares[1:]))


def test_client_refuses_a_share_that_does_not_decrypt():
    r = Round()
    r.share()
    me = r.members[0]
    msg = r.inbox[me]
    theirs = next(s for s in msg.shares if s.sender != me)
    ct = bytearray(theirs.ciphertext)
    ct[-1] ^= 1
    bad = replace(theirs, ciphertext=bytes(ct))
    bad = replace(bad, signature=r.ids[theirs.sender].sign(bad.payload()))  # signed, but broken box
    tampered = replace(msg, shares=tuple(bad if s is theirs else s for s in msg.shares))
    with pytest.raises(AuthError, match="decrypt"):
        r.clients[me].masked_input(tampered, r.x[me])
    r.clients[me].masked_input(msg, r.x[me])


def test_client_input_of_the_wrong_shape_is_refused():
    r = Round()
    r.share()
    me = r.members[0]
    with pytest.raises(PayloadError):
        r.clients[me].masked_input(r.inbox[me], np.zeros(DIM + 1))


# --------------------------------------------------------------------------- stage 2
def test_server_refuses_bad_masked_inputs_without_changing_the_sum():
    r = Round()
    r.share()
    m0, m1 = r.members[:2]
    good = r.clients[m0].masked_input(r.inbox[m0], r.x[m0])
    with pytest.raises(PayloadError):
        r.server.receive_masked(replace(good, data=good.data[:-1]))
    flipped = bytearray(good.data)
    flipped[0] ^= 1
    with pytest.raises(AuthError):
        r.server.receive_masked(replace(good, data=bytes(flipped)))
    wrong_round = replace(good, round=99)
    wrong_round = replace(wrong_round, signature=r.ids[m0].sign(wrong_round.payload()))
    with pytest.raises(RemoteProtocolError, match="round"):
        r.server.receive_masked(wrong_round)
    with pytest.raises(AuthError):
        r.server.receive_masked(replace(good, sender=m1))
    r.server.receive_masked(good)
    with pytest.raises(RemoteProtocolError, match="twice"):
        r.server.receive_masked(good)
    for m in r.members[1:]:
        r.server.receive_masked(r.clients[m].masked_input(r.inbox[m], r.x[m]))
    r.request = r.server.close_masked()
    assert np.array_equal(r.finish().total_int, r.expected())


# --------------------------------------------------------------------------- came back
def test_member_that_comes_back_after_the_dropout_list_cannot_get_both_secrets_revealed():
    r = Round()
    late = r.members[3]
    r.mask(skip={late})
    assert late in r.request.dropped and late not in r.request.survivors
    # its masked input arrives late: the server refuses it
    with pytest.raises(RemoteProtocolError, match="closed"):
        r.server.receive_masked(r.masked[late])
    # the member itself refuses a request that calls it dropped
    with pytest.raises(RemoteProtocolError, match="survivor"):
        r.clients[late].unmask(r.request)
    replies = {m: r.clients[m].unmask(r.request) for m in r.request.survivors}
    assert not any(o == late for rep in replies.values() for o, _ in rep.seed_shares)
    assert any(o == late for rep in replies.values() for o, _ in rep.key_shares)
    for rep in replies.values():
        r.server.receive_unmask(rep)
    assert np.array_equal(r.server.finish().total_int, r.expected(skip={late}))


def test_client_refuses_a_request_naming_one_member_survivor_and_dropped():
    r = Round()
    r.mask(skip={r.members[3]})
    me = r.members[0]
    both = UnmaskRequest(r.params.round, (*r.request.survivors, r.members[3]), r.request.dropped)
    with pytest.raises(RemoteProtocolError, match="survivor and dropped"):
        r.clients[me].unmask(both)
    r.clients[me].unmask(r.request)  # the honest request is still answered, once
    with pytest.raises(RemoteProtocolError, match="twice"):
        r.clients[me].unmask(r.request)


def test_client_refuses_to_unmask_with_fewer_than_t_survivors():
    r = Round()
    r.mask()
    me = r.members[0]
    with pytest.raises(SecAggAborted):
        r.clients[me].unmask(UnmaskRequest(r.params.round, (me, r.members[1]), ()))


def test_server_refuses_a_key_share_of_a_survivor():
    r = Round()
    r.mask()
    me = r.members[0]
    reply = r.clients[me].unmask(r.request)
    owner, data = reply.seed_shares[0]
    bad = replace(reply, key_shares=((owner, data),))
    bad = replace(bad, signature=r.ids[me].sign(bad.payload()))
    with pytest.raises(RemoteProtocolError, match="may not send"):
        r.server.receive_unmask(bad)
    r.server.receive_unmask(reply)


def test_a_wrong_key_share_aborts_instead_of_releasing_a_wrong_sum():
    r = Round()
    dropped = r.members[2]
    r.mask(skip={dropped})
    holders = sorted(r.server.holders(dropped) & set(r.request.survivors))
    liar = holders[0]
    for m in r.request.survivors:
        reply = r.clients[m].unmask(r.request)
        if m == liar:
            keys = tuple(
                (o, shamir.share_to_bytes(np.ones(5, dtype=np.uint64)) if o == dropped else d)
                for o, d in reply.key_shares
            )
            reply = replace(reply, key_shares=keys)
            reply = replace(reply, signature=r.ids[m].sign(reply.payload()))
        r.server.receive_unmask(reply)
    with pytest.raises(SecAggAborted, match=r"does not match|do not reconstruct"):
        r.server.finish()


# --------------------------------------------------------------------------- misuse
def test_out_of_order_calls_are_local_protocol_errors():
    r = Round()
    with pytest.raises(LocalProtocolError):
        r.server.close_shares()
    with pytest.raises(LocalProtocolError):
        r.clients[r.members[0]].advertise()  # already advertised


def test_parameters_are_checked_naming_the_field():
    ids = identities(5)
    with pytest.raises(ConfigError) as info:
        make_params(ids, threshold=6, neighbours=4, dim=4)
    assert info.value.field == "secagg.threshold"
    params = make_params(ids, threshold=3, neighbours=4, dim=4)
    stranger = next(iter(identities(1, b"stranger").values()))
    with pytest.raises(ConfigError):
        SecAggClient(params, stranger)


def test_every_message_is_plain_cbor_field_for_field():
    """The messages map 1:1 onto CBOR arrays of ints, strings and bytes (nothing pickled):
    a round trip through cbor2 gives back the same fields."""
    import cbor2

    from fednode.crypto.secagg_messages import to_cbor, wire_size

    r = Round()
    r.mask()
    reply = r.clients[r.members[0]].unmask(r.request)
    me = r.members[0]
    for msg in (r.adv[me], r.keys[me], r.shares[me], r.inbox[me], r.masked[me], r.request, reply):
        fields = to_cbor(msg)
        raw = cbor2.dumps(fields)
        assert len(raw) == wire_size(msg)
        back = cbor2.loads(raw)

        def plain(v):
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        assert back == plain(fields)
