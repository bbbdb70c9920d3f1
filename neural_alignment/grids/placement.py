"""Runs on a Ray cluster: the resources each asks for, the backend it then trains on, where it ran.

``search.trial_resources`` (``nalign compare --trial-resources``) names the Ray resources one run
holds while it trains, merged onto ``{cpu: 1}``: ``cpu``, ``gpu`` (a fraction below 1 shares a
GPU), ``memory`` (bytes), or any resource a node declares (``TPU`` on a TPU VM, a name given to
``ray start --resources``). Ray starts a run only on a node with those free, so ``{gpu: 1}``
is one run per GPU at a time and ``{TPU: 4}`` one run per 4-chip TPU VM.

On the worker, :func:`placed` picks the backend from what Ray assigned when the recipe's
backend is ``cpu`` (the default), so one recipe serves every node:

- a GPU assigned: ``backend.name=cuda``; Ray's ``CUDA_VISIBLE_DEVICES`` leaves the run only its
  GPUs, so ``cuda:0`` (the backend's default index) is the first GPU Ray gave it;
- a ``TPU`` assigned: ``backend.name=xla`` with ``PJRT_DEVICE=TPU`` unless set;
- else the recipe's backend. A recipe that names another backend keeps it.

The run's summary (``summary.json``, a search's ``trials.jsonl`` record) gets ``placement``:
``node_id`` (Ray's), ``node_ip``, ``hostname``, ``resources`` (what Ray assigned to the run),
``accelerators`` (their ids by kind) and ``backend`` (the one it trained on).

Storage: every node must see the driver's output folder at the same path. The driver writes a
fresh token into ``<folder>/SHARED_MARK`` (:func:`mark_shared`); each run first reads it
(:func:`unseen_folder`), and a node that does not find it fails the run with a one-line reason
instead of training into a folder the driver never reads.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.recipes.schema import RayResources
from neural_alignment.runtime.atomic import write_text_atomically

DEFAULT_RESOURCES = {"cpu": 1}
SHARED_MARK = ".nalign-shared"
"""The file, in the folder every node must see, holding the driver's token (:func:`mark_shared`)."""
RETRIES = 2
"""How many times a run whose worker died (its node lost, its process killed) is started again."""
CHOSEN_BACKENDS = {"GPU": "cuda", "TPU": "xla"}
"""The backend a run trains on when Ray assigned it this accelerator and its recipe's backend is ``cpu``."""


def trial_resources(given: Mapping | None, where: str = "search.trial_resources") -> dict[str, float]:
    """``given`` merged onto ``{cpu: 1}``, checked (a ``UserError`` naming ``where`` and what is valid)."""
    resources = {**DEFAULT_RESOURCES, **dict(given or {})}
    problem = RayResources().problem(resources)
    if problem:
        raise UserError(f"bad value for {where}: {problem}")
    return {name: float(amount) for name, amount in resources.items()}


def remote_options(resources: Mapping[str, float]) -> dict:
    """``ray.remote`` keywords for ``resources`` (``cpu``/``gpu``/``memory`` by their own keywords)."""
    custom = {k: v for k, v in resources.items() if k not in ("cpu", "gpu", "memory")}
    options = {"num_cpus": resources.get("cpu", 0), "num_gpus": resources.get("gpu", 0), "resources": custom}
    if "memory" in resources:
        options["memory"] = resources["memory"]
    return options


def local_cpus(parallelism: int, resources: Mapping[str, float]) -> int:
    """The CPUs of a local cluster that runs ``parallelism`` runs of ``resources`` at once."""
    return max(parallelism, math.ceil(parallelism * resources.get("cpu", 0)))


def mark_shared(folder: Path) -> str:
    """Write a fresh token into ``folder / SHARED_MARK`` (the driver, before any run) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    write_text_atomically(folder / SHARED_MARK, token)
    return token


def unseen_folder(folder: Path, token: str) -> str | None:
    """``None`` when this node sees ``folder`` as the driver marked it, else the one-line reason."""
    try:
        seen = (folder / SHARED_MARK).read_text(encoding="utf-8")
    except OSError:
        seen = None
    if seen == token:
        return None
    how = "is not there" if seen is None else "holds another search's token"
    return (
        f"node {socket.gethostname()} ({node_ip()}) does not see the driver's folder {folder} "
        f"({SHARED_MARK} {how}): --out must be a path every node reaches (a shared file system; docs/scaling.md)"
    )


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def placement() -> dict:
    """Where this Ray worker runs and what Ray assigned it (called inside a task or a trial)."""
    import ray

    context = ray.get_runtime_context()
    return {
        "node_id": context.get_node_id(),
        "node_ip": node_ip(),
        "hostname": socket.gethostname(),
        "resources": context.get_assigned_resources(),
        "accelerators": {kind: ids for kind, ids in context.get_accelerator_ids().items() if ids},
    }


def chosen_backend(recipe_backend: str, accelerators: Mapping[str, list]) -> str:
    """The backend a run trains on: the assigned accelerator's (``CHOSEN_BACKENDS``) when the recipe's is ``cpu``."""
    if recipe_backend != "cpu":
        return recipe_backend
    return next((CHOSEN_BACKENDS[kind] for kind in CHOSEN_BACKENDS if accelerators.get(kind)), recipe_backend)


def placed(name: str, overrides: tuple[str, ...]) -> tuple[tuple[str, ...], dict]:
    """On a Ray worker: the overrides of recipe ``name`` for the backend its assigned resources
    choose (``PJRT_DEVICE=TPU`` set for xla unless set), and the :func:`placement` it runs with."""
    here = placement()
    try:
        recipe_backend = load_recipe(name, list(overrides)).backend.name
    except UserError:  # the run itself reports it
        recipe_backend = "cpu"
    here["backend"] = chosen_backend(recipe_backend, here["accelerators"])
    if here["backend"] == recipe_backend:
        return overrides, here
    if here["backend"] == "xla":
        os.environ.setdefault("PJRT_DEVICE", "TPU")
    return (*overrides, f"backend.name={here['backend']}"), here
