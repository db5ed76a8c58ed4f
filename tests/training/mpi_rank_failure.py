"""A rank of ``cnnc train`` that fails at its third step (run by
``test_data_parallel.py`` under ``mpiexec``; not a test module):

    python mpi_rank_failure.py killed|error|hangs train ARGS...

Rank 1 is killed (SIGKILL), raises an error, or stops answering; rank 0 trains on.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from cnnc.runtime.cli import main
from cnnc.runtime.train import TrainingModel

FAILING_RANK, FAILING_STEP = 1, 2


def fail(how: str) -> None:
    if how == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "error":
        raise RuntimeError(f"rank {FAILING_RANK} fails at step {FAILING_STEP}")
    time.sleep(600)  # hangs


def main_failing_at_step(how: str, argv: list[str]) -> int:
    step = TrainingModel.train_step

    def failing_step(self, *args, **kwargs):
        if self.replicas.rank == FAILING_RANK and self.steps_taken == FAILING_STEP:
            fail(how)
        return step(self, *args, **kwargs)
    TrainingModel.train_step = failing_step
    return main(argv)


if __name__ == "__main__":
    sys.exit(main_failing_at_step(sys.argv[1], sys.argv[2:]))
