"""Indexing on Ray: the run's embedder (run.Embedder) as Ray actors; the plan and the one writer
stay in the driver (run.run_indexing).

files --> plan (the run) --> shards of the files to read (RayEmbedder) --> EmbedActor.embed (one
actor per GPU, else per CPU; the encoder loaded once per actor) --> ShardWriter.merge (the run,
one shard at a time, as each arrives) --> SQLite + FAISS.

The actors know no store: each turns a list of paths into a shard.Shard (embed_worker.embed_shard),
given the contents the index holds as the run starts (put once in Ray's object store). At most
`max_in_flight` shards are queued or running at a time (ray.wait), so the driver's memory stays
bounded however many files there are. Paths and the model directory must be readable at the
same path on every node (a shared file system).

Faults. An actor whose process dies is restarted (max_restarts) and its queued and running
shards are retried on it (max_task_retries); a shard whose actor is gone for good goes back
to the queue for another actor. A shard reaches the writer once per attempt that finished,
and the writer skips a shard id it merged (ShardWriter), so nothing is stored twice. The writer
commits each shard in one transaction: a driver killed at any moment leaves every merged
shard stored, and the next run skips them (the plan sees them as unchanged).

Only this module imports ray, and only when a RayEmbedder is made: install it with
`pip install 'imgsearch-offline[ray]'`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imgsearch.ground.errors import ImgsearchError, RayNotInstalled, ShardFailed
from imgsearch.indexer.embed_worker import embed_shard
from imgsearch.indexer.run import Finished
from imgsearch.indexer.shard import Shard

__all__ = ["RayEmbedder", "require_ray", "EmbedActor", "RAY_INSTALL_HINT"]

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install 'imgsearch-offline[ray]'"
MAX_RESTARTS = 3  # times Ray restarts an actor whose process died
MAX_TASK_RETRIES = 3  # times Ray retries a shard on its restarted actor
MAX_ATTEMPTS = 4  # times this driver hands one shard out (to another actor, once its own is gone)
MAX_DECODE_WORKERS = 16  # decode processes per GPU actor, at most


class EmbedActor:
    """One embed worker: the image encoder, loaded once, then shard after shard.

    Ray runs it as an actor (ray.remote is applied by RayEmbedder), in a process of its
    own: on the CPU it tells that process's malloc to keep freed memory, as `imgsearch index`
    does for a local run (model/allocator.py). A subclass may be given instead (tests use one
    that pauses inside a shard, to kill it there)."""

    def __init__(self, model_dir: str, device: str, workers: int, known_contents: frozenset[str]) -> None:
        from imgsearch.model.allocator import keep_freed_memory
        from imgsearch.model.image_encoder import ImageEncoder

        if device == "cpu":
            keep_freed_memory()  # before the decode workers start
        self.encoder = ImageEncoder.from_pretrained(model_dir, device=device)
        self.workers = workers
        self.known_contents = known_contents  # stored as the run started: not embedded again

    def pid(self) -> int:
        return os.getpid()

    def embed(self, paths: list[str], batch_size: int) -> Shard:
        return embed_shard(
            paths, self.encoder, known_contents=self.known_contents, batch_size=batch_size, workers=self.workers
        )


def require_ray():
    """The ray module; RayNotInstalled naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError as exc:
        raise RayNotInstalled(
            f"indexing on Ray needs the ray package ({exc}); install it with `{RAY_INSTALL_HINT}`, "
            "or index without --ray."
        ) from None
    return ray


