"""The README's configuration reference and command list, and the module paths the security
model names, stay true to the code."""

import dataclasses
import re
import tomllib
from pathlib import Path

from fednode.cli import COMMANDS
from fednode.config import NodeConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_toml() -> str:
    section = README.split("## Configuration", 1)[1]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


def test_readme_config_reference_loads_and_names_every_field(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(readme_toml())
    assert load_config(path, {}) == load_config(None, {})  # it shows the defaults
    documented = tomllib.loads(readme_toml())
    for f in dataclasses.fields(NodeConfig):
        default = getattr(NodeConfig(), f.name)
        if dataclasses.is_dataclass(default):
            fields = {g.name for g in dataclasses.fields(default)}
            assert set(documented[f.name]) == fields, f.name
        else:
            assert f.name in documented, f.name


def test_readme_command_list_matches_the_cli():
    block = README.split("## Commands", 1)[1].split("```", 2)[1]
    listed = {line.split()[1] for line in block.splitlines() if line.startswith("fednode ")}
    assert listed == set(COMMANDS)


def test_every_module_the_security_model_names_exists():
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    named = set(re.findall(r"`((?:fednode/|crypto/|wire/|p2p/|training/|tests/)[\w/]+\.py)`", text))
    assert "fednode/crypto/envelope.py" in named  # the pattern finds the paths
    missing = [
        path
        for path in sorted(named)
        if not (ROOT / path).is_file() and not (ROOT / "fednode" / path).is_file()
    ]
    assert missing == []
