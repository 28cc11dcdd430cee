"""Indexing on Ray: embed workers as Ray actors, the one writer here, in the driver.

files --> plan (here) --> shards of the files to read --> EmbedActor.embed (one actor per GPU,
else per CPU; the encoder loaded once per actor) --> ShardWriter.merge (here, one shard at a
time, as each arrives) --> SQLite + FAISS.

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

Only this module imports ray, and only when a run starts: install it with
`pip install 'imgsearch[ray]'`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imgsearch.errors import ImgsearchError, RayNotInstalled, ShardFailed
from imgsearch.indexer.embed_worker import embed_shard
from imgsearch.indexer.files import input_roots, iter_image_files
from imgsearch.indexer.merge import AddSummary, ShardWriter
from imgsearch.indexer.paths import path_to_text
from imgsearch.indexer.pipeline import ProgressCallback, StopCheck
from imgsearch.indexer.plan import plan_run
from imgsearch.indexer.shard import Shard
from imgsearch.indexer.store import Store
from imgsearch.indexer.vectors import VectorIndex

__all__ = ["index_files_on_ray", "require_ray", "EmbedActor", "RAY_INSTALL_HINT"]

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install 'imgsearch[ray]'"
MAX_RESTARTS = 3  # times Ray restarts an actor whose process died
MAX_TASK_RETRIES = 3  # times Ray retries a shard on its restarted actor
MAX_ATTEMPTS = 4  # times this driver hands one shard out (to another actor, once its own is gone)
MAX_DECODE_WORKERS = 16  # decode processes per GPU actor, at most


class EmbedActor:
    """One embed worker: the image encoder, loaded once, then shard after shard.

    Ray runs it as an actor (ray.remote is applied by index_files_on_ray), in a process of its
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
        return embed_shard(paths, self.encoder, known_contents=self.known_contents, batch_size=batch_size,
                           workers=self.workers)


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


def index_files_on_ray(
    paths: Iterable[str | os.PathLike],
    store: Store,
    vectors: VectorIndex,
    model_dir: str | os.PathLike,
    *,
    address: str | None = None,
    shard_size: int = 256,
    max_in_flight: int | None = None,
    batch_size: int = 32,
    actors: int | None = None,
    progress: ProgressCallback | None = None,
    prune: bool = True,
    should_stop: StopCheck | None = None,
    actor_class: type[EmbedActor] = EmbedActor,
) -> AddSummary:
    """Bring the store in line with the files under `paths`, as pipeline.index_files does, with
    the embedding done by Ray actors. The caller holds the writer lock.

    address: a Ray cluster's address (as ray.init takes it: "HOST:PORT", "ray://HOST:PORT",
    "auto"); None: the Ray this process is connected to, else a new local one on this machine,
    listening on 127.0.0.1 only, shut down at the end. shard_size: files per shard.
    max_in_flight: shards queued or running at once (default: two per actor). actors: how many
    (default: one per GPU of the cluster, else one per CPU). `should_stop` is asked after each
    merged shard; when it says True the run ends there, keeping all merged.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    if address is None:
        _loopback_only()  # before ray is imported
    ray = require_ray()
    started = time.perf_counter()
    roots = input_roots(paths)
    store.record_folders([path_to_text(root) for root in roots])  # what the service may serve from
    plan = plan_run(list(iter_image_files(roots)), store.all_images(), roots, prune=prune)
    summary = AddSummary(unchanged=plan.unchanged)
    writer = ShardWriter(store, vectors, plan, summary)
    todo = [str(path) for path in plan.todo]
    shards = deque(_Task(todo[i : i + shard_size]) for i in range(0, len(todo), shard_size))
    if shards:
        with _connected(ray, address):
            pool = _ActorPool(ray, str(Path(model_dir).resolve()), store.content_hashes(), actors, actor_class)
            try:
                _stream(ray, pool, shards, writer, summary, len(todo), batch_size,
                        max_in_flight or 2 * len(pool.actors), progress, should_stop)
            finally:
                pool.close()
    writer.finish(interrupted=summary.interrupted)
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class _Task:
    paths: list[str]  # one shard's files
    attempts: int = 0  # times handed to an actor so far


def _stream(ray, pool: _ActorPool, queue: deque[_Task], writer: ShardWriter, summary: AddSummary, total: int,
            batch_size: int, max_in_flight: int, progress: ProgressCallback | None,
            should_stop: StopCheck | None) -> None:
    """Keep up to `max_in_flight` shards with the actors; merge each as it arrives."""
    in_flight: dict = {}  # ObjectRef --> (task, actor)
    done = 0  # files merged
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
        writer.merge(shard)  # a shard merged before (a retry that finished twice) is skipped
        done += len(shard.records)
        if progress is not None:
            progress(done, total)
        if should_stop is not None and (queue or in_flight) and should_stop():
            summary.interrupted = True  # the shards still with the actors are dropped with them (pool.close)
            return


class _ActorPool:
    """The embed actors: one per GPU (with its share of the CPUs to decode), else one per CPU."""

    def __init__(self, ray, model_dir: str, known_contents: set[str], actors: int | None,
                 actor_class: type[EmbedActor]) -> None:
        self.ray = ray
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        if gpus:
            count = actors or gpus
            options = dict(num_gpus=1, num_cpus=max(1, cpus // count))
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
            raise ShardFailed("every Ray embed worker died; every shard merged before is kept: check the "
                                 "workers' logs (Ray's session folder, logs/) and run the same command again.")
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
        raise ImgsearchError(f"this process is already connected to a Ray cluster; to use {address}, "
                             "call ray.shutdown() first, or pass no address.")
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
