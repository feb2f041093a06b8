"""Node identity (:mod:`.identity`: Ed25519 keys, key files, libp2p peer ids) and signed
envelopes (:mod:`.envelope`: sealing and opening frames, membership, replay window).

Secure aggregation and differential privacy are not implemented.
"""
