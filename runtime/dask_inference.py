"""Batch inference over Dask (``dask.distributed``): ``cnnc run MODEL --images FOLDER --dask
SCHEDULER|local:N``.

The client lists the image files (a folder's sorted by name, as ``cnnc run`` does) and cuts
them into chunks; one task per chunk reads its images on a worker and runs the compiled model
on them. A worker compiles the model at its first task (or loads the kernels from its kernel
cache) and keeps it for the next ones (``compiled_model``: one per process, by a key of the
network and its weights). The weights travel once, scattered to every worker. The chunks'
outputs are gathered in chunk order and concatenated: the outputs of image i are row i, as
one process would give them.

A worker that dies mid-run loses its tasks to the others: the scheduler runs them again, and a
chunk's result is its own (no state carries from one chunk to the next), so nothing is lost or
counted twice. The folder must be readable by the workers under the same path (a local
cluster shares this machine's; a remote one needs a shared file system).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.ir import Graph
from .images import ImageOptions, load_images
from .model import compile as compile_model
from .reference import InputError

__all__ = ["DaskError", "DaskRun", "compiled_model", "infer_chunk", "dask_client",
           "run_on_dask", "LOCAL"]

LOCAL = "local"
INSTALL_HINT = "pip install 'cnnc[distributed]'"

#: Seconds to wait for a scheduler to answer before giving up on it.
CONNECT_TIMEOUT = 20

#: The models compiled in this worker process, by model key (``compiled_model``).
_MODELS: dict[str, Any] = {}


class DaskError(InputError):
    """A Dask run that cannot start (no Dask, a scheduler that does not answer, a bad
    ``--dask`` value), said in one sentence."""


@dataclass(frozen=True)
class DaskRun:
    """What each task needs besides its files: the network, how images become inputs, and
    the key under which a worker keeps the compiled model."""

    graph: Graph
    options: ImageOptions
    key: str
    lowering: str = "auto"
    target: str = "cpu"


def model_key(graph: Graph, weights: Mapping[str, np.ndarray], lowering: str,
              target: str) -> str:
    """A digest of the network (its IR dump), its weights and how it is compiled."""
    h = hashlib.sha256(graph.dump().encode())
    h.update(f"{lowering} {target}".encode())
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], np.float32).tobytes())
    return h.hexdigest()


def compiled_model(run: DaskRun, weights: Mapping[str, np.ndarray]) -> Any:
    """This process's compiled model of ``run``: compiled at the first call, then kept."""
    model = _MODELS.get(run.key)
    if model is None:
        model = compile_model(run.graph, run.target, weights=dict(weights),
                              lowering=run.lowering)
        _MODELS[run.key] = model
    return model


def infer_chunk(run: DaskRun, weights: Mapping[str, np.ndarray],
                files: Sequence[str]) -> dict[str, np.ndarray]:
    """A task: the outputs of the network on ``files`` (one row per file, in order)."""
    model = compiled_model(run, weights)
    (name,) = run.graph.inputs
    shape = run.graph.node(run.graph.inputs[name]).type.shape
    outputs = model.run({name: load_images(files, shape, run.options)})
    return {k: np.asarray(v) for k, v in outputs.items()}


def parse_scheduler(spec: str) -> tuple[str, int | None]:
    """``local`` or ``local:N`` (a cluster of N worker processes on this machine, default one
    per core), or a scheduler's address (``tcp://host:8786``)."""
    if spec == LOCAL or spec.startswith(LOCAL + ":"):
        count = spec[len(LOCAL) + 1:]
        if not count:
            return LOCAL, None
        if not count.isdigit() or int(count) < 1:
            raise DaskError(f"--dask local:N takes a number of workers of at least 1, got "
                            f"{spec!r}")
        return LOCAL, int(count)
    return spec, None


@contextmanager
def dask_client(spec: str) -> Iterator[Any]:
    """A Dask client of a new local cluster (stopped on leaving) or of the scheduler at
    ``spec`` (``parse_scheduler``)."""
    try:
        from dask.distributed import Client, LocalCluster  # optional: only --dask needs it
    except ImportError:
        raise DaskError(f"--dask needs dask.distributed, which is not installed: "
                        f"{INSTALL_HINT}") from None
    address, workers = parse_scheduler(spec)
    if address != LOCAL:
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            raise DaskError(f"--dask {spec}: cannot reach a Dask scheduler there within "
                            f"{CONNECT_TIMEOUT} s ({e}); give local, local:N or a scheduler's "
                            "address such as tcp://host:8786") from None
        with client:
            yield client
        return
    workers = workers or os.cpu_count() or 1
    # One task at a time per worker, its kernels on an equal share of the cores.
    threads = os.environ.get("NUMBA_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR,
                      env={"NUMBA_NUM_THREADS": threads}) as cluster, Client(cluster) as client:
        yield client


@dataclass
class Submitted:
    """A run's tasks (their futures, in order) and the weights scattered for them. The
    weights' futures are held as long as the tasks': scattered data cannot be computed again,
    and a cluster whose client let go of them may drop them before every task has read them
    (the tasks then fail with "lost dependencies")."""

    futures: list[Any]
    weights: dict[str, Any]


def submit(client: Any, graph: Graph, weights: Mapping[str, np.ndarray],
           files: Sequence[str | Path], options: ImageOptions, chunk: int,
           lowering: str = "auto", target: str = "cpu") -> Submitted:
    """One task per ``chunk`` files, in order."""
    if chunk < 1:
        raise DaskError(f"--chunk must be at least 1, got {chunk}")
    if len(graph.inputs) != 1:
        raise DaskError(f"images can feed only a network with one input; {graph.name!r} has "
                        f"{', '.join(graph.inputs)}")
    run = DaskRun(graph, options, model_key(graph, weights, lowering, target), lowering,
                  target)
    shared = client.scatter(dict(weights), broadcast=True)
    names = [str(f) for f in files]
    chunks = [names[i:i + chunk] for i in range(0, len(names), chunk)]
    return Submitted(client.map(infer_chunk, [run] * len(chunks), [shared] * len(chunks),
                                chunks, key=[task_key(run, i, c) for i, c in enumerate(chunks)]),
                     shared)


def task_key(run: DaskRun, index: int, files: Sequence[str]) -> str:
    """A task's name: its place and a digest of what it computes (the model, how images
    become inputs, the files), so that equal tasks share a result and no others do."""
    h = hashlib.sha256(f"{run.key} {run.options}".encode())
    h.update("\n".join(files).encode())
    return f"cnnc-chunk-{index}-{h.hexdigest()[:16]}"


def gather(client: Any, submitted: Submitted) -> dict[str, np.ndarray]:
    """The tasks' outputs concatenated in task order, by output name."""
    parts = client.gather(list(submitted.futures))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def run_on_dask(spec: str, graph: Graph, weights: Mapping[str, np.ndarray],
                files: Sequence[str | Path], options: ImageOptions, chunk: int = 32,
                lowering: str = "auto", target: str = "cpu") -> dict[str, np.ndarray]:
    """The outputs of the network on every file, computed over Dask (see the module
    docstring), one row per file in order."""
    if not files:
        raise DaskError("no images to run on")
    if chunk < 1:
        raise DaskError(f"--chunk must be at least 1, got {chunk}")
    parse_scheduler(spec)  # a bad value refused before any cluster starts
    with dask_client(spec) as client:
        return gather(client, submit(client, graph, weights, files, options, chunk, lowering,
                                     target))
