"""The aggregation rule grammar: ``[aggregation] rule = "..."`` -> :class:`RuleSpec`.

One parser for every place a rule is named (config file, ``--aggregation``, tests,
benchmarks)::

    spec   := [stage "+"]* rule | stage ["+" stage]*        (stages alone: + fedavg)
    stage  := "norm_bound:" c | "nnm" [":" f]
    rule   := "fedavg" | "median" | "trimmed:" beta | "krum:" f | "multikrum:" f [":" m]
            | "bulyan:" f | "centered_clip:" tau [":" iters] | "geomed" [":" iters]

Stages run left to right on the round's updates, then the rule. A bare ``nnm`` mixes
each update with its ``n - f`` nearest neighbours, taking ``f`` from the rule (Krum,
Multi-Krum, Bulyan: their ``f``; trimmed mean: ``floor(beta n)``); with a rule that has no
``f`` (median, geomed, centered clipping, fedavg) it must be written ``nnm:<f>``.

Errors: :class:`~fednode.errors.ConfigError` naming the field, the text and what was
expected, at start. Whether a rule can run on the updates a round actually got
(``krum:f`` needs ``n >= 2f + 3``) is known only at round time:
:meth:`RuleSpec.check_count` raises :class:`RuleUnavailable` (a ``RoundFailed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError, RoundFailed

RULES = ("fedavg", "median", "trimmed", "krum", "multikrum", "bulyan", "centered_clip", "geomed")
STAGES = ("norm_bound", "nnm")
GRAMMAR = (
    "'fedavg', 'median', 'trimmed:<beta>', 'krum:<f>', 'multikrum:<f>[:<m>]', 'bulyan:<f>', "
    "'centered_clip:<tau>[:<iters>]' or 'geomed[:<iters>]', optionally after "
    "'norm_bound:<c>+' and/or 'nnm[:<f>]+'"
)
#: Weiszfeld iterations for ``geomed`` without ``:<iters>`` (it stops earlier once converged)
GEOMED_ITERS = 100
#: centered clipping iterations without ``:<iters>``
CLIP_ITERS = 3


class RuleUnavailable(RoundFailed):
    """The rule cannot run on this round's updates (e.g. Krum with n <= 2f + 2): the round
    fails, the model is unchanged, the coordinator goes on with the next round."""


@dataclass(frozen=True)
class Stage:
    """A pre-aggregation step: ``norm_bound`` (clip to norm ``c``) or ``nnm`` (``f``)."""

    name: str
    c: float = 0.0
    #: nnm: None = take f from the rule
    f: int | None = None


@dataclass(frozen=True)
class RuleSpec:
    """A parsed rule: the pre-aggregation stages, then the rule and its parameters."""

    text: str
    name: str = "fedavg"
    stages: tuple[Stage, ...] = ()
    beta: float = 0.0
    f: int = 0
    #: multikrum: how many best-scored updates are averaged (0 = n - f)
    m: int = 0
    tau: float = 0.0
    iters: int = 0

    @property
    def needs_all(self) -> bool:
        """Whether the rule must hold every update (False only for fedavg, with or without
        ``norm_bound``, which clips each update as it arrives)."""
        return self.name != "fedavg" or any(s.name == "nnm" for s in self.stages)

    def min_updates(self) -> int:
        """Fewest updates the rule runs on: Krum / Multi-Krum 2f + 3, Bulyan 4f + 3,
        Multi-Krum also m; NNM f + 1; otherwise 1."""
        need = 1
        if self.name in ("krum", "multikrum"):
            need = max(2 * self.f + 3, self.m)
        elif self.name == "bulyan":
            need = 4 * self.f + 3
        for stage in self.stages:
            if stage.name == "nnm" and stage.f is not None:
                need = max(need, stage.f + 1)
        return need

    def rule_f(self, n: int) -> int | None:
        """The ``f`` a bare ``nnm`` borrows from the rule for ``n`` updates (None: none)."""
        if self.name in ("krum", "multikrum", "bulyan"):
            return self.f
        if self.name == "trimmed":
            return int(self.beta * n)
        return None

    def check_count(self, n: int) -> None:
        """Raise :class:`RuleUnavailable` when the rule cannot run on ``n`` updates."""
        need = self.min_updates()
        if n < need:
            raise RuleUnavailable(
                f"aggregation rule {self.text!r} needs at least {need} updates, got {n}"
            )


def _num(text: str, kind: type, field: str, spec: str, expected: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(field, spec, expected) from None
    if not math.isfinite(value):
        raise ConfigError(field, spec, expected)
    return value


def _stage(part: str, field: str, spec: str) -> Stage:
    name, *args = part.split(":")
    if name == "norm_bound":
        if len(args) != 1:
            raise ConfigError(field, spec, "'norm_bound:<c>' with c > 0")
        c = _num(args[0], float, field, spec, "'norm_bound:<c>' with c a number > 0")
        if c <= 0:
            raise ConfigError(field, spec, "'norm_bound:<c>' with c > 0")
        return Stage("norm_bound", c=c)
    if len(args) > 1:
        raise ConfigError(field, spec, "'nnm' or 'nnm:<f>' with f an integer >= 0")
    f = int(_num(args[0], int, field, spec, "'nnm:<f>' with f an integer >= 0")) if args else None
    if f is not None and f < 0:
        raise ConfigError(field, spec, "'nnm:<f>' with f an integer >= 0")
    return Stage("nnm", f=f)


def _rule(part: str, field: str, spec: str, stages: tuple[Stage, ...]) -> RuleSpec:
    name, *args = part.split(":")
    if name not in RULES:
        raise ConfigError(field, spec, GRAMMAR)

    def arity(low: int, high: int, form: str) -> None:
        if not low <= len(args) <= high:
            raise ConfigError(field, spec, f"'{form}'")

    def integer(i: int, what: str, low: int) -> int:
        value = int(_num(args[i], int, field, spec, f"{what} an integer >= {low}"))
        if value < low:
            raise ConfigError(field, spec, f"{what} an integer >= {low}")
        return value

    out = RuleSpec(text=spec, name=name, stages=stages)
    if name in ("fedavg", "median"):
        arity(0, 0, name)
        return out
    if name == "trimmed":
        arity(1, 1, "trimmed:<beta>")
        beta = _num(args[0], float, field, spec, "'trimmed:<beta>' with beta in [0, 0.5)")
        if not 0 <= beta < 0.5:
            raise ConfigError(field, spec, "'trimmed:<beta>' with beta in [0, 0.5)")
        return RuleSpec(text=spec, name=name, stages=stages, beta=beta)
    if name in ("krum", "bulyan"):
        arity(1, 1, f"{name}:<f>")
        return RuleSpec(text=spec, name=name, stages=stages, f=integer(0, f"{name}:<f> with f", 0))
    if name == "multikrum":
        arity(1, 2, "multikrum:<f>[:<m>]")
        f = integer(0, "multikrum:<f> with f", 0)
        m = integer(1, "multikrum:<f>:<m> with m", 1) if len(args) == 2 else 0
        return RuleSpec(text=spec, name=name, stages=stages, f=f, m=m)
    if name == "centered_clip":
        arity(1, 2, "centered_clip:<tau>[:<iters>]")
        tau = _num(args[0], float, field, spec, "'centered_clip:<tau>' with tau a number > 0")
        if tau <= 0:
            raise ConfigError(field, spec, "'centered_clip:<tau>' with tau > 0")
        iters = integer(1, "centered_clip:<tau>:<iters> with iters", 1) if len(args) == 2 else 0
        return RuleSpec(text=spec, name=name, stages=stages, tau=tau, iters=iters or CLIP_ITERS)
    arity(0, 1, "geomed[:<iters>]")  # geomed
    iters = integer(0, "geomed:<iters> with iters", 1) if args else GEOMED_ITERS
    return RuleSpec(text=spec, name=name, stages=stages, iters=iters)


def parse_rule(text: str, field: str = "aggregation.rule") -> RuleSpec:
    """Parse ``text``; errors name ``field``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(field, text, GRAMMAR)
    spec = text.strip()
    parts = [p.strip() for p in spec.split("+")]
    if any(not p for p in parts):
        raise ConfigError(field, spec, GRAMMAR)
    stages: list[Stage] = []
    rule: RuleSpec | None = None
    for i, part in enumerate(parts):
        name = part.split(":")[0]
        if name in STAGES:
            stages.append(_stage(part, field, spec))
        elif i == len(parts) - 1:
            rule = _rule(part, field, spec, tuple(stages))
        else:
            raise ConfigError(field, spec, f"one rule, last, after the stages ({GRAMMAR})")
    if rule is None:
        rule = RuleSpec(text=spec, name="fedavg", stages=tuple(stages))
    for stage in rule.stages:
        if stage.name == "nnm" and stage.f is None and rule.rule_f(1) is None:
            raise ConfigError(
                field, spec, f"'nnm:<f>' (rule {rule.name!r} has no f for a bare 'nnm' to use)"
            )
    return rule
