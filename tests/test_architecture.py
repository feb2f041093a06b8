"""Architecture rules that keep the design honest."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "fednode"
PURE = [
    "wire",
    "hierarchy",
    "gossip",
    "crypto",
    "training",
    "actions.py",
    "role.py",
    "config.py",
    "errors.py",
]
IO_MODULES = {"trio", "libp2p", "socket", "zeroconf"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(entry: str) -> list[pathlib.Path]:
    target = PKG / entry
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


@pytest.mark.parametrize("entry", PURE)
def test_protocol_logic_imports_no_io(entry):
    for path in _files(entry):
        bad = _imports(path) & IO_MODULES
        # identity.py converts to a libp2p KeyPair lazily, inside one function
        if path.name == "identity.py":
            bad -= {"libp2p"}
        assert not bad, f"{path.relative_to(PKG)} imports {bad}: protocol logic must stay sans-IO"


def test_nothing_is_pickled():
    for path in PKG.rglob("*.py"):
        assert "pickle" not in _imports(path), path


def test_modules_stay_readable():
    for path in PKG.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 700, f"{path} is too long"
