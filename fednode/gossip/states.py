"""Phases of a gossip peer and the one table of what each phase accepts.

::

    JOINING --links ready / join_wait_s--> sync:  TRAINING -> AVERAGING (x steps) -> TRAINING ...
                                           async: RUNNING (train + pairwise exchanges)
                                                     |  last round done
                                                  DRAINING (finish open exchanges)
    sync: last round done --> DONE                   |  nothing open
                                                   DONE

Link messages (``hello``, ``welcome``, ``bye``, ``reject``) are accepted in every live
phase: peers join and leave at any time. Model exchanges are accepted only by the mode
that defines them (``round`` in sync, ``push``/``pull`` in async); anything else raises
:class:`~fednode.errors.RemoteProtocolError` naming the message, the role and the phase.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    JOINING = "joining"  # opening links (and bootstrapping the model), no exchanges of ours
    TRAINING = "training"  # sync: the round's local training job is running
    AVERAGING = "averaging"  # sync: a step waits for its neighbours' models
    RUNNING = "running"  # async: rounds of local training with pairwise exchanges meanwhile
    DRAINING = "draining"  # async: rounds done; finishing the exchanges still open
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
    "sync": (("round",), (Phase.JOINING, Phase.TRAINING, Phase.AVERAGING)),
    "async": (("push", "pull"), (Phase.JOINING, Phase.RUNNING, Phase.DRAINING)),
}


def _table(mode: str) -> dict[tuple[Phase, str], str]:
    table: dict[tuple[Phase, str], str] = {
        (phase, key): handler
        for phase in Phase
        if phase is not Phase.DONE
        for key, handler in LINK_MESSAGES.items()
    }
    keys, phases = EXCHANGES[mode]
    table.update({(phase, key): "on_exchange" for phase in phases for key in keys})
    return table


#: mode -> (phase, message key) -> name of the GossipPeer handler
TRANSITIONS: dict[str, dict[tuple[Phase, str], str]] = {mode: _table(mode) for mode in EXCHANGES}
