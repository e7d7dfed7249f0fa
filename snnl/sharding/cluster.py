"""Ray, as the sharded scorer uses it: connecting, and starting the shard actors.

Ray is imported here, inside the functions, so that ``import snnl`` and an unsharded detector
never import it.

* ``connect(address, shards)``: reuse a Ray connection the process already has (inside a Ray
  Serve replica, or after the caller's own ``ray.init``); else ``ray.init(address)``, where None
  starts a private local cluster on this machine and "auto" or "ray://host:10001" joins a running
  one.
* ``start_shards(specs, shared=...)``: one actor per ``ShardSpec``. A shard on "cuda" asks Ray for
  one GPU (``num_gpus=1``), so Ray places one shard per GPU; a CPU shard asks for one CPU. Every
  actor has ``max_restarts=-1`` (Ray restarts a dead shard, which reloads its rows, for as long as
  the cluster can place it) and ``max_task_retries=0`` (a call that hits the failure fails: the
  caller answers "unavailable", never a result from fewer shards).
  ``shared=True`` makes named, detached actors (name ``snnl-shard-<digest of the spec>``,
  namespace ``snnl``): every process that loads the same model with the same shard settings on the
  cluster (each replica of the service) gets the same actors, and they outlive the processes.
  ``shared=False`` makes private actors owned by the calling process (they end with it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from snnl.errors import UnavailableError
from snnl.sharding.actor import ShardActor, ShardSpec

NAMESPACE = "snnl"


def connect(address: str | None, shards: int) -> bool:
    """Connect this process to Ray (see the module docstring); True when the shards are to be
    shared: the process joined a running cluster (``address``, or the ``RAY_ADDRESS``
    environment variable) or runs inside a Ray actor (a Ray Serve replica).

    A private local cluster counts at least ``shards + 1`` CPUs (logical: the shards and this
    process share the machine's cores), so that every CPU shard can be placed."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return address is not None or ray.get_runtime_context().get_actor_id() is not None
    if address is not None:
        ray.init(address=address, namespace=NAMESPACE)
        return True
    # Ray starts its workers at niceness 15; a private cluster's shards do this process's scoring
    # work, so they run at its priority (at 15, any other load on the machine starves them)
    os.environ.setdefault("RAY_worker_niceness", "0")
    cpus = max(os.cpu_count() or 1, shards + 1)
    ray.init(namespace=NAMESPACE, num_cpus=cpus, include_dashboard=False)
    return False


def actor_name(spec: ShardSpec) -> str:
    """The name of a shared shard actor: equal specs, equal names."""
    return f"snnl-shard-{spec.digest()[:24]}"


def _options(spec: ShardSpec, shared: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": 1}
    if spec.device == "cuda":
        options["num_gpus"] = 1
    if shared:
        options |= {
            "name": actor_name(spec),
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "get_if_exists": True,
        }
    return options


def start_shards(specs: Sequence[ShardSpec], *, shared: bool, timeout_s: float) -> list[Any]:
    """One started actor per spec (handles in spec order), each answering ``describe`` within
    ``timeout_s`` in all; UnavailableError names a shard that could not be placed or loaded."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    remote: Any = ray.remote(ShardActor)  # an actor class (Ray's stubs type it as the class)
    actors = [remote.options(**_options(spec, shared)).remote(spec) for spec in specs]
    deadline = time.monotonic() + timeout_s
    probes = [actor.describe.remote() for actor in actors]
    for spec, probe in zip(specs, probes, strict=True):
        try:
            ray.get(probe, timeout=max(deadline - time.monotonic(), 0.0))
        except GetTimeoutError as err:
            need = "1 GPU" if spec.device == "cuda" else "1 CPU"
            raise UnavailableError(
                f"{spec.describe()}: not loaded within {timeout_s:g} s (each shard needs {need} "
                "free in the Ray cluster, and the reference file at the same path on every node)"
            ) from err
        except RayError as err:
            raise UnavailableError(
                f"{spec.describe()}: failed to load ({error_reason(err)})"
            ) from err
    return actors


def error_reason(err: BaseException) -> str:
    """The first line of a Ray error: what the caller reads."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
