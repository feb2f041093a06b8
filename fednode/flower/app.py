"""A Flower app on disk: the ``flower:PATH[?k=v ...]`` task spec, its ``pyproject.toml``
(``[tool.flwr.app.components]``, ``[tool.flwr.app.config]``), importing its components,
and importing flwr itself.

The spec names the app's folder and, after ``?``, run-config overrides in Flower's own
``--run-config`` syntax (``key=value`` pairs, values in TOML: ``lr=0.1 name="x"``). Like
``flwr run``, an override of a key the app does not declare is an error. Every problem
with the app's files is a :class:`~fednode.errors.ConfigError` at start.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError

PREFIX = "flower:"
INSTALL = "pip install fednode[flower]"
#: Flower's --run-config syntax: key=value, value quoted or one word (flwr.common.config)
_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")


def is_flower_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def make_spec(path: str | Path, run_config: str = "") -> str:
    """The ``data.task`` value for the app at ``path`` with run-config overrides."""
    text = str(path)
    if "?" in text:
        raise ConfigError("flower-app", text, "a folder path without '?'")
    return f"{PREFIX}{text}" + (f"?{run_config.strip()}" if run_config.strip() else "")


def parse_run_config(text: str, field: str = "run-config") -> dict[str, Any]:
    """``"k=v k2=v2"`` -> ``{"k": v, "k2": v2}`` (values parsed as TOML, nested keys with '.')."""
    out: dict[str, Any] = {}
    rest = _PAIR.sub("", text).strip()
    if rest:
        raise ConfigError(field, text, "space-separated key=value pairs (e.g. lr=0.1 epochs=2)")
    for key, value in _PAIR.findall(text):
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                field, f"{key}={value}", f'a TOML value (number, true/false, "string"): {exc}'
            ) from exc
    return out


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested run-config tables as Flower flattens them: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class FlowerApp:
    """What ``pyproject.toml`` says about the app (nothing imported yet)."""

    path: Path
    name: str
    clientapp: str  #: "module:attr"
    serverapp: str  #: "module:attr", or "" when the app names none
    run_config: dict[str, Any]  #: the app's [tool.flwr.app.config], flattened, overrides applied
    spec: str  #: the task spec it was read from


def read_app(spec: str) -> FlowerApp:
    """Read the app a ``flower:PATH[?overrides]`` spec names. ConfigError for a missing
    folder or pyproject.toml, a missing section or component, a bad override."""
    body = spec.removeprefix(PREFIX)
    path_text, _, overrides = body.partition("?")
    path = Path(path_text).expanduser()
    pyproject = path / "pyproject.toml"
    if not path_text or not path.is_dir():
        raise ConfigError("flower-app", path_text, "the folder of a Flower app (pyproject.toml)")
    try:
        with pyproject.open("rb") as f:
            tree = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(
            "flower-app", str(pyproject), f"a readable pyproject.toml ({exc})"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("flower-app", str(pyproject), f"valid TOML ({exc})") from exc
    app = tree.get("tool", {}).get("flwr", {}).get("app")
    where = f"{pyproject} [tool.flwr.app.components]"
    if not isinstance(app, dict) or not isinstance(app.get("components"), dict):
        raise ConfigError(
            where, None, "a [tool.flwr.app.components] table naming clientapp = 'module:attr'"
        )
    components = app["components"]
    clientapp = components.get("clientapp")
    if not isinstance(clientapp, str) or not clientapp:
        raise ConfigError(f"{where} clientapp", clientapp, "'module:attr' of the ClientApp")
    serverapp = components.get("serverapp", "")
    if not isinstance(serverapp, str):
        raise ConfigError(f"{where} serverapp", serverapp, "'module:attr' of the ServerApp")
    for field, value in (("clientapp", clientapp), ("serverapp", serverapp)):
        if value and not _is_component(value):
            raise ConfigError(f"{where} {field}", value, "'package.module:attr'")
    config = app.get("config", {})
    if not isinstance(config, dict):
        raise ConfigError(f"{pyproject} [tool.flwr.app.config]", config, "a table")
    run_config = flatten(config)
    for key, value in parse_run_config(overrides).items():
        if key not in run_config:
            known = ", ".join(sorted(run_config)) or "none"
            raise ConfigError(f"run-config {key}", value, f"a key of the app's config ({known})")
        run_config[key] = value
    project = tree.get("project", {})
    name = project.get("name", path.name) if isinstance(project, dict) else path.name
    return FlowerApp(path.resolve(), str(name), clientapp, serverapp, run_config, spec)


def _is_component(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep and module and attr) and all(p.isidentifier() for p in module.split("."))


def import_flwr() -> ModuleType:
    """flwr, imported with its telemetry off (``FLWR_TELEMETRY_ENABLED=0`` unless the
    environment says otherwise). ConfigError naming the extra when it is not installed."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import flwr
        from flwr.clientapp import ClientApp  # noqa: F401  (the 1.2x+ API fednode drives)
    except ImportError as exc:
        raise ConfigError(
            "flower-app", "flwr", f"the Flower package installed: {INSTALL} ({exc})"
        ) from exc
    return flwr


def import_component(app: FlowerApp, which: str) -> Any:
    """The object ``[tool.flwr.app.components] which`` names, imported from the app's folder
    (put first on ``sys.path``, as ``flwr run`` does). ConfigError when the import fails,
    the attribute is missing, or a module of that name was already imported from elsewhere."""
    import_flwr()
    text = app.clientapp if which == "clientapp" else app.serverapp
    module_name, _, attr = text.partition(":")
    field = f"{app.path / 'pyproject.toml'} [tool.flwr.app.components] {which}"
    root = str(app.path)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the app's import-time code: any failure is the app's
        raise ConfigError(
            field, text, f"an importable module ({type(exc).__name__}: {exc})"
        ) from exc
    origin = Path(getattr(module, "__file__", "") or "").resolve()
    if not origin.is_relative_to(app.path):
        raise ConfigError(
            field, text, f"a module of the app (this name is already imported from {origin})"
        )
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(field, text, f"an attribute {attr!r} of {module_name}") from exc
