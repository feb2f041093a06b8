"""The simulator: run federations of 10s to 10,000s of nodes in one process, in virtual time.

Two drivers run the *same* node loop (:class:`fednode.loop.NodeLoop`) around the same
role objects a deployed node runs, with every frame signed and verified by default:

* :class:`DesSimulation` (:mod:`fednode.sim.des`) — a discrete-event driver in plain
  Python: one queue of timed events; ``unsigned=True`` swaps in the unsigned pair of
  :mod:`fednode.crypto.unsigned` for very large runs; :func:`run_experiment` can shard it
  across worker processes.
* :class:`Simulation` (:mod:`fednode.sim.engine`) — every node under the real trio runner
  over the memory transport: the fidelity reference.

Experiments: :func:`run_experiment` takes a topology spec (``topologies/*.toml``: graph,
roles, links, ``[[faults]]``) and returns an :class:`ExperimentResult` of numpy arrays
(``.to_pandas()`` when pandas is installed); :func:`compare` plots several on shared
axes. Spectral helpers predict how fast gossip mixes on a graph. ``docs/SIMULATION.md``
is the guide.
"""

from .des import DesSimulation
from .engine import RunResult, Simulation
from .experiment import ExperimentResult, SimOptions, run_experiment
from .faults import FaultSchedule
from .report import compare, write_folder
from .spectral import (
    metropolis_hastings_sparse,
    metropolis_hastings_weights,
    mixing_rho,
    mixing_time,
    predicted_iterations,
    spectral_summary,
)
from .topology import Topology, build_topology, list_topologies, load_topology

__all__ = [
    "DesSimulation",
    "ExperimentResult",
    "FaultSchedule",
    "RunResult",
    "SimOptions",
    "Simulation",
    "Topology",
    "build_topology",
    "compare",
    "list_topologies",
    "load_topology",
    "metropolis_hastings_sparse",
    "metropolis_hastings_weights",
    "mixing_rho",
    "mixing_time",
    "predicted_iterations",
    "run_experiment",
    "spectral_summary",
    "write_folder",
]
