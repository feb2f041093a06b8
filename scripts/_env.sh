# Sourced by scripts/demo and scripts/test: make .venv exist and match pyproject.toml.
# The venv is rebuilt when pyproject.toml or this script changes (hash stamp), so a fresh
# clone needs nothing but Python 3.11 and these scripts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.fednode-stamp"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/_env.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "fednode: preparing $VENV (first run, pyproject.toml or _env.sh changed) ..." >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    # torch is pinned to 2.13.0 in pyproject.toml: pip resolves that to the local CPU wheel.
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test,flower]" >&2
    # byzfl (tests/test_robust_byzfl.py cross-checks the rules against it) without its
    # dependencies: they pull torchvision and a CUDA torch (GBs). Its aggregators need
    # only numpy, torch and scipy, which the project's own dependencies bring.
    "$VENV/bin/python" -m pip install --quiet --no-deps "byzfl==0.0.11" >&2
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export FLWR_TELEMETRY_ENABLED=0  # flwr (the [flower] extra) sends no telemetry from tests
cd "$ROOT"
