#!/usr/bin/env bash
# Would a compiled hot path make the simulator fast enough? (issue 8, the 10,000-peer run)
#
# Copies HEAD into a scratch directory, compiles the simulator's hot modules there with
# mypyc (ships with mypy; needs gcc and the Python headers), and runs one sim_scale.py
# case on this tree and on the compiled copy, interleaved, printing the CPU and wall
# ratios. Nothing in the project uses the compiled copy; it is removed afterwards.
#
#     scripts/bench/compiled_probe.sh                       # gossip:10000:12:2, ~6 min
#     scripts/bench/compiled_probe.sh gossip:1000:30:1
#
# The modules are those on the per-message path of synchronous gossip, unchanged;
# sim/metrics.py stays interpreted (ExperimentResult, an interpreted class, inherits
# from its RoundTable, and mypyc forbids that).
source "$(dirname "$0")/../_env.sh"
case_="${1:-gossip:10000:12:2}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
git archive HEAD | tar -x -C "$scratch"
modules=(fednode/sim/des.py fednode/loop.py fednode/crypto/unsigned.py fednode/gossip/peer.py
    fednode/gossip/sync.py fednode/gossip/links.py fednode/gossip/states.py
    fednode/actions.py fednode/wire/tensors.py fednode/wire/codecs.py)
echo "compiling ${#modules[@]} modules with mypyc in $scratch (~4 min on 2 cores) ..." >&2
(cd "$scratch" && mypyc "${modules[@]}" >build.log 2>&1) || {
    tail -20 "$scratch/build.log" >&2
    exit 1
}
echo "the summary line reads: compiled copy -> this tree; a ratio below 1x: compiled is faster" >&2
python scripts/bench/sim_scale.py --only "$case_" --baseline "$scratch"
