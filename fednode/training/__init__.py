"""fednode.training: the Task protocol, the built-in tasks, aggregation and partitions.

A plug-in task calls :func:`cancel_point` between batches so a stopping node need not
wait for its job to finish (see :mod:`fednode.training.cancel`).
"""

from .cancel import cancel_point

__all__ = ["cancel_point"]
