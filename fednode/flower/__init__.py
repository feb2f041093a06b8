"""A Flower app (``ClientApp`` + ``ServerApp`` named in its ``pyproject.toml``) as fednode's task.

``fednode run|sim --flower-app PATH`` (or ``data.task = "flower:PATH"``) runs the app's
ClientApp wherever fednode trains (clients, gossip peers) and maps a stock strategy of its
ServerApp onto fednode's coordinator. docs/FLOWER.md is the user's guide.

* :mod:`.app`: the task spec, ``pyproject.toml`` (components, run config), imports, flwr
  itself (``pip install fednode[flower]``; telemetry off before it is imported).
* :mod:`.bridge`: fednode's flat vector and Fit config <-> Flower ``Message`` / records.
* :mod:`.serverapp`: what the ServerApp would start (strategy, rounds, initial arrays).
* :mod:`.strategy`: that strategy as fednode config, and the list of what does not map.
* :mod:`.task`: :class:`~.task.FlowerAppTask`, the :class:`~fednode.training.task.Task`.
"""
