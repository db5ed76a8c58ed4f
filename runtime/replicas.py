"""What a data-parallel group is to the training model: the processes training one network
together, each on its shard of every global batch, that average values between them.

The training model (``runtime/train.py``) averages each step's gradients, loss and running
statistics over its replicas before the update, so every replica takes the same step; the
executor averages the outputs of a training graph's collective steps (``allreduce_mean``:
batch norm's statistics, synchronized) over them. Neither knows how the values travel: an
implementation does (``runtime/distributed.py``: the ranks of an MPI job).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Replicas"]


class Replicas(Protocol):
    """A group of ``size`` processes, this one number ``rank`` (0 to size - 1)."""

    rank: int
    size: int

    def average(self, values: np.ndarray) -> None:
        """Replace ``values`` (a contiguous float32 or float64 array) in place by its mean
        over the replicas: every replica calls it with an array of the same shape, and every
        replica gets the same bits back."""
        ...
