"""Phases of a gossip peer and the one table of what each phase accepts.

::

    WAITING --enough members up / wait limit--> JOINING   (a node: rounds.min_available_clients)
    JOINING --links ready / join_wait_s--> sync:  TRAINING -> AVERAGING (x steps) -> TRAINING ...
                                           async: RUNNING (train + pairwise exchanges)
                                                     |  last round done
                                                  DRAINING (finish open exchanges)
    sync: last round done --> (CLOSING) --> DONE     |  nothing open
                                                  (CLOSING) --> DONE

``WAITING`` holds the first round until enough consortium members are up (only when the
peer is built with ``wait_for``); it answers hellos but opens no link itself. ``CLOSING``
waits (at most :data:`~fednode.gossip.core.FINAL_EVAL_S`) for the evaluations of the
last rounds (``gossip.eval_every``) and ignores every message, as a stopped node would.

Link messages (``hello``, ``welcome``, ``bye``, ``reject``) are accepted in every live
phase: peers join and leave at any time. Model exchanges are accepted only by the mode
that defines them (``round`` in sync, ``push``/``pull`` in async); anything else raises
:class:`~fednode.errors.RemoteProtocolError` naming the message, the role and the phase.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    WAITING = "waiting"  # for enough consortium members to be up; no round, no hello of ours
    JOINING = "joining"  # opening links (and bootstrapping the model), no exchanges of ours
    TRAINING = "training"  # sync: the round's local training job is running
    AVERAGING = "averaging"  # sync: a step waits for its neighbours' models
    RUNNING = "running"  # async: rounds of local training with pairwise exchanges meanwhile
    DRAINING = "draining"  # async: rounds done; finishing the exchanges still open
    CLOSING = "closing"  # rounds done; waiting for the last evaluations, ignoring messages
    DONE = "done"


#: message key -> handler, accepted in every phase but DONE
LINK_MESSAGES = {
    "hello": "on_hello",
    "welcome": "on_welcome",
    "bye": "on_bye",
    "reject": "on_reject",
    "advert": "on_advert",
}
#: model exchanges: mode -> (message keys, phases that accept them)
EXCHANGES = {
    "sync": (("round",), (Phase.WAITING, Phase.JOINING, Phase.TRAINING, Phase.AVERAGING)),
    "async": (("push", "pull"), (Phase.WAITING, Phase.JOINING, Phase.RUNNING, Phase.DRAINING)),
}
#: phases in which every message is taken and ignored
IGNORING = (Phase.CLOSING,)


def _table(mode: str) -> dict[tuple[Phase, str], str]:
    table: dict[tuple[Phase, str], str] = {
        (phase, key): handler
        for phase in Phase
        if phase is not Phase.DONE and phase not in IGNORING
        for key, handler in LINK_MESSAGES.items()
    }
    keys, phases = EXCHANGES[mode]
    table.update({(phase, key): "on_exchange" for phase in phases for key in keys})
    every = (*LINK_MESSAGES, *keys)
    table.update({(phase, key): "on_ignored" for phase in IGNORING for key in every})
    return table


#: mode -> (phase, message key) -> name of the GossipPeer handler
TRANSITIONS: dict[str, dict[tuple[Phase, str], str]] = {mode: _table(mode) for mode in EXCHANGES}
