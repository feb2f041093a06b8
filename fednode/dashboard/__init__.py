"""The operator's live web page (``--dashboard HOST:PORT``): read-only, one page, no build.

:mod:`.state` is what the page shows (fed by events), :mod:`.layout` places the graph
(networkx, on the server), :mod:`.server` serves the page, a JSON snapshot and a
server-sent event stream from a task in the caller's trio nursery, :mod:`.nodeview`
feeds a board from a running node's events. The simulator's feed is
:mod:`fednode.sim.live`. The page itself (HTML, JS, CSS) is package data in ``static/``.
"""

from .server import read_token, serve_dashboard
from .state import Board

__all__ = ["Board", "read_token", "serve_dashboard"]
