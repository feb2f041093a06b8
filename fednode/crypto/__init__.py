"""Node identity (:mod:`.identity`: Ed25519 keys, key files, libp2p peer ids) and signed
envelopes (:mod:`.envelope`: sealing and opening frames, membership, replay window).

Secure aggregation (SecAgg+, sans-IO): :mod:`.secagg` (member), :mod:`.secagg_server`
(aggregator), :mod:`.secagg_messages`, :mod:`.masking`, :mod:`.shamir`,
:mod:`.fixedpoint`. Not yet driven by the roles.
"""
