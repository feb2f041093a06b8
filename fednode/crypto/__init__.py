"""Node identity, signed envelopes, secure aggregation and differential privacy."""
