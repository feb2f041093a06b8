"""The ``[personal]`` section: per-member personalisation and personalised accuracy.

Off by default (``mode = "none"``, ``holdout = 0``). The modes are implemented in
:mod:`fednode.training.personal`; ``docs/PERSONALISATION.md`` is the guide. What depends
on the task (are the named layers in its layout, does it have normalisation layers, can
it train with a proximal anchor) is checked when the node builds its task, before it
starts (:func:`fednode.training.personal.personalise`), and fails naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .sections import check

PERSONAL_MODES = ("none", "fedper", "fedbn", "ditto", "finetune")


@dataclass(frozen=True)
class PersonalParams:
    """``[personal]``: what of the model stays on this member, and how it is scored."""

    #: none | fedper (named layers local) | fedbn (normalisation layers local) |
    #: ditto (a personal model pulled to the global one) | finetune (k steps before scoring)
    mode: str = "none"
    #: fedper / fedbn: the layers (names of the task's layout, or their module prefix, e.g.
    #: "2" for "2.weight" and "2.bias") that never leave the member; empty = the mode's
    #: default (fedper: the last layer, the head; fedbn: the task's normalisation layers)
    local_layers: tuple[str, ...] = ()
    #: ditto: strength of the proximal pull of the personal model to the global one
    ditto_lambda: float = 0.1
    #: finetune: local SGD steps (mini-batches) on the received model before scoring it
    finetune_steps: int = 10
    #: share of each member's local data kept aside to score its own model on (the
    #: personalised accuracy); 0 = none kept, no personalised accuracy reported
    holdout: float = 0.0
    #: local steps (mini-batches) a member takes on its personal part (local layers, Ditto
    #: model) before its first contribution when it joins after round 1 (cold start)
    warmup_steps: int = 0

    @property
    def on(self) -> bool:
        return self.mode != "none" or self.holdout > 0

    def validate(self) -> None:
        check(
            self.mode in PERSONAL_MODES,
            "personal.mode",
            self.mode,
            f"one of {', '.join(PERSONAL_MODES)}",
        )
        check(
            not self.local_layers or self.mode in ("fedper", "fedbn"),
            "personal.local_layers",
            list(self.local_layers),
            "empty unless personal.mode is fedper or fedbn (the modes that keep layers local)",
        )
        check(
            self.ditto_lambda >= 0 and math.isfinite(self.ditto_lambda),
            "personal.ditto_lambda",
            self.ditto_lambda,
            "a finite float >= 0",
        )
        check(
            self.finetune_steps >= 1,
            "personal.finetune_steps",
            self.finetune_steps,
            "an integer >= 1",
        )
        check(
            0 <= self.holdout < 1 and math.isfinite(self.holdout),
            "personal.holdout",
            self.holdout,
            "a float in [0, 1) (the share of local data kept aside for scoring)",
        )
        check(self.warmup_steps >= 0, "personal.warmup_steps", self.warmup_steps, "an integer >= 0")
        check(
            self.warmup_steps == 0 or self.mode in ("fedper", "fedbn", "ditto"),
            "personal.warmup_steps",
            self.warmup_steps,
            "0 unless personal.mode is fedper, fedbn or ditto (the modes with a personal part "
            "to warm up)",
        )
