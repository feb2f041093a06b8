"""Simulation: N nodes in one trio run over the memory transport; topologies and analysis."""
