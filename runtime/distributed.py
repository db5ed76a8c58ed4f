"""Data-parallel training over MPI: the ranks of an ``mpiexec`` job as the training model's
replicas (``runtime/replicas.py``), each global batch split between them.

    mpiexec -n 4 cnnc train resnet18 --data digits --batch 64     # or: cnnc train ... --ranks 4

MPI comes from mpi4py, and MPI itself from the ``mpich`` wheel (``pip install
'cnnc[distributed]'``: its ``mpiexec`` lands beside the Python that runs cnnc), imported only
when a run is started by ``mpiexec``; the main install works without either.

How a job stays whole:

- Every rank reads the data and draws the same data order, augmentation and dropout masks (the
  same seed): the global batch is the one a single process would take, and each rank trains on
  its contiguous shard of it (``shard``: as equal as the batch allows, the first ranks one more
  image where it does not divide).
- Values are averaged by one all-reduce (a sum, then divided by the ranks: exact for a power of
  two) waited on with a deadline (``timeout``): a rank that stopped answering makes the others
  report which collective timed out and abort the job rather than wait forever. A rank that
  dies is noticed sooner by ``mpiexec`` itself, which ends the others; a rank that fails with an
  error aborts the job after printing it (``abort_job``), since the others would wait for it.
- The wait polls with short sleeps instead of MPI's spinning wait, so ranks that share cores
  with each other (``--ranks`` on one machine) do not take them from the rank still computing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .reference import InputError

__all__ = ["DistributedError", "MpiReplicas", "launched_by_mpiexec", "shard", "mpiexec_path",
           "launch", "abort_job", "DEFAULT_TIMEOUT"]

#: Environment variables through which MPICH's (PMI) and Open MPI's mpiexec tell a process the
#: size of its job.
JOB_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

#: Seconds a rank waits in one collective for the others before it gives up on the job.
DEFAULT_TIMEOUT = 300.0

#: The longest sleep between two looks at a collective in flight (seconds).
POLL_CEILING = 1e-3

INSTALL_HINT = "pip install 'cnnc[distributed]'"


class DistributedError(InputError):
    """A data-parallel run that cannot start or go on (no MPI, too few images for the ranks,
    a rank that stopped answering), said in one sentence."""


def launched_by_mpiexec() -> bool:
    """Whether this process is one rank of an MPI job of more than one process."""
    for name in JOB_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value) > 1
    return False


class MpiReplicas:
    """The ranks of this MPI job (``MPI.COMM_WORLD``) as data-parallel replicas."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            from mpi4py import MPI  # optional: only a run under mpiexec needs it
        except ImportError:
            raise DistributedError("this process was started by mpiexec, but mpi4py is not "
                                   f"installed: {INSTALL_HINT}") from None
        if not timeout > 0:
            raise DistributedError(f"the collective timeout must be positive, got {timeout}")
        self._mpi: Any = MPI
        self.comm = MPI.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.timeout = timeout
        self.where = "the first collective"  # what the job is at: a timeout's message says

    def average(self, values: np.ndarray) -> None:
        """``values`` in place: their sum over the ranks, divided by the ranks (see the
        module docstring); every rank gets the same bits."""
        if not values.flags.c_contiguous or values.dtype not in (np.float32, np.float64):
            raise DistributedError(f"an average over ranks takes a contiguous float32 or "
                                   f"float64 array, got {values.dtype} {values.shape}")
        request = self.comm.Iallreduce(self._mpi.IN_PLACE, values, op=self._mpi.SUM)
        self._wait(request)
        values /= values.dtype.type(self.size)

    def _wait(self, request: Any) -> None:
        """Until ``request`` completes, or abort the job after ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        delay = 0.0
        while not request.Test():
            if time.monotonic() > deadline:
                abort_job(self, f"no answer from the other ranks in {self.timeout:g} s at "
                                f"{self.where} (a rank stopped or hangs); stopping the job", 3)
            time.sleep(delay)
            delay = min(POLL_CEILING, 2 * delay or 1e-5)

    def total(self, values: np.ndarray) -> None:
        """``values`` (int64 or float64) in place: their sum over the ranks."""
        request = self.comm.Iallreduce(self._mpi.IN_PLACE, values, op=self._mpi.SUM)
        self._wait(request)

    def abort(self, code: int) -> NoReturn:
        """End every rank of the job now (``MPI_Abort``)."""
        sys.stderr.flush()
        self.comm.Abort(code)
        raise SystemExit(code)  # pragma: no cover - Abort does not return


def abort_job(replicas: MpiReplicas, message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as this rank's and end the whole job: the other ranks would wait for
    this one in their next collective."""
    print(f"rank {replicas.rank} of {replicas.size}: {message}", file=sys.stderr, flush=True)
    replicas.abort(code)


def shard(batch: int, rank: int, size: int, empty_ok: bool = False) -> slice:
    """Rank ``rank``'s contiguous part of a batch of ``batch`` images split between ``size``
    ranks (the first ``batch % size`` ranks one image more; none for the last ranks of a
    batch smaller than ``size`` if ``empty_ok``, else that is refused)."""
    if batch < size and not empty_ok:
        raise DistributedError(f"a batch of {batch} images cannot be split between {size} "
                               "ranks: every rank needs at least one")
    base, extra = divmod(batch, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def mpiexec_path() -> str:
    """The ``mpiexec`` of the ``mpich`` wheel beside this Python, else one on the PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise DistributedError(f"--ranks needs mpiexec, which is not installed: {INSTALL_HINT} "
                               "(its mpich wheel brings one)")
    return found


def launch(ranks: int, argv: list[str]) -> int:
    """Run ``cnnc <argv>`` as an MPI job of ``ranks`` processes on this machine and wait for
    it; returns its exit status. Each rank gets an equal share of the CPU's threads for its
    kernels, unless ``NUMBA_NUM_THREADS`` says otherwise."""
    command = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "cnnc.runtime.cli",
               *argv]
    env = dict(os.environ)
    env.setdefault("NUMBA_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    status = subprocess.run(command, env=env).returncode
    if status != 0:
        print(f"error: the MPI job of {ranks} ranks ended with status {status}; every rank "
              "was stopped (the messages above say which rank failed, and why)",
              file=sys.stderr)
    return status
