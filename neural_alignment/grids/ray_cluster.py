"""Connecting to Ray: the cluster named by ``RAY_ADDRESS``, else a local one started here.

Searches (``nalign search --backend ray``) and comparison grids that run on Ray open the
cluster through :func:`ray_cluster`, so both connect the same way:

- ``RAY_ADDRESS`` set (``auto``, ``ray://head:10001``, ``head:6379``): connect to that cluster;
- otherwise: start a local cluster of ``num_cpus`` CPUs (all of this machine's when ``None``)
  and shut it down when the block ends; always a new one (``address="local"``), never one that
  ``ray start`` left on this machine (Ray's own ``ray.init()`` would join that one).

A cluster that was already initialised in this process (a test, a notebook) is used as it is
and left running.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from neural_alignment.core.errors import UserError

ADDRESS_VARIABLE = "RAY_ADDRESS"


def import_ray():
    """The ``ray`` module, or a ``UserError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs Ray Tune: pip install 'neural-alignment[ray]'") from None
    return ray


def init_arguments(num_cpus: int | None = None) -> dict:
    """``ray.init`` keywords: the address in ``RAY_ADDRESS`` if set, else a local cluster of ``num_cpus``."""
    address = os.environ.get(ADDRESS_VARIABLE)
    if address:
        return {"address": address}
    return {"address": "local", "num_cpus": num_cpus, "include_dashboard": False}


@contextmanager
def ray_cluster(num_cpus: int | None = None) -> Iterator[Any]:
    """Yield the ``ray`` module connected to a cluster (see the module docstring); a cluster
    started here is shut down at the end, one found initialised is left running."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(**init_arguments(num_cpus))
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