class RayEmbedder:
    """The Embedder of a run on Ray (run.run_indexing): shards of `shard_size` files, each
    embedded by an EmbedActor, handed to the run as they arrive.

    model_dir: the model to load in each actor (readable at that path on every node).
    address: a Ray cluster's address (as ray.init takes it: "HOST:PORT", "ray://HOST:PORT",
    "auto"); None: the Ray this process is connected to, else a new local one on this machine,
    listening on 127.0.0.1 only, shut down at the end of the run. max_in_flight: shards queued
    or running at once (default: two per actor). actors: how many (default: one per GPU of the
    cluster, else one per CPU). actor_class: EmbedActor or a subclass. No Ray is started until
    the run has files to embed; RayNotInstalled here when ray cannot be imported.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        address: str | None = None,
        shard_size: int = 256,
        max_in_flight: int | None = None,
        batch_size: int = 32,
        actors: int | None = None,
        actor_class: type[EmbedActor] = EmbedActor,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, not {shard_size}")
        if address is None:
            _loopback_only()  # before ray is imported
        self.ray = require_ray()
        self.model_dir = str(Path(model_dir).resolve())
        self.address, self.shard_size, self.max_in_flight = address, shard_size, max_in_flight
        self.batch_size, self.actors, self.actor_class = batch_size, actors, actor_class

    def embed(self, paths: Sequence[Path], known_contents: set[str]) -> Iterator[Finished]:
        """Keep up to `max_in_flight` shards with the actors; hand over each as it arrives. Closed
        early (the run stopped or failed), the shards still with the actors are dropped with them."""
        if not paths:
            return
        ray = self.ray
        todo = [str(path) for path in paths]
        queue = deque(_Task(todo[i : i + self.shard_size]) for i in range(0, len(todo), self.shard_size))
        with _connected(ray, self.address):
            pool = _ActorPool(ray, self.model_dir, known_contents, self.actors, self.actor_class)
            try:
                yield from _stream(ray, pool, queue, self.batch_size, self.max_in_flight or 2 * len(pool.actors))
            finally:
                pool.close()


@dataclass
class _Task:
    paths: list[str]  # one shard's files
    attempts: int = 0  # times handed to an actor so far


def _stream(ray, pool: _ActorPool, queue: deque[_Task], batch_size: int, max_in_flight: int) -> Iterator[Finished]:
    """Keep up to `max_in_flight` shards with the actors; yield each as it arrives."""
    in_flight: dict = {}  # ObjectRef --> (task, actor)
    while queue or in_flight:
        while queue and len(in_flight) < max_in_flight:
            task = queue.popleft()
            if task.attempts >= MAX_ATTEMPTS:
                raise ShardFailed(
                    f"a shard of {len(task.paths)} files (the first {task.paths[0]}) failed on {task.attempts} "
                    "Ray workers; every shard merged before is kept: check the workers' logs (Ray's session "
                    "folder, logs/) and run the same command again."
                )
            task.attempts += 1
            actor = pool.least_busy(in_flight.values())
            in_flight[actor.embed.remote(task.paths, batch_size)] = (task, actor)
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        task, actor = in_flight.pop(ready[0])
        try:
            shard = ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:  # the actor died, and Ray's retries on it are spent
            log.warning("a Ray embed worker failed (%s); its shard goes to another", type(exc).__name__)
            if isinstance(exc, getattr(ray.exceptions, "ActorDiedError", ())):  # gone for good (Ray >= 2.10 says so)
                pool.drop(actor)
            queue.appendleft(task)
            continue
        yield Finished(shard)  # the run's writer skips a shard merged before (a retry that finished twice)


class _ActorPool:
    """The embed actors: one per GPU (with its share of the CPUs to decode), else one per CPU."""

    def __init__(
        self, ray, model_dir: str, known_contents: set[str], actors: int | None, actor_class: type[EmbedActor]
    ) -> None:
        self.ray = ray
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        if gpus:
            count = actors or gpus
            options: dict[str, float] = dict(num_gpus=1, num_cpus=max(1, cpus // count))
            device, workers = "cuda", min(MAX_DECODE_WORKERS, max(0, cpus // count - 1))
        else:
            count = actors or max(1, cpus)
            options = dict(num_cpus=min(1.0, max(cpus, 1) / count))  # more actors than CPUs share them
            device, workers = "cpu", 0
        remote = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, **options)(actor_class)
        # Once in the object store, shared by every actor; kept referenced here for the whole run,
        # so that a restarted actor finds it (Ray warns about that case on stderr at start).
        self.known = ray.put(frozenset(known_contents))
        self.actors = [remote.remote(model_dir, device, workers, self.known) for _ in range(count)]
        log.info("%d Ray embed actors on %s (%d CPUs, %d GPUs in the cluster)", count, device, cpus, gpus)

    def least_busy(self, busy: Iterable[tuple]):
        if not self.actors:
            raise ShardFailed(
                "every Ray embed worker died; every shard merged before is kept: check the "
                "workers' logs (Ray's session folder, logs/) and run the same command again."
            )
        load = {id(actor): 0 for actor in self.actors}
        for _, actor in busy:
            if id(actor) in load:
                load[id(actor)] += 1
        return min(self.actors, key=lambda actor: load[id(actor)])

    def drop(self, actor) -> None:
        self.actors = [a for a in self.actors if a is not actor]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []


@contextmanager
def _connected(ray, address: str | None) -> Iterator[None]:
    """Connected to the cluster at `address`; without one, to the Ray this process already
    uses, else to a new local cluster. Whatever this started is shut down at the end."""
    if address is None and ray.is_initialized():
        yield
        return
    if ray.is_initialized():
        raise ImgsearchError(
            f"this process is already connected to a Ray cluster; to use {address}, "
            "call ray.shutdown() first, or pass no address."
        )
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address is None:
        ray.init(address="local", **options)
    else:
        ray.init(address=address, **options)
    try:
        yield
    finally:
        ray.shutdown()


def _loopback_only() -> None:
    """Have a local cluster that this process starts listen on 127.0.0.1 alone: Ray then takes
    the loopback address as the node's instead of the outward one (what it does on macOS and
    Windows, where multi-node clusters are off). Ray reads the variable when it is first
    imported, so this works only before that; the cluster's processes inherit it."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
