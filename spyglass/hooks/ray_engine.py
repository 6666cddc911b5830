"""Running an export on a Ray cluster: one model per worker, whole shards per task.

The driver plans the export exactly as the local engine does and owns the manifest; each
worker (a Ray actor) loads the same model once, then computes and writes whole shards
straight into the output folder, which must therefore be storage every node sees at the
same path. A worker returns the shard's manifest record; the driver lists the shard only
then, so the folder's layout, manifest and resume rules are the local engine's.

Each actor runs two tasks at once, so one shard is written while the next is computed.
With no ``address``, a local Ray instance is started on loopback only and shut down after.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spyglass.hooks.batch import JobSpec, ShardPlan, compute_shard
from spyglass.hooks.store import (
    ExportError,
    Manifest,
    model_identity,
    progress_bar,
    write_shard,
)
from spyglass.model.loader import Model, ModelSource, load_model

if TYPE_CHECKING:
    from spyglass.hooks.store import ExportJob

log = logging.getLogger(__name__)

# Limitation: Ray has no public switch to keep a local instance on loopback on Linux; this
# variable makes it pick 127.0.0.1 as the node address (it is what Ray does on macOS and
# Windows). It is read when ray is imported, so it is set before the import and checked.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TASKS_PER_WORKER = 2


def model_recipe(model: Model) -> dict[str, Any]:
    """What a worker needs to load the same model: name, dtype, processing, source."""
    return {"name": model.name, "dtype": model.dtype, "processing": model.processing,
            "source": model.source}


def load_recipe(recipe: dict[str, Any]) -> Model:
    """Load the model a recipe names and refuse it if its identity differs."""
    source = recipe["source"]
    if source.get("kind") == "random":
        from spyglass.model.tiny import load_tiny

        model = load_tiny(source["architecture"], seed=source.get("seed", 0),
                          n_layers=source.get("n_layers", 2), n_ctx=source.get("n_ctx", 64))
    else:
        revision = source.get("revision") if source.get("kind") == "hub" else None
        model = load_model(ModelSource(name=recipe["name"], dtype=recipe["dtype"],
                                       processing=recipe["processing"], revision=revision))
    want = {"name": recipe["name"], "source": source, "dtype": recipe["dtype"],
            "weight_processing": recipe["processing"]}
    if model_identity(model) != want:
        raise ExportError(
            f"This worker loaded {model_identity(model)}, not the driver's {want}. Give every "
            "node the same model files (same package version, folder or hub revision)."
        )
    return model


def import_ray(local: bool) -> Any:
    """Import ray; for a local instance, make sure it will listen on loopback only."""
    if local:
        os.environ[LOOPBACK_ENV] = "0"
    import ray
    from ray._private import ray_constants

    if local and ray_constants.ENABLE_RAY_CLUSTER:
        raise ExportError(
            "Ray was imported before Spyglass could keep a local instance on 127.0.0.1, so "
            f"it would listen on every interface. Set {LOOPBACK_ENV}=0 before Python starts, "
            "or start Ray yourself and pass --address."
        )
    return ray


def start_local(ray: Any, num_cpus: int) -> None:
    """A local Ray instance on loopback with no dashboard; refused if it is not on loopback."""
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        ray.shutdown()
        raise ExportError(f"The local Ray instance chose address {address}, not 127.0.0.1.")


def _worker_class(ray: Any) -> Any:
    class ExportWorker:
        def __init__(self, recipe: dict[str, Any], threads: int) -> None:
            import torch

            torch.set_num_threads(threads)
            self.model = load_recipe(recipe)

        def run(self, spec: JobSpec, shard: ShardPlan, folder: str) -> dict[str, Any]:
            data = compute_shard(self.model, spec, shard)
            return write_shard(Path(folder), spec, data)

    return ray.remote(ExportWorker)


def run(job: ExportJob, manifest: Manifest, *, progress: bool = False,
        address: str | None = None, workers: int | None = None,
        cpus_per_worker: int = 1) -> None:
    """Compute and write every pending shard of ``job`` on Ray workers."""
    ray = import_ray(local=address is None and not _ray_running())
    started_here = False
    if not ray.is_initialized():
        if address is None:
            start_local(ray, num_cpus=(workers or 2) * cpus_per_worker)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        started_here = True
    actors: list[Any] = []
    try:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)
        worker = _worker_class(ray).options(num_cpus=cpus_per_worker,
                                            max_concurrency=TASKS_PER_WORKER)
        actors = [worker.remote(model_recipe(job.model), cpus_per_worker) for _ in range(n)]
        log.info("Exporting %d shards on %d Ray workers", len(job.pending), n)
        _dispatch(ray, job, manifest, actors, progress)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _ray_running() -> bool:
    # Look without importing: importing ray here would fix its address choice too early.
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def _dispatch(ray: Any, job: ExportJob, manifest: Manifest, actors: list[Any],
              progress: bool) -> None:
    """Keep every actor busy with two shards; list each shard as its record comes back."""
    todo = list(job.pending)
    folder = str(job.folder.resolve())
    busy = {i: 0 for i in range(len(actors))}
    flying: dict[Any, tuple[int, ShardPlan]] = {}
    bar = progress_bar(job, progress)
    try:
        while todo or flying:
            for i, actor in enumerate(actors):
                while todo and busy[i] < TASKS_PER_WORKER:
                    shard = todo.pop(0)
                    flying[actor.run.remote(job.spec, shard, folder)] = (i, shard)
                    busy[i] += 1
            done, _ = ray.wait(list(flying), num_returns=1)
            for ref in done:
                i, shard = flying.pop(ref)
                busy[i] -= 1
                manifest.add_shard(ray.get(ref))
                bar.update(shard.n_tokens)
    finally:
        bar.close()
