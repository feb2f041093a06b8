"""Faster ``__init__`` for the wire's frozen slots dataclasses (wire/'s one code generator).

A frozen dataclass's ``__init__`` stores each field with ``object.__setattr__`` (its own
``__setattr__`` refuses). Storing through the slot's member descriptor does the same
store about twice as fast; messages are built for every send and every receive (the
20-field ``Gossip``'s dataclass ``__init__`` alone was 5% of a 10,000-peer gossip step,
``docs/BENCHMARKS.md``). :func:`install` replaces a class's ``__init__`` with one
generated that way: the same signature (keyword-only if the dataclass is), defaults and
default factories; frozen-ness is ``__setattr__``'s and unchanged. The generated source
comes from the class's own dataclass fields only. ``tests/test_wire_messages.py`` checks
the result against the dataclass behaviour (defaults, signature, frozen, factories,
equality, ``repr``, ``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
from typing import Any


class _Factory:
    """Default of a parameter whose value comes from a ``default_factory``."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def slot_descriptor(cls: type, name: str) -> Any:
    """The member descriptor that stores field ``name`` of slots class ``cls``: its
    ``__set__`` / ``__get__`` store and read the field directly (frozen or not). Also
    used by the simulator's fast wire (:mod:`fednode.sim.fastwire`)."""
    descriptor = next(k.__dict__[name] for k in cls.__mro__ if name in k.__dict__)
    if type(descriptor).__name__ != "member_descriptor":
        raise TypeError(f"{cls.__name__}.{name} is not a slot")
    return descriptor


def install(cls: type) -> None:
    """Give the frozen slots dataclass ``cls`` the generated ``__init__`` (see above)."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: __post_init__ is not supported")
    fields = dataclasses.fields(cls)
    namespace: dict[str, Any] = {"FACTORY": _FACTORY}
    params, lines = [], []
    for i, f in enumerate(fields):
        namespace[f"set{i}"] = slot_descriptor(cls, f.name).__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"default{i}"] = f.default
            params.append(f"{f.name}=default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"factory{i}"] = f.default_factory
            params.append(f"{f.name}=FACTORY")
            value = f"factory{i}() if {f.name} is FACTORY else {f.name}"
        else:
            params.append(f.name)
        lines.append(f"    set{i}(self, {value})")
    keyword_only = all(f.kw_only for f in fields)
    if not keyword_only and any(f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: mixed positional and keyword-only fields")
    signature = ", ".join((["*"] if keyword_only and params else []) + params)
    source = "\n".join([f"def __init__(self, {signature}):", *lines, "    pass"])
    exec(source, namespace)  # the source names only our own dataclass fields
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = dict(vars(cls)["__init__"].__annotations__)
    setattr(cls, "__init__", init)  # noqa: B010 (mypy refuses a direct assignment)
